"""Robustness fuzzer: invalid models and inputs must get ORT's errors, never a hang or a crash.

Mutants are made from the ONNX node conformance cases shipped with onnx (every op, with
valid inputs) and a few multi-node models of the fuzzer's own (weights over the loader's
1024-element threshold, folded shape arithmetic, a Loop): one or two mutations each, of
attributes (values, types, presence), types and shapes (declared and fed), input values
(NaN, extremes, large sizes), initializers (values, dims, dtype, truncated data), graph
structure (inputs, outputs, node order, duplicates, cycles, removed nodes), op types,
domains and opsets, inside control-flow bodies too. Mutant ``i`` of seed ``S`` depends on
nothing else, so any finding is replayed with ``--replay S:i``.

Each mutant runs in worker processes, one per runtime (tritort's CPU provider, tritort
Triton-first, onnxruntime as the oracle), each under a memory cap (``resource.setrlimit``)
and a per-mutant timeout. A worker creates the session and runs it on the mutant's feeds.
A tritort failure is:

- ``bug``: an exception that is not one of ORT's classes (``tritort.errors.OrtError``),
  at creation, at the run, or at a second run after a failed one (the session must stay
  usable);
- ``hang``: a run that goes on past the timeout is asked to stop through
  RunOptions.terminate; one that does not stop within GRACE_S seconds of that is a hang
  (where onnxruntime's did stop). One that stops is ``slow``, listed but not a failure: a
  valid model may run for ever (a Loop of 2**40 trips), and a Python runtime in Triton's
  interpreter is a thousand times slower per node than onnxruntime;
- ``crash``: the worker died (a signal, an abort, the memory cap's OOM).

Differences with onnxruntime (one rejects a model or input the other accepts, or outputs of
other dtypes or shapes) are counted and listed; they are not failures. Inputs onnxruntime's
Python binding cannot take (ml_dtypes arrays, numpy scalars) leave the oracle out ("n/a").

    python perf/fuzz.py --mutants 800 --seed 7 [--runtimes cpu,triton,ort] [--json out.json]
    python perf/fuzz.py --replay 7:123 --runtimes cpu      # one mutant, verbose
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from typing import Any, Callable

import numpy as np
import onnx

_PERF = os.path.dirname(os.path.abspath(__file__))
if _PERF not in sys.path:  # the worker runs this file as a script; tests load it by path
    sys.path.insert(0, _PERF)

from fuzz_corpus import synthetic_cases  # noqa: E402,F401  (tests reach it here)
from fuzz_mutants import make_mutant  # noqa: E402

RUNTIMES = {
    "cpu": ["CPUExecutionProvider"],
    "triton": ["TritonExecutionProvider", "CPUExecutionProvider"],
    "ort": ["CPUExecutionProvider"],
}
MEMORY_CAP = 6 << 30  # address space per worker: big inputs fail with MemoryError, not OOM
TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------- the worker


def _cap_memory(limit: int) -> None:
    import resource

    for what in (resource.RLIMIT_AS,):
        soft, hard = resource.getrlimit(what)
        cap = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(what, (cap, hard))


def _summary(values) -> list:
    out = []
    for v in values:
        if isinstance(v, np.ndarray):
            out.append((str(v.dtype), list(v.shape)))
        elif isinstance(v, list):
            out.append(("seq", len(v)))
        else:
            out.append((type(v).__name__, None))
    return out


def _run_with_budget(ort, sess, feeds, budget: float | None):
    """``sess.run`` on a thread; past ``budget`` seconds its RunOptions.terminate is set.
    Returns the outputs, or raises what the run raised; a run that stopped on the flag
    raises _Slow. One that ignores the flag keeps this worker busy: the parent's timeout
    then calls it a hang."""
    ro = ort.RunOptions()
    box: dict[str, Any] = {}

    def work():
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                box["out"] = sess.run(None, feeds, ro)
        except BaseException as e:  # noqa: BLE001  (handed to the caller)
            box["err"] = e

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(budget)
    if thread.is_alive():
        ro.terminate = True
        thread.join()
        if "err" in box and "terminate" in str(box["err"]):
            raise _Slow(f"still running after {budget:.0f} s; stopped by its terminate flag")
    if "err" in box:
        raise box["err"]
    return box["out"]


class _Slow(Exception):
    pass


def run_one(runtime: str, model: bytes, feeds: dict[str, Any],
            budget: float | None = None) -> dict[str, Any]:
    """Create a session and run it once; what happened, as plain data. A run past
    ``budget`` seconds is asked to stop through RunOptions.terminate: one that stops is
    'slow' (a valid model may run for ever: a Loop of 2**40 trips), not a hang."""
    if runtime == "ort":
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as classes

        ours = tuple(c for c in vars(classes).values()
                     if isinstance(c, type) and issubclass(c, Exception))
        so = ort.SessionOptions()
        so.log_severity_level = 4
    else:
        import tritort as ort
        from tritort.errors import OrtError

        ours = (OrtError,)
        so = ort.SessionOptions()
    result: dict[str, Any] = {"runtime": runtime}
    stage = "load"
    try:
        sess = ort.InferenceSession(model, so, providers=RUNTIMES[runtime])
        if runtime == "triton":
            result["on_triton"] = "TritonExecutionProvider" in sess.placement().values()
        stage = "run"
        outputs = _run_with_budget(ort, sess, feeds, budget)
        result.update(stage="ok", outputs=_summary(outputs))
    except _Slow as e:
        result.update(stage="slow", msg=str(e))
    except ours as e:
        result.update(stage=stage, cls=type(e).__name__, msg=str(e)[:600])
    except BaseException as e:  # noqa: BLE001  (what the fuzzer is looking for)
        if isinstance(e, KeyboardInterrupt):
            raise
        result.update(stage=stage, cls=type(e).__name__, msg=str(e)[:600], bug=True,
                      tb="".join(traceback.format_exception(e)[-12:]))
        if runtime == "ort":  # its Python binding refused the feeds (ml_dtypes, scalars)
            result.update(stage="n/a", bug=False)
    if runtime != "ort" and result.get("stage") == "run" and not result.get("bug"):
        # the session must stay usable after an error: the same run fails the same way
        try:
            _run_with_budget(ort, sess, feeds, budget)
            result["again"] = "ok"
        except _Slow:
            result["again"] = "slow"
        except OrtError as e:
            result["again"] = type(e).__name__
        except Exception as e:  # noqa: BLE001
            result.update(bug=True, again=type(e).__name__,
                          tb="".join(traceback.format_exception(e)[-12:]))
    return result


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _recv_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(fd: int, deadline: float | None = None):
    (n,) = struct.unpack("<Q", _recv_exact(fd, 8, deadline))
    return pickle.loads(_recv_exact(fd, n, deadline))


def worker_main(runtime: str, memory_cap: int) -> None:
    """Read (model, feeds) requests on stdin, answer on the original stdout; anything the
    runtimes print goes to stderr."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if runtime == "triton" and "TRITON_INTERPRET" not in os.environ:
        try:
            import torch

            if not torch.cuda.is_available():
                os.environ["TRITON_INTERPRET"] = "1"
        except ImportError:
            pass
    if runtime != "ort":
        import tritort  # noqa: F401  (imported before the cap: its libraries map a lot)
    else:
        import onnxruntime  # noqa: F401
    _cap_memory(memory_cap)
    warnings.simplefilter("ignore")
    _send(out, {"ready": True})
    fd = sys.stdin.fileno()
    while True:
        try:
            request = _recv(fd)
        except EOFError:
            return
        feeds = request["feeds"]
        if "__fuzz_sleep__" in feeds:  # the harness's own tests: a hang and a crash
            time.sleep(feeds["__fuzz_sleep__"])
        if "__fuzz_abort__" in feeds:
            os.abort()
        _send(out, run_one(runtime, request["model"], feeds, request.get("budget")))


