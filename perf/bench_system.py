"""Benchmark plumbing: memory and CPU readings, deadlines, statistics, output checks."""
from __future__ import annotations

import ctypes
import gc
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


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
