"""Row-wise anchors with both sides (interpreter mode, against onnxruntime): a residual Add
(+ bias) computed in LayerNormalization / RMSNormalization / Softmax kernels, its sum stored
once when the residual stream reads it again, and pointwise consumers of their
element-shaped results computed before the store."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper

import tritort as ort
from tests import models
from tests.triton_env import requires_triton

pytestmark = requires_triton
T = "TritonExecutionProvider"
D = 16


def _groups(model, dtype=np.float32):
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    # BASIC: the graph as written (EXTENDED would rewrite Add + LayerNorm to SkipLayerNorm)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=[T, "CPUExecutionProvider"])
    groups = [(s.ep_name, [n.name for n in s.get_nodes()])
              for s in sess.get_provider_graph_assignment_info()]
    return sess, groups


def _check(model, sess, feeds, tol):
    want = onnxruntime.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"]).run(None, feeds)
    got = sess.run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64),
                                   rtol=tol, atol=tol)


def _params(dtype, *names, seed=1):
    rng = np.random.default_rng(seed)
    elem = {np.float32: TP.FLOAT, np.float16: TP.FLOAT16}[dtype]
    return [helper.make_tensor(n, elem, [D], rng.standard_normal(D).astype(dtype).tobytes(),
                               raw=True) for n in names]


def _feeds(dtype, *names, shape=(2, 3, D)):
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(shape).astype(dtype) for n in names}


NORMS = {"LayerNormalization": (["g", "b"], 18), "RMSNormalization": (["g"], 23)}


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float16, 4e-3)])
def test_residual_and_bias_prologue_stores_the_stream_and_epilogue_scales(norm, dtype, tol):
    """Pre-norm block: h = (x + bias) + r feeds the norm and the next residual; the norm's
    result goes through Relu and a scale before anyone reads it."""
    params, opset = NORMS[norm]
    elem = {np.float32: TP.FLOAT, np.float16: TP.FLOAT16}[dtype]
    nodes = [helper.make_node("Add", ["X", "bias"], ["xb"], name="bias_add"),
             helper.make_node("Add", ["xb", "R"], ["h"], name="residual"),
             helper.make_node(norm, ["h", *params], ["y"], name="norm", axis=-1),
             helper.make_node("Relu", ["y"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "g2"], ["z"], name="scale"),
             helper.make_node("MatMul", ["z", "W"], ["m"], name="proj"),
             helper.make_node("Add", ["h", "m"], ["out"], name="next_residual")]
    rng = np.random.default_rng(2)
    weight = helper.make_tensor("W", elem, [D, D], (rng.standard_normal((D, D)) / 4)
                                .astype(dtype).tobytes(), raw=True)
    model = models.make(nodes, [models.vi("X", elem, [2, 3, D]), models.vi("R", elem, [2, 3, D])],
                        [models.vi("out", elem, [2, 3, D])],
                        _params(dtype, "bias", "g2", *params) + [weight], opset=opset)
    sess, groups = _groups(model)
    assert (T, ["bias_add", "residual", "norm", "relu", "scale"]) in groups, groups
    _check(model, sess, _feeds(dtype, "X", "R"), tol)


def test_norm_result_read_elsewhere_is_stored_beside_the_epilogue():
    nodes = [helper.make_node("Add", ["X", "R"], ["h"], name="residual"),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["y"], name="norm"),
             helper.make_node("Mul", ["y", "g"], ["z"], name="scale")]
    model = models.make(nodes, [models.vi("X", shape=[2, 3, D]), models.vi("R", shape=[2, 3, D])],
                        [models.vi("z", shape=[2, 3, D]), models.vi("y", shape=[2, 3, D]),
                         models.vi("h", shape=[2, 3, D])], _params(np.float32, "g", "b"),
                        opset=18)
    sess, groups = _groups(model)
    assert groups == [(T, ["residual", "norm", "scale"])]
    _check(model, sess, _feeds(np.float32, "X", "R"), 2e-5)


def test_norm_with_statistics_outputs_takes_a_prologue_only():
    nodes = [helper.make_node("Add", ["X", "R"], ["h"], name="residual"),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["y", "mean", "inv"],
                              name="norm"),
             helper.make_node("Neg", ["y"], ["z"], name="neg")]
    outs = [models.vi("z", shape=[2, 3, D]), models.vi("mean", shape=[2, 3, 1]),
            models.vi("inv", shape=[2, 3, 1])]
    model = models.make(nodes, [models.vi("X", shape=[2, 3, D]), models.vi("R", shape=[2, 3, D])],
                        outs, _params(np.float32, "g", "b"), opset=18)
    sess, groups = _groups(model)
    assert groups == [(T, ["residual", "norm"]), (T, ["neg"])]
    _check(model, sess, _feeds(np.float32, "X", "R"), 2e-5)


def test_softmax_mask_prologue_and_nan_guard_epilogue():
    """The attention probabilities as exported: scores + mask, Softmax, then the IsNaN ->
    Where guard and a dropout-free scale, in one kernel."""
    nodes = [helper.make_node("Add", ["S", "M"], ["masked"], name="mask_add"),
             helper.make_node("Softmax", ["masked"], ["p"], name="softmax", axis=-1),
             helper.make_node("IsNaN", ["p"], ["nan"], name="isnan"),
             helper.make_node("Where", ["nan", "zero", "p"], ["guarded"], name="guard"),
             helper.make_node("Mul", ["guarded", "g"], ["y"], name="scale")]
    zero = helper.make_tensor("zero", TP.FLOAT, [], [0.0])
    model = models.make(nodes, [models.vi("S", shape=[2, 3, D]), models.vi("M", shape=[2, 1, D])],
                        [models.vi("y", shape=[2, 3, D])], [zero] + _params(np.float32, "g"),
                        opset=18)
    sess, groups = _groups(model)
    assert groups == [(T, ["mask_add", "softmax", "isnan", "guard", "scale"])]
    feeds = _feeds(np.float32, "S")
    feeds["M"] = np.where(np.arange(D) % 5 == 0, -np.inf, 0).astype(np.float32) \
        .reshape(1, 1, D).repeat(2, 0)
    _check(model, sess, feeds, 2e-6)


def test_long_rows_keep_the_byte_score():
    """A row too long to stay in cache between passes: the residual is re-read on each of
    the three passes, so the Add stays a kernel of its own."""
    n = 32768
    nodes = [helper.make_node("Add", ["X", "R"], ["h"], name="residual"),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["y"], name="norm")]
    rng = np.random.default_rng(0)
    params = [helper.make_tensor(k, TP.FLOAT, [n], rng.standard_normal(n).astype(np.float32))
              for k in ("g", "b")]
    model = models.make(nodes, [models.vi("X", shape=[2, n]), models.vi("R", shape=[2, n])],
                        [models.vi("y", shape=[2, n])], params, opset=18)
    sess, groups = _groups(model)
    assert groups == [(T, ["residual"]), (T, ["norm"])]
    _check(model, sess, _feeds(np.float32, "X", "R", shape=(2, n)), 2e-5)


def _ms(op, inputs, outputs, name, **attrs):
    return helper.make_node(op, inputs, outputs, name=name, domain="com.microsoft", **attrs)


@pytest.mark.parametrize("op", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
def test_skip_norm_epilogue(op):
    params = ["g", "b"] if op == "SkipLayerNormalization" else ["g"]
    nodes = [_ms(op, ["X", "R", *params], ["y"], "norm", epsilon=1e-5),
             helper.make_node("Relu", ["y"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "g2"], ["z"], name="scale")]
    model = models.make(nodes, [models.vi("X", shape=[2, 3, D]), models.vi("R", shape=[2, 3, D])],
                        [models.vi("z", shape=[2, 3, D])],
                        _params(np.float32, "g2", *params), opset=18)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    sess, groups = _groups(model)
    assert groups == [(T, ["norm", "relu", "scale"])]
    _check(model, sess, _feeds(np.float32, "X", "R"), 2e-5)


def test_simplified_norm_prologue_and_epilogue():
    """onnxruntime's default-domain RMS normalization, as T5 and LLaMA exports carry it."""
    nodes = [helper.make_node("Add", ["X", "R"], ["h"], name="residual"),
             helper.make_node("SimplifiedLayerNormalization", ["h", "g"], ["y"], name="norm",
                              axis=-1, epsilon=1e-6),
             helper.make_node("Mul", ["y", "g2"], ["z"], name="scale"),
             helper.make_node("Add", ["z", "h"], ["out"], name="next_residual")]
    model = models.make(nodes, [models.vi("X", shape=[2, 3, D]), models.vi("R", shape=[2, 3, D])],
                        [models.vi("out", shape=[2, 3, D])], _params(np.float32, "g", "g2"),
                        opset=18)
    sess, groups = _groups(model)
    assert (T, ["residual", "norm", "scale"]) in groups, groups
    _check(model, sess, _feeds(np.float32, "X", "R"), 2e-5)


def test_stored_data_never_feeds_the_kernel_back():
    """The stored sum is read by nodes that also make the norm's scale and a value its
    epilogue reads: fusing the Add would make the two kernels wait on each other."""
    nodes = [helper.make_node("Add", ["X", "R"], ["h"], name="residual"),
             helper.make_node("Sigmoid", ["h"], ["s"], name="gate"),
             helper.make_node("ReduceMean", ["s", "axes"], ["scale"], name="scale_of_h",
                              keepdims=0),
             helper.make_node("LayerNormalization", ["h", "scale", "b"], ["y"], name="norm"),
             helper.make_node("Mul", ["y", "s"], ["z"], name="gated")]
    axes = helper.make_tensor("axes", TP.INT64, [2], [0, 1])
    model = models.make(nodes, [models.vi("X", shape=[2, 3, D]), models.vi("R", shape=[2, 3, D])],
                        [models.vi("z", shape=[2, 3, D]), models.vi("scale", shape=[D])],
                        _params(np.float32, "b") + [axes], opset=18)
    sess, groups = _groups(model)
    assert (T, ["residual", "gate"]) in groups and (T, ["norm", "gated"]) in groups, groups
    _check(model, sess, _feeds(np.float32, "X", "R"), 2e-5)
