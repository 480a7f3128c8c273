"""MaxPool, AveragePool, GlobalMaxPool and GlobalAveragePool on the Triton provider
(interpreter mode) against onnxruntime.

Inputs get symbolic dims, so each model also checks that one compiled kernel serves any size.
"""
from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import tritort as ort
from tests import models
from tests.triton_env import requires_triton, triton_session

pytestmark = requires_triton
TRITON = "TritonExecutionProvider"
_names = itertools.count()
_rng = np.random.default_rng(0)
_ELEM = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16,
         np.float64: TensorProto.DOUBLE, ml_dtypes.bfloat16: TensorProto.BFLOAT16,
         np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}


def data(*shape, dtype=np.float32):
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return _rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    return (_rng.standard_normal(shape) * 4).astype(dtype)


def pool_model(op, rank, dtype=np.float32, indices=False, opset=22, **attrs):
    elem = _ELEM[dtype]
    outputs = ["Y", "I"] if indices else ["Y"]
    node = helper.make_node(op, ["X"], outputs, name=f"{op.lower()}_{next(_names)}", **attrs)
    out_info = [models.vi("Y", elem, None)] + \
        ([models.vi("I", TensorProto.INT64, None)] if indices else [])
    return models.make([node], [models.vi("X", elem, ["N", "C"] + [f"S{j}" for j in
                                                                   range(rank - 2)])],
                       out_info, opset=opset)


def reference(model, feeds):
    sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check(model, *xs, rtol=1e-5, atol=1e-5):
    sess = triton_session(model)
    for x in xs:
        got, exp = sess.run(None, {"X": x}), reference(model, {"X": x})
        assert len(got) == len(exp)
        for g, e in zip(got, exp):
            assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, g.shape, e.dtype, e.shape)
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    return sess


# ------------------------------------------------------------------ MaxPool / AveragePool

WINDOWS = {
    "1d": ((2, 3, 17), dict(kernel_shape=[3])),
    "1d_strides_ceil": ((2, 3, 17), dict(kernel_shape=[4], strides=[3], ceil_mode=1)),
    "2d": ((2, 3, 9, 11), dict(kernel_shape=[3, 3])),
    "2d_strides_asym_pads": ((2, 3, 9, 11), dict(kernel_shape=[3, 2], strides=[2, 3],
                                                 pads=[1, 0, 2, 1])),
    "2d_dilations": ((1, 2, 10, 11), dict(kernel_shape=[2, 3], dilations=[3, 2],
                                          pads=[1, 1, 0, 1])),
    "2d_ceil": ((2, 3, 9, 11), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 2, 2, 1],
                                    ceil_mode=1)),
    # 6 - 3 = 3 over stride 2: ceil gives 3 windows, the last would start in the end pad
    "2d_ceil_last_window_dropped": ((1, 2, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2],
                                                       pads=[1, 1, 1, 1], ceil_mode=1)),
    "2d_ceil_dilations": ((1, 2, 10, 11), dict(kernel_shape=[2, 2], strides=[2, 3],
                                               dilations=[2, 2], pads=[1, 1, 1, 1],
                                               ceil_mode=1)),
    "2d_same_upper": ((2, 3, 10, 11), dict(kernel_shape=[3, 2], strides=[2, 2],
                                           auto_pad="SAME_UPPER")),
    "2d_same_lower": ((2, 3, 10, 11), dict(kernel_shape=[3, 2], strides=[2, 2],
                                           auto_pad="SAME_LOWER")),
    "2d_valid": ((2, 3, 10, 11), dict(kernel_shape=[3, 2], strides=[2, 3], auto_pad="VALID")),
    "3d": ((1, 2, 6, 5, 7), dict(kernel_shape=[2, 3, 2], strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 1],
                                 ceil_mode=1)),
}


@pytest.mark.parametrize("case", sorted(WINDOWS))
def test_maxpool(case):
    shape, attrs = WINDOWS[case]
    check(pool_model("MaxPool", len(shape), **attrs), data(*shape))


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("case", sorted(WINDOWS))
def test_averagepool(case, count_include_pad):
    shape, attrs = WINDOWS[case]
    check(pool_model("AveragePool", len(shape), count_include_pad=count_include_pad, **attrs),
          data(*shape))


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_symbolic_shapes_one_kernel_two_sizes(tmp_path, monkeypatch, op):
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path))
    model = pool_model(op, 4, kernel_shape=[3, 3], strides=[2, 1], auto_pad="SAME_UPPER")
    # the larger size spans several programs and a ragged last block
    check(model, data(1, 3, 7, 8), data(2, 4, 33, 35), data(1, 1, 2, 3))
    assert len(list(tmp_path.glob("k_*.py"))) == 1  # one kernel file, named by its hash


@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize("shape, attrs", [
    ((2, 3, 9, 11), dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 1, 1, 0])),
    ((1, 2, 5, 6, 4), dict(kernel_shape=[2, 2, 3], strides=[1, 2, 1], pads=[0, 1, 1, 1, 0, 1])),
    ((2, 2, 13), dict(kernel_shape=[3], strides=[2], ceil_mode=1)),
])
def test_maxpool_indices(storage_order, shape, attrs):
    check(pool_model("MaxPool", len(shape), indices=True, storage_order=storage_order, **attrs),
          data(*shape))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_maxpool_small_ints(dtype):
    check(pool_model("MaxPool", 4, dtype, kernel_shape=[3, 2], strides=[2, 1],
                     pads=[1, 0, 1, 1]), data(2, 3, 9, 8, dtype=dtype))


