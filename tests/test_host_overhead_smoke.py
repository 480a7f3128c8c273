"""perf/host_overhead.py: a tiny model's full Triton launch path (kernels compiled for sm_90,
Triton's C launcher) runs against the stub CUDA driver, no GPU needed, and its JSON says
how many launches a run makes and what they cost on the host."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _c_compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or \
        shutil.which("clang")


@pytest.mark.skipif(_c_compiler() is None,
                    reason="no C compiler (cc, gcc, clang or CC): the stub driver and "
                           "Triton's launcher are built with one")
def test_smoke_run_reports_launches_host_time_and_floor(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "out.json"
    # the compiled path: without the interpreter the tests' conftest turns on
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "TRITORT_GPU_SOURCES")}
    env["TRITORT_CACHE_DIR"] = str(tmp_path / "kernels")
    run = subprocess.run([sys.executable, str(ROOT / "perf" / "host_overhead.py"), "--smoke",
                          "--runs", "50", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("model", "launches", "host_us_per_run", "floor_us_per_run",
                "split_us_per_launch", "path", "compiled"):
        assert key in result, key
    assert result["launches"] > 0
    assert result["host_us_per_run"] > result["floor_us_per_run"] > 0
    assert {k["target"] for k in result["compiled"]} == {"cuda:90"}
    assert "launches per run" in run.stdout
    # replayed launches go through tritort's batch launcher, byte for byte as Triton sends them
    batched = result["batched_launches"]
    assert batched["launches_checked"] == result["launches"], batched
    assert batched["mismatched"] == [], batched