class Worker:
    """One worker process for one runtime; restarted after a hang or a crash."""

    def __init__(self, runtime: str, memory_cap: int = MEMORY_CAP) -> None:
        self.runtime = runtime
        self.memory_cap = memory_cap
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()

    def start(self) -> None:
        self.log.seek(0)
        self.log.truncate()
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", self.runtime,
             "--memory-cap", str(self.memory_cap)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
            start_new_session=True)
        hello = _recv(self.proc.stdout.fileno(), time.monotonic() + 300)
        assert hello == {"ready": True}, hello

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    def run(self, model: bytes, feeds: dict[str, Any], timeout: float,
            grace: float | None = None) -> dict[str, Any]:
        """Past ``timeout`` seconds the worker sets the run's terminate flag; a worker that
        has not answered ``grace`` (GRACE_S) seconds after that (twice: a failed run is run
        again) is stuck: a hang."""
        if self.proc is None:
            self.start()
        t0 = time.monotonic()
        limit = 2 * (timeout + (GRACE_S if grace is None else grace))
        try:
            _send(self.proc.stdin, {"model": model, "feeds": feeds, "budget": timeout})
            result = _recv(self.proc.stdout.fileno(), time.monotonic() + limit)
        except TimeoutError:
            self.stop()
            return {"runtime": self.runtime, "stage": "hang", "bug": True,
                    "msg": f"no answer within {limit:.0f} s (the terminate flag was set after "
                           f"{timeout:.0f} s)"}
        except (EOFError, BrokenPipeError):
            code = self.proc.wait()
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace")[-1500:]
            self.proc = None
            return {"runtime": self.runtime, "stage": "crash", "bug": True,
                    "msg": f"worker exited with {code}"
                           f"{' (' + signal.Signals(-code).name + ')' if code < 0 else ''}",
                    "tb": tail}
        result["seconds"] = round(time.monotonic() - t0, 3)
        return result


