"""Pattern fusions of the optimize stage (tritort/patterns.py), checked two ways: the graph
after optimization has the expected nodes, and the session's outputs match onnxruntime on
the original model."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP, helper, numpy_helper

import tritort as ort
from tests import models
from tritort import loader, optimizer
from tritort.contracts import INTERNAL_DOMAIN
from tritort.options import GraphOptimizationLevel

_rng = np.random.default_rng(3)


def _init(name, *shape, positive=False):
    a = _rng.standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(np.abs(a) + 0.5 if positive else a, name)


def _optimized_ops(model, level=GraphOptimizationLevel.ORT_ENABLE_ALL):
    graph = optimizer.optimize(loader.load(model.SerializeToString()).graph, level)
    return [(n.domain, n.op_type) for n in graph.nodes]


def _check_outputs(model, feeds, rtol=1e-4, atol=1e-5):
    expected = onnxruntime.InferenceSession(model.SerializeToString(),
                                            providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


def _bn(name, x, y, c):
    inits = [_init(f"{name}_s", c), _init(f"{name}_b", c), _init(f"{name}_m", c),
             _init(f"{name}_v", c, positive=True)]
    node = helper.make_node("BatchNormalization", [x] + [i.name for i in inits], [y],
                            name=name, epsilon=1e-3)
    return node, inits


def _conv_model(followers, bias=True, group=1):
    c_in, c_out = 4, 6
    inits = [_init("W", c_out, c_in // group, 3, 3)] + ([_init("B", c_out)] if bias else [])
    nodes = [helper.make_node("Conv", ["X", "W"] + (["B"] if bias else []), ["c0"],
                              pads=[1, 1, 1, 1], group=group, name="conv")]
    value = "c0"
    for i, kind in enumerate(followers):
        out = f"c{i + 1}"
        if kind == "bn":
            node, extra = _bn(f"bn{i}", value, out, c_out)
            inits += extra
        else:
            const = _init(f"k{i}", c_out, 1, 1, positive=kind == "Div")
            inits.append(const)
            node = helper.make_node(kind, [value, const.name], [out], name=f"{kind}{i}")
        nodes.append(node)
        value = out
    nodes.append(helper.make_node("Relu", [value], ["Y"], name="relu"))
    return models.make(nodes, [models.vi("X", TP.FLOAT, ["N", c_in, 7, 7])],
                       [models.vi("Y", TP.FLOAT, None)], inits, opset=17)


@pytest.mark.parametrize("followers,bias,group", [
    (["bn"], True, 1), (["bn"], False, 2), (["bn", "Mul", "Add"], True, 1),
    (["Mul", "Sub", "Div"], False, 1)])
def test_conv_folds_per_channel_affine(followers, bias, group):
    model = _conv_model(followers, bias, group)
    assert _optimized_ops(model) == [("", "Conv"), ("", "Relu")]
    assert len(_optimized_ops(model, GraphOptimizationLevel.ORT_DISABLE_ALL)) == \
        len(followers) + 2
    _check_outputs(model, {"X": _rng.standard_normal((2, 4, 7, 7)).astype(np.float32)})


def test_shared_or_returned_values_are_not_folded():
    model = _conv_model(["bn"])
    model.graph.output.append(helper.make_value_info("c0", helper.make_tensor_type_proto(
        TP.FLOAT, None)))
    assert ("", "BatchNormalization") in _optimized_ops(model)
    _check_outputs(model, {"X": _rng.standard_normal((1, 4, 7, 7)).astype(np.float32)})


def test_non_channel_constant_is_not_folded():
    inits = [_init("W", 6, 4, 3, 3), _init("k", 1, 1, 5, 5)]
    nodes = [helper.make_node("Conv", ["X", "W"], ["c0"], name="conv"),
             helper.make_node("Mul", ["c0", "k"], ["Y"], name="mul")]
    model = models.make(nodes, [models.vi("X", TP.FLOAT, [1, 4, 7, 7])],
                        [models.vi("Y", TP.FLOAT, None)], inits, opset=17)
    assert ("", "Mul") in _optimized_ops(model)
    _check_outputs(model, {"X": _rng.standard_normal((1, 4, 7, 7)).astype(np.float32)})


@pytest.mark.parametrize("trans_b,with_c", [(0, True), (1, True), (1, False)])
def test_gemm_folds_batchnorm(trans_b, with_c):
    k, n = 5, 3
    inits = [_init("B", *((n, k) if trans_b else (k, n)))] + ([_init("C", n)] if with_c else [])
    gemm = helper.make_node("Gemm", ["A", "B"] + (["C"] if with_c else []), ["g"],
                            transB=trans_b, alpha=0.5, beta=2.0, name="gemm")
    bn, extra = _bn("bn", "g", "Y", n)
    model = models.make([gemm, bn], [models.vi("A", TP.FLOAT, ["M", k])],
                        [models.vi("Y", TP.FLOAT, None)], inits + extra, opset=17)
    assert _optimized_ops(model) == [("", "Gemm")]
    _check_outputs(model, {"A": _rng.standard_normal((4, k)).astype(np.float32)})


def test_batchnorm_absorbs_following_affine_ops():
    bn, inits = _bn("bn", "X", "b0", 4)
    mul_k, add_k = _init("mk", 4, 1, 1), _init("ak", 4, 1, 1)
    nodes = [bn, helper.make_node("Mul", ["b0", "mk"], ["b1"], name="mul"),
             helper.make_node("Add", ["ak", "b1"], ["Y"], name="add")]
    model = models.make(nodes, [models.vi("X", TP.FLOAT, [2, 4, 3, 3])],
                        [models.vi("Y", TP.FLOAT, None)], inits + [mul_k, add_k], opset=17)
    assert _optimized_ops(model) == [("", "BatchNormalization")]
    _check_outputs(model, {"X": _rng.standard_normal((2, 4, 3, 3)).astype(np.float32)})


# ------------------------------------------------------------------ attention


def attention_model(scale_kind="Mul", mask=True, mask_first=False, split_scale=False,
                    dtype=TP.FLOAT, heads=2, opset=17, where=None):
    """Q [B,H,S,D], K [B,H,S,D] transposed by a Transpose, V [B,H,S,D]; mask [B,1,1,S]."""
    np_dtype = np.float16 if dtype == TP.FLOAT16 else np.float32
    inits = []
    nodes = [helper.make_node("Transpose", ["K"], ["kt"], perm=[0, 1, 3, 2], name="kt")]
    q, kt = "Q", "kt"
    if split_scale:
        s = numpy_helper.from_array(np.array(0.25 ** 0.5, np_dtype), "sq")
        inits.append(s)
        nodes += [helper.make_node("Mul", ["Q", "sq"], ["qs"], name="qs"),
                  helper.make_node("Mul", ["kt", "sq"], ["ks"], name="ks")]
        q, kt = "qs", "ks"
    nodes.append(helper.make_node("MatMul", [q, kt], ["scores"], name="qk"))
    value = "scores"
    if scale_kind:
        c = numpy_helper.from_array(np.array(8.0 if scale_kind == "Div" else 0.125, np_dtype),
                                    "scale")
        inits.append(c)
        nodes.append(helper.make_node(scale_kind, ["scores", "scale"], ["scaled"], name="sc"))
        value = "scaled"
    if where is not None:  # a bool mask: keep the scores where M holds (or where it does not)
        inits.append(numpy_helper.from_array(np.array(-np.inf, np_dtype), "fill"))
        ins = ["M", value, "fill"] if where == "keep" else ["M", "fill", value]
        nodes.append(helper.make_node("Where", ins, ["masked"], name="mask"))
        value = "masked"
    elif mask:
        ins = ["M", value] if mask_first else [value, "M"]
        nodes.append(helper.make_node("Add", ins, ["masked"], name="mask"))
        value = "masked"
    nodes += [helper.make_node("Softmax", [value], ["p"], axis=-1, name="softmax"),
              helper.make_node("MatMul", ["p", "V"], ["Y"], name="pv")]
    shape = ["B", heads, "S", 8]
    inputs = [models.vi(x, dtype, shape) for x in "QKV"]
    if mask or where:
        inputs.append(models.vi("M", TP.BOOL if where else dtype, ["B", 1, 1, "S"]))
    return models.make(nodes, inputs, [models.vi("Y", dtype, None)], inits, opset=opset)


def attention_feeds(b=2, heads=2, s=5, d=8, dtype=np.float32, mask=True):
    feeds = {x: _rng.standard_normal((b, heads, s, d)).astype(dtype) for x in "QKV"}
    if mask:
        m = np.zeros((b, 1, 1, s), dtype)
        m[0, ..., -2:] = -1e4
        feeds["M"] = m
    return feeds


@pytest.mark.parametrize("scale_kind,mask,mask_first,split_scale", [
    ("Mul", True, False, False), ("Div", True, True, False), (None, False, False, False),
    ("Mul", True, False, True)])
def test_attention_is_fused(scale_kind, mask, mask_first, split_scale):
    model = attention_model(scale_kind, mask, mask_first, split_scale)
    ops = _optimized_ops(model)
    assert (INTERNAL_DOMAIN, "ScaledDotProductAttention") in ops
    assert ("", "Softmax") not in ops and ("", "MatMul") not in ops
    assert _optimized_ops(model, GraphOptimizationLevel.ORT_ENABLE_BASIC).count(
        ("", "MatMul")) == 2
    _check_outputs(model, attention_feeds(mask=mask))


@pytest.mark.parametrize("where", ["keep", "drop"])
def test_attention_with_a_where_mask_is_fused(where):
    model = attention_model(where=where)
    ops = _optimized_ops(model)
    assert (INTERNAL_DOMAIN, "ScaledDotProductAttention") in ops and ("", "Softmax") not in ops
    feeds = attention_feeds(mask=False)
    keep = np.ones((2, 1, 1, 5), bool)
    keep[0, ..., -2:] = False
    feeds["M"] = keep if where == "keep" else ~keep
    _check_outputs(model, feeds)


def test_attention_not_fused_when_probabilities_are_read():
    model = attention_model()
    model.graph.output.append(helper.make_value_info("p", helper.make_tensor_type_proto(
        TP.FLOAT, None)))
    assert ("", "Softmax") in _optimized_ops(model)
    _check_outputs(model, attention_feeds())


def test_attention_not_fused_over_other_axis():
    model = attention_model()
    for n in model.graph.node:
        if n.op_type == "Softmax":
            n.attribute[0].i = 2
    assert ("", "Softmax") in _optimized_ops(model)
    _check_outputs(model, attention_feeds())


def test_optimized_model_with_internal_op_is_saved(tmp_path):
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(attention_model().SerializeToString(), so,
                         providers=["CPUExecutionProvider"])
    import onnx

    saved = onnx.load(str(tmp_path / "opt.onnx"))
    assert any(n.domain == INTERNAL_DOMAIN for n in saved.graph.node)
    assert {o.domain for o in saved.opset_import} >= {"", INTERNAL_DOMAIN}


def test_bfloat16_conv_folds_batchnorm():
    # bfloat16 weights absorb the BatchNormalization too (rounded once, to bfloat16)
    import ml_dtypes

    model = _conv_model(["bn"])
    for model_input in list(model.graph.input) + list(model.graph.output):
        model_input.type.tensor_type.elem_type = TP.BFLOAT16
    for i, init in enumerate(model.graph.initializer):
        value = numpy_helper.to_array(init).astype(ml_dtypes.bfloat16)
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, init.name))
    model.opset_import[0].version = 22  # Conv takes bfloat16 from opset 22
    assert _optimized_ops(model) == [("", "Conv"), ("", "Relu")]
    x = _rng.standard_normal((2, 4, 7, 7)).astype(ml_dtypes.bfloat16)
    got = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    wide = _conv_model(["bn"])  # the same values in float32, on onnxruntime
    for i, init in enumerate(model.graph.initializer):
        value = numpy_helper.to_array(init).astype(np.float32)
        wide.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, init.name))
    expected = onnxruntime.InferenceSession(wide.SerializeToString(), providers=[
        "CPUExecutionProvider"]).run(None, {"X": x.astype(np.float32)})[0]
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=2 ** -6,
                               atol=2 ** -6 * scale)
