"""Conv tiles for Hopper: tensor-core Convs of 64 rows or more take warpgroup (wgmma) tiles,
and none of the listed tiles spills registers on sm_90, a fused residual epilogue included.

A ResNet bottleneck (1x1, 3x3, 1x1 + residual + Relu) runs in Triton's interpreter with the
GPU's sources and configs against onnxruntime; its launches are then compiled for sm_90 with
Triton's compiler and bundled ptxas (no GPU needed) at every wgmma tile of the config table.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from tests import models
from tests.test_hopper_configs import (_compile_sm90, _distinct, _record, _reference, _session,
                                       needs_ptxas)
from tests.triton_env import requires_triton
from tritort.codegen import conv
from tritort.codegen.conv_configs import CONFIGS, WGMMA_KINDS, pick_config

pytestmark = requires_triton


@pytest.mark.parametrize("kind", WGMMA_KINDS)
def test_tensor_core_convs_with_64_rows_take_warpgroup_tiles(kind):
    itemsize, tf32 = (4, True) if kind == "tf32" else (kind, False)
    # ResNet-50's stages at batch 1 and 8: (rows, output channels, K)
    for rows, cols, k in [(3136, 64, 64), (3136, 256, 64), (784, 128, 128), (196, 256, 256),
                          (64, 16, 16), (8 * 196, 1024, 256), (8 * 49, 512, 512)]:
        cfg = pick_config(rows, cols, k, 1, itemsize, "tap_major", False, tf32)
        assert cfg.block_m >= 64 and cfg.num_warps == 4 * (cfg.block_m // 64), (rows, cfg)
    # fewer rows than a warpgroup's: mma.sync tiles stay allowed
    assert pick_config(49, 512, 512, 1, itemsize, "tap_major", False, tf32).block_m == 32


def _bottleneck(elem, dt):
    """X [1, 64, 8, 8] -> 1x1 (16) -> Relu -> 3x3 (16) -> Relu -> 1x1 (64) + X -> Relu."""
    rng = np.random.default_rng(7)
    w = lambda name, *shape: numpy_helper.from_array(  # noqa: E731
        (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(dt), name)
    inits = [w("W1", 16, 64, 1, 1), w("B1", 16), w("W2", 16, 16, 3, 3), w("B2", 16),
             w("W3", 64, 16, 1, 1), w("B3", 64)]
    nodes = [helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="conv2",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "W3", "B3"], ["c3"], name="conv3"),
             helper.make_node("Add", ["c3", "X"], ["res"], name="residual"),
             helper.make_node("Relu", ["res"], ["Y"], name="relu3")]
    return models.make(nodes, [models.vi("X", elem, [1, 64, 8, 8])],
                       [models.vi("Y", elem, None)], inits, opset=21)


def _at(job: dict, cfg) -> dict:
    """``job`` recompiled at ``cfg``'s blocks, warps and stages."""
    names = list(job["signature"])
    blocks = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k}
    constexprs = [(i, blocks.get(names[i], v)) for i, v in job["constexprs"]]
    return dict(job, constexprs=constexprs,
                options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})


@needs_ptxas
@pytest.mark.parametrize("kind", WGMMA_KINDS)
def test_bottleneck_convs_compile_to_wgmma_without_spills(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_GPU_SOURCES", "1")
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path / "kernels"))
    elem, dt = (TP.FLOAT, np.float32) if kind == "tf32" else (TP.FLOAT16, np.float16)
    model = _bottleneck(elem, dt)
    feeds = {"X": np.random.default_rng(8).standard_normal((1, 64, 8, 8)).astype(dt)}
    launches = _record(monkeypatch, conv)
    sess = _session(model, {"use_tf32": "1"})
    assert set(sess.placement().values()) == {"TritonExecutionProvider"}
    tol = 2e-2 if kind == 2 else 5e-3
    np.testing.assert_allclose(sess.run(None, feeds)[0].astype(np.float32),
                               _reference(model, feeds)[0].astype(np.float32), rtol=tol, atol=tol)
    jobs = _distinct(launches)
    assert len(jobs) == 3  # conv1, conv2 and conv3 with the residual epilogue
    tiles = [c for c in CONFIGS[kind] if c.block_m >= 64]
    compiled = [_at(job, cfg) for job in jobs for cfg in tiles]
    for job, result in zip(compiled, _compile_sm90(compiled, tmp_path)):
        assert result["mma"] == "wgmma" and result["spills"] == 0, (job["options"], result)


@needs_ptxas
def test_float32_fma_bottleneck_convs_compile_without_spills(tmp_path, monkeypatch):
    """use_tf32=0: float32 dots run as FFMA; every 64-row-or-more tile of the float32 table
    compiles the bottleneck's convs (the residual epilogue included) without spills."""
    monkeypatch.setenv("TRITORT_GPU_SOURCES", "1")
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path / "kernels"))
    model = _bottleneck(TP.FLOAT, np.float32)
    feeds = {"X": np.random.default_rng(9).standard_normal((1, 64, 8, 8)).astype(np.float32)}
    launches = _record(monkeypatch, conv)
    sess = _session(model, {"use_tf32": "0"})
    assert set(sess.placement().values()) == {"TritonExecutionProvider"}
    np.testing.assert_allclose(sess.run(None, feeds)[0], _reference(model, feeds)[0],
                               rtol=1e-4, atol=1e-4)
    jobs = _distinct(launches)
    assert len(jobs) == 3
    tiles = [c for c in CONFIGS[4] if c.block_m >= 64]
    compiled = [_at(job, cfg) for job in jobs for cfg in tiles]
    for job, result in zip(compiled, _compile_sm90(compiled, tmp_path)):
        assert result["mma"] == "fma" and result["spills"] == 0, (job["options"], result)