# ---------------------------------------------------------------------------- the driver


def outcome(r: dict[str, Any]) -> str:
    """'ok', 'load', 'run', 'slow' (stopped by its terminate flag past the timeout), 'n/a'
    (the oracle could not take the feeds), or a failure kind ('bug', 'hang', 'crash')."""
    if r["stage"] in ("hang", "crash"):
        return r["stage"]
    if r.get("bug"):
        return "bug"
    return r["stage"]


GRACE_S = 15.0


def _failure(results: dict[str, dict]) -> list[tuple[str, str]]:
    """(runtime, kind) of each tritort failure, and 'slow' runs (listed, not failures: a
    valid model may run for ever, a Loop of 2**40 trips, and a Python runtime in Triton's
    interpreter is a thousand times slower per node than onnxruntime)."""
    out = []
    oracle = results.get("ort")
    for runtime, r in results.items():
        if runtime == "ort":
            continue
        kind = outcome(r)
        if kind == "hang" and oracle is not None and outcome(oracle) == "hang":
            continue
        if kind in ("bug", "hang", "crash", "slow"):
            out.append((runtime, kind))
    return out


def _difference(results: dict[str, dict]) -> list[str]:
    """How tritort's answers differ from onnxruntime's (accept vs reject, stage)."""
    oracle = results.get("ort")
    if oracle is None or outcome(oracle) in ("hang", "crash", "n/a", "slow"):
        return []
    out = []
    for runtime, r in results.items():
        if runtime == "ort" or outcome(r) in ("bug", "hang", "crash", "slow"):
            continue
        a, b = outcome(r), outcome(oracle)
        if a != b:
            out.append(f"{runtime}: tritort {a}" + (f" {r.get('cls')}" if a != "ok" else "")
                       + f", onnxruntime {b}" + (f" {oracle.get('cls')}" if b != "ok" else ""))
        elif a == "ok" and not _same_outputs(r.get("outputs"), oracle.get("outputs")):
            out.append(f"{runtime}: outputs {r.get('outputs')} vs onnxruntime "
                       f"{oracle.get('outputs')}")
    return out


# ml_dtypes types onnxruntime's Python binding hands back as their raw storage
_RAW_STORAGE = {"uint8": ("float8", "int4", "uint4", "float4", "int2", "uint2"),
                "uint16": ("bfloat16",)}


def _same_outputs(ours, theirs) -> bool:
    if ours is None or theirs is None or len(ours) != len(theirs):
        return ours == theirs
    for (dt, shape), (odt, oshape) in zip(ours, theirs):
        if shape != oshape:
            return False
        if dt != odt and not dt.startswith(_RAW_STORAGE.get(odt, ("-",))):
            return False
    return True


