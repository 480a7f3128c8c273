"""perf/compile_check.py: a model's kernels, generated as for a GPU, go through Triton's real
compiler for sm_90 on this GPU-less machine (ptxas included)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from tests import models
from tests.triton_env import triton_runs

ROOT = Path(__file__).resolve().parents[1]


def _fp16_block():
    """MatMul + bias + Gelu (one GEMM kernel with its epilogue), LayerNorm, Softmax."""
    w = numpy_helper.from_array(np.ones((256, 256), np.float16), "W")
    b = numpy_helper.from_array(np.zeros(256, np.float16), "b")
    g = numpy_helper.from_array(np.ones(256, np.float16), "g")
    nodes = [helper.make_node("MatMul", ["X", "W"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["biased"], name="bias"),
             helper.make_node("Gelu", ["biased"], ["act"], name="gelu"),
             helper.make_node("LayerNormalization", ["act", "g", "b"], ["ln"], name="ln"),
             helper.make_node("Softmax", ["ln"], ["Y"], name="softmax")]
    return models.make(nodes, [models.vi("X", TP.FLOAT16, ["N", 256])],
                       [models.vi("Y", TP.FLOAT16, None)], [w, b, g], opset=21)


@pytest.mark.skipif(not triton_runs(), reason="needs Triton")
def test_kernels_compile_for_hopper(tmp_path):
    path = tmp_path / "block.onnx"
    path.write_bytes(_fp16_block().SerializeToString())
    run = subprocess.run([sys.executable, str(ROOT / "perf" / "compile_check.py"), str(path),
                          "--shapes", "X=4096,256", "--arch", "90"],
                         capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                              "TRITORT_CACHE_DIR": str(tmp_path / "cache"),
                              "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # kernel (named by its code's hash), first unit running it, [+more], warps, ..., mma, ok
    rows = [line.split() for line in run.stdout.splitlines()
            if line.split() and line.split()[-1] == "ok"]
    assert all(re.fullmatch(r"k_[0-9a-f]{12}", row[0]) for row in rows), rows
    gemm = next(r for r in rows if r[1].startswith("matmul"))
    assert gemm[-2] == "wgmma", gemm  # fp16 tl.dot became Hopper's warpgroup MMA
    assert any(r[1].startswith("layernormalization") for r in rows)
    assert "0 failed" in run.stdout
