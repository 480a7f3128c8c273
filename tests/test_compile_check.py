"""perf/compile_check.py: a model's kernels, generated as for a GPU, go through Triton's real
compiler for sm_90 on this GPU-less machine (ptxas included)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from perf.compile_check import node_layer, unit_layers
from perf.compile_check_fp16 import convert, half_feeds
from perf.compile_check_ptxas import MMA_KINDS, mma_kind, parse_ptxas_log, sass_counts
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


def _run(tmp_path, model, shapes: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, str(ROOT / "perf" / "compile_check.py"), str(path),
                          "--shapes", shapes, "--arch", "90", "--json", str(out), *extra],
                         capture_output=True, text=True, timeout=900,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                              "TRITORT_CACHE_DIR": str(tmp_path / "cache"),
                              "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run, json.loads(out.read_text())


def _kernel(doc: dict, node: str) -> dict:
    return next(k for k in doc["kernels"] if node in k["nodes"])


@pytest.mark.skipif(not triton_runs(), reason="needs Triton")
def test_kernels_compile_for_hopper(tmp_path):
    run, doc = _run(tmp_path, _fp16_block(), "X=4096,256")
    # kernel (named by its code's hash), first unit running it, [+more], kind, ..., mma, ok
    rows = [line.split() for line in run.stdout.splitlines()
            if line.split() and line.split()[-1] == "ok"]
    assert all(re.fullmatch(r"k_[0-9a-f]{12}", row[0]) for row in rows), rows
    gemm = next(r for r in rows if r[1].startswith("matmul"))
    assert gemm[-2] == "wgmma", gemm  # fp16 tl.dot became Hopper's warpgroup MMA
    assert any(r[1].startswith("layernormalization") for r in rows)
    assert "0 failed" in run.stdout
    # one launch each: the GEMM (bias and Gelu in its epilogue), LayerNorm, Softmax
    assert doc["launches_per_run"] == 3 and doc["launches_outside_layers"] == 3
    assert doc["launches_per_layer"] == {}
    for kernel in doc["kernels"]:
        assert kernel["ok"] and kernel["registers"] > 0 and kernel["spills"] >= 0, kernel
        assert kernel["mma"] in MMA_KINDS and kernel["shared_bytes"] >= 0, kernel
        assert kernel["registers"] <= 255 and kernel["launches_per_run"] == 1, kernel
    # bias and Gelu ride in the GEMM's epilogue (as they are, or rewritten into BiasGelu)
    assert len(_kernel(doc, "mm")["nodes"]) >= 2
    assert _kernel(doc, "mm")["sass"].get("HGMMA", 0) > 0
    assert _kernel(doc, "ln")["mma"] == _kernel(doc, "softmax")["mma"] == "none"


def _matmul(dtype: int, m: int | str = "M"):
    k = 128
    w = numpy_helper.from_array(np.ones((k, 128), helper.tensor_dtype_to_np_dtype(dtype)), "W")
    nodes = [helper.make_node("MatMul", ["X", "W"], ["Y"], name="/layers.0/mm")]
    return models.make(nodes, [models.vi("X", dtype, [m, k])], [models.vi("Y", dtype, None)],
                       [w], opset=21)


@pytest.mark.skipif(not triton_runs(), reason="needs Triton")
def test_skinny_fp16_and_fp32_gemms(tmp_path):
    """M = 64 in fp16 compiles to Hopper's wgmma; float32 GEMMs (use_tf32 on by default, as in
    onnxruntime) take TF32 tensor cores too."""
    _, doc = _run(tmp_path, _matmul(TP.FLOAT16), "X=64,128")
    gemm = _kernel(doc, "/layers.0/mm")
    assert gemm["mma"] == "wgmma" and gemm["sass"].get("HGMMA", 0) > 0, gemm
    assert doc["launches_per_layer"] == {"0": 1} and doc["launches_outside_layers"] == 0
    _, doc = _run(tmp_path, _matmul(TP.FLOAT), "X=64,128")
    gemm = _kernel(doc, "/layers.0/mm")
    assert gemm["mma"] == "wgmma" and gemm["sass"].get("HGMMA", 0) > 0, gemm


@pytest.mark.skipif(not triton_runs(), reason="needs Triton")
def test_use_tf32_off_and_launches_recorded_without_running(tmp_path):
    """--use-tf32 0 reaches the provider (float32 dots as FFMA); --record-only records the
    same launch without running it."""
    _, doc = _run(tmp_path, _matmul(TP.FLOAT), "X=64,128", "--use-tf32", "0", "--record-only")
    gemm = _kernel(doc, "/layers.0/mm")
    assert gemm["mma"] == "fma" and gemm["sass"].get("FFMA", 0) > 0, gemm
    assert doc["provider_options"] == {"use_tf32": "0"} and doc["record_only"]
    assert doc["launches_per_run"] == 1 and gemm["launches_per_run"] == 1
    assert gemm["registers"] > 0 and gemm["spills"] >= 0


def test_ptxas_log_and_mma_kind():
    log = ("ptxas info    : Function properties for k_0123\n"
           "    16 bytes stack frame, 24 bytes spill stores, 20 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers\n")
    assert parse_ptxas_log(log) == {"registers": 255, "stack_bytes": 16, "spill_stores": 24,
                                    "spill_loads": 20, "spills": 44}
    with pytest.raises(ValueError):
        parse_ptxas_log("no report")
    dot = "%3 = tt.dot %1, %2, %acc : tensor<64x32xf16>"
    assert mma_kind(dot, "wgmma.mma_async.sync.aligned.m64n64k16") == "wgmma"
    assert mma_kind(dot, "mma.sync.aligned.m16n8k16.row.col") == "mma"
    assert mma_kind(dot, "fma.rn.f32") == "fma"
    assert mma_kind("tt.load", "fma.rn.f32") == "none"
    assert sass_counts("HMMA.16816.F32 R0\nFFMA R1\nFFMA R2") == {"HMMA": 1, "FFMA": 2}


def _node(name: str, scopes: str | None = None):
    proto = helper.make_node("Relu", ["x"], ["y"], name=name)
    if scopes is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.name_scopes", scopes
    return SimpleNamespace(name=name, proto=proto)


def test_layers_from_names_and_scopes():
    assert node_layer(_node("/encoder/layer.3/attention/MatMul")) == 3
    assert node_layer(_node("/h.11/mlp/Add")) == 11
    assert node_layer(_node("/vit/encoder/blocks.2/Add")) == 2
    assert node_layer(_node("node_layer_norm_2")) is None
    assert node_layer(_node("node_MatMul_15", "['', 'layers.4', 'layers.4.attn', 'mm']")) == 4
    units = [("a", [_node("/h.0/x")]), ("fused", [_node("Attention_0")]),
             ("b", [_node("/h.0/y"), _node("/h.1/y"), _node("/h.0/z")]),
             ("c", [_node("/h.1/x")]), ("head", [_node("lm_head")])]
    assert unit_layers(units) == {"a": 0, "fused": 0, "b": 0, "c": 1, "head": None}


def test_fp16_copy_matches_onnxruntime(tmp_path):
    """The float16 copy computes what the float32 model does, within float16's precision;
    a -3.4e38 mask fill stays finite."""
    import onnxruntime

    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["mm"]),
             helper.make_node("Constant", [], ["fill"], value_float=-3.4e38),
             helper.make_node("Max", ["mm", "fill"], ["mx"]),
             helper.make_node("Cast", ["mx"], ["Y"], to=TP.FLOAT)]
    model = models.make(nodes, [models.vi("X", TP.FLOAT, [2, 4])],
                        [models.vi("Y", TP.FLOAT, None)], [numpy_helper.from_array(w, "W")],
                        opset=17)
    src = tmp_path / "m.onnx"
    src.write_bytes(model.SerializeToString())
    dst = convert(src)
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    feeds = half_feeds({"X": x})
    assert feeds["X"].dtype == np.float16
    (y,) = onnxruntime.InferenceSession(str(dst)).run(None, feeds)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float64), x.astype(np.float64) @ w, rtol=2e-3,
                               atol=2e-3)
