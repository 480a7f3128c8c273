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
import csv
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perf import models  # noqa: E402

DEFAULT_OUT = ROOT / "perf" / "results"
SUBJECT = "tritort"
REFERENCE = "onnxruntime"
HALF_TITLES = {
    "cpu": "CPU: tritort (CPUExecutionProvider) vs onnxruntime (CPUExecutionProvider)",
    "gpu": "GPU: tritort (TritonExecutionProvider + CPU) vs torch and onnxruntime-gpu",
    "gpu-smoke": "GPU half on the CPU (--gpu-smoke): tritort with the Triton provider in "
                 "Triton's interpreter vs torch eager; timings mean nothing",
}
ITEM_UNITS = {"sequence": "seq/s", "image": "img/s", "row": "rows/s"}


# ------------------------------------------------------------------------------------------------
# measuring helpers (Linux /proc; None elsewhere)
# ------------------------------------------------------------------------------------------------
def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    return _status_mb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    return _status_mb("VmHWM")


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS deltas start clean."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall s, CPU-busy s of the whole machine, CPU s of this process) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:8]]
        busy = (vals[0] + vals[1] + vals[2] + vals[5] + vals[6]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system


def others_share(a, b) -> float | None:
    """Share of all CPUs that other processes used between two snapshots (0..1)."""
    if a is None or b is None or b[0] <= a[0]:
        return None
    others = (b[1] - a[1]) - (b[2] - a[2])
    return max(0.0, others / ((b[0] - a[0]) * (os.cpu_count() or 1)))


def wait_until_idle(max_wait: float, log, threshold: float = 0.10, window: float = 5.0) -> float:
    """Wait (up to max_wait s) for a window where other processes use < threshold of the CPUs."""
    t_end = time.perf_counter() + max_wait
    share = None
    while True:
        a = cpu_snapshot()
        time.sleep(window)
        share = others_share(a, cpu_snapshot())
        if share is None or share < threshold or time.perf_counter() >= t_end:
            return share or 0.0
        if log:
            log(f"  machine busy (other processes use {share:.0%} of the CPUs); waiting")


class TooSlow(BaseException):
    """Raised by the alarm; a BaseException so no runtime wraps it as a node failure."""


class _Deadline:
    def __init__(self, seconds: float | None, what: str):
        self.seconds, self.what = seconds, what
        self.armed = False

    def __enter__(self):
        if self.seconds and hasattr(signal, "setitimer") and _main_thread():
            def fire(signum, frame):
                raise TooSlow(f"too slow: {self.what} took more than {self.seconds:g} s")
            self.old = signal.signal(signal.SIGALRM, fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self.armed = True
        return self

    def __exit__(self, *exc):
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        return False


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def describe_error(exc: BaseException) -> str:
    """The error with its chain (runtimes wrap kernel errors naming the node and op)."""
    parts, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {str(e).strip()}")
        e = e.__cause__ or e.__context__
    text = " <- caused by ".join(parts)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if any(p in f.filename for p in ("tritort", "fallback_cpu", "codegen"))]
    if frames:
        f = frames[-1]
        text += f" [at {Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} in {f.name}]"
    return text


def stats(samples_ms: list[float]) -> dict[str, float]:
    s = sorted(samples_ms)

    def pct(q: float) -> float:
        if len(s) == 1:
            return s[0]
        k = (len(s) - 1) * q
        lo, hi = math.floor(k), math.ceil(k)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {"median_ms": statistics.median(s), "p10_ms": pct(0.10), "p90_ms": pct(0.90),
            "min_ms": s[0], "max_ms": s[-1], "mean_ms": statistics.fmean(s)}


def compare(ours: list, ref: list, rtol: float, atol: float) -> dict[str, Any]:
    """Every output within atol * max|ref| + rtol * |ref| (exact for non-float outputs)."""
    import numpy as np

    if len(ours) != len(ref):
        return {"ok": False, "detail": f"{len(ours)} outputs, reference has {len(ref)}",
                "max_abs_err": None}
    worst, worst_rel, problems = 0.0, 0.0, []
    for i, (a, b) in enumerate(zip(ours, ref)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            problems.append(f"output {i}: shape {list(a.shape)} vs {list(b.shape)}")
            continue
        if b.dtype.kind in "fc":
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            finite = np.isfinite(b64)
            if not np.array_equal(np.isnan(a64), np.isnan(b64)):
                problems.append(f"output {i}: NaNs differ")
                continue
            diff = np.abs(np.where(finite, a64 - b64, 0.0))
            scale = float(np.max(np.abs(b64[finite]))) if finite.any() else 0.0
            scale = scale if scale > 0 else 1.0
            err = float(diff.max()) if diff.size else 0.0
            worst, worst_rel = max(worst, err), max(worst_rel, err / scale)
            bad = diff > atol * scale + rtol * np.abs(np.where(finite, b64, 0.0))
            if bad.any() or not np.array_equal(a64[~finite], b64[~finite]):
                idx = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
                problems.append(f"output {i}: {int(bad.sum())}/{bad.size} elements off, max "
                                f"abs err {err:.3g} at {list(map(int, idx))} (max |ref| {scale:.3g})")
        elif not np.array_equal(a, b):
            problems.append(f"output {i}: {int((a != b).sum())} elements differ")
    return {"ok": not problems, "detail": "; ".join(problems), "max_abs_err": worst,
            "max_rel_err": worst_rel}


# ------------------------------------------------------------------------------------------------
# runners: how each runtime creates its session and runs one inference (numpy in, numpy out)
# ------------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, key: str, label: str, create: Callable[[], Any],
                 run: Callable[[Any], list], timed: bool = True, note: str = "",
                 placement: Callable[[Any], dict] | None = None):
        self.key, self.label, self.create, self.run = key, label, create, run
        self.timed, self.note, self.placement = timed, note, placement


def _tritort_runner(built, threads: int, providers: list[str], label: str, note: str) -> Runner:
    import tritort

    def create():
        so = tritort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        return tritort.InferenceSession(str(built.path), so, providers=providers)

    feeds = built.feeds
    return Runner("tritort", label, create, lambda s: s.run(None, feeds), note=note,
                  placement=_placement_counts)


def _placement_counts(sess) -> dict[str, int]:
    """Nodes per provider (from placement_report), and the providers the session kept."""
    counts: dict[str, int] = {}
    for line in sess.placement_report().splitlines():
        if "->" in line:
            ep = line.split("->", 1)[1].split()[0]
            counts[ep] = counts.get(ep, 0) + 1
    return counts


def _ort_runner(built, threads: int, key: str, label: str, providers: list, timed: bool = True
                ) -> Runner:
    import onnxruntime

    def create():
        so = onnxruntime.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        return onnxruntime.InferenceSession(str(built.path), so, providers=providers)

    feeds = built.feeds
    return Runner(key, label, create, lambda s: s.run(None, feeds), timed=timed)


def _torch_runner(built, device: str, key: str, label: str, compile_mode: str | None = None,
                  compiled: bool = False) -> Runner:
    import torch

    host_inputs = built.torch_inputs("cpu")

    def create():
        module = built.torch_module().to(device)
        if compiled:
            module = torch.compile(module, mode=compile_mode)
        return module

    def run(module):
        with torch.inference_mode():
            out = module(*(t.to(device) for t in host_inputs))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().cpu().numpy() for o in outs]

    note = "input host->device and output device->host included, like the ONNX runtimes"
    return Runner(key, label, create, run, note=note if device != "cpu" else "")


