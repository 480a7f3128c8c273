"""Output types of onnxruntime's contrib ops at load time (tritort/contrib_shapes.py): the
forms published models carry that left outputs untyped, and so kept the next nodes off Triton.
Each graph is checked three ways: the loader's types, onnxruntime's numbers on the CPU
provider, and the Triton placement of the nodes after the contrib op."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.triton_env import requires_triton, triton_session
from tritort import loader

onnxruntime = pytest.importorskip("onnxruntime")

MS = "com.microsoft"
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
CPU = ["CPUExecutionProvider"]


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=OPSETS)


def _dims(loaded, name):
    t = loaded.graph.value_types[name].tensor_type
    return t.elem_type, [d.dim_value if d.HasField("dim_value") else
                         (d.dim_param or None) for d in t.shape.dim]


def _same_as_onnxruntime(model, feeds, atol=1e-5):
    import tritort as ort

    want = onnxruntime.InferenceSession(model.SerializeToString(), providers=CPU).run(
        None, feeds)
    got = ort.InferenceSession(model.SerializeToString(), providers=CPU).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=atol)


# ------------------------------------------------------------------ SkipLayerNormalization


def _gpt2_like_skip_chain():
    """What onnxruntime's optimizer writes into GPT-2: the attention's projection reshaped to
    (batch, seq, hidden) by a shape computed at run time, after a contrib op (Attention there,
    Gelu here), so the loader's walk types the Reshape, with every dim unknown and unnamed,
    with the residual stream (batch, seq, 32) as skip; the next SkipLayerNormalization adds
    a projection of the first one's output to its sum output."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((32, 32)).astype(np.float32),
             "b": rng.standard_normal(32).astype(np.float32),
             "gamma": rng.standard_normal(32).astype(np.float32),
             "beta": rng.standard_normal(32).astype(np.float32),
             "flat": np.array([-1, 32], np.int64)}
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["x2"], name="flatten"),
        helper.make_node("Gelu", ["x2"], ["act"], name="act", domain=MS),
        helper.make_node("Gemm", ["act", "w", "b"], ["proj"], name="proj"),
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
        helper.make_node("Reshape", ["proj", "x_shape"], ["proj3"], name="unflatten"),
        helper.make_node("SkipLayerNormalization", ["proj3", "x", "gamma", "beta"],
                         ["y0", "", "", "sum0"], name="skip0", domain=MS, epsilon=1e-5),
        helper.make_node("MatMul", ["y0", "w"], ["fc"], name="fc"),
        helper.make_node("SkipLayerNormalization", ["fc", "sum0", "gamma", "beta", "b"],
                         ["y1", "", "", "sum1"], name="skip1", domain=MS, epsilon=1e-5),
        helper.make_node("Relu", ["y1"], ["out"], name="after"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 32])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("out", "sum1")]
    return _model(nodes, [x], outs, inits)


def test_skip_norm_output_takes_the_skips_dims_when_the_input_has_none():
    loaded = loader.load(_gpt2_like_skip_chain())
    for name in ("y0", "sum0", "fc", "y1", "sum1", "out"):
        assert _dims(loaded, name) == (TensorProto.FLOAT, ["batch", "seq", 32]), name


def test_skip_norm_known_dims_win_over_unknown_ones_on_either_side():
    from tritort.contrib_shapes import _skip_norm, _tensor

    def t(*dims):
        out = []
        for d in dims:
            x = onnx.TensorShapeProto.Dimension()
            if isinstance(d, int):
                x.dim_value = d
            elif d:
                x.dim_param = d
            out.append(x)
        return _tensor(TensorProto.FLOAT, out)

    def shape(rule_out):
        return [d.dim_value or d.dim_param or None for d in rule_out.tensor_type.shape.dim]

    y = _skip_norm(None, [t("unk__1", None, 32), t("b", "s", None), None, None])
    assert shape(y[0]) == ["b", "s", 32] and shape(y[3]) == ["b", "s", 32]
    assert shape(y[1]) == ["b", "s", 1]
    # a 2-D skip (seq, hidden) and a batch-1 skip leave the input's batch
    assert shape(_skip_norm(None, [t("n", None, None), t("s", 32)])[0]) == ["n", "s", 32]
    assert shape(_skip_norm(None, [t("n", None, 32), t(1, "s", 32)])[0]) == ["n", "s", 32]


def test_skip_norm_chain_matches_onnxruntime():
    x = np.random.default_rng(1).standard_normal((2, 3, 32)).astype(np.float32)
    _same_as_onnxruntime(_gpt2_like_skip_chain(), {"x": x}, atol=1e-4)


@requires_triton
def test_skip_norm_chain_is_claimed_by_triton():
    model = _gpt2_like_skip_chain()
    x = np.random.default_rng(1).standard_normal((2, 3, 32)).astype(np.float32)
    sess = triton_session(model, on_triton=["skip0", "fc", "skip1", "after"])
    want = onnxruntime.InferenceSession(model.SerializeToString(), providers=CPU).run(
        None, {"x": x})
    for g, w in zip(sess.run(None, {"x": x}), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ the QOperator set

SCALES = {"xs": np.float32(0.05), "ys": np.float32(0.04), "ws": np.float32(0.02)}


def _qop_model(op_nodes, out_name, out_dims, extra_inits=None):
    """Quantize x (batch, 4, 6, 6), run ``op_nodes``, then a float op chain that needs the
    quantized output's type: DequantizeLinear of it."""
    inits = {**SCALES, "xz": np.array(128, np.uint8), "yz": np.array(120, np.uint8),
             **(extra_inits or {})}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["q"], name="quant"),
             *op_nodes,
             helper.make_node("DequantizeLinear", [out_name, "ys", "yz"], ["y"], name="dequant")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _model(nodes, [x], [y], inits), out_dims