def test_maxpool_skips_nan():
    # as onnxruntime's 1-D MaxPool and onnx.reference's (onnxruntime's 2-D / 3-D answers
    # depend on where a NaN sits in the window); no window holds only NaN, where
    # onnxruntime answers -FLT_MAX, onnx.reference fails and Triton gives NaN
    x = np.array([[[1, np.nan, 3, 2, 5, np.nan, 0, -1, np.nan]]], np.float32)
    check(pool_model("MaxPool", 3, kernel_shape=[2]), x)
    check(pool_model("MaxPool", 3, kernel_shape=[3], strides=[2], pads=[1, 1]), x)
    model = pool_model("MaxPool", 4, kernel_shape=[2, 2], pads=[0, 1, 1, 0])
    x2 = x[..., :8].reshape(1, 1, 2, 4)
    got = triton_session(model).run(None, {"X": x2})[0]
    np.testing.assert_array_equal(got, ReferenceEvaluator(model).run(None, {"X": x2})[0])


def test_maxpool_window_of_only_nan_is_nan():
    x = np.array([[[1, np.nan, np.nan, 2]]], np.float32)
    got = triton_session(pool_model("MaxPool", 3, kernel_shape=[2])).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, [[[1, np.nan, 2]]])


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("dtype, rtol", [(np.float16, 2 ** -10), (ml_dtypes.bfloat16, 2 ** -7)])
def test_low_precision(op, dtype, rtol):
    """fp16 / bf16 on Triton vs float32 onnxruntime on the same values: max is exact, the
    average rounds once."""
    attrs = dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 1, 0, 1], ceil_mode=1)
    x = data(2, 3, 9, 8).astype(dtype)
    got = triton_session(pool_model(op, 4, dtype, **attrs)).run(None, {"X": x})[0]
    assert got.dtype == dtype
    exp = reference(pool_model(op, 4, **attrs), {"X": x.astype(np.float32)})[0]
    np.testing.assert_allclose(got.astype(np.float32), exp, rtol=rtol if op != "MaxPool" else 0,
                               atol=1e-6)


def test_fp64_maxpool():
    check(pool_model("MaxPool", 4, np.float64, kernel_shape=[2, 3], pads=[1, 1, 1, 1]),
          data(1, 2, 6, 7, dtype=np.float64))


@pytest.mark.parametrize("opset", [7, 11])
def test_older_opsets(opset):
    check(pool_model("AveragePool", 4, opset=opset, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                     strides=[2, 2], count_include_pad=1), data(1, 2, 7, 8))
    check(pool_model("MaxPool", 4, opset=opset, kernel_shape=[2, 2], strides=[2, 2]),
          data(1, 2, 7, 8))


def test_kernel_of_four_spatial_axes_declines():
    model = pool_model("MaxPool", 6, kernel_shape=[2, 2, 2, 2])
    sess = ort.InferenceSession(model.SerializeToString(),
                                providers=[TRITON, "CPUExecutionProvider"])
    placed = sess._program.partition.assignments[model.graph.node[0].name]
    assert placed.provider.name == "CPUExecutionProvider"
    assert "4 spatial axes" in placed.declined[TRITON]


# ------------------------------------------------------------------ global pools


@pytest.mark.parametrize("op", ["GlobalMaxPool", "GlobalAveragePool"])
@pytest.mark.parametrize("shape", [(2, 3, 17), (2, 3, 9, 11), (1, 2, 3, 4, 5)])
def test_global_pools(op, shape):
    check(pool_model(op, len(shape)), data(*shape), data(3, *shape[1:]))


@pytest.mark.parametrize("op", ["GlobalMaxPool", "GlobalAveragePool"])
@pytest.mark.parametrize("dtype, rtol", [(np.float16, 2 ** -10), (ml_dtypes.bfloat16, 2 ** -7)])
def test_global_pools_low_precision(op, dtype, rtol):
    x = data(2, 3, 9, 7).astype(dtype)
    got = triton_session(pool_model(op, 4, dtype)).run(None, {"X": x})[0]
    assert got.dtype == dtype
    exp = reference(pool_model(op, 4), {"X": x.astype(np.float32)})[0]
    np.testing.assert_allclose(got.astype(np.float32), exp, rtol=rtol, atol=1e-6)


def test_global_pools_propagate_nan():
    # as onnx.reference (onnxruntime's GlobalMaxPool answer depends on the NaN's SIMD lane)
    x = data(2, 3, 4, 5)
    x[0, 1, 2, 3] = x[1, 2, 0, 0] = np.nan
    for op in ("GlobalMaxPool", "GlobalAveragePool"):
        model = pool_model(op, 4)
        got = triton_session(model).run(None, {"X": x})[0]
        np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, {"X": x})[0],
                                   rtol=1e-6)
