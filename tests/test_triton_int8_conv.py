"""int8 convolutions on Triton (interpreter) against onnxruntime: a 1x1 ConvInteger (int8 /
uint8 operands, with and without zero points) is one launch of the int8 GEMM kernel, exact
in int32; a spatial one is one launch of the Conv template's int8 path
(tests/test_triton_qlinear_conv.py covers that path's forms)."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from tests import models
from tests.triton_env import requires_triton, triton_session

pytestmark = requires_triton
T = "TritonExecutionProvider"
_rng = np.random.default_rng(1312)
_TP = {np.int8: TP.INT8, np.uint8: TP.UINT8}


def _q(dtype, *shape):
    info = np.iinfo(dtype)
    return _rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def _conv_integer(x, w, zx, zw, **attrs):
    inits = [numpy_helper.from_array(w, "w")]
    ins = ["x", "w"]
    if zx is not None or zw is not None:
        ins.append("zx" if zx is not None else "")
        if zx is not None:
            inits.append(numpy_helper.from_array(np.array(zx, x.dtype), "zx"))
    if zw is not None:
        ins.append("zw")
        inits.append(numpy_helper.from_array(np.array(zw, w.dtype), "zw"))
    node = helper.make_node("ConvInteger", ins, ["y"], name="conv", **attrs)
    return models.make([node], [models.vi("x", _TP[x.dtype.type], list(x.shape))],
                       [models.vi("y", TP.INT32, None)], inits, opset=13)


def _oracle(m, feeds):
    return onnxruntime.InferenceSession(m.SerializeToString(), providers=[
        "CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("xt,wt", [(np.uint8, np.uint8), (np.uint8, np.int8),
                                   (np.int8, np.int8)])
@pytest.mark.parametrize("zero_points", [(None, None), ("x", None), ("x", "w")])
def test_pointwise_conv_integer_is_one_exact_gemm(xt, wt, zero_points):
    x, w = _q(xt, 2, 5, 3, 4), _q(wt, 6, 5, 1, 1)
    zx = int(_q(xt, 1)[0]) if zero_points[0] else None
    zw = int(_q(wt, 1)[0]) if zero_points[1] else None
    m = _conv_integer(x, w, zx, zw)
    try:
        want = _oracle(m, {"x": x})
    except Exception as e:  # onnxruntime's CPU kernel does not take every type pairing
        pytest.skip(f"onnxruntime: {e}")
    sess = triton_session(m)
    (got,) = sess.run(None, {"x": x})
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want[0])
    report = next(ep for ep in sess._program.providers if ep.name == T).kernels
    assert len(report) == 1


def test_spatial_conv_integer_is_one_int8_conv_launch():
    """A 3x3 padded ConvInteger takes the int8 path of the Conv template (not the GEMM's 1x1
    form); padded positions are x's zero point."""
    x, w = _q(np.uint8, 1, 3, 5, 5), _q(np.uint8, 4, 3, 3, 3)
    m = _conv_integer(x, w, 7, None, pads=[1, 1, 1, 1])
    sess = triton_session(m)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], _oracle(m, {"x": x})[0])
    report = next(ep for ep in sess._program.providers if ep.name == T).kernels
    assert len(report) == 1
