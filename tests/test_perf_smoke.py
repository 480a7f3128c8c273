"""The benchmark drivers still run (tiny sizes; their timings are not checked)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, **env_vars: str) -> str:
    env = dict(os.environ, TRITON_INTERPRET="1", **env_vars)
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


def test_compute_benchmark_smoke(tmp_path):
    out = _run("perf/bench_compute.py", "--smoke", "--out", str(tmp_path))
    for case in ("GEMM", "fp8 GEMM", "Attention", "ResNet-50 convolutions"):
        assert f"## {case}" in out
    for row in ("| fp16 64x64x64 | tritort |", "| e4m3fn->bf16 64x64x64 | tritort fp8 |",
                "| fp16 B1 H2 S64 D32 causal | tritort |",
                "| stem 7x7/2 3->8 @16 N1 (x1) | tritort |"):
        assert row in out  # a tritort row per case, checked against torch (exit status 0)
    assert "meaningless" in out and "WRONG" not in out and "error:" not in out
    written = list(tmp_path.glob("*-compute.md"))
    assert len(written) == 1 and written[0].read_text().count("| tritort") >= 4


def test_compute_benchmark_autotunes_on_the_providers_table(tmp_path):
    # the launches are recorded on the table the provider handed its launchers
    out = _run("perf/bench_compute.py", "--smoke", "--cases", "gemm", "--autotune", "0.2",
               "--out", "", TRITORT_TUNING_DB=str(tmp_path / "tuning.json"))
    assert out.count("x over the default config") >= 2 and "WRONG" not in out
