"""Focused checks of the linear-algebra / nn kernels against onnx.reference or onnxruntime."""
from __future__ import annotations

import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritort.fallback_cpu import REGISTRY, NodeContext  # noqa: E402
from tritort.graph import Node  # noqa: E402

rng = np.random.default_rng(0)


def _model(op, inputs, attrs, opset, out_types, domain=""):
    names = [f"i{k}" if v is not None else "" for k, v in enumerate(inputs)]
    outs = [f"o{k}" for k in range(len(out_types))]
    node = oh.make_node(op, names, outs, domain=domain, **attrs)
    graph = oh.make_graph(
        [node], "g",
        [oh.make_tensor_value_info(n, oh.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in zip(names, inputs) if n],
        [oh.make_tensor_value_info(o, t, None) for o, t in zip(outs, out_types)])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid(domain, opset)])
    model.ir_version = 10
    feeds = {n: v for n, v in zip(names, inputs) if n}
    return model, node, feeds


def ours(model, node, feeds, opset, domain=""):
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    n = Node.from_proto(node, 0)
    since, factory = REGISTRY.lookup(domain, node.op_type, opset)
    assert factory.__module__.startswith("tritort.fallback_cpu.") and "delegated" not in factory.__module__
    ctx = NodeContext(node.op_type, domain, "", n.attrs, opset, since, n.inputs, n.outputs,
                      [None] * len(n.inputs), [types.get(o) for o in n.outputs], node, {domain: opset})
    return factory(ctx)(*[feeds.get(i) if i else None for i in n.inputs])


def reference(model, feeds, oracle):
    if oracle == "ort":
        import onnxruntime as ort
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(model).run(None, feeds)


def check(op, inputs, attrs=None, opset=22, out_types=(TP.FLOAT,), oracle="ref",
          rtol=1e-4, atol=1e-5):
    model, node, feeds = _model(op, inputs, attrs or {}, opset, out_types)
    got = ours(model, node, feeds, opset)
    want = reference(model, feeds, oracle)
    for k, (w, g) in enumerate(zip(want, got)):
        w = np.asarray(w)
        assert isinstance(g, np.ndarray), f"output {k} is {type(g)}"
        assert g.shape == w.shape, f"output {k}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"output {k}: dtype {g.dtype} != {w.dtype}"
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol,
                                   atol=atol, err_msg=f"output {k}")
    return got


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---- linalg -------------------------------------------------------------------------------

@pytest.mark.parametrize("a_shape,b_shape", [((3,), (3,)), ((3,), (2, 3, 4)), ((2, 1, 3, 4), (5, 4, 2)),
                                             ((4, 0), (0, 3))])
def test_matmul_broadcast_and_1d(a_shape, b_shape):
    check("MatMul", [f32(*a_shape), f32(*b_shape)], opset=13, oracle="ort")


def test_matmul_bfloat16_rounds_once():
    a, b = f32(4, 8).astype(ml_dtypes.bfloat16), f32(8, 3).astype(ml_dtypes.bfloat16)
    check("MatMul", [a, b], opset=13, out_types=(TP.BFLOAT16,), rtol=1e-2)


def test_gemm_old_broadcast_attribute_and_transposes():
    a, b, c = f32(5, 3), f32(4, 5), f32(4)
    check("Gemm", [a, b, c], {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0,
                              "broadcast": 1}, opset=6)
    check("Gemm", [f32(3, 5), f32(5, 4), None], {"alpha": 2.0}, opset=13, oracle="ort")


def test_qlinear_matmul_float8():
    # onnx.reference has no float8 QLinearMatMul: the oracle is dequantize -> matmul -> quantize
    a = f32(3, 4).astype(ml_dtypes.float8_e4m3fn)
    b = f32(4, 2).astype(ml_dtypes.float8_e4m3fn)
    z = np.array(0, ml_dtypes.float8_e4m3fn)
    scales = [np.array(v, np.float32) for v in (1.0, 0.5, 2.0)]
    model, node, feeds = _model("QLinearMatMul", [a, scales[0], z, b, scales[1], z, scales[2], z],
                                {}, 21, (TP.FLOAT8E4M3FN,))
    (y,) = ours(model, node, feeds, 21)
    want = (a.astype(np.float32) @ (b.astype(np.float32) * 0.5) / 2.0).astype(ml_dtypes.float8_e4m3fn)
    assert y.dtype == want.dtype
    np.testing.assert_array_equal(y.astype(np.float32), want.astype(np.float32))


