"""The benchmark drivers still run (tiny sizes; their timings are not checked)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, text=True,
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_overhead_benchmark_reports_a_ratio():
    out = _run("perf/overhead.py", "--runs", "200", "--rounds", "2")
    assert "ratio tritort/onnxruntime:" in out


def test_kernel_benchmark_smoke_checks_results_and_prints_a_table(tmp_path):
    out = _run("perf/bench_kernels.py", "--smoke", "--out", str(tmp_path))
    assert "| pointwise | tritort |" in out and "| layernorm | tritort |" in out
    assert "meaningless" in out
    assert len(list(tmp_path.glob("*-kernels.md"))) == 1
