"""Conv on the Triton provider (interpreter mode) against onnxruntime.

X gets symbolic dims, so every model also checks that one compiled kernel serves any size.
The cases cover the three kernel variants (``flat`` implicit GEMM for few channels per group,
``tap_major`` for multiples of 16, ``direct`` for depthwise), ragged row / column / K blocks
(the interpreter's blocks are at most 32), every auto_pad, and the epilogue hook.
"""
from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import tritort as ort
from tests import models
from tests.triton_env import requires_triton, triton_session

pytestmark = requires_triton
TRITON = "TritonExecutionProvider"
_names = itertools.count()
_rng = np.random.default_rng(0)
_ELEM = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16,
         np.float64: TensorProto.DOUBLE, ml_dtypes.bfloat16: TensorProto.BFLOAT16}


def data(*shape, dtype=np.float32):
    return _rng.standard_normal(shape).astype(dtype)


def conv_model(x_rank, w, bias=None, w_input=False, dtype=np.float32, opset=21, **attrs):
    """Y = Conv(X, W[, B]); X has symbolic dims; W (and B) initializers unless w_input."""
    elem = _ELEM[dtype]
    name = f"conv_{next(_names)}"
    inputs = [models.vi("X", elem, ["N", "C"] + [f"S{j}" for j in range(x_rank - 2)])]
    inits, names = [], ["X", "W"]
    if w_input:
        inputs.append(models.vi("W", elem, list(w.shape)))
    else:
        inits.append(numpy_helper.from_array(w.astype(dtype), "W"))
    if bias is not None:
        names.append("B")
        if w_input:
            inputs.append(models.vi("B", elem, list(bias.shape)))
        else:
            inits.append(numpy_helper.from_array(bias.astype(dtype), "B"))
    node = helper.make_node("Conv", names, ["Y"], name=name, **attrs)
    return models.make([node], inputs, [models.vi("Y", elem, None)], inits, opset=opset)


def reference(model, feeds):
    try:
        sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                            providers=["CPUExecutionProvider"])
    except onnxruntime.capi.onnxruntime_pybind11_state.NotImplemented:
        from onnx.reference import ReferenceEvaluator  # onnxruntime has no double Conv

        return ReferenceEvaluator(model).run(None, feeds)[0]
    return sess.run(None, feeds)[0]


def check(model, *feed_sets, rtol=1e-4, atol=1e-4):
    sess = triton_session(model)
    for feeds in feed_sets:
        got, exp = sess.run(None, feeds)[0], reference(model, feeds)
        assert got.dtype == exp.dtype and got.shape == exp.shape, \
            (got.dtype, got.shape, exp.dtype, exp.shape)
        np.testing.assert_allclose(got, exp, rtol=rtol, atol=atol)
    return sess


def check_conv(x_shape, w_shape, bias=True, w_input=False, **attrs):
    """One Conv on Triton (asserted) against onnxruntime (asserted by :func:`check`)."""
    w = data(*w_shape)
    b = data(w_shape[0]) if bias else None
    model = conv_model(len(x_shape), w, b, w_input, **attrs)
    feeds = {"X": data(*x_shape)}
    if w_input:
        feeds["W"] = w
        if bias:
            feeds["B"] = b
    return check(model, feeds)


# ------------------------------------------------------------------ shapes and attributes