# ---- conv / pool --------------------------------------------------------------------------

@pytest.mark.parametrize("group,auto_pad", [(1, "SAME_LOWER"), (2, "NOTSET"), (4, "SAME_UPPER")])
def test_conv_groups_and_auto_pad(group, auto_pad):
    x, w, b = f32(2, 4, 7, 6), f32(8, 4 // group, 3, 2), f32(8)
    attrs = {"group": group, "strides": [2, 1]}
    attrs.update({"pads": [1, 0, 2, 1], "dilations": [1, 2]} if auto_pad == "NOTSET"
                 else {"auto_pad": auto_pad})
    check("Conv", [x, w, b], attrs, oracle="ort")


def test_conv_1x1_strided_and_empty_batch():
    check("Conv", [f32(1, 6, 5, 5), f32(4, 6, 1, 1)], {"strides": [2, 2]}, oracle="ort")
    y = check("Conv", [f32(0, 3, 5), f32(2, 3, 3)], {"pads": [1, 1]}, oracle="ref")
    assert y[0].shape == (0, 2, 5)


def test_conv_float16():
    x, w = f32(1, 2, 6, 6).astype(np.float16), f32(3, 2, 3, 3).astype(np.float16)
    check("Conv", [x, w], out_types=(TP.FLOAT16,), oracle="ort", rtol=1e-2, atol=1e-2)


def test_conv_transpose_output_shape_groups():
    x, w = f32(2, 4, 3, 4), f32(4, 3, 3, 2)
    check("ConvTranspose", [x, w], {"group": 2, "strides": [2, 3], "output_shape": [8, 11]},
          oracle="ort")
    check("ConvTranspose", [x, w, f32(6)], {"group": 2, "strides": [2, 2], "pads": [1, 0, 0, 1],
                                            "output_padding": [1, 1], "dilations": [1, 2]},
          oracle="ort")


def test_max_pool_indices_storage_order_ceil():
    x = f32(2, 3, 7, 6)
    check("MaxPool", [x], {"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1,
                           "pads": [1, 0, 0, 0], "storage_order": 1},
          out_types=(TP.FLOAT, TP.INT64), oracle="ort")


def test_max_pool_int8_dilated():
    x = rng.integers(-128, 127, (1, 2, 8, 8)).astype(np.int8)
    check("MaxPool", [x], {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]},
          opset=12, out_types=(TP.INT8,), oracle="ort")


@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_pool_ceil_and_pads(include_pad):
    check("AveragePool", [f32(1, 2, 7, 5)], {"kernel_shape": [3, 3], "strides": [2, 2],
                                             "pads": [1, 1, 1, 1], "ceil_mode": 1,
                                             "count_include_pad": include_pad},
          opset=19, oracle="ort")


# ---- normalization ------------------------------------------------------------------------

def test_batch_norm_old_spatial_and_training():
    x, s, b, m, v = f32(2, 3, 4), f32(3), f32(3), f32(3), np.abs(f32(3)) + 0.5
    check("BatchNormalization", [x, s, b, m, v], {"spatial": 1, "is_test": 1}, opset=6)
    check("BatchNormalization", [x, s, b, m, v], {"training_mode": 1, "momentum": 0.8},
          opset=15, out_types=(TP.FLOAT,) * 3)