def make_runners(built, half: str, threads: int) -> tuple[list[Runner], list[str]]:
    """The runners of one half, the subject (tritort) first; notes on what was left out."""
    notes: list[str] = []
    if half == "cpu":
        return [_tritort_runner(built, threads, ["CPUExecutionProvider"], "tritort", ""),
                _ort_runner(built, threads, "onnxruntime", "onnxruntime",
                            ["CPUExecutionProvider"])], notes
    import onnxruntime
    import torch

    smoke = half == "gpu-smoke"
    device = "cpu" if smoke else "cuda"
    runners = [_tritort_runner(built, threads,
                               ["TritonExecutionProvider", "CPUExecutionProvider"], "tritort",
                               "Triton interpreter" if smoke else "")]
    if built.has_torch:
        runners.append(_torch_runner(built, device, "torch_eager", "torch eager"))
        if not smoke:
            runners.append(_torch_runner(built, device, "torch_compile", "torch.compile",
                                         compiled=True))
            runners.append(_torch_runner(built, device, "torch_compile_max",
                                         "torch.compile max-autotune", "max-autotune", True))
        else:
            notes.append("torch.compile is left out of --gpu-smoke (CPU inductor builds C++)")
    else:
        notes.append(f"{built.name} is an ONNX-only model: no torch peers")
    if not smoke:
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            runners.append(_ort_runner(built, threads, "onnxruntime_gpu", "onnxruntime-gpu",
                                       [("CUDAExecutionProvider", {"use_tf32": "0"}),
                                        "CPUExecutionProvider"]))
        else:
            notes.append("onnxruntime-gpu is not installed (no CUDAExecutionProvider)")
    runners.append(_ort_runner(built, threads, "onnxruntime", "onnxruntime CPU (reference)",
                               ["CPUExecutionProvider"], timed=False))
    del torch
    return runners, notes


