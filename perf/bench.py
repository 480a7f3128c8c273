"""End-to-end model benchmark: tritort against its peers, side by side in one process.

    python perf/bench.py [--models bert,gpt2,vit,resnet50,densenet121,inception_v2,mlp,cnn]
                         [--repeat N] [--warmup N] [--threads N] [--quick] [--gpu-smoke]
                         [--out DIR]
    python perf/bench.py --list                  # the models and what they are
    python perf/bench.py --quick --models mlp,cnn --repeat 2 --out /tmp/b   # a fast run

Every model runs in its own worker process (``--no-isolate`` keeps it in this one), where the
runtimes are created, checked and timed side by side:

- CPU half: tritort (providers=['CPUExecutionProvider']) against onnxruntime's CPU provider,
  with the same thread count for both (onnxruntime's intra_op_num_threads; NumPy's BLAS pool,
  which is where tritort's CPU provider spends its threads).
- GPU half (when torch sees CUDA): tritort with ['TritonExecutionProvider',
  'CPUExecutionProvider'], torch eager, torch.compile (default and mode='max-autotune') and
  onnxruntime-gpu when installed; onnxruntime's CPU provider is the reference for the output
  check. ``--gpu-smoke`` runs this half on the CPU (Triton's interpreter, TRITON_INTERPRET=1,
  torch eager on the CPU) on a tiny model, so the harness is known to work without a GPU.

Per model and runtime: session creation (cold: the first in the process; warm: the second),
the first run, peak memory, an output check against the reference (before any timing), then
warm-up and alternating timed rounds. Results go to ``<out>/<date>-<host>[-suffix].md``,
``.csv``, ``.json`` (raw samples) and ``.png`` (a bar chart of the latency ratios). A runtime
that fails on a model (an op error, a mismatch, too slow) is recorded and the run goes on.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perf import models  # noqa: E402
from perf.bench_report import one_line, render_markdown, write_reports  # noqa: E402
from perf.bench_runners import bench_model, run_isolated, worker_main  # noqa: E402
from perf.bench_system import (DEFAULT_OUT, _cuda_available, describe_error,  # noqa: E402
                               machine_info, wait_until_idle)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="perf/bench.py",
                                description="tritort end-to-end benchmark against its peers")
    p.add_argument("--models", default=None,
                   help="comma-separated: " + ",".join(models.ALL_MODELS) + " (default: all; "
                   "with --gpu-smoke: mlp)")
    p.add_argument("--repeat", type=int, default=10, help="timed rounds per model (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up runs per runtime (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="intra-op threads for every runtime (default: all cores)")
    p.add_argument("--quick", action="store_true", help="small shapes for a fast run")
    p.add_argument("--gpu-smoke", action="store_true",
                   help="run the GPU half on the CPU (Triton interpreter, tiny model)")
    p.add_argument("--half", choices=["auto", "cpu", "gpu", "both"], default="auto",
                   help="auto: both halves with CUDA, the CPU half without")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results folder (perf/results)")
    p.add_argument("--cache", default=None, help="built-model cache (perf/.models)")
    p.add_argument("--batch", type=int, default=None, help="batch for the dynamic-batch models")
    p.add_argument("--seq", type=int, default=None, help="sequence length for bert and gpt2")
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="timing budget per model; fewer rounds (at least 3) when over")
    p.add_argument("--min-sample-ms", type=float, default=20.0,
                   help="runs shorter than this are averaged in groups per sample")
    p.add_argument("--settle-ms", type=float, default=150.0,
                   help="idle time before each timed sample, so the previous runtime's "
                        "spinning worker threads (onnxruntime's, OpenBLAS's) have stopped")
    p.add_argument("--slow-limit", type=float, default=600.0,
                   help="seconds one creation or run may take before it counts as too slow")
    p.add_argument("--timeout", type=float, default=3600.0, help="wall limit per model worker")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance of the check")
    p.add_argument("--atol", type=float, default=None,
                   help="absolute tolerance of the check, as a fraction of max |reference|")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="before each model, wait up to this many seconds for the other "
                   "processes to leave the CPUs (<10%% busy)")
    p.add_argument("--retry-disturbed", type=int, default=0,
                   help="rerun a model up to N times while other processes used >= 10%% of "
                   "the CPUs during its timing; the least disturbed run is kept")
    p.add_argument("--no-tracemalloc", action="store_true", help="skip the tracemalloc run")
    p.add_argument("--no-isolate", action="store_true",
                   help="run every model in this process (no worker processes)")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    p.add_argument("--tag", default="", help="suffix for the result file names")
    p.add_argument("--list", action="store_true", help="list the models and exit")
    p.add_argument("--report-only", metavar="JSON", default=None,
                   help="rewrite the .md/.csv/.png next to a results .json (no benchmarking)")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(*args.worker)
    if args.report_only:
        src = Path(args.report_only)
        data = json.loads(src.read_text())
        paths = write_reports(src.parent, src.stem, data["run"], data["results"],
                              chart=not args.no_chart)
        print(render_markdown(data["run"], data["results"], brief=True))
        print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
        return 0
    if args.list:
        for name in models.ALL_MODELS:
            print(f"{name:13s} {models.DESCRIPTIONS[name]}")
        return 0
    names = (args.models.split(",") if args.models
             else ["mlp"] if args.gpu_smoke else list(models.ALL_MODELS))
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in models.DESCRIPTIONS]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(models.ALL_MODELS)}",
              file=sys.stderr)
        return 2
    if args.gpu_smoke:
        halves, args.quick = ["gpu-smoke"], True
        if args.no_isolate:
            os.environ.setdefault("TRITON_INTERPRET", "1")
    else:
        cuda = _cuda_available()
        if args.half in ("gpu", "both") and not cuda:
            print("no CUDA device: the GPU half needs one (use --gpu-smoke to check it on the "
                  "CPU)", file=sys.stderr)
            return 2
        halves = {"auto": ["cpu", "gpu"] if cuda else ["cpu"], "cpu": ["cpu"], "gpu": ["gpu"],
                  "both": ["cpu", "gpu"]}[args.half]
    started = datetime.datetime.now()
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", platform.node() or "host")
    tag = args.tag or ("gpu-smoke" if args.gpu_smoke else "quick" if args.quick else "")
    stem = f"{started:%Y-%m-%d}-{host}" + (f"-{tag}" if tag else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_info = {"started": started.isoformat(timespec="seconds"), "host": host,
                "command": "python perf/bench.py " + " ".join(argv if argv is not None
                                                              else sys.argv[1:]),
                "threads": args.threads, "warmup": args.warmup, "repeat": args.repeat,
                "quick": args.quick, "halves": halves, "max_seconds": args.max_seconds,
                "min_sample_ms": args.min_sample_ms, "settle_ms": args.settle_ms,
                "machine": machine_info(args.threads)}

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results: list[dict[str, Any]] = []
    for name in names:
        log(f"[{datetime.datetime.now():%H:%M:%S}] {name}: build/load")
        try:
            built = models.get_model(name, quick=args.quick, batch=args.batch, seq=args.seq,
                                     cache=args.cache, log=lambda m: log("  " + m))
            log(f"  {'cached' if built.cached else 'built'} in {built.build_s:.1f} s: "
                f"{built.path.name}, {built.input_desc}")
        except Exception as e:  # noqa: BLE001
            for half in halves:
                results.append({"model": name, "half": half, "status": "failed",
                                "error": f"model build: {describe_error(e)}", "runners": {},
                                "notes": []})
            log(f"  build failed: {describe_error(e)}")
            continue
        for half in halves:
            rtol = args.rtol if args.rtol is not None else (1e-3 if half == "cpu" else 1e-2)
            atol = args.atol if args.atol is not None else (1e-4 if half == "cpu" else 1e-3)
            spec = {"model": name, "half": half, "quick": args.quick, "batch": args.batch,
                    "seq": args.seq, "cache": args.cache, "threads": args.threads,
                    "warmup": args.warmup, "repeat": args.repeat,
                    "max_seconds": args.max_seconds, "min_sample_ms": args.min_sample_ms,
                    "settle_ms": args.settle_ms, "slow_limit": args.slow_limit, "rtol": rtol, "atol": atol,
                    "trace_memory": not args.no_tracemalloc}
            log(f"[{datetime.datetime.now():%H:%M:%S}] {name}: {half} half")
            res = None
            for attempt in range(1 + max(0, args.retry_disturbed)):
                if args.wait_idle > 0:
                    wait_until_idle(args.wait_idle, log)
                if args.no_isolate:
                    try:
                        new = bench_model(spec)
                    except Exception as e:  # noqa: BLE001
                        new = {"model": name, "half": half, "status": "failed", "runners": {},
                               "notes": [], "error": f"harness: {describe_error(e)}"}
                else:
                    new = run_isolated(spec, args.timeout, log)
                share = new.get("others_cpu_share")
                if res is None or (share is not None and share < res.get("others_cpu_share", 1)):
                    res = new
                if share is None or share < 0.10:
                    break
                log(f"  disturbed (others used {share:.0%} of the CPUs); attempt "
                    f"{attempt + 2} of {1 + args.retry_disturbed}"
                    if attempt < args.retry_disturbed else f"  disturbed ({share:.0%}); kept")
            res["tolerance"] = {"rtol": rtol, "atol": atol}
            results.append(res)
            log("  " + one_line(res))
            write_reports(out, stem, run_info, results, chart=False)
    paths = write_reports(out, stem, run_info, results, chart=not args.no_chart)
    print(render_markdown(run_info, results, brief=True))
    log("wrote " + ", ".join(str(p) for p in paths))
    return 0




if __name__ == "__main__":
    raise SystemExit(main())