def test_layer_norm_bfloat16_stats_are_float():
    x = f32(2, 3, 8).astype(ml_dtypes.bfloat16)
    scale = f32(8).astype(ml_dtypes.bfloat16)
    model, node, feeds = _model("LayerNormalization", [x, scale], {"axis": -1}, 17,
                                (TP.BFLOAT16, TP.FLOAT, TP.FLOAT))
    y, mean, inv = ours(model, node, feeds, 17)
    assert (y.dtype, mean.dtype, inv.dtype) == (x.dtype, np.float32, np.float32)
    assert mean.shape == (2, 3, 1)
    xf = x.astype(np.float32)
    np.testing.assert_allclose(mean, xf.mean(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_dropout_inference_mask():
    x = f32(3, 4)
    y, mask = check("Dropout", [x], {}, opset=13, out_types=(TP.FLOAT, TP.BOOL))
    assert mask.dtype == np.bool_ and mask.all() and np.array_equal(y, x)


# ---- recurrent ----------------------------------------------------------------------------

def test_lstm_bidirectional_sequence_lens_peepholes():
    s, b, i, h = 4, 3, 5, 2
    ins = [f32(s, b, i), f32(2, 4 * h, i), f32(2, 4 * h, h), f32(2, 8 * h),
           np.array([4, 1, 3], np.int32), f32(2, b, h), f32(2, b, h), f32(2, 3 * h)]
    check("LSTM", ins, {"hidden_size": h, "direction": "bidirectional", "clip": 1.5},
          opset=14, out_types=(TP.FLOAT,) * 3, oracle="ort")


def test_gru_linear_before_reset_reverse():
    s, b, i, h = 5, 2, 3, 4
    ins = [f32(s, b, i), f32(1, 3 * h, i), f32(1, 3 * h, h), f32(1, 6 * h),
           np.array([2, 5], np.int32)]
    check("GRU", ins, {"hidden_size": h, "direction": "reverse", "linear_before_reset": 1},
          opset=14, out_types=(TP.FLOAT,) * 2, oracle="ort")


# ---- image --------------------------------------------------------------------------------

def test_resize_cubic_antialias_downsample():
    x = f32(1, 1, 9, 7)
    check("Resize", [x, None, np.array([1, 1, 0.4, 0.6], np.float32)],
          {"mode": "cubic", "antialias": 1}, opset=18, rtol=1e-3, atol=1e-4)


def test_resize_nearest_int8_sizes_axes():
    x = rng.integers(-100, 100, (1, 2, 3, 4)).astype(np.int8)
    check("Resize", [x, None, None, np.array([7, 5], np.int64)],
          {"mode": "nearest", "axes": [3, 2], "nearest_mode": "round_prefer_ceil"},
          opset=19, out_types=(TP.INT8,), oracle="ort")


def test_resize10_and_upsample9_legacy_nearest():
    x = f32(1, 1, 3, 4)
    check("Resize", [x, np.array([1, 1, 2.0, 1.5], np.float32)], {"mode": "nearest"},
          opset=10, oracle="ort")
    check("Upsample", [x, np.array([1, 1, 2.0, 3.0], np.float32)], {"mode": "nearest"},
          opset=9, oracle="ort")


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_grid_sample_padding_modes(padding):
    x = f32(2, 3, 5, 4)
    grid = rng.uniform(-1.5, 1.5, (2, 3, 6, 2)).astype(np.float32)
    check("GridSample", [x, grid], {"mode": "linear", "padding_mode": padding}, opset=20,
          oracle="ort", rtol=1e-3, atol=1e-4)


# ---- attention ----------------------------------------------------------------------------

def test_attention_gqa_past_bool_mask_fully_masked_row():
    b, hq, hkv, sq, skv, past, d = 2, 4, 2, 3, 2, 2, 8
    q, k, v = f32(b, hq, sq, d), f32(b, hkv, skv, d), f32(b, hkv, skv, d)
    pk, pv = f32(b, hkv, past, d), f32(b, hkv, past, d)
    mask = rng.random((sq, past + skv)) > 0.3
    mask[1] = False  # a fully masked query row must give zeros, not NaN
    y, *_ = check("Attention", [q, k, v, mask, pk, pv], {"qk_matmul_output_mode": 3},
                  opset=23, out_types=(TP.FLOAT,) * 4)
    assert np.all(y[:, :, 1] == 0)


def test_attention_3d_causal_nonpad():
    b, h, s, d = 2, 2, 4, 4
    q, k, v = f32(b, s, h * d), f32(b, s, h * d), f32(b, s, h * d)
    check("Attention", [q, k, v, None, None, None, np.array([4, 2], np.int64)],
          {"q_num_heads": h, "kv_num_heads": h, "is_causal": 1}, opset=24)


def test_rotary_embedding_interleaved_position_ids():
    b, s, h, d = 2, 3, 2, 8
    x = f32(b, s, h * d)
    cos, sin = f32(10, 3), f32(10, 3)
    pos = np.array([[0, 1, 2], [4, 5, 9]], np.int64)
    check("RotaryEmbedding", [x, cos, sin, pos],
          {"interleaved": 1, "num_heads": h, "rotary_embedding_dim": 6}, opset=23)