# ------------------------------------------------------------------------------------------------
# the worker: one model, one half, all its runners, in this process
# ------------------------------------------------------------------------------------------------
def bench_model(spec: dict[str, Any], progress: Callable[[dict], None] = lambda r: None
                ) -> dict[str, Any]:
    """Create, check and time every runner of one half on one model; never raises for a
    runner's failure (it is recorded in the result)."""
    with _thread_limit(spec["threads"]):
        if spec["half"] == "cpu":
            return _bench_model(spec, progress)
        import torch

        before = torch.get_num_threads()
        try:
            torch.set_num_threads(spec["threads"])
            return _bench_model(spec, progress)
        finally:
            torch.set_num_threads(before)


def _bench_model(spec: dict[str, Any], progress: Callable[[dict], None]) -> dict[str, Any]:
    half, name = spec["half"], spec["model"]
    result: dict[str, Any] = {"model": name, "half": half, "status": "running", "phase": "load",
                              "runners": {}, "notes": [], "error": ""}

    def phase(p: str) -> None:
        result["phase"] = p
        progress(result)

    if half == "gpu":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        result["notes"].append("TF32 off for torch and onnxruntime-gpu (float32 compared as "
                               "float32)")
    try:
        built = models.get_model(name, quick=spec["quick"], batch=spec.get("batch"),
                                 seq=spec.get("seq"), cache=spec.get("cache"))
    except Exception as e:  # noqa: BLE001
        result.update(status="failed", error=f"model build: {describe_error(e)}")
        return result
    result.update(input=built.input_desc, batch=built.batch, items=built.items,
                  description=built.description, path=str(built.path), config=built.config)
    result["notes"] += built.notes
    try:
        runners, notes = make_runners(built, half, spec["threads"])
    except Exception as e:  # noqa: BLE001
        result.update(status="failed", error=f"runner setup: {describe_error(e)}")
        return result
    result["notes"] += notes
    recs = result["runners"]
    for r in runners:
        recs[r.key] = {"label": r.label, "status": "ok", "error": "", "timed": r.timed,
                       "note": r.note}
    handles: dict[str, Any] = {}
    outputs: dict[str, list] = {}
    slow = spec.get("slow_limit") or None

    # 1. cold creation, first run and peak memory, one runtime at a time
    for r in runners:
        rec = recs[r.key]
        phase(f"create {r.key}")
        release_memory()
        base = rss_mb()
        reset_peak_rss()
        cuda = _cuda_reset(half)
        try:
            with _Deadline(slow, f"{r.label} session creation"):
                t0 = time.perf_counter()
                handles[r.key] = r.create()
                rec["create_cold_s"] = time.perf_counter() - t0
            rec["session_rss_mb"] = _delta(rss_mb(), base)
            phase(f"first run {r.key}")
            with _Deadline(slow, f"{r.label} first run"):
                t0 = time.perf_counter()
                outputs[r.key] = [_host(o) for o in r.run(handles[r.key])]
                rec["first_run_s"] = time.perf_counter() - t0
            rec["peak_rss_mb"] = _delta(peak_rss_mb(), base)
            if cuda:
                rec["cuda_peak_mb"] = _cuda_peak()
            if r.placement is not None:
                rec["placement"] = r.placement(handles[r.key])
                rec["providers"] = list(handles[r.key].get_providers())
                if half != "cpu" and "TritonExecutionProvider" not in rec["providers"]:
                    result["notes"].append(f"{r.label}: the Triton provider was not usable; "
                                           f"the session runs on {rec['providers']}")
        except (Exception, TooSlow) as e:  # noqa: BLE001
            rec.update(status="failed", error=describe_error(e), failed_phase=result["phase"])
            handles.pop(r.key, None)

    # 2. warm creation: a second session in the same process
    for r in runners:
        if r.key not in handles:
            continue
        phase(f"warm create {r.key}")
        try:
            with _Deadline(slow, f"{r.label} second session creation"):
                t0 = time.perf_counter()
                again = r.create()
                recs[r.key]["create_warm_s"] = time.perf_counter() - t0
            del again
        except (Exception, TooSlow) as e:  # noqa: BLE001
            recs[r.key]["warm_error"] = describe_error(e)
        release_memory()

    # 3. outputs checked against the reference before any timing
    phase("check")
    ref = outputs.get(REFERENCE)
    for r in runners:
        rec = recs[r.key]
        if r.key == REFERENCE:
            rec["check"] = "reference"
        elif ref is None:
            rec["check"] = "n/a: reference failed"
        elif r.key in outputs:
            c = compare(outputs[r.key], ref, spec["rtol"], spec["atol"])
            rec.update(check="ok" if c["ok"] else "MISMATCH", check_detail=c["detail"],
                       max_abs_err=c["max_abs_err"], max_rel_err=c.get("max_rel_err"))
    outputs.clear()

    # 4. warm-up, then alternating timed rounds
    timed = [r for r in runners if r.timed and r.key in handles]
    est: dict[str, float] = {r.key: recs[r.key]["first_run_s"] for r in timed}
    warmup = spec["warmup"]
    if any(v > 5.0 for v in est.values()):
        warmup = min(warmup, 1)
    for i in range(warmup):
        for r in (timed if i % 2 == 0 else timed[::-1]):
            if r.key not in handles:
                continue
            phase(f"warm-up {r.key}")
            try:
                with _Deadline(slow, f"{r.label} warm-up run"):
                    t0 = time.perf_counter()
                    r.run(handles[r.key])
                    dt = time.perf_counter() - t0
                est[r.key] = dt if i == 0 else min(est[r.key], dt)
            except (Exception, TooSlow) as e:  # noqa: BLE001
                recs[r.key].update(status="failed", error=describe_error(e),
                                   failed_phase=result["phase"])
                handles.pop(r.key)
    timed = [r for r in timed if r.key in handles]
    inner = {r.key: max(1, min(1000, math.ceil(spec["min_sample_ms"] / 1e3 / max(est[r.key], 1e-7))))
             for r in timed}
    round_s = sum(est[r.key] * inner[r.key] for r in timed) or 1e-9
    rounds = spec["repeat"]
    if round_s * rounds > spec["max_seconds"]:
        rounds = max(min(spec["repeat"], 3), int(spec["max_seconds"] // round_s))
        if rounds < spec["repeat"]:
            result["notes"].append(f"{rounds} rounds instead of {spec['repeat']} to fit the "
                                   f"{spec['max_seconds']:g} s timing budget")
    samples: dict[str, list[float]] = {r.key: [] for r in timed}
    result["rounds"] = rounds
    snap = cpu_snapshot()
    for i in range(rounds):
        for r in (timed if i % 2 == 0 else timed[::-1]):
            if r.key not in handles:
                continue
            phase(f"round {i + 1}/{rounds} {r.key}")
            run, h, n = r.run, handles[r.key], inner[r.key]
            try:
                with _Deadline(slow and slow * n, f"{r.label} timed run"):
                    t0 = time.perf_counter()
                    for _ in range(n):
                        run(h)
                    samples[r.key].append((time.perf_counter() - t0) / n * 1e3)
            except (Exception, TooSlow) as e:  # noqa: BLE001
                recs[r.key].update(status="failed", error=describe_error(e),
                                   failed_phase=result["phase"])
                handles.pop(r.key)
    share = others_share(snap, cpu_snapshot())
    if share is not None and timed:
        result["others_cpu_share"] = share
        if share >= 0.05:
            result["notes"].append(f"other processes used {share:.0%} of the CPUs while "
                                   "timing: these numbers are disturbed")
    for r in timed:
        if samples[r.key]:
            rec = recs[r.key]
            rec.update(stats(samples[r.key]), samples_ms=samples[r.key], inner=inner[r.key],
                       n_samples=len(samples[r.key]))
            rec["throughput_per_s"] = built.batch / (rec["median_ms"] / 1e3)

    # 5. Python-level allocations of one run (tracemalloc; numpy buffers are traced too)
    if spec.get("trace_memory", True):
        import tracemalloc

        for r in runners:
            if r.key not in handles:
                continue
            phase(f"tracemalloc {r.key}")
            release_memory()
            tracemalloc.start()
            try:
                with _Deadline(slow, f"{r.label} traced run"):
                    r.run(handles[r.key])
                recs[r.key]["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
            except (Exception, TooSlow):  # noqa: BLE001
                pass
            finally:
                tracemalloc.stop()
    handles.clear()
    result["status"], result["phase"] = "done", "done"
    progress(result)
    return result


def _delta(now: float | None, base: float | None) -> float | None:
    return None if now is None or base is None else now - base


def _host(value):
    import numpy as np

    return value if isinstance(value, np.ndarray) else np.asarray(value)


def _cuda_reset(half: str) -> bool:
    if half != "gpu":
        return False
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return True


def _cuda_peak() -> float:
    import torch

    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _thread_limit(threads: int):
    """NumPy's BLAS pool gets the same thread count as onnxruntime's intra-op pool (worker
    processes also get it through OPENBLAS_NUM_THREADS and friends)."""
    try:
        import threadpoolctl

        return threadpoolctl.threadpool_limits(threads)
    except ImportError:
        import contextlib

        return contextlib.nullcontext()


def _thread_env(threads: int) -> dict[str, str]:
    return {k: str(threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                      "MKL_NUM_THREADS", "BLIS_NUM_THREADS")}


def worker_main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())

    def progress(result: dict) -> None:
        tmp = out_path + ".tmp"
        Path(tmp).write_text(json.dumps(result, default=str))
        os.replace(tmp, out_path)

    result = bench_model(spec, progress)
    progress(result)
    return 0


# ------------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------------
def run_isolated(spec: dict[str, Any], timeout: float, log) -> dict[str, Any]:
    """bench_model in a fresh process (clean memory numbers, cold creation, crash isolation)."""
    with tempfile.TemporaryDirectory(prefix="tritort-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ, **_thread_env(spec["threads"]))
        if spec["half"] == "gpu-smoke":
            env["TRITON_INTERPRET"] = "1"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path),
               str(out_path)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, cwd=str(ROOT), timeout=timeout,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            rc, tail = proc.returncode, (proc.stderr or "")[-3000:]
        except subprocess.TimeoutExpired as e:
            rc, tail = None, ((e.stderr or b"").decode(errors="replace")
                              if isinstance(e.stderr, bytes) else (e.stderr or ""))[-3000:]
        wall = time.perf_counter() - t0
        result = json.loads(out_path.read_text()) if out_path.exists() else {
            "model": spec["model"], "half": spec["half"], "status": "running",
            "phase": "start", "runners": {}, "notes": [], "error": ""}
    result["worker_s"] = wall
    if result.get("status") != "done":
        why = (f"worker timed out after {timeout:g} s" if rc is None
               else f"worker exited with code {rc}")
        result["status"] = "failed"
        result["error"] = (f"{why} during phase '{result.get('phase')}'"
                           + (f"; stderr: {_last_lines(tail, 6)}" if tail.strip() else ""))
        phase_name = result.get("phase", "") or ""
        # a crash, or a hang in one runner's step, is that runner's failure; running out of
        # time during the timed rounds is the whole model's
        if rc is not None or not phase_name.startswith("round"):
            key = _phase_runner(phase_name)
            if key and key in result.get("runners", {}):
                rec = result["runners"][key]
                if rec.get("status") == "ok":
                    rec.update(status="failed", error=why, failed_phase=result.get("phase"))
    elif tail.strip() and log:
        noisy = [ln for ln in tail.splitlines() if "Error" in ln or "error" in ln]
        if noisy:
            log(f"  ({spec['model']} worker stderr: {_last_lines(chr(10).join(noisy), 3)})")
    return result


def _phase_runner(phase: str) -> str | None:
    m = re.search(r"(\S+)$", phase or "")
    return m.group(1) if m else None


def _last_lines(text: str, n: int) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


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
                "min_sample_ms": args.min_sample_ms, "machine": machine_info(args.threads)}

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
                    "slow_limit": args.slow_limit, "rtol": rtol, "atol": atol,
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


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def machine_info(threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {"host": platform.node(), "os": platform.platform(),
                            "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"model name\s*:\s*(.+)", text)
        info["cpu"] = m.group(1).strip() if m else platform.processor()
    except OSError:
        info["cpu"] = platform.processor() or platform.machine()
    try:
        kb = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))
        info["ram_gib"] = round(kb / 2**20, 1)
    except (OSError, AttributeError):
        pass
    versions = {}
    for mod in ("numpy", "onnx", "onnxruntime", "torch", "triton"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    try:
        import tritort

        versions["tritort"] = getattr(tritort, "__version__", "?")
    except Exception:  # noqa: BLE001
        pass
    info["versions"] = versions
    try:
        import threadpoolctl

        pools = threadpoolctl.threadpool_info()
        info["blas"] = ", ".join(f"{p.get('internal_api')} {p.get('version')} "
                                 f"({p.get('num_threads')} threads by default)" for p in pools
                                 if p.get("user_api") == "blas")
    except ImportError:
        pass
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: no index refresh
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT, env=env,
                               capture_output=True, timeout=30).returncode == 1
        info["git"] = sha + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    if _cuda_available():
        import torch

        info["gpu"] = torch.cuda.get_device_name()
    return info


# ------------------------------------------------------------------------------------------------
# reports
# ------------------------------------------------------------------------------------------------
def _fmt_ms(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return ""
    if v == 0:
        return "0"
    return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"


def ratio(res: dict, peer: str) -> float | None:
    a, b = res["runners"].get(SUBJECT, {}), res["runners"].get(peer, {})
    if a.get("median_ms") and b.get("median_ms"):
        return a["median_ms"] / b["median_ms"]
    return None


def peers_of(results: list[dict], half: str) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for res in results:
        if res.get("half") != half:
            continue
        for key, rec in res.get("runners", {}).items():
            if key != SUBJECT and rec.get("timed", True):
                seen.setdefault(key, rec.get("label", key))
    order = ["onnxruntime", "torch_eager", "torch_compile", "torch_compile_max", "onnxruntime_gpu"]
    return sorted(seen.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)


def check_cell(res: dict) -> str:
    rec = res.get("runners", {}).get(SUBJECT)
    if not rec:
        return "n/a"
    chk = rec.get("check")
    if chk == "ok":
        return f"yes ({rec.get('max_rel_err') or 0:.0e})"
    if chk == "MISMATCH":
        return "**NO** (see below)"
    if rec.get("status") != "ok":
        return "**failed**"
    return chk or "n/a"


def geomean(values: list[float]) -> float | None:
    vals = [v for v in values if v and v > 0]
    return math.exp(statistics.fmean(math.log(v) for v in vals)) if vals else None


def one_line(res: dict) -> str:
    if res.get("status") != "done" and not res.get("runners"):
        return f"{res['model']}: FAILED {res.get('error', '')}"
    parts = []
    for key, rec in res.get("runners", {}).items():
        if rec.get("median_ms") is not None:
            parts.append(f"{key} {_fmt_ms(rec['median_ms'])} ms")
        elif rec.get("status") != "ok":
            parts.append(f"{key} FAILED ({rec.get('failed_phase', '')})")
    for key, _ in peers_of([res], res["half"]):
        r = ratio(res, key)
        if r:
            parts.append(f"{SUBJECT}/{key} {r:.2f}")
    parts.append(f"check {check_cell(res)}")
    if (res.get("others_cpu_share") or 0) >= 0.05:
        parts.append(f"DISTURBED: others used {res['others_cpu_share']:.0%} of the CPUs")
    if res.get("status") != "done":
        parts.append(f"worker: {res.get('error')}")
    return f"{res['model']}: " + ", ".join(parts)


def render_markdown(info: dict, results: list[dict], brief: bool = False) -> str:
    m = info["machine"]
    v = m.get("versions", {})
    lines = [f"# tritort benchmark: {info['host']}, {info['started'][:10]}", ""]
    if not brief:
        lines += [
            f"- machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib', '?')} GiB RAM"
            + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU") + f"; {m.get('os')}",
            "- software: python " + m.get("python", "?") + ", "
            + ", ".join(f"{k} {val}" for k, val in v.items())
            + (f"; BLAS: {m['blas']}" if m.get("blas") else "")
            + (f"; tritort git {m['git']}" if m.get("git") else ""),
            f"- command: `{info['command']}`",
            f"- settings: {info['threads']} threads for every runtime (onnxruntime "
            "intra_op_num_threads, inter_op 1, sequential; NumPy's BLAS pool for tritort's CPU "
            f"provider), {info['warmup']} warm-up runs, {info['repeat']} timed rounds "
            "alternating the runtimes (order reversed every other round), runs shorter than "
            f"{info['min_sample_ms']:g} ms averaged in groups per sample, at most "
            f"{info['max_seconds']:g} s of timing per model"
            + ("; --quick shapes" if info.get("quick") else ""),
            "- ratio = tritort median latency / peer median latency: **below 1 tritort is "
            "faster**, above 1 it is slower. The geometric mean covers the models where both "
            "ran and the outputs agreed.",
            ""]
    for half in info["halves"]:
        rows = [r for r in results if r.get("half") == half]
        if not rows:
            continue
        peers = peers_of(rows, half)
        lines += [f"## {HALF_TITLES[half]}", ""]
        head = ["model", "input", "outputs agree", f"{SUBJECT} ms"]
        head += [f"{label} ms" for _, label in peers]
        head += [f"{SUBJECT} / {label}" for _, label in peers]
        head += [f"{SUBJECT} items/s"] + [f"{label} items/s" for _, label in peers]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        ratios: dict[str, list[float]] = {k: [] for k, _ in peers}
        for res in rows:
            recs = res.get("runners", {})
            unit = ITEM_UNITS.get(res.get("items", ""), "items/s")

            def lat(key: str) -> str:
                rec = recs.get(key, {})
                if rec.get("median_ms") is not None:
                    return (f"{_fmt_ms(rec['median_ms'])} [{_fmt_ms(rec['p10_ms'])}, "
                            f"{_fmt_ms(rec['p90_ms'])}]")
                if rec.get("status") == "failed":
                    return "failed"
                return "incomplete" if res.get("status") != "done" and rec else "n/a"

            def thr(key: str) -> str:
                rec = recs.get(key, {})
                return (f"{_fmt(rec['throughput_per_s'])} {unit}"
                        if rec.get("throughput_per_s") else "")

            cells = [f"{res['model']}", res.get("input", ""), check_cell(res), lat(SUBJECT)]
            cells += [lat(k) for k, _ in peers]
            for k, _ in peers:
                r = ratio(res, k)
                cells.append(f"**{r:.2f}**" if r else "")
                if r and recs.get(SUBJECT, {}).get("check") == "ok":
                    ratios[k].append(r)
            cells += [thr(SUBJECT)] + [thr(k) for k, _ in peers]
            lines.append("| " + " | ".join(cells) + " |")
        gm = ["**geometric mean**", "", "", ""] + [""] * len(peers)
        for k, _ in peers:
            g = geomean(ratios[k])
            gm.append(f"**{g:.2f}** ({len(ratios[k])} model{'' if len(ratios[k]) == 1 else 's'})" if g else "")
        gm += [""] * (1 + len(peers))
        lines += ["| " + " | ".join(gm) + " |", "",
                  "Latency per run in ms: median [p10, p90] over the timed samples. "
                  "Outputs agree: every output of tritort within the tolerance of the "
                  "reference (onnxruntime CPU), checked before timing; the number is the largest "
                  "absolute difference over the largest reference magnitude.", ""]
        if brief:
            continue
        lines += ["### Session creation and memory", "",
                  "| model | runtime | create cold s | create warm s | first run s | session "
                  "RSS MB | peak RSS MB | traced peak MB | samples | placement |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for res in rows:
            for key, rec in res.get("runners", {}).items():
                place = ", ".join(f"{ep.replace('ExecutionProvider', '')} {n}"
                                  for ep, n in rec.get("placement", {}).items())
                cuda = (f" (cuda {_fmt(rec['cuda_peak_mb'])})"
                        if rec.get("cuda_peak_mb") is not None else "")
                samples = (f"{rec['n_samples']} x {rec['inner']}" if rec.get("n_samples")
                           else "")
                lines.append(
                    f"| {res['model']} | {rec.get('label', key)} | {_fmt(rec.get('create_cold_s'))} "
                    f"| {_fmt(rec.get('create_warm_s'))} | {_fmt(rec.get('first_run_s'))} "
                    f"| {_fmt(rec.get('session_rss_mb'))} | {_fmt(rec.get('peak_rss_mb'))}{cuda} "
                    f"| {_fmt(rec.get('traced_peak_mb'))} | {samples} | {place} |")
        lines += [""]
        failures = []
        for res in rows:
            if res.get("status") != "done":
                failures.append(f"- **{res['model']}**: {res.get('error')}")
            for key, rec in res.get("runners", {}).items():
                if rec.get("status") == "failed":
                    failures.append(f"- **{res['model']}** / {rec.get('label', key)}, phase "
                                    f"'{rec.get('failed_phase', '?')}': {rec.get('error')}")
                if rec.get("check") == "MISMATCH":
                    failures.append(f"- **{res['model']}** / {rec.get('label', key)}: outputs "
                                    f"differ from the reference: {rec.get('check_detail')}")
                if rec.get("warm_error"):
                    failures.append(f"- **{res['model']}** / {rec.get('label', key)}, second "
                                    f"session: {rec['warm_error']}")
        if failures:
            lines += ["### Failures", ""] + failures + [""]
        by_note: dict[str, list[str]] = {}
        for res in rows:
            for n in dict.fromkeys(res.get("notes", [])):
                by_note.setdefault(n, []).append(res["model"])
        if by_note:
            lines += ["### Notes", ""] + [f"- {', '.join(ms)}: {n}" for n, ms in by_note.items()]
            lines += [""]
    if not brief:
        lines += ["## What is measured", "",
                  "- Each model runs in its own worker process holding every runtime: sessions "
                  "are created from the same .onnx file and fed the same seeded NumPy inputs "
                  "(host memory in, host memory out, for every runtime).",
                  "- **create cold**: the first session of that model in the process (after the "
                  "imports); **create warm**: a second session of the same model in the same "
                  "process. For torch, creation is building the module from its seed (and "
                  "wrapping it in torch.compile); compilation happens in the first run.",
                  "- **first run**: the first inference after creation (plans, kernel "
                  "compilation, allocator growth).",
                  "- **session RSS**: resident memory added by creating the session (weights, "
                  "plans). **peak RSS**: the kernel's high-water mark (VmHWM, reset through "
                  "/proc/self/clear_refs) during creation and first run, above the RSS before "
                  "creation; freed heap is returned (malloc_trim) before each runtime. "
                  "**cuda**: torch's allocator peak (GPU half only; onnxruntime-gpu's arena is "
                  "not visible to it).",
                  "- **traced peak**: tracemalloc's peak during one run: Python objects and "
                  "NumPy buffers (all of tritort's CPU work), only output arrays for "
                  "onnxruntime, whose C++ arena tracemalloc does not see.",
                  "- **latency**: after the warm-up, rounds alternate the runtimes (the order "
                  "reversed every other round); a sample is one run, or the mean of a group of "
                  "runs when one run is shorter than the minimum sample time (samples = rounds "
                  "x runs per sample). Throughput = batch / median latency.",
                  "- **disturbance**: the share of all CPUs used by other processes while a "
                  "model was timed (/proc/stat minus this process); 5% or more is noted per "
                  "model.",
                  ""]
    return "\n".join(lines)


CSV_FIELDS = ["date", "host", "half", "model", "input", "batch", "runtime", "label", "status",
              "failed_phase", "error", "check", "max_abs_err", "max_rel_err", "n_samples", "inner",
              "median_ms", "p10_ms", "p90_ms", "min_ms", "max_ms", "mean_ms",
              "throughput_per_s", "ratio_tritort_over_this", "create_cold_s", "create_warm_s",
              "first_run_s", "session_rss_mb", "peak_rss_mb", "traced_peak_mb", "cuda_peak_mb",
              "others_cpu_share"]


def write_reports(out: Path, stem: str, info: dict, results: list[dict], chart: bool
                  ) -> list[Path]:
    md, csv_path, js = out / f"{stem}.md", out / f"{stem}.csv", out / f"{stem}.json"
    md.write_text(render_markdown(info, results) + "\n")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for res in results:
            recs = res.get("runners") or {"": {"status": "failed"}}
            for key, rec in recs.items():
                row = {k: rec.get(k) for k in CSV_FIELDS if k in rec}
                row.update(date=info["started"][:10], host=info["host"], half=res.get("half"),
                           model=res["model"], input=res.get("input", ""),
                           batch=res.get("batch", ""), runtime=key,
                           label=rec.get("label", key))
                if res.get("others_cpu_share") is not None:
                    row["others_cpu_share"] = res["others_cpu_share"]
                if res.get("status") != "done" and not rec.get("error"):
                    row["error"] = res.get("error")
                if key and key != SUBJECT:
                    r = ratio(res, key)
                    row["ratio_tritort_over_this"] = f"{r:.4f}" if r else ""
                for k, val in list(row.items()):
                    if isinstance(val, float):
                        row[k] = f"{val:.6g}"
                w.writerow(row)
    slim = [{**res, "runners": {k: dict(v) for k, v in res.get("runners", {}).items()}}
            for res in results]
    js.write_text(json.dumps({"run": info, "results": slim}, indent=1, default=str))
    paths = [md, csv_path, js]
    if chart:
        try:
            paths.append(write_chart(out / f"{stem}.png", info, results))
        except Exception as e:  # noqa: BLE001
            print(f"chart not written: {describe_error(e)}", file=sys.stderr)
    return paths


def write_chart(path: Path, info: dict, results: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    halves = [h for h in info["halves"] if any(r.get("half") == h for r in results)]
    n_models = max(len([r for r in results if r.get("half") == h]) for h in halves)
    fig, axes = plt.subplots(len(halves), 1, figsize=(min(14, max(7, 0.75 * n_models + 3)),
                                                     5.0 * len(halves)), squeeze=False)
    for ax, half in zip(axes[:, 0], halves):
        rows = [r for r in results if r.get("half") == half]
        peers = peers_of(rows, half)
        width = 0.8 / max(1, len(peers))
        names = [r["model"] for r in rows]
        for j, (key, label) in enumerate(peers):
            xs, ys = [], []
            for i, res in enumerate(rows):
                r = ratio(res, key)
                x = i + (j - (len(peers) - 1) / 2) * width
                if r:
                    xs.append(x)
                    ys.append(r)
                    ok = res["runners"][SUBJECT].get("check") == "ok"
                    ax.annotate(f"{r:.2f}" + ("" if ok else " (outputs differ)"), (x, r),
                                ha="center", va="bottom" if r >= 1 else "top", fontsize=7,
                                rotation=90 if len(peers) > 2 or not ok else 0)
                elif j == 0:
                    ax.annotate("failed" if res.get("runners", {}).get(SUBJECT, {}).get(
                        "status") == "failed" else "n/a", (i, 1.0), ha="center", fontsize=7,
                        color="red")
            # bars grow from 1 (parity): up when tritort is slower, down when it is faster
            agreed = [ratio(res, key) for res in rows
                      if res.get("runners", {}).get(SUBJECT, {}).get("check") == "ok"]
            g = geomean([a for a in agreed if a])
            ax.bar(xs, [y - 1.0 for y in ys], bottom=1.0, width=width,
                   label=f"tritort / {label}" + (f" (geometric mean {g:.2f})" if g else ""))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.grid(axis="y", which="major", linewidth=0.3, alpha=0.5)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylabel("latency ratio (log; >1: tritort slower)")
        m = info["machine"]
        where = m.get("gpu") if half == "gpu" else f"{m.get('cpu')}, {info['threads']} threads"
        ax.set_title(f"{HALF_TITLES[half].split(':')[0]}: tritort latency / peer, "
                     f"{info['host']} ({where}), {info['started'][:10]}", fontsize=9)
        ax.legend(fontsize=8)
        ax.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
