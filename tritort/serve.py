"""Serving an ONNX model with Ray Serve: replicas across a cluster's CPUs and GPUs, dynamic
batching, an in-cluster handle and HTTP.

    from ray import serve
    import tritort.serve
    serve.run(tritort.serve.app("model.onnx", num_replicas=2))   # POST .npz or JSON to :8000/

Each replica owns one ``InferenceSession``, created and warmed up (one run on valid random
inputs) before Serve counts the replica ready. ``providers`` naming the Triton provider (or
its alias ``CUDAExecutionProvider``) asks Ray for one GPU per replica; the CPU provider runs
on the CPUs Ray gives the replica, and the session's ``intra_op_num_threads`` and numpy's BLAS
pool are sized to them (``ray_actor_options["num_cpus"]``, default 1), so replicas sharing a
machine do not oversubscribe its cores. Replicas on one machine share the on-disk kernel cache
and tuning database of the user's cache folder (``TRITORT_CACHE_DIR``, ``TRITORT_TUNING_DB``).

Requests are dicts of input name -> array (numpy, torch CPU tensors, nested lists). A model
whose inputs and outputs all lead with one symbolic dim is batched with ``@serve.batch``:
requests that agree on every other dim run as one (``serve_batching``). ``stats()`` on the
handle returns the replica's histogram of requests per run; Serve's own ``serve_batch_size``
metric and this module's ``tritort_serve_requests_per_run`` reach Prometheus.

Serve's HTTP proxy costs a small request several times the model's run in CPU; Ray processes
started with ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` let each replica answer HTTP on a port of its
own instead (perf/results/2026-12-05-serve-2.md; README, Serving with Ray Serve).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

try:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError("tritort.serve needs Ray Serve: pip install 'tritort[serve]'") from e

from . import serve_batching as batching
from . import tools
from .errors import InvalidArgument
from .fallback_cpu.threads import blas_libraries
from .options import SessionOptions
from .session import InferenceSession

log = logging.getLogger("tritort.serve")

GPU_PROVIDERS = frozenset({"TritonExecutionProvider", "CUDAExecutionProvider"})
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_S = 0.005
DEFAULT_MAX_ONGOING = 32
# requests per run: what the histogram's buckets can tell apart
BATCH_BOUNDARIES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256]
RETRYABLE_ERRORS = ("ActorDiedError", "ActorUnavailableError", "RayActorError",
                    "DeploymentUnavailableError", "BackPressureError")


def wants_gpu(providers: Sequence[Any] | None) -> bool:
    names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers or ()]
    return any(name in GPU_PROVIDERS for name in names)


def replica_threads(ray_actor_options: dict | None) -> int:
    """The thread-sizing rule: a replica's intra-op and BLAS threads are the whole CPUs Ray
    reserves for it (at least one)."""
    return max(1, int((ray_actor_options or {}).get("num_cpus", 1)))


class ModelServer:
    """One replica: a session, its batch queue, and the counts of requests per run."""

    def __init__(self, model: Any, providers: Sequence[Any] | None,
                 sess_options: SessionOptions | None, provider_options: Sequence[dict] | None,
                 threads: int, max_batch_size: int, batch_wait_timeout_s: float,
                 max_ongoing_requests: int = DEFAULT_MAX_ONGOING) -> None:
        options = sess_options if sess_options is not None else SessionOptions()
        if options.intra_op_num_threads == 0:  # 0 would take every core of the machine
            options.intra_op_num_threads = threads
        for lib in blas_libraries():  # also for BLAS calls outside a run (warm-up, numpy)
            lib.set_num_threads(options.intra_op_num_threads)
        t0 = time.perf_counter()
        self.session = InferenceSession(model, options, providers=providers,
                                        provider_options=provider_options)
        self.inputs = self.session.get_inputs()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.batch_dim = batching.batch_dim(self.inputs, self.session.get_outputs())
        self.max_batch_size = max_batch_size if self.batch_dim is not None else 1
        # one run at a time: the session's threads are the replica's CPUs
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="tritort-run")
        self._runs: Counter = Counter()
        self._requests = 0
        self._metric = _requests_per_run_metric()
        # Serve's batcher closes a batch every batch_wait_timeout_s even while the session is
        # busy; those batches wait here and run as one when it is free (_drain), so batches
        # fill under load. Every request may be a batch of its own: hence max_ongoing_requests
        # concurrent batches (Serve logs a warning about it that does not apply here).
        self._waiting: list[tuple[list[tuple], asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None
        if self.max_batch_size > 1:  # a queue per replica, not per class
            self._batched = serve.batch(max_batch_size=self.max_batch_size,
                                        batch_wait_timeout_s=batch_wait_timeout_s,
                                        max_concurrent_batches=max(1, max_ongoing_requests))(
                                            self._run_batch)
        self._warm_up(model)
        log.info("replica ready in %.1f s: providers %s, %d threads, batch dim %s, max batch %d",
                 time.perf_counter() - t0, self.session.get_providers(),
                 options.intra_op_num_threads, self.batch_dim, self.max_batch_size)

    def _warm_up(self, model: Any) -> None:
        try:
            feeds = tools.random_inputs(model)
        except InvalidArgument as e:  # inputs that are not tensors: nothing to make up
            log.warning("no warm-up run: %s", e)
            return
        self.session.run(None, feeds)

    # -- requests -------------------------------------------------------------------------------

    async def __call__(self, request: Any) -> Any:
        if isinstance(request, Request):
            return await self._http(request)
        return await self.run(request)

    async def run(self, feeds: Any, output_names: Sequence[str] | None = None
                  ) -> dict[str, Any]:
        """The outputs (all, or those named) for one request's inputs."""
        feeds = batching.as_feeds(feeds)
        names = None if output_names is None else [str(n) for n in output_names]
        sig = batching.signature(feeds, names) if self.max_batch_size > 1 else None
        if sig is None:
            ok, value = await asyncio.get_running_loop().run_in_executor(
                self._worker, self._run_alone, feeds, names)
        else:
            ok, value = await self._batched((feeds, names, sig))
        if not ok:
            raise value
        return value

    def stats(self) -> dict[str, Any]:
        """This replica's requests and runs: ``batches`` maps requests per run to runs."""
        return {"replica": serve.get_replica_context().replica_tag
                if _in_replica() else None, "pid": os.getpid(),
                "batch_dim": self.batch_dim, "max_batch_size": self.max_batch_size,
                "requests": self._requests, "runs": sum(self._runs.values()),
                "batches": dict(sorted(self._runs.items()))}

    async def _run_batch(self, items: list[tuple]) -> list[tuple[bool, Any]]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._waiting.append((items, done))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        """Runs the waiting batches, as many together as fit in max_batch_size requests,
        until none waits."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            taken, requests = [], 0
            while self._waiting and (not taken or requests + len(self._waiting[0][0])
                                     <= self.max_batch_size):
                taken.append(self._waiting.pop(0))
                requests += len(taken[-1][0])
            try:
                results = await loop.run_in_executor(
                    self._worker, self._run_groups, [item for items, _ in taken for item in items])
            except Exception as e:  # noqa: BLE001 - each request of these gets it
                results = [(False, e)] * requests
            start = 0
            for items, done in taken:
                if not done.done():  # not cancelled meanwhile
                    done.set_result(results[start:start + len(items)])
                start += len(items)

    # -- runs (on the worker thread) ------------------------------------------------------------

    def _run_groups(self, items: list[tuple]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = [(False, None)] * len(items)
        for indices in batching.group([sig for _, _, sig in items]):
            if len(indices) == 1:
                i = indices[0]
                results[i] = self._run_alone(items[i][0], items[i][1])
                continue
            requests = [items[i][0] for i in indices]
            names = items[indices[0]][1]
            parts = None
            try:
                outputs = self.session.run(names, batching.concat(requests))
                parts = batching.split(outputs, [batching.rows_of(r) for r in requests])
            except Exception:  # noqa: BLE001 - each request then gets its own error
                log.debug("a batch of %d failed; running its requests alone", len(indices),
                          exc_info=True)
            if parts is None:
                for i in indices:
                    results[i] = self._run_alone(items[i][0], items[i][1])
                continue
            self._count(len(indices))
            out_names = names or self.output_names
            for i, values in zip(indices, parts):
                results[i] = (True, dict(zip(out_names, values)))
        return results

    def _run_alone(self, feeds: dict, names: list[str] | None) -> tuple[bool, Any]:
        try:
            outputs = self.session.run(names, feeds)
        except Exception as e:  # noqa: BLE001 - handed to the caller, raised there
            return False, e
        self._count(1)
        return True, dict(zip(names or self.output_names, outputs))

    def _count(self, requests: int) -> None:
        self._runs[requests] += 1
        self._requests += requests
        if self._metric is not None:
            self._metric.observe(requests)

    # -- HTTP -----------------------------------------------------------------------------------

    async def _http(self, request: Request) -> Response:
        if request.method == "GET":  # what to send: the model's inputs and outputs
            return _json_response(200, self._describe())
        try:
            if request.method != "POST":
                return _json_response(405, {"error": "MethodNotAllowed",
                                            "message": "POST the inputs, GET describes them"})
            parsed = batching.decode_body(request.headers.get("content-type", ""),
                                          await request.body(), self.inputs)
            outputs = await self.run(parsed.feeds, parsed.output_names)
        except Exception as e:  # noqa: BLE001 - mapped to a status
            status = batching.http_status(e)
            if status >= 500:
                log.exception("request failed")
            return _json_response(status, {"error": type(e).__name__, "message": str(e)})
        if parsed.as_json:
            return Response(batching.encode_json(outputs), media_type="application/json")
        return Response(batching.encode_npz(outputs), media_type="application/x-npz")

    def _describe(self) -> dict:
        return {"inputs": [vars(a) for a in self.inputs],
                "outputs": [vars(a) for a in self.session.get_outputs()],
                "providers": self.session.get_providers(), "batch_dim": self.batch_dim,
                "max_batch_size": self.max_batch_size}


def _json_response(status: int, doc: dict) -> Response:
    return Response(json.dumps(doc), status_code=status, media_type="application/json")


def _in_replica() -> bool:
    try:
        serve.get_replica_context()
    except Exception:  # noqa: BLE001 - outside a replica (tests build the class directly)
        return False
    return True


def _requests_per_run_metric():
    if not _in_replica():
        return None
    from ray.serve import metrics

    return metrics.Histogram("tritort_serve_requests_per_run",
                             description="requests answered by one session run",
                             boundaries=BATCH_BOUNDARIES)


Deployment = serve.deployment(ModelServer, name="tritort")


def app(model: Any, *, providers: Sequence[Any] | None = None,
        sess_options: SessionOptions | None = None,
        provider_options: Sequence[dict] | None = None, num_replicas: int | str = 1,
        ray_actor_options: dict | None = None,
        max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
        batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S,
        max_ongoing_requests: int | None = None, name: str = "tritort",
        **deployment_options: Any):
    """A Ray Serve application serving ``model`` (a path every node can read, bytes or an
    onnx.ModelProto). ``max_batch_size`` counts requests (None or 1: no batching);
    ``max_ongoing_requests`` defaults to ``max(2 * max_batch_size, 32)``;
    ``deployment_options`` go to ``serve.deployment`` (``autoscaling_config``, ...)."""
    if isinstance(model, (str, os.PathLike)):
        model = os.path.abspath(os.fspath(model))  # replicas do not share the caller's cwd
    actor = dict(ray_actor_options or {})
    actor.setdefault("num_cpus", 1)
    if wants_gpu(providers):
        actor.setdefault("num_gpus", 1)
    batch = max(1, int(max_batch_size or 1))
    if max_ongoing_requests is None:
        # a replica runs one request or batch at a time, so waiting in its queue costs
        # nothing, where Serve's default (5) makes its router back off and retry: unbatched
        # at 32 concurrent clients that served 13 requests/s instead of ~170 (perf/results)
        max_ongoing_requests = max(2 * batch, DEFAULT_MAX_ONGOING)
    deployment_options["max_ongoing_requests"] = max_ongoing_requests
    deployment = Deployment.options(name=name, num_replicas=num_replicas,
                                    ray_actor_options=actor, **deployment_options)
    return deployment.bind(model, list(providers) if providers else None, sess_options,
                           provider_options, replica_threads(actor), batch,
                           float(batch_wait_timeout_s), int(max_ongoing_requests))


def is_retryable(error: BaseException) -> bool:
    """A failure of the replica, not of the request: the request may be sent again (a
    model's run has no side effects)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any(cls.__name__ in RETRYABLE_ERRORS for cls in type(error).__mro__):
            return True
        error = error.__cause__ or getattr(error, "cause", None)
    return False


async def call(handle, feeds: dict, output_names: Sequence[str] | None = None, *,
               attempts: int = 3, backoff_s: float = 0.5) -> dict:
    """``handle.run.remote(feeds)``, sent again when the replica died under it."""
    for attempt in range(attempts):
        try:
            return await handle.run.remote(feeds, output_names)
        except Exception as e:  # noqa: BLE001 - re-raised unless retryable
            if attempt + 1 == attempts or not is_retryable(e):
                raise
            await asyncio.sleep(backoff_s * (attempt + 1))
    raise AssertionError("unreachable")
