"""Benchmark runners: build each runtime for a model, check it, time it; worker processes."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perf import models  # noqa: E402
from perf.bench_system import (REFERENCE, TooSlow, _Deadline, compare, cpu_snapshot,  # noqa: E402
                               describe_error, others_share, peak_rss_mb, release_memory,
                               reset_peak_rss, rss_mb, stats)


class Runner:
    def __init__(self, key: str, label: str, create: Callable[[], Any],
                 run: Callable[[Any], list], timed: bool = True, note: str = "",
                 placement: Callable[[Any], dict] | None = None):
        self.key, self.label, self.create, self.run = key, label, create, run
        self.timed, self.note, self.placement = timed, note, placement


def _tritort_runner(built, threads: int, providers: list[str], label: str, note: str) -> Runner:
    import tritort

    # full float32 products, as the onnxruntime and torch runners are set (like for like)
    options = [{"use_tf32": "0"} if p == "TritonExecutionProvider" else {} for p in providers]

    def create():
        so = tritort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        return tritort.InferenceSession(str(built.path), so, providers=providers,
                                        provider_options=options)

    feeds = built.feeds
    return Runner("tritort", label, create, lambda s: s.run(None, feeds), note=note,
                  placement=_placement_counts)


def _placement_counts(sess) -> dict[str, int]:
    """Nodes per provider."""
    counts: dict[str, int] = {}
    for ep in sess.placement().values():
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
            # on a small machine the other runtime's threads spin on after its run and
            # would steal this one's cores: wait them out (the same pause for every runtime)
            time.sleep(spec.get("settle_ms", 0.0) / 1e3)
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
        cmd = [sys.executable, str(ROOT / "perf" / "bench.py"), "--worker", str(spec_path),
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


