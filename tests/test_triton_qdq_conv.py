"""QDQ Conv on Triton (interpreter) against onnxruntime: ``Conv(DQ(x8), DQ(w8), b)`` and the
same followed by a QuantizeLinear run as one launch of the Conv template's int8 path (int8
tiles as stored, x_scale * w_scale in float32, the float bias after the scaling, the
QuantizeLinear in the epilogue), with per-tensor or per-output-channel weight scales.

onnxruntime convolves the dequantized floats; the int8 path sums exact int32 products and
scales once, so float outputs agree to rounding (rtol 1e-5, atol 1e-4) and requantized codes
are equal or one apart on a rounding tie (``assert_codes``, chained: no exact value is given).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from tests.test_triton_qlinear import _seeded, assert_codes, kernels, oracle  # noqa: F401
from tests.test_triton_qlinear import q8, rng
from tests.test_triton_qlinear_conv import GEOMETRIES
from tests.triton_env import requires_triton, triton_session

pytestmark = requires_triton


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                         shape)


def _qdq_conv_model(geometry, xt, per_channel, w_zero, quantize_out):
    x_shape, w_shape, attrs = GEOMETRIES[geometry]
    m = w_shape[0]
    inits = {"w8": q8(np.int8, *w_shape),
             "xs": np.array(0.05, np.float32), "xz": np.array(q8(xt, 1)[0] // 2, xt),
             "ws": (rng().uniform(0.01, 0.03, m) if per_channel else np.array(0.02))
             .astype(np.float32),
             "b": rng().standard_normal(m).astype(np.float32)}
    w_in = ["w8", "ws"]
    if w_zero:
        inits["wz"] = (q8(np.int8, m) // 8 if per_channel else
                       np.array(q8(np.int8, 1)[0] // 8)).astype(np.int8)
        w_in.append("wz")
    conv_out = "c" if quantize_out else "y"
    nodes = [helper.make_node("DequantizeLinear", ["x8", "xs", "xz"], ["x"], name="dq_x"),
             helper.make_node("DequantizeLinear", w_in, ["w"], name="dq_w", axis=0),
             helper.make_node("Conv", ["x", "w", "b"], [conv_out], name="conv", **attrs)]
    out_dt = np.float32
    if quantize_out:
        inits["ys"] = np.array(0.25, np.float32)
        inits["yz"] = np.array(5, np.uint8)
        nodes.append(helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["y"], name="q"))
        out_dt = np.uint8
    graph = helper.make_graph(nodes, "g", [_vi("x8", xt, list(x_shape))],
                              [_vi("y", out_dt, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), x_shape


def _level(name):
    import tritort as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, name)
    return so


@pytest.mark.parametrize("geometry", ["flat_pads_strides", "tap_major_groups", "depthwise"])
@pytest.mark.parametrize("xt,per_channel,w_zero", [(np.uint8, True, False),
                                                   (np.int8, False, True),
                                                   (np.uint8, False, False),
                                                   (np.int8, True, True)])
@pytest.mark.parametrize("quantize_out", [False, True])
def test_qdq_conv_is_one_int8_kernel(monkeypatch, geometry, xt, per_channel, w_zero,
                                     quantize_out):
    import torch

    from tritort.codegen import int8_conv

    seen = []
    real = int8_conv.launch
    monkeypatch.setattr(int8_conv, "launch", lambda fn, spec, x, w, *rest: (
        seen.append((x.dtype, w.dtype)), real(fn, spec, x, w, *rest))[1])
    mdl, x_shape = _qdq_conv_model(geometry, xt, per_channel, w_zero, quantize_out)
    # at the default level: constant folding keeps the weights' DequantizeLinear for the Conv
    sess = triton_session(mdl, sess_options=_level("ORT_ENABLE_ALL"))
    reports = kernels(sess)
    assert len(reports) == 1 and reports[0]["kind"] == "tiled", reports
    assert sorted(reports[0]["nodes"]) == sorted(n.name for n in mdl.graph.node)
    x = q8(xt, *x_shape)
    (got,) = sess.run(None, {"x8": x})
    (want,) = oracle(mdl, {"x8": x})
    assert seen == [(getattr(torch, np.dtype(xt).name), torch.int8)]
    if quantize_out:
        assert_codes(got, want, chained=True)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_shared_input_dequantize_stays_a_float_conv():
    """A DequantizeLinear read by two Convs is not an operand of either: both run float."""
    x_shape, w_shape, _ = GEOMETRIES["flat_pads_strides"]
    inits = {"w8": q8(np.int8, *w_shape), "xs": np.array(0.05, np.float32),
             "xz": np.array(3, np.uint8), "ws": np.array(0.02, np.float32)}
    nodes = [helper.make_node("DequantizeLinear", ["x8", "xs", "xz"], ["x"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w8", "ws"], ["w"], name="dq_w"),
             helper.make_node("Conv", ["x", "w"], ["y1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w"], ["y2"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [_vi("x8", np.uint8, list(x_shape))],
                              [_vi("y1", np.float32, None), _vi("y2", np.float32, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    mdl = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = triton_session(mdl, sess_options=_level("ORT_DISABLE_ALL"))
    x = q8(np.uint8, *x_shape)
    for got, want in zip(sess.run(None, {"x8": x}), oracle(mdl, {"x8": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    convs = [r for r in kernels(sess) if r["kind"] == "tiled"]
    assert sorted(n for r in convs for n in r["nodes"]) == ["conv1", "conv2"]