def _qop_cases():
    def qnode(op, ins, name="op", out="o", **attrs):
        return helper.make_node(op, ins, [out], name=name, domain=MS, **attrs)

    rng = np.random.default_rng(0)
    w = rng.integers(-20, 20, (5, 4)).astype(np.int8)
    yield "QLinearAdd", _qop_model([qnode("QLinearAdd", ["q", "xs", "xz", "q", "xs", "xz",
                                                          "ys", "yz"])],
                                   "o", ["batch", 4, 6, 6])
    yield "QLinearMul", _qop_model([qnode("QLinearMul", ["q", "xs", "xz", "r", "xs", "xz",
                                                          "ys", "yz"])],
                                   "o", ["batch", 4, 6, 6],
                                   {"r": np.full((1, 4, 1, 1), 140, np.uint8)})
    for op in ("QLinearSigmoid", "QLinearLeakyRelu"):
        yield op, _qop_model([qnode(op, ["q", "xs", "xz", "ys", "yz"])], "o",
                             ["batch", 4, 6, 6])
    yield "QLinearSoftmax", _qop_model(
        [qnode("QLinearSoftmax", ["q", "xs", "xz", "ys", "yz"], axis=-1, opset=13)], "o",
        ["batch", 4, 6, 6])
    yield "QLinearConcat", _qop_model(
        [qnode("QLinearConcat", ["ys", "yz", "q", "xs", "xz", "q", "xs", "xz"], axis=1)], "o",
        ["batch", 8, 6, 6])
    yield "QLinearAveragePool", _qop_model(
        [qnode("QLinearAveragePool", ["q", "xs", "xz", "ys", "yz"], kernel_shape=[2, 2],
               strides=[2, 2])], "o", ["batch", 4, 3, 3])
    yield "QLinearGlobalAveragePool", _qop_model(
        [qnode("QLinearGlobalAveragePool", ["q", "xs", "xz", "ys", "yz"])], "o",
        ["batch", 4, 1, 1])
    yield "QLinearGlobalAveragePool+MaxPool+Flatten+QGemm", _qop_model(
        [helper.make_node("MaxPool", ["q"], ["p"], name="pool", kernel_shape=[2, 2],
                          strides=[2, 2]),
         qnode("QLinearGlobalAveragePool", ["p", "xs", "xz", "xs", "xz"], name="gap", out="g"),
         helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
         qnode("QGemm", ["f", "xs", "xz", "w", "ws", "wz", "", "ys", "yz"], name="gemm",
               transB=1)], "o", ["batch", 5],
        {"w": w, "wz": np.array(0, np.int8)})


@pytest.mark.parametrize("zero_type", [np.uint8, np.int8])
@pytest.mark.parametrize("case", [c[0] for c in _qop_cases()])
def test_qoperator_outputs_are_typed_and_match_onnxruntime(case, zero_type):
    model, dims = next(c[1] for c in _qop_cases() if c[0] == case)
    if zero_type == np.int8:  # the same graph with int8 codes (the QGemm weight stays int8)
        for t in model.graph.initializer:
            if t.name in ("xz", "yz"):
                t.CopyFrom(numpy_helper.from_array(np.array(-3, np.int8), t.name))
            elif t.name == "r":
                t.CopyFrom(numpy_helper.from_array(np.full((1, 4, 1, 1), 9, np.int8), "r"))
    elem = TensorProto.UINT8 if zero_type == np.uint8 else TensorProto.INT8
    loaded = loader.load(model)
    assert _dims(loaded, "o") == (elem, dims)
    assert _dims(loaded, "y") == (TensorProto.FLOAT, dims)
    x = np.random.default_rng(2).standard_normal((2, 4, 6, 6)).astype(np.float32)
    _same_as_onnxruntime(model, {"x": x}, atol=0.04 * 1.001)  # one step at most


def test_qgemm_without_y_scale_is_float():
    w = np.random.default_rng(0).integers(-20, 20, (4, 5)).astype(np.int8)
    inits = {"xs": np.float32(0.05), "xz": np.uint8(128), "w": w, "ws": np.float32(0.02),
             "wz": np.int8(0)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["q"], name="quant"),
             helper.make_node("QGemm", ["q", "xs", "xz", "w", "ws", "wz"], ["o"], name="gemm",
                              domain=MS),
             helper.make_node("Relu", ["o"], ["y"], name="after")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    assert _dims(loader.load(model), "o") == (TensorProto.FLOAT, ["n", 5])
    _same_as_onnxruntime(model, {"x": np.random.default_rng(3).standard_normal(
        (3, 4)).astype(np.float32)}, atol=1e-4)


@requires_triton
def test_float_ops_after_qoperator_outputs_are_claimed_by_triton():
    """What the QOperator CNN left on the CPU: MaxPool, Flatten and DequantizeLinear after
    QLinearGlobalAveragePool and QGemm ("rank/element type unknown at load time")."""
    model, _ = next(c[1] for c in _qop_cases() if c[0].endswith("QGemm"))
    x = np.random.default_rng(2).standard_normal((2, 4, 6, 6)).astype(np.float32)
    sess = triton_session(model, on_triton=["pool", "flatten", "dequant"])
    want = onnxruntime.InferenceSession(model.SerializeToString(), providers=CPU).run(
        None, {"x": x})
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want[0], rtol=0,
                               atol=0.04 * 1.001)