def fuzz(mutants: int, seed: int, runtimes: list[str], timeout: float = TIMEOUT_S,
         memory_cap: int = MEMORY_CAP, start: int = 0, log: Callable[[str], None] | None = None,
         ) -> dict[str, Any]:
    """Run mutants ``start .. start+mutants-1`` of ``seed`` on each runtime."""
    workers = {rt: Worker(rt, memory_cap) for rt in runtimes}
    report: dict[str, Any] = {"seed": seed, "mutants": 0, "runtimes": runtimes,
                              "failures": [], "slow": [], "differences": [], "outcomes": {}}
    outcomes = collections.Counter()
    t0 = time.monotonic()
    try:
        for index in range(start, start + mutants):
            m = make_mutant(seed, index)
            results = {rt: w.run(m.model, m.feeds, timeout) for rt, w in workers.items()}
            report["mutants"] += 1
            for rt, r in results.items():
                outcomes[f"{rt}:{outcome(r)}"] += 1
                if r.get("on_triton"):
                    outcomes[f"{rt}:placed nodes on Triton"] += 1
            entry = {"mutant": m.key, "case": m.case, "mutations": m.mutations}
            for rt, kind in _failure(results):
                r = results[rt]
                report["slow" if kind == "slow" else "failures"].append({
                    **entry, "runtime": rt, "kind": kind, "cls": r.get("cls"),
                    "msg": r.get("msg"), "tb": r.get("tb"), "ort": _brief(results.get("ort"))})
                if log:
                    log(f"{'SLOW' if kind == 'slow' else 'FAIL'} {m.key} {m.case} "
                        f"{m.mutations} {rt} {kind} {r.get('cls')}: {str(r.get('msg'))[:200]}")
            diffs = _difference(results)
            if diffs:
                report["differences"].append({**entry, "diffs": diffs, "tritort": {
                    rt: _brief(r) for rt, r in results.items() if rt != "ort"},
                    "ort": _brief(results.get("ort"))})
            if log and (index - start + 1) % 50 == 0:
                log(f"{index - start + 1} mutants, {time.monotonic() - t0:.0f} s, "
                    f"{len(report['failures'])} failures")
    finally:
        for w in workers.values():
            w.stop()
    report["outcomes"] = dict(sorted(outcomes.items()))
    report["seconds"] = round(time.monotonic() - t0, 1)
    return report


def _brief(r: dict | None) -> str | None:
    if r is None:
        return None
    kind = outcome(r)
    return kind if kind == "ok" else f"{kind} {r.get('cls')}: {str(r.get('msg'))[:300]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mutants", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first mutant index")
    p.add_argument("--runtimes", default="cpu,triton,ort",
                   help="comma-separated: cpu, triton (Triton first), ort (the oracle)")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S)
    p.add_argument("--memory-cap", type=int, default=MEMORY_CAP, help="bytes per worker")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--replay", help="SEED:INDEX: print the mutant and run it in this process")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.memory_cap)
        return 0
    runtimes = [r for r in args.runtimes.split(",") if r]
    if args.replay:
        seed, index = (int(v) for v in args.replay.split(":"))
        m = make_mutant(seed, index)
        print(f"mutant {m.key}: case {m.case}, mutations {m.mutations}")
        print(onnx.printer.to_text(onnx.load_from_string(m.model).graph)[:4000])
        print({k: (getattr(v, "dtype", None), getattr(v, "shape", None)) for k, v in
               m.feeds.items()})
        for rt in runtimes:
            if rt == "triton":
                os.environ.setdefault("TRITON_INTERPRET", "1")
            r = run_one(rt, m.model, m.feeds, args.timeout)
            print(rt, json.dumps(r, indent=1, default=str))
        return 0
    report = fuzz(args.mutants, args.seed, runtimes, args.timeout, args.memory_cap,
                  args.start, log=lambda s: print(s, flush=True))
    kinds = collections.Counter(f"{f['runtime']}:{f['kind']}" for f in report["failures"])
    print(f"{report['mutants']} mutants (seed {args.seed}) in {report['seconds']} s; "
          f"failures: {dict(kinds) or 'none'}")
    print("outcomes:", report["outcomes"])
    if report["slow"]:
        print(f"slow (stopped by the terminate flag after the timeout; not failures): "
              f"{[f['mutant'] for f in report['slow']]}")
    print(f"differences with onnxruntime: {len(report['differences'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
