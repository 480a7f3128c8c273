"""Family A kernels (elementwise, activations, Cast, reductions, quantization) on tricky inputs.

Each check builds a one-node model, runs it through the NumPy kernel registry and compares
with onnx.reference or onnxruntime (test oracles only).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritort.fallback_cpu import REGISTRY, NodeContext  # noqa: E402
from tritort.dtypes import from_numpy  # noqa: E402

BF16 = ml_dtypes.bfloat16
RNG = np.random.default_rng(7)


def _model(op, inputs, opset, attrs=None, n_out=1):
    names = [name if value is not None else "" for name, value in inputs]
    node = helper.make_node(op, names, [f"y{i}" for i in range(n_out)], **(attrs or {}))
    graph_inputs = [helper.make_tensor_value_info(n, from_numpy(v.dtype).onnx, v.shape)
                    for n, v in inputs if v is not None]
    outputs = [helper.make_tensor_value_info(f"y{i}", 0, None) for i in range(n_out)]
    model = helper.make_model(helper.make_graph([node], "g", graph_inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset <= 22 else 11
    inferred = onnx.shape_inference.infer_shapes(model)
    for out, typed in zip(model.graph.output, inferred.graph.output):
        if typed.type.tensor_type.elem_type:
            out.CopyFrom(typed)
    return model


def _ours(model, feeds):
    proto = model.graph.node[0]
    opset = model.opset_import[0].version
    since, factory = REGISTRY.lookup("", proto.op_type, opset)
    attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    ctx = NodeContext(proto.op_type, "", proto.name, attrs, opset, since, list(proto.input),
                      list(proto.output), proto=proto, opsets={"": opset})
    outs = factory(ctx)(*[feeds.get(n) if n else None for n in proto.input])
    for out in outs:
        assert isinstance(out, np.ndarray), type(out)
    return outs


def _reference(model, feeds):
    from onnx.reference import ReferenceEvaluator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ReferenceEvaluator(model).run(None, feeds)


def _ort(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def check(op, arrays, opset, attrs=None, oracle="ort", n_out=1, rtol=1e-6, atol=1e-6):
    inputs = [(f"x{i}", a) for i, a in enumerate(arrays)]
    feeds = {n: a for n, a in inputs if a is not None}
    model = _model(op, inputs, opset, attrs, n_out)
    expected = (_ort if oracle == "ort" else _reference)(model, feeds)
    got = _ours(model, feeds)
    for g, e in zip(got, expected):
        e = np.asarray(e)
        assert g.shape == e.shape, (g.shape, e.shape)
        if e.dtype.kind in "OUS":
            assert g.tolist() == e.tolist()
            continue
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        np.testing.assert_allclose(g.astype(np.float64), e.astype(np.float64), rtol=rtol,
                                   atol=atol, equal_nan=True)


# ---------------------------------------------------------------------- low precision

@pytest.mark.parametrize("op", ["Add", "Mul", "Div", "Pow", "Max", "Mean"])
def test_bfloat16_binary(op):
    a = RNG.uniform(0.5, 3, (3, 4)).astype(BF16)
    b = RNG.uniform(0.5, 3, (4,)).astype(BF16)
    check(op, [a, b], 22, oracle="ref", rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("op", ["Sigmoid", "Gelu", "Softmax", "Erf", "Exp", "HardSwish"])
def test_bfloat16_unary(op):
    check(op, [RNG.uniform(-3, 3, (2, 5)).astype(BF16)], 22, oracle="ref", rtol=1e-2, atol=1e-2)


def test_float16_sum_accumulates_in_float32():
    xs = [RNG.uniform(-3, 3, (64,)).astype(np.float16) for _ in range(4)]
    check("Sum", xs, 13, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------ Cast

@pytest.mark.parametrize("to", [TP.FLOAT8E4M3FN, TP.FLOAT8E4M3FNUZ, TP.FLOAT8E5M2,
                                TP.FLOAT8E5M2FNUZ])
@pytest.mark.parametrize("saturate", [0, 1])
def test_cast_float8_saturation(to, saturate):
    x = np.array([0.3, -1e6, 1e6, 448.5, 60000, np.inf, -np.inf, np.nan, -0.0, 1e-9],
                 np.float32)
    check("Cast", [x], 21, {"to": to, "saturate": saturate}, oracle="ref", rtol=0, atol=0)


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [0, 1])
def test_cast_float8e8m0_rounding(round_mode, saturate):
    x = np.array([0, 1e-40, 0.124, 0.375, 0.75, 1.5, 1.1, 3, 6, 3e38, 1.2e-38], np.float32)
    check("Cast", [x], 25, {"to": TP.FLOAT8E8M0, "round_mode": round_mode,
                            "saturate": saturate}, oracle="ref", rtol=0, atol=0)


@pytest.mark.parametrize("src,to", [(np.float32, TP.INT4), (np.float16, TP.UINT4),
                                    (np.float32, TP.INT2), (np.int32, TP.INT4),
                                    (np.float32, TP.FLOAT4E2M1)])
def test_cast_sub_byte(src, to):
    x = np.array([-9, -8, -3, -1, 0, 1, 2.5, 7, 8, 15, 100], dtype=src)
    check("Cast", [x], 25, {"to": to}, oracle="ref", rtol=0, atol=0)


def test_cast_from_sub_byte_and_bfloat16():
    check("Cast", [np.arange(-8, 8).astype(ml_dtypes.int4)], 25, {"to": TP.FLOAT16},
          oracle="ref")
    check("Cast", [np.array([1.5, -2.25, 300], BF16)], 21, {"to": TP.INT32}, oracle="ref")
    check("CastLike", [np.array([1.7, -3.2, 1e6], np.float32), np.zeros(1, BF16)], 21,
          oracle="ref")


def test_cast_strings():
    floats = np.array([0.1, 1.0, 1e20, -2.5, np.nan, np.inf, -np.inf, 1 / 3], np.float32)
    check("Cast", [floats], 21, {"to": TP.STRING})
    check("Cast", [np.array([True, False])], 21, {"to": TP.STRING})
    text = np.array(["1.5", "-INF", "inf", "NaN", "1e3", "+INF"], dtype=object)
    check("Cast", [text], 21, {"to": TP.FLOAT})
    check("Cast", [np.array(["15", "-3"], dtype=object)], 21, {"to": TP.INT64})


def test_bitcast():
    x = np.array([1.0, -2.5, np.inf], np.float32)
    check("BitCast", [x], 26, {"to": TP.INT32}, oracle="ref")
    check("BitCast", [np.array(1.5, np.float32)], 26, {"to": TP.UINT32}, oracle="ref")


# ------------------------------------------------------------------- old-opset forms

def test_legacy_broadcast_axis():
    # neither oracle runs opset-6 broadcast attributes: spell the expected alignment out
    a = RNG.uniform(1, 2, (2, 3, 4, 5)).astype(np.float32)
    b = RNG.uniform(1, 2, (3, 4)).astype(np.float32)
    model = _model("Add", [("a", a), ("b", b)], 6, {"broadcast": 1, "axis": 1})
    np.testing.assert_array_equal(_ours(model, {"a": a, "b": b})[0], a + b[None, :, :, None])
    c = RNG.uniform(1, 2, (2,)).astype(np.float32)
    model = _model("Pow", [("a", a), ("c", c)], 6, {"broadcast": 1, "axis": 0})
    np.testing.assert_allclose(_ours(model, {"a": a, "c": c})[0],
                               a ** c[:, None, None, None], rtol=1e-6)


def test_clip_attribute_and_input_forms():
    x = RNG.uniform(-5, 5, (3, 4)).astype(np.float32)
    check("Clip", [x], 6, {"min": -1.0, "max": 2.0})
    check("Clip", [x], 6, {"max": 2.0})
    check("Clip", [x, None, np.array(1.5, np.float32)], 13)
    check("Clip", [x, np.array(3, np.float32), np.array(1, np.float32)], 13)  # min > max


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_axis_semantics(op, opset):
    x = RNG.uniform(-3, 3, (2, 3, 4)).astype(np.float32)
    x[0, 0, :2] = 2.0  # ties for Hardmax
    check(op, [x], opset, {"axis": 1}, rtol=1e-5)


def test_reduce_axes_attribute_then_input():
    x = RNG.uniform(-3, 3, (2, 3, 4)).astype(np.float32)
    check("ReduceSum", [x], 11, {"axes": [0, -1], "keepdims": 0}, rtol=1e-5)
    check("ReduceMean", [x, np.array([1], np.int64)], 18, {"keepdims": 1}, rtol=1e-5)
    check("ReduceLogSumExp", [x], 13, {"axes": [2]}, rtol=1e-5)
    check("ReduceSumSquare", [x, np.array([], np.int64)], 18, {"noop_with_empty_axes": 1})
    check("ReduceSum", [x, np.array([], np.int64)], 13, {"noop_with_empty_axes": 1})


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
def test_arg_select_last_index(op):
    x = np.array([[1, 3, 3, 0], [2, 2, 0, 0]], np.float32)
    for last in (0, 1):
        check(op, [x], 13, {"axis": 1, "keepdims": 0, "select_last_index": last})


def test_cumsum_exclusive_reverse():
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    check("CumSum", [x, np.array(1, np.int64)], 14, {"exclusive": 1, "reverse": 1})
    check("CumProd", [x + 1, np.array(0, np.int64)], 26, {"exclusive": 1}, oracle="ref")


# -------------------------------------------------------------------- integer semantics

def test_integer_div_mod_signs():
    a = np.array([7, -7, 7, -7, 5, -1], np.int32)
    b = np.array([2, 2, -2, -2, 7, 3], np.int32)
    check("Div", [a, b], 14)
    check("Mod", [a, b], 13)
    check("Mod", [a, b], 13, {"fmod": 1})


def test_pow_mixed_types():
    check("Pow", [np.array([1, 2, 3], np.int32), np.array([4.0, 0.5, 2], np.float32)], 15)
    check("Pow", [np.array([1.5, 2, 3], np.float32), np.array([2, 3, 0], np.int64)], 15)
    check("Pow", [np.array([2.0, 3], np.float16), np.array([2.0, 0.5], np.float32)], 15,
          rtol=1e-3)


# ------------------------------------------------------------------ empty and 0-d

def test_empty_set_reductions():
    x = np.zeros((2, 0, 4), np.float32)
    axes = np.array([1], np.int64)
    for op in ("ReduceMax", "ReduceMin", "ReduceProd", "ReduceLogSumExp", "ReduceL2"):
        check(op, [x, axes], 18, oracle="ref")


def test_empty_broadcast_and_scalars():
    check("Add", [np.zeros((0, 3), np.float32), np.ones((1, 3), np.float32)], 14)
    check("Less", [np.array(2.0, np.float32), np.array(3.0, np.float32)], 13)
    check("Where", [np.array(True), np.array(1.0, np.float32), np.array(2.0, np.float32)], 16)


# ---------------------------------------------------------------------- quantization

def test_quantize_per_axis_and_blocked():
    x = RNG.uniform(-20, 20, (2, 6, 4)).astype(np.float32)
    scale = np.array([0.3, 0.5, 1.1, 2.0, 0.1, 0.7], np.float32)
    check("QuantizeLinear", [x, scale, np.full(6, 3, np.int8)], 13, {"axis": 1}, rtol=0, atol=0)
    blocked = RNG.uniform(0.1, 2, (2, 2, 4)).astype(np.float32)
    zero = np.full((2, 2, 4), 1, ml_dtypes.int4)
    check("QuantizeLinear", [x, blocked, zero], 21, {"axis": 1, "block_size": 3},
          oracle="ref", rtol=0, atol=0)
    q = np.asarray(RNG.integers(-8, 8, (2, 6, 4))).astype(ml_dtypes.int4)
    check("DequantizeLinear", [q, blocked, zero], 21, {"axis": 1, "block_size": 3},
          oracle="ref")


def test_quantize_float8_and_output_dtype():
    x = np.array([0.5, -3, 1e5, -1e5, np.nan], np.float32)
    zero = np.zeros((), ml_dtypes.float8_e4m3fn)
    for saturate in (0, 1):
        check("QuantizeLinear", [x, np.array(2.0, np.float32), zero], 21,
              {"saturate": saturate}, oracle="ref", rtol=0, atol=0)
    check("QuantizeLinear", [x[:4], np.array(0.5, np.float32)], 23,
          {"output_dtype": TP.UINT16}, oracle="ref", rtol=0, atol=0)


@pytest.mark.parametrize("values", [[-3.0, 0.5, 7.25, 2.0], [1.0, 2.0, 3.0], [0.0, 0.0]])
def test_dynamic_quantize_linear(values):
    check("DynamicQuantizeLinear", [np.array(values, np.float32)], 11, n_out=3, rtol=0, atol=0)
