"""Serving benchmark: closed-loop HTTP load on tritort.serve, batched and unbatched, next to
a plain single-session loop, in one run on one local Ray instance.

    python perf/serve_bench.py [--models mlp:full,bert] [--requests 2000] [--concurrency 1,8,32]
                               [--modes serve-default,unbatched,batched] [--max-batch 32]
                               [--batch-wait-ms 5] [--num-cpus 1] [--full] [--quick]
                               [--out FILE.md]

Models are the benchmark harness's (perf/models.py), at its small (--quick) shapes unless
``--full`` or ``NAME:full``; every request is one item (batch 1) sent as an .npz body to
127.0.0.1. For each model: a plain ``sess.run`` loop in this process, then one replica per
mode, each at every concurrency: ``C`` clients each send their next request when the previous
answer arrives, until ``--requests`` are answered. Modes: ``unbatched`` and ``batched`` share
``max_ongoing_requests`` (2 x --max-batch); ``serve-default`` is unbatched with Serve's default
``max_ongoing_requests`` (5).
Reported: requests/s, p50 and p99 latency, and for serving the mean requests per session run
(the replica's ``stats()``). Every answer's shape is checked, and one per mode is compared with
the plain session's output. ``--quick`` sends 200 requests per point.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import os
import socket
import sys
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
    # Serve's default max_ongoing_requests (5): its router backs off when the replica is
    # full, which is slow enough that this mode gets a quarter of the requests
    "serve-default": lambda args, ongoing: (1, 5, max(args.requests // 4, 50)),
    "unbatched": lambda args, ongoing: (1, ongoing, args.requests),
    "batched": lambda args, ongoing: (args.max_batch, ongoing, args.requests),
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mlp:full,bert",
                   help="NAME or NAME:full (the harness's full shapes)")
    p.add_argument("--requests", type=int, default=2000, help="answered requests per point")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--modes", default="serve-default,unbatched,batched",
                   help=f"serving modes, of {','.join(MODES)}")
    p.add_argument("--max-batch", type=int, default=32, help="requests per batched run")
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-ongoing", type=int, default=None,
                   help="max_ongoing_requests of the replica, both modes (default: 2 x "
                        "--max-batch, so both queue in the replica, not in the proxy)")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs (and threads) of the replica")
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


async def closed_loop(url: str, body: bytes, concurrency: int, requests: int,
                      expect: dict[str, tuple]) -> dict:
    import aiohttp

    lat: list[float] = []
    errors: list[str] = []
    remaining = max(4 * concurrency, 20)  # warm-up: connections open, batches in flow
    headers = {"Content-Type": "application/x-npz"}

    async def client(session):
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                payload = await response.read()
            lat.append(time.perf_counter() - t)
            if response.status != 200:
                errors.append(f"{response.status}: {payload[:200]!r}")
                continue
            out = np.load(io.BytesIO(payload))
            shapes = {k: out[k].shape for k in out.files}
            if shapes != expect:
                errors.append(f"shapes {shapes} != {expect}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*[client(session) for _ in range(concurrency)])
        lat.clear()
        errors.clear()
        remaining = requests
        t0 = time.perf_counter()
        await asyncio.gather(*[client(session) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    p50, p99 = percentiles(lat)
    return {"rps": requests / wall, "p50": p50, "p99": p99, "errors": errors}


def post_once(url: str, body: bytes) -> dict[str, np.ndarray]:
    import urllib.request

    request = urllib.request.Request(url, data=body,
                                     headers={"Content-Type": "application/x-npz"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(np.load(io.BytesIO(response.read())))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.requests = min(args.requests, 200)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    max_ongoing = args.max_ongoing or 2 * args.max_batch
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    import tritort as ort
    import tritort.serve as tserve

    command = "python perf/serve_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    info = machine_info(int(args.num_cpus))
    lines = [f"# tritort.serve benchmark, {datetime.date.today()}", "",
             f"Command: `{command}`", "",
             f"Machine: {info.get('cpu')}, {info.get('cores')} cores, "
             f"{info.get('ram_gib')} GiB, {info.get('os')}, Python {info.get('python')}; "
             f"ray {ray.__version__}; no GPU (CPU provider)", "",
             f"One replica with num_cpus={args.num_cpus:g} (intra-op and BLAS threads "
             f"{tserve.replica_threads({'num_cpus': args.num_cpus})}); batched: "
             f"max_batch_size={args.max_batch}, batch_wait_timeout_s={args.batch_wait_ms / 1e3:g}; "
             f"max_ongoing_requests={max_ongoing} in both modes; Serve's access log "
             f"{'on' if args.access_log else 'off'}; "
             f"{args.requests} requests per point, each one item as an .npz body over HTTP "
             f"to 127.0.0.1 (aiohttp clients in the driver process, keep-alive). The plain "
             f"loop is `sess.run` in one thread of the driver, same threads.", "",
             "load: the machine's 1-minute load average when the point ended (other work on "
             "the 2 cores shows there).", "",
             "| model | mode | concurrency | requests | req/s | p50 ms | p99 ms | requests/run "
             "| errors | load |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def emit(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    for line in lines:
        print(line, flush=True)
    ray.init(address="local", num_cpus=max(2, int(args.num_cpus) + 1), include_dashboard=False,
             log_to_driver=False)
    port = free_port()
    logging_config = None if args.access_log else {"enable_access_log": False}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=logging_config)
    url = f"http://127.0.0.1:{port}{ROUTE}"
    speedups = []
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
            emit(f"| {label} | plain session loop | 1 | {args.requests} | {plain['rps']:.0f} | "
                 f"{plain['p50']:.2f} | {plain['p99']:.2f} | 1 | 0 | {os.getloadavg()[0]:.1f} |")
            reference = ort.InferenceSession(str(built.path)).run(None, feeds)
            rps = {}
            for mode in args.modes.split(","):
                max_batch, ongoing, requests = MODES[mode](args, max_ongoing)
                handle = serve.run(tserve.app(
                    str(built.path), max_batch_size=max_batch,
                    batch_wait_timeout_s=args.batch_wait_ms / 1e3,
                    ray_actor_options={"num_cpus": args.num_cpus},
                    max_ongoing_requests=ongoing, name="bench",
                    **({"logging_config": logging_config} if logging_config else {})),
                    name="bench", route_prefix=ROUTE)
                out = post_once(url, body)
                for got, want in zip(out.values(), reference):
                    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
                expect = {k: v.shape for k, v in out.items()}
                for c in concurrencies:
                    before = handle.stats.remote().result()
                    r = asyncio.run(closed_loop(url, body, c, requests, expect))
                    after = handle.stats.remote().result()
                    runs = after["runs"] - before["runs"]
                    per_run = (after["requests"] - before["requests"]) / max(runs, 1)
                    rps[mode, c] = r["rps"]
                    emit(f"| {label} | {mode} | {c} | {requests} | {r['rps']:.0f} | "
                         f"{r['p50']:.2f} | {r['p99']:.2f} | {per_run:.1f} | {len(r['errors'])} | "
                         f"{os.getloadavg()[0]:.1f} |")
                    if r["errors"]:
                        print("  first errors:", r["errors"][:3], flush=True)
                serve.delete("bench")
            c = max(concurrencies)
            for base in ("unbatched", "serve-default"):
                if ("batched", c) in rps and (base, c) in rps:
                    speedups.append(f"{name}: batched / {base} at concurrency {c}: "
                                    f"{rps['batched', c] / rps[base, c]:.2f}x")
    finally:
        serve.shutdown()
        ray.shutdown()
    emit("")
    for s in speedups:
        emit(f"- {s}")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
