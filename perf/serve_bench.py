"""Serving benchmark: closed-loop load on tritort.serve, batched and unbatched, over HTTP and
over the in-cluster handle, next to a plain single-session loop, in one run on one local Ray
instance.

    python perf/serve_bench.py [--models bert,mlp:full] [--requests 2000] [--concurrency 1,8,32]
                               [--modes unbatched,batched,serve-default] [--paths http,handle]
                               [--ingress direct|proxy] [--max-batch 32] [--batch-wait-ms 5]
                               [--num-cpus 1] [--replicas 1] [--full] [--quick] [--out FILE.md]

Models are the benchmark harness's (perf/models.py), at its small (--quick) shapes unless
``--full`` or ``NAME:full``; every request is one item (batch 1). For each model: a plain
``sess.run`` loop in this process, then one replica (``--replicas``) per mode; on it, for each path and
concurrency ``C``, ``C`` clients each send their next request when the previous answer
arrives, until ``--requests`` are answered. Modes: ``unbatched`` (max_batch_size=1) and
``batched`` are the same deployment with the same ``max_ongoing_requests`` (2 x --max-batch);
``serve-default`` is unbatched with Serve's default ``max_ongoing_requests`` (5). Paths:
``http`` POSTs an .npz body to 127.0.0.1 (keep-alive connections over asyncio streams: a
client that costs little CPU on a machine it shares with the server); ``handle`` calls
``handle.run.remote(feeds)`` from this process.

``--ingress direct`` (default) runs Ray with ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``, Ray Serve's
throughput mode: the replica answers HTTP on a port of its own (direct ingress; the bench
sends there, no proxy hop), handles talk to replicas over gRPC, and user code and routers run
on the process's main event loop. ``--ingress proxy`` keeps Serve's defaults (HTTP through the
proxy actor on ``serve.start``'s port).

Reported: requests/s, p50 and p99 latency, the mean requests per session run (the replicas'
``stats()``) and the CPU time per request of the client (this process), Serve's proxy and the
replicas (from /proc). Every HTTP answer's status, outputs and shapes are checked (the .npz
headers), every handle answer's shapes, and one answer per mode and path is compared with the
plain session's output. ``--quick`` sends 200 requests per point.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import os
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perf import models  # noqa: E402
from perf.bench_system import machine_info  # noqa: E402

ROUTE = "/bench"
# mode -> (max_batch_size, max_ongoing_requests, requests per point)
MODES = {
    "unbatched": lambda args, ongoing: (1, ongoing, args.requests),
    "batched": lambda args, ongoing: (args.max_batch, ongoing, args.requests),
    # Serve's default max_ongoing_requests (5): its router backs off when the replica is
    # full, which is slow enough that this mode gets a quarter of the requests
    "serve-default": lambda args, ongoing: (1, 5, max(args.requests // 4, 50)),
}
PATHS = ("http", "handle")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="bert,mlp:full",
                   help="NAME or NAME:full (the harness's full shapes)")
    p.add_argument("--requests", type=int, default=2000, help="answered requests per point")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--modes", default="unbatched,batched",
                   help=f"serving modes, of {','.join(MODES)}")
    p.add_argument("--paths", default=",".join(PATHS), help=f"of {','.join(PATHS)}")
    p.add_argument("--ingress", choices=("direct", "proxy"), default="direct",
                   help="direct: Ray Serve's throughput mode, HTTP straight to the replica; "
                        "proxy: Serve's defaults, HTTP through its proxy actor")
    p.add_argument("--max-batch", type=int, default=32, help="requests per batched run")
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-ongoing", type=int, default=None,
                   help="max_ongoing_requests of the replica, both modes (default: 2 x "
                        "--max-batch, so both queue in the replica, not in the router)")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs (and threads) of a replica")
    p.add_argument("--replicas", type=int, default=1,
                   help="replicas per mode (direct ingress: the HTTP clients take their "
                        "ports in turn)")
    p.add_argument("--access-log", action="store_true",
                   help="keep Serve's per-request access log (default: off, as a loaded "
                        "server runs; it costs the proxy and the replica CPU per request)")
    p.add_argument("--full", action="store_true", help="the harness's full shapes")
    p.add_argument("--quick", action="store_true", help="200 requests per point")
    p.add_argument("--out", default=None, help="also write the report (markdown) here")
    return p.parse_args(argv)


def percentiles(latencies_s: list[float]) -> tuple[float, float]:
    ms = np.asarray(latencies_s) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def session_loop(path: str, feeds: dict, requests: int, threads: int) -> dict:
    import tritort as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for _ in range(10):
        sess.run(None, feeds)
    lat = []
    t0 = time.perf_counter()
    for _ in range(requests):
        t = time.perf_counter()
        sess.run(None, feeds)
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    p50, p99 = percentiles(lat)
    return {"rps": requests / wall, "p50": p50, "p99": p99}


# -- clients --------------------------------------------------------------------------------------

class LoopThread:
    """One event loop for the whole run, on a thread of its own. Serve's handles bind to the
    loop they are first used on (in throughput mode their router runs on it), so that loop
    must keep running between points."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class HttpClient:
    """POSTs one prepared request again and again on one keep-alive connection."""

    def __init__(self, url: str, body: bytes) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.request = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                        f"Content-Type: application/x-npz\r\nContent-Length: {len(body)}"
                        f"\r\n\r\n").encode() + body
        self.reader = self.writer = None

    async def post(self) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
        return int(head[9:12]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def npz_marks(outputs: dict[str, np.ndarray]) -> list[bytes]:
    """Byte strings every right .npz answer holds: each output's member name and its .npy
    header's shape."""
    return [m for name, v in outputs.items()
            for m in (f"{name}.npy".encode(), f"'shape': {tuple(v.shape)!r}".encode())]


async def closed_loop(call, concurrency: int, requests: int) -> dict:
    """``concurrency`` clients, each awaiting ``call(i)`` (i: the client) again as soon as it
    returns, until ``requests`` are answered; ``call`` returns an error string or None."""
    lat: list[float] = []
    errors: list[str] = []
    remaining = 0

    async def client(i):
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            try:
                error = await call(i)
            except Exception as e:  # noqa: BLE001 - counted, and the client goes on
                error = f"{type(e).__name__}: {e}"
            lat.append(time.perf_counter() - t)
            if error:
                errors.append(error)

    async def phase(n):
        nonlocal remaining
        lat.clear()
        errors.clear()
        remaining = n
        t0 = time.perf_counter()
        await asyncio.gather(*[client(i) for i in range(concurrency)])
        return time.perf_counter() - t0

    await phase(max(4 * concurrency, 20))  # warm-up: connections open, batches in flow
    cpu0 = time.process_time()
    wall = await phase(requests)
    client_cpu = time.process_time() - cpu0
    p50, p99 = percentiles(lat)
    return {"rps": requests / wall, "p50": p50, "p99": p99, "errors": list(errors),
            "client_cpu": client_cpu}


def http_call(urls: list[str], body: bytes, concurrency: int, expect: bytes):
    clients = [HttpClient(urls[i % len(urls)], body) for i in range(concurrency)]
    marks = npz_marks(dict(np.load(io.BytesIO(expect))))

    async def call(i):
        status, payload = await clients[i].post()
        if status != 200:
            return f"{status}: {payload[:200]!r}"
        if len(payload) != len(expect) or not all(m in payload for m in marks):
            return f"an answer unlike the first ({len(payload)} bytes)"
        return None

    return call, clients


def handle_call(handle, feeds: dict, expect: dict[str, tuple]):
    async def call(i):
        out = await handle.run.remote(feeds)
        shapes = {k: v.shape for k, v in out.items()}
        return None if shapes == expect else f"shapes {shapes} != {expect}"

    return call


def post_once(url: str, body: bytes) -> bytes:
    import urllib.request

    request = urllib.request.Request(url, data=body,
                                     headers={"Content-Type": "application/x-npz"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the servers' CPU -----------------------------------------------------------------------------

def process_cpu_s(pids) -> float:
    """User + system CPU seconds of these processes (Linux /proc; 0 where unreadable)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def pids_named(name: bytes) -> list[int]:
    """The processes whose command line holds ``name`` (Ray names its actors' processes)."""
    pids = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            try:
                if name in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def direct_urls(ray, app_name: str, fallback: str, replicas: int) -> list[str]:
    """The replicas' own HTTP addresses under direct ingress (Serve's controller knows them;
    no public API names them yet)."""
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    for _ in range(100):
        groups = ray.get(controller.get_target_groups.remote(app_name))
        ports = [t.port for g in groups if g.protocol.value == "HTTP" for t in g.targets]
        if len(ports) == replicas and f":{ports[0]}/" not in fallback:
            return [f"http://127.0.0.1:{port}{ROUTE}" for port in ports]
        time.sleep(0.1)
    raise RuntimeError(f"no direct-ingress port for {app_name}: {groups}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.requests = min(args.requests, 200)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    paths = args.paths.split(",")
    max_ongoing = args.max_ongoing or 2 * args.max_batch
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.ingress == "direct":  # read when ray.serve is imported, here and in every worker
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    import ray
    from ray import serve

    import tritort as ort
    import tritort.serve as tserve

    command = "python perf/serve_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    info = machine_info(int(args.num_cpus))
    ingress = ("Ray Serve's throughput mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1): HTTP straight "
               "to the replica's own port, handles over gRPC" if args.ingress == "direct" else
               "Serve's defaults: HTTP through the proxy actor")
    lines = [f"# tritort.serve benchmark, {datetime.date.today()}", "",
             f"Command: `{command}`", "",
             f"Machine: {info.get('cpu')}, {info.get('cores')} cores, "
             f"{info.get('ram_gib')} GiB, {info.get('os')}, Python {info.get('python')}; "
             f"ray {ray.__version__}; no GPU (CPU provider)", "",
             f"{args.replicas} replica(s) with num_cpus={args.num_cpus:g} (intra-op and BLAS "
             f"threads "
             f"{tserve.replica_threads({'num_cpus': args.num_cpus})}); batched: "
             f"max_batch_size={args.max_batch}, batch_wait_timeout_s={args.batch_wait_ms / 1e3:g}; "
             f"max_ongoing_requests={max_ongoing} in both modes; {ingress}; Serve's access log "
             f"{'on' if args.access_log else 'off'}; {args.requests} requests per point, each "
             f"one item: over http an .npz body to 127.0.0.1 on keep-alive connections, over "
             f"the handle `handle.run.remote(feeds)`, both from this process. The plain loop "
             f"is `sess.run` in one thread of this process, same threads.", "",
             "CPU ms/request: CPU time per answered request of the client (this process), "
             "Serve's proxy actor and the replica. load: the machine's 1-minute load average "
             "when the point ended (other work on the 2 cores shows there).", "",
             "| model | path | mode | concurrency | requests | req/s | p50 ms | p99 ms "
             "| requests/run | CPU ms/request client / proxy / replica | errors | load |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def emit(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    for line in lines:
        print(line, flush=True)
    ray.init(address="local", num_cpus=max(2, int(args.replicas * args.num_cpus) + 1),
             include_dashboard=False,
             log_to_driver=False)
    port = free_port()
    logging_config = None if args.access_log else {"enable_access_log": False}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=logging_config)
    proxy_url = f"http://127.0.0.1:{port}{ROUTE}"
    loop = LoopThread()
    speedups = []

    async def stats():
        """Every replica's stats summed (a handle call reaches one replica at random)."""
        handle, seen = serve.get_app_handle("bench"), {}
        for _ in range(50 * args.replicas):
            one = await handle.stats.remote()
            seen[one["pid"]] = one
            if len(seen) == args.replicas:
                break
        return {"pids": sorted(seen), "requests": sum(s["requests"] for s in seen.values()),
                "runs": sum(s["runs"] for s in seen.values())}

    try:
        for spec in args.models.split(","):
            name, _, size = spec.partition(":")
            full = size == "full" or (args.full and size != "quick")
            built = models.get_model(name, quick=not full)
            feeds = models.make_feeds(name, dict(built.config, batch=1))
            buf = io.BytesIO()
            np.savez(buf, **feeds)
            body = buf.getvalue()
            label = f"{name} ({'full' if full else 'quick'}: " + ", ".join(
                f"{k} {v.dtype}{list(v.shape)}" for k, v in feeds.items()) + ")"
            threads = tserve.replica_threads({"num_cpus": args.num_cpus})
            plain = session_loop(str(built.path), feeds, args.requests, threads)
            emit(f"| {label} | - | plain session loop | 1 | {args.requests} | "
                 f"{plain['rps']:.0f} | {plain['p50']:.2f} | {plain['p99']:.2f} | 1 | - | 0 | "
                 f"{os.getloadavg()[0]:.1f} |")
            reference = ort.InferenceSession(str(built.path)).run(None, feeds)
            rps = {}
            for mode in args.modes.split(","):
                max_batch, ongoing, requests = MODES[mode](args, max_ongoing)
                serve.run(tserve.app(
                    str(built.path), max_batch_size=max_batch,
                    batch_wait_timeout_s=args.batch_wait_ms / 1e3,
                    ray_actor_options={"num_cpus": args.num_cpus}, num_replicas=args.replicas,
                    max_ongoing_requests=ongoing, name="bench",
                    **({"logging_config": logging_config} if logging_config else {})),
                    name="bench", route_prefix=ROUTE)
                urls = direct_urls(ray, "bench", proxy_url, args.replicas) \
                    if args.ingress == "direct" else [proxy_url]
                first = post_once(urls[0], body)
                out = dict(np.load(io.BytesIO(first)))
                for got, want in zip(out.values(), reference):
                    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
                handle = loop.run(_get_handle(serve))
                out = loop.run(_call(handle, feeds))
                for got, want in zip(out.values(), reference):
                    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
                expect = {k: v.shape for k, v in out.items()}
                replica_pids = pids_named(b"ServeReplica:bench")
                if len(replica_pids) != args.replicas:
                    print(f"  replica processes {replica_pids}, not {args.replicas}", flush=True)
                for path in paths:
                    for c in concurrencies:
                        clients = []
                        if path == "http":
                            call, clients = http_call(urls, body, c, first)
                        else:
                            call = handle_call(handle, feeds, expect)
                        servers = pids_named(b"ProxyActor")
                        before = loop.run(stats())
                        cpu0 = [process_cpu_s(servers), process_cpu_s(replica_pids)]
                        r = loop.run(closed_loop(call, c, requests))
                        cpu1 = [process_cpu_s(servers), process_cpu_s(replica_pids)]
                        after = loop.run(stats())
                        for client in clients:
                            client.close()
                        runs = after["runs"] - before["runs"]
                        per_run = (f"{(after['requests'] - before['requests']) / max(runs, 1):.1f}"
                                   if before["pids"] == after["pids"] == sorted(replica_pids)
                                   else "?")
                        rps[path, mode, c] = r["rps"]
                        cpu = " / ".join(f"{s * 1e3 / requests:.2f}" for s in (
                            r["client_cpu"], cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]))
                        emit(f"| {label} | {path} | {mode} | {c} | {requests} | {r['rps']:.0f} "
                             f"| {r['p50']:.2f} | {r['p99']:.2f} | {per_run} | {cpu} | "
                             f"{len(r['errors'])} | {os.getloadavg()[0]:.1f} |")
                        if r["errors"]:
                            print("  first errors:", r["errors"][:3], flush=True)
                serve.delete("bench")
            c = max(concurrencies)
            for path in paths:
                for base in ("unbatched", "serve-default"):
                    if ("batched" in args.modes.split(",") and (path, base, c) in rps):
                        speedups.append(f"{name}, {path}: batched / {base} at concurrency {c}: "
                                        f"{rps[path, 'batched', c] / rps[path, base, c]:.2f}x")
    finally:
        loop.close()
        serve.shutdown()
        ray.shutdown()
    emit("")
    for s in speedups:
        emit(f"- {s}")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


async def _get_handle(serve):
    return serve.get_app_handle("bench")


async def _call(handle, feeds):
    return await handle.run.remote(feeds)


if __name__ == "__main__":
    raise SystemExit(main())
