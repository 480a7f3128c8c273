"""The int8 path of the Conv template on Triton (interpreter) against onnxruntime: QLinearConv
and ConvInteger single-node models over uint8 / int8 operands, with and without zero points,
per-channel weight parameters, strides, pads, dilations and groups (tap_major, flat and
depthwise variants), each one Triton kernel.

ConvInteger is exact in int32. QLinearConv's codes are requantized in float32 on both sides
(one multiplier x_scale * w_scale / y_scale, rounded half to even): a value within an ulp of a
half code may round the other way, so codes are equal or one apart on such ties only
(``assert_codes`` with the float64 value before rounding).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests import test_triton_qlinear as ql
from tests.test_triton_qlinear import _seeded, assert_codes, kernels, oracle  # noqa: F401
from tests.triton_env import requires_triton, triton_session

pytestmark = requires_triton

# (x shape, w shape, attributes): flat (few channels), tap_major (16 per group), depthwise
GEOMETRIES = {
    "flat_pads_strides": ((2, 3, 7, 6), (5, 3, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 1])),
    "flat_dilated_uneven_pads": ((1, 4, 8, 7), (6, 4, 3, 2),
                                 dict(pads=[2, 0, 1, 1], dilations=[2, 1])),
    "tap_major_groups": ((1, 32, 5, 5), (8, 16, 3, 3), dict(pads=[1, 1, 1, 1], group=2)),
    "depthwise": ((2, 6, 6, 5), (12, 1, 3, 3), dict(pads=[1, 1, 1, 1], group=6,
                                                      strides=[2, 2])),
    "grouped_flat_1d": ((2, 6, 9), (4, 3, 3), dict(pads=[1, 2], group=2)),
    "same_upper": ((1, 5, 6, 6), (4, 5, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
}


def _rng():
    return ql.rng()


def _q(dtype, *shape):
    return ql.q8(dtype, *shape)


def _conv_ref(x, w, group, strides, dilations, pads):
    """float64 cross-correlation of already-centred operands (pads explicit, begins then ends)."""
    r = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[j], pads[j + r]) for j in range(r)])
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    k = w.shape[2:]
    outs = [(xp.shape[2 + j] - (k[j] - 1) * dilations[j] - 1) // strides[j] + 1 for j in range(r)]
    y = np.zeros((n, m, *outs))
    mg = m // group
    for tap in np.ndindex(*k):
        sl = tuple(slice(tap[j] * dilations[j], tap[j] * dilations[j] +
                         (outs[j] - 1) * strides[j] + 1, strides[j]) for j in range(r))
        patch = xp[(slice(None), slice(None)) + sl]
        for g in range(group):
            xs = patch[:, g * cg:(g + 1) * cg]
            ws = w[g * mg:(g + 1) * mg][(slice(None), slice(None)) + tap]
            y[:, g * mg:(g + 1) * mg] += np.einsum("nc...,mc->nm...", xs, ws)
    return y


def _explicit(attrs, x_shape, w_shape):
    r = len(x_shape) - 2
    strides = attrs.get("strides", [1] * r)
    dil = attrs.get("dilations", [1] * r)
    if attrs.get("auto_pad") == "SAME_UPPER":
        pads_b, pads_e = [], []
        for j in range(r):
            out = -(-x_shape[2 + j] // strides[j])
            total = max(0, (out - 1) * strides[j] + (w_shape[2 + j] - 1) * dil[j] + 1 -
                        x_shape[2 + j])
            pads_b.append(total // 2)
            pads_e.append(total - total // 2)
        return strides, dil, pads_b + pads_e
    return strides, dil, attrs.get("pads", [0] * 2 * r)


def _ort_or_skip(m, feeds):
    try:
        return oracle(m, feeds)
    except Exception as e:  # onnxruntime's CPU kernels do not take every type pairing
        pytest.skip(f"onnxruntime: {str(e)[:200]}")


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                         shape)


def _model(node, x, inits, out_dtype):
    graph = helper.make_graph([node], "g", [_vi("x", x.dtype, list(x.shape))],
                              [_vi("y", out_dtype, None)],
                              [ql.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _one_kernel(sess):
    assert len(kernels(sess)) == 1


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("xt,wt", [(np.uint8, np.uint8), (np.uint8, np.int8),
                                   (np.int8, np.int8)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qlinear_conv(geometry, xt, wt, per_channel):
    x_shape, w_shape, attrs = GEOMETRIES[geometry]
    x, w = _q(xt, *x_shape), _q(wt, *w_shape)
    m = w_shape[0]
    xz = np.array(_q(xt, 1)[0] // 2, xt)
    wz = (_q(wt, m) // 4).astype(wt) if per_channel else np.array(_q(wt, 1)[0] // 4, wt)
    if wt == np.int8:
        wz = np.zeros_like(wz)  # onnxruntime requires symmetric int8 weights
    ws = (_rng().uniform(0.01, 0.03, m) if per_channel else np.array(0.02)).astype(np.float32)
    xs, ys = np.array(0.05, np.float32), np.array(0.5, np.float32)
    yt = xt
    yz = np.array(7 if yt == np.uint8 else -3, yt)
    bias = _rng().integers(-2000, 2000, m).astype(np.int32)
    inits = {"xs": xs, "xz": xz, "w": w, "ws": ws, "wz": wz, "ys": ys, "yz": yz, "b": bias}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
                            ["y"], name="qconv", **attrs)
    mdl = _model(node, x, inits, yt)
    (want,) = _ort_or_skip(mdl, {"x": x})
    sess = triton_session(mdl)
    (got,) = sess.run(None, {"x": x})
    strides, dil, pads = _explicit(attrs, x_shape, w_shape)
    centred = _conv_ref(x.astype(np.float64) - xz, w.astype(np.float64) -
                        (wz.reshape(-1, *[1] * (w.ndim - 1)) if per_channel else wz),
                        attrs.get("group", 1), strides, dil, pads)
    wsb = ws.reshape(1, -1, *[1] * (x.ndim - 2)).astype(np.float64) if per_channel else ws
    exact = (centred + bias.reshape(1, -1, *[1] * (x.ndim - 2))) * (xs * wsb / ys)
    assert_codes(got, want, exact_value=exact)
    _one_kernel(sess)


def test_qlinear_conv_saturates_and_takes_no_bias():
    x, w = _q(np.uint8, 1, 4, 5, 5), _q(np.uint8, 3, 4, 3, 3)
    inits = {"xs": np.array(1.0, np.float32), "xz": np.array(0, np.uint8), "w": w,
             "ws": np.array(1.0, np.float32), "wz": np.array(0, np.uint8),
             "ys": np.array(0.125, np.float32), "yz": np.array(0, np.uint8)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                            ["y"], name="qconv", pads=[1, 1, 1, 1])
    mdl = _model(node, x, inits, np.uint8)
    (want,) = oracle(mdl, {"x": x})
    sess = triton_session(mdl)
    (got,) = sess.run(None, {"x": x})
    np.testing.assert_array_equal(got, want)
    assert (got == 255).mean() > 0.5
    _one_kernel(sess)


def _conv_integer_model(x, w, zx, zw, attrs):
    inits, ins = {"w": w}, ["x", "w"]
    if zx is not None or zw is not None:
        ins.append("zx" if zx is not None else "")
        if zx is not None:
            inits["zx"] = np.array(zx, x.dtype)
    if zw is not None:
        ins.append("zw")
        inits["zw"] = np.asarray(zw, w.dtype)
    node = helper.make_node("ConvInteger", ins, ["y"], name="conv", **attrs)
    return _model(node, x, inits, np.int32)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("xt,wt", [(np.uint8, np.uint8), (np.uint8, np.int8),
                                   (np.int8, np.int8)])
@pytest.mark.parametrize("zero_points", [(False, False), (True, False), (True, True)])
def test_conv_integer(geometry, xt, wt, zero_points):
    x_shape, w_shape, attrs = GEOMETRIES[geometry]
    x, w = _q(xt, *x_shape), _q(wt, *w_shape)
    zx = int(_q(xt, 1)[0]) if zero_points[0] else None
    zw = int(_q(wt, 1)[0]) if zero_points[1] else None
    mdl = _conv_integer_model(x, w, zx, zw, attrs)
    (want,) = _ort_or_skip(mdl, {"x": x})
    sess = triton_session(mdl)
    (got,) = sess.run(None, {"x": x})
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    _one_kernel(sess)


@pytest.mark.parametrize("geometry", ["flat_pads_strides", "tap_major_groups", "depthwise"])
def test_conv_integer_per_channel_weight_zero_point(geometry):
    """onnxruntime's ConvInteger takes per-tensor zero points only: the float64 reference."""
    x_shape, w_shape, attrs = GEOMETRIES[geometry]
    x, w = _q(np.uint8, *x_shape), _q(np.uint8, *w_shape)
    zx, zw = 131, _q(np.uint8, w_shape[0])
    mdl = _conv_integer_model(x, w, zx, zw, attrs)
    sess = triton_session(mdl)
    (got,) = sess.run(None, {"x": x})
    strides, dil, pads = _explicit(attrs, x_shape, w_shape)
    want = _conv_ref(x.astype(np.float64) - zx,
                     w.astype(np.float64) - zw.reshape(-1, 1, 1, 1).astype(np.float64),
                     attrs.get("group", 1), strides, dil, pads)
    np.testing.assert_array_equal(got, want.astype(np.int32))
    _one_kernel(sess)