CASES = {
    # 1-D
    "1d": ((2, 3, 13), (5, 3, 3), {}),
    "1d_strides_dilations_asym_pads": ((2, 4, 17), (6, 4, 3), dict(strides=[2], dilations=[2],
                                                                    pads=[1, 2])),
    "1d_group2": ((1, 6, 11), (4, 3, 2), dict(group=2)),
    "1d_depthwise": ((2, 5, 19), (5, 1, 4), dict(group=5, pads=[2, 1])),
    # 2-D, flat K (few channels): one K block, then K = 3 * 25 = 75 over three ragged blocks
    "2d_flat": ((2, 3, 9, 11), (5, 3, 3, 3), {}),
    "2d_flat_k_loop": ((1, 3, 12, 10), (7, 3, 5, 5), dict(pads=[2, 1, 0, 2])),
    # tap-major: 32 channels (exact K blocks), 48 (ragged), 40 output channels (ragged cols)
    "2d_tap_major": ((2, 32, 7, 6), (20, 32, 3, 3), dict(strides=[2, 1], pads=[1, 0, 2, 1])),
    "2d_tap_major_ragged": ((1, 48, 6, 7), (40, 48, 3, 2), dict(dilations=[1, 2],
                                                                pads=[1, 1, 1, 1])),
    "2d_1x1": ((2, 16, 9, 7), (33, 16, 1, 1), {}),
    "2d_1x1_strided": ((1, 32, 9, 8), (8, 32, 1, 1), dict(strides=[2, 3])),
    "2d_group2_flat": ((2, 6, 8, 9), (8, 3, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "2d_group2_tap_major": ((1, 64, 5, 6), (24, 32, 3, 3), dict(group=2, strides=[2, 2])),
    "2d_group4": ((1, 8, 7, 7), (12, 2, 2, 3), dict(group=4, dilations=[2, 1])),
    # depthwise (one input channel per group), with a channel multiplier, and C_in = 1
    "2d_depthwise": ((2, 6, 9, 10), (6, 1, 3, 3), dict(group=6, pads=[1, 1, 1, 1])),
    "2d_depthwise_x2": ((1, 6, 9, 10), (12, 1, 3, 3), dict(group=6, strides=[2, 2],
                                                           dilations=[2, 1])),
    "2d_one_input_channel": ((2, 1, 11, 9), (10, 1, 3, 2), dict(pads=[0, 1, 2, 0])),
    "2d_big_kernel": ((1, 2, 14, 13), (3, 2, 7, 6), dict(strides=[2, 2], pads=[3, 3, 3, 2])),
    "2d_kernel_shape_attr": ((1, 4, 8, 8), (4, 4, 3, 3), dict(kernel_shape=[3, 3])),
    # 3-D
    "3d": ((1, 4, 5, 5, 6), (3, 4, 2, 3, 2), dict(pads=[1] * 6)),
    "3d_strided_depthwise": ((1, 4, 7, 6, 5), (4, 1, 3, 3, 3), dict(group=4, strides=[2, 1, 2])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_forms(case):
    x_shape, w_shape, attrs = CASES[case]
    check_conv(x_shape, w_shape, **attrs)


@pytest.mark.parametrize("auto_pad", ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("c_in, group", [(3, 1), (32, 1), (4, 4)])
def test_auto_pad(auto_pad, c_in, group):
    # odd sizes and strides 2: SAME's pads are uneven, so UPPER and LOWER differ
    attrs = dict(auto_pad=auto_pad, strides=[2, 2])
    if auto_pad == "NOTSET":
        attrs["pads"] = [0, 2, 1, 1]
    check_conv((1, c_in, 9, 8), (6 if group == 1 else 4, c_in // group, 3, 4), group=group,
             **attrs)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_auto_pad_same_1d_stride_above_kernel(auto_pad):
    check_conv((2, 3, 11), (4, 3, 2), auto_pad=auto_pad, strides=[5])


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("w_shape, group", [((6, 3, 3, 3), 1), ((6, 1, 3, 3), 6)])
def test_weight_and_bias_as_runtime_inputs(bias, w_shape, group):
    check_conv((2, 6 if group > 1 else 3, 7, 8), w_shape, bias=bias, w_input=True, group=group,
             pads=[1, 0, 1, 2])


@pytest.mark.parametrize("w_shape, group", [((6, 3, 3, 3), 1), ((20, 32, 3, 3), 1),
                                            ((6, 1, 3, 3), 6)])
def test_symbolic_shapes_one_kernel_two_sizes(tmp_path, monkeypatch, w_shape, group):
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path))
    w, b = data(*w_shape), data(w_shape[0])
    model = conv_model(4, w, b, group=group, strides=[2, 1], pads=[1, 1, 0, 1])
    c = w_shape[1] * group
    check(model, {"X": data(1, c, 9, 7)}, {"X": data(3, c, 14, 5)}, {"X": data(2, c, 5, 5)})
    assert len(list(tmp_path.glob("k_*.py"))) == 1  # one kernel file, named by its hash


def test_opset_1_conv():
    check_conv((1, 2, 6, 7), (3, 2, 3, 3), opset=1, pads=[1, 1, 1, 1])


def test_empty_batch():
    w = data(4, 3, 3, 3)
    model = conv_model(4, w, data(4))
    got = triton_session(model).run(None, {"X": data(0, 3, 6, 6)})[0]
    assert got.shape == (0, 4, 4, 4) and got.dtype == np.float32


# ------------------------------------------------------------------ low precision


def _check_low_precision(dtype, rtol, x_shape, w_shape, **attrs):
    """dtype on Triton vs float32 onnxruntime on the same (exactly representable) values:
    products are exact in fp32, so the difference is the one rounding on store."""
    w, b, x = (v.astype(dtype) for v in (data(*w_shape), data(w_shape[0]), data(*x_shape)))
    opset = 22 if dtype == ml_dtypes.bfloat16 else 21  # Conv takes bfloat16 from opset 22
    got = triton_session(conv_model(len(x_shape), w, b, dtype=dtype, opset=opset,
                                    **attrs)).run(None, {"X": x})[0]
    assert got.dtype == dtype
    f32 = [v.astype(np.float32) for v in (w, b, x)]
    exp = reference(conv_model(len(x_shape), f32[0], f32[1], **attrs), {"X": f32[2]})
    np.testing.assert_allclose(got.astype(np.float32), exp, rtol=rtol, atol=1e-4)


@pytest.mark.parametrize("dtype, rtol", [(np.float16, 2 ** -10), (ml_dtypes.bfloat16, 2 ** -7)])
@pytest.mark.parametrize("x_shape, w_shape, attrs", [
    ((2, 3, 9, 8), (5, 3, 3, 3), dict(pads=[1, 1, 1, 1])),  # flat
    ((1, 32, 6, 5), (18, 32, 3, 3), dict(strides=[2, 1])),  # tap-major
    ((1, 6, 8, 7), (6, 1, 3, 3), dict(group=6)),  # direct
    ((2, 4, 15), (4, 2, 3), dict(group=2, auto_pad="SAME_UPPER")),
])
def test_fp16_bf16(dtype, rtol, x_shape, w_shape, attrs):
    _check_low_precision(dtype, rtol, x_shape, w_shape, **attrs)


def test_fp64():
    w, b = data(5, 3, 3, 3, dtype=np.float64), data(5, dtype=np.float64)
    model = conv_model(4, w, b, dtype=np.float64, pads=[1, 0, 0, 1])
    sess = triton_session(model)
    x = data(2, 3, 7, 6, dtype=np.float64)
    np.testing.assert_allclose(sess.run(None, {"X": x})[0], reference(model, {"X": x}),
                               rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ declines


def _declined(model, node_name):
    sess = ort.InferenceSession(model.SerializeToString(),
                                providers=[TRITON, "CPUExecutionProvider"])
    placed = sess._program.partition.assignments[node_name]
    assert placed.provider.name == "CPUExecutionProvider"
    return sess, placed.declined[TRITON]


def test_symbolic_kernel_dims_decline_to_cpu():
    x, w = data(1, 2, 6, 6), data(3, 2, 3, 3)
    node = helper.make_node("Conv", ["X", "W"], ["Y"], name="conv_symbolic_w")
    model = models.make([node], [models.vi("X", shape=list(x.shape)),
                                 models.vi("W", shape=["M", "C", "kh", "kw"])],
                        [models.vi("Y", shape=None)])
    sess, why = _declined(model, "conv_symbolic_w")
    assert "symbolic" in why
    np.testing.assert_allclose(sess.run(None, {"X": x, "W": w})[0],
                               reference(model, {"X": x, "W": w}), rtol=1e-5, atol=1e-5)


def test_four_spatial_axes_decline():
    w = data(2, 1, 2, 2, 2, 2)
    node = helper.make_node("Conv", ["X", "W"], ["Y"], name="conv_4d")
    model = models.make([node], [models.vi("X", shape=[1, 1, 3, 3, 3, 3])],
                        [models.vi("Y", shape=None)], [numpy_helper.from_array(w, "W")])
    _, why = _declined(model, "conv_4d")
    assert "4 spatial axes" in why


def test_wrong_channel_count_raises_naming_the_node():
    model = conv_model(4, data(4, 3, 3, 3))
    sess = triton_session(model)
    with pytest.raises(Exception, match="Conv node 'conv_.*X has 5 channels"):
        sess.run(None, {"X": data(1, 5, 6, 6)})


# ------------------------------------------------------------------ the kernel itself


@pytest.mark.parametrize("w_shape, group", [((20, 32, 3, 3), 1), ((6, 3, 3, 3), 1),
                                            ((8, 1, 3, 3), 8)])
def test_epilogue_hook_adds_a_residual_then_relu(tmp_path, monkeypatch, w_shape, group):
    """An epilogue in the source: load a residual through out_idx_*, add it, relu; its
    kernel args (the residual and its strides) reach the kernel as ``extra``."""
    import torch

    from tritort.codegen import cache, conv
    from tritort.codegen.gemm import Epilogue

    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path))
    w, b = data(*w_shape), data(w_shape[0])
    x = data(2, w_shape[1] * group, 7, 9)
    attrs = dict(group=group, strides=[1, 2], pads=[1, 1, 1, 0])
    y_shape = reference(conv_model(4, w, b, **attrs), {"X": x}).shape
    residual = data(*y_shape)
    ep = Epilogue(params=["r", "sr0", "sr1", "sr2", "sr3"],
                  lines=["res = tl.load(r + (out_idx_0 * sr0 + out_idx_1 * sr1 + out_idx_2 * sr2"
                         " + out_idx_3 * sr3), mask=tile_mask, other=0.0)",
                         "acc = tl.maximum(acc + res, 0.0)"])
    spec = conv.ConvSpec(conv.Window((3, 3), (1, 2), (1, 1), (1, 1, 1, 0)), group, w_shape[1],
                         True, "float")
    source = conv.conv_source("conv_residual_relu", ["test"], spec, "float", True, ep)
    assert "    acc = tl.maximum(acc + res, 0.0)\n    tl.store(y + y_offs," in source
    fn, _, _ = cache.load(source, "conv_residual_relu", "triton-interpreter")
    # the residual as a transposed view: read through its strides
    r = torch.from_numpy(np.ascontiguousarray(residual.transpose(0, 1, 3, 2))).transpose(2, 3)
    y = torch.empty(y_shape)
    conv.launch(fn, spec, torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), y,
                (r, *r.stride()), True, None)  # no tuning table: the heuristic's config
    fused = models.make(
        [helper.make_node("Conv", ["X", "W", "B"], ["C"], **attrs),
         helper.make_node("Add", ["C", "R"], ["S"]), helper.make_node("Relu", ["S"], ["Y"])],
        [models.vi("X", shape=list(x.shape)), models.vi("R", shape=list(y_shape))],
        [models.vi("Y", shape=None)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    exp = reference(fused, {"X": x, "R": residual})
    np.testing.assert_allclose(y.numpy(), exp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("w_shape, group", [((6, 4, 3, 3), 1), ((8, 1, 3, 3), 8)])
@pytest.mark.parametrize("conv_out_read_elsewhere", [False, True])
def test_fused_epilogue_through_the_pipeline(w_shape, group, conv_out_read_elsewhere):
    """Conv -> Add(residual) -> Mul(per-channel) -> Relu as one kernel; with the conv's result
    also a graph output, the kernel stores it and the epilogue stores the rest."""
    c_in = w_shape[1] * group
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["C"], name="conv", group=group,
                              pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["C", "R"], ["S"], name="residual"),
             helper.make_node("Mul", ["S", "scale"], ["T"], name="scale"),
             helper.make_node("Relu", ["T"], ["Y"], name="relu")]
    y_shape = [2, w_shape[0], 7, 9]
    outputs = [models.vi("Y", shape=y_shape)] + \
        ([models.vi("C", shape=y_shape)] if conv_out_read_elsewhere else [])
    inits = [numpy_helper.from_array(data(*w_shape), "W"),
             numpy_helper.from_array(data(w_shape[0]), "B"),
             numpy_helper.from_array(data(w_shape[0], 1, 1), "scale")]
    model = models.make(nodes, [models.vi("X", shape=[2, c_in, 7, 9]),
                                models.vi("R", shape=y_shape)], outputs, inits)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=[TRITON, "CPUExecutionProvider"])
    groups = [(s.ep_name, sorted(n.name for n in s.get_nodes()))
              for s in sess.get_provider_graph_assignment_info()]
    assert groups == [(TRITON, ["conv", "relu", "residual", "scale"])]
    feeds = {"X": data(2, c_in, 7, 9), "R": data(*y_shape)}
    got = sess.run(None, feeds)
    exp = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, e in zip(got, exp):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_output_dtype_is_a_parameter_of_the_source():
    from tritort.codegen import conv
    from tritort.codegen.gemm import Epilogue

    spec = conv.ConvSpec(conv.Window((3, 3), (1, 1), (1, 1), (0, 0, 0, 0)), 1, 3, True, "float")
    source = conv.conv_source("k", ["test"], spec, "bfloat16", True, Epilogue())
    assert "_round_bf16((acc).to(tl.float32)).to(tl.bfloat16)" in source


@pytest.mark.parametrize("itemsize", [2, 4, 8])
def test_gpu_config_heuristic_picks_a_listed_tile(itemsize):
    from tritort.codegen.conv_configs import CONFIGS, pick_config

    tiles = {(c.block_m, c.block_n) for c in CONFIGS[itemsize]}
    for rows, cols, k, groups in [(1, 64, 64, 1), (100352, 64, 576, 1), (3136, 256, 27, 1),
                                  (49, 2048, 512, 1), (12544, 4, 4, 32)]:
        cfg = pick_config(rows, cols, k, groups, itemsize, "tap_major", interpreted=False)
        assert (cfg.block_m, cfg.block_n) in tiles
        assert 16 <= cfg.block_k <= 64 and cfg.block_k & (cfg.block_k - 1) == 0
    direct = pick_config(100352, 96, 9, 96, itemsize, "direct", interpreted=False)
    assert direct.block_m >= 64 and direct.block_n == 8
    small = pick_config(45, 40, 75, 1, itemsize, "flat", interpreted=True)
    assert (small.block_m, small.block_n, small.block_k) == (32, 32, 32)
