"""onnxruntime's ``com.microsoft`` operators on tritort's NumPy provider, against onnxruntime.

Each test builds a small model with onnx.helper and runs it on both runtimes (CPU providers,
onnxruntime with its graph optimizations off so it runs the node as written). float32 results
are compared at rtol 1e-5 unless a test says why it uses another tolerance. Helpers here are
shared by the other tests/test_contrib_ops_*.py files.

This file: the normalizations, the GELU family and the other activations, BiasAdd, FusedMatMul,
FusedConv, and the error for a contrib op without a kernel.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import tritort as ort
from tritort import fallback_cpu
from tritort.errors import NotImplemented
from tritort.fallback_cpu.registry import REGISTRY, NodeContext
from tritort.graph import Node

MS = "com.microsoft"
CPU = ["CPUExecutionProvider"]


class Rng:
    """Each test draws the same data whatever ran before it (xdist reorders tests)."""

    gen = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seeded(request):
    Rng.gen = np.random.default_rng(zlib.crc32(request.node.name.encode()))


def randn(*shape, dtype=np.float32, scale=1.0):
    return np.asarray(Rng.gen.standard_normal(shape) * scale).astype(dtype)


def randint(lo, hi, *shape, dtype=np.int32):
    return Rng.gen.integers(lo, hi, shape).astype(dtype)


def _elem(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def build(nodes, feeds, outputs, inits=None, opset=17, out_types=None, ms_opset=1):
    """A model of ``nodes``: ``feeds`` become graph inputs of their exact shapes, ``inits``
    initializers; ``outputs`` typed from ``out_types`` (name -> element type) or untyped."""
    inits = inits or {}
    ins = [helper.make_tensor_value_info(k, _elem(v.dtype), v.shape) for k, v in feeds.items()]
    if out_types is None:
        outs = [helper.make_empty_tensor_value_info(o) for o in outputs]
    else:
        outs = [helper.make_tensor_value_info(o, out_types[o], None) for o in outputs]
    graph = helper.make_graph(nodes, "g", ins, outs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(MS, ms_opset)])
    model.ir_version = 10
    return model


def run_ort(model, feeds):
    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = onnxruntime.InferenceSession(model.SerializeToString(), so, providers=CPU)
    return sess.run(None, feeds)


def run_tritort(model, feeds, **options):
    so = ort.SessionOptions()
    for k, v in options.items():
        setattr(so, k, v)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=CPU)
    return sess.run(None, feeds)


def assert_close(got, want, rtol, atol, name=""):
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    if got.dtype.kind in "iub":
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol,
                                   atol=atol, err_msg=name)


def check(nodes, feeds, outputs, inits=None, rtol=1e-5, atol=1e-6, opset=17, skip=(),
          tol=None, types=None):
    """Run ``nodes`` on onnxruntime and tritort and compare every output (but ``skip``);
    ``tol`` maps an output name to its own (rtol, atol); ``types`` declares output element
    types onnxruntime cannot infer. Returns tritort's outputs."""
    if isinstance(nodes, onnx.NodeProto):
        nodes = [nodes]
    if types is None:
        want = run_ort(build(nodes, feeds, outputs, inits, opset), feeds)
        types = {o: _elem(w.dtype) for o, w in zip(outputs, want)}
    else:
        types = {o: types.get(o, TensorProto.FLOAT) for o in outputs}
        want = run_ort(build(nodes, feeds, outputs, inits, opset, out_types=types), feeds)
    model = build(nodes, feeds, outputs, inits, opset, out_types=types)
    got = run_tritort(model, feeds)
    for name, g, w in zip(outputs, got, want):
        if name not in skip:
            r, a = (tol or {}).get(name, (rtol, atol))
            assert_close(g, w, r, a, name)
    return got


def run_kernel(node, feeds, opset=17):
    """``node`` straight through the NumPy registry, no session (for the default-domain ops
    onnx's checker refuses at load time)."""
    opsets = {"": opset, MS: 1}
    n = Node.from_proto(node, 0)
    since, factory = REGISTRY.lookup(n.domain, n.op_type, opsets[n.domain])
    ctx = NodeContext(n.op_type, n.domain, n.name, n.attrs, opsets[n.domain], since, n.inputs,
                      n.outputs, proto=node, opsets=opsets)
    return factory(ctx)(*[feeds.get(i) if i else None for i in n.inputs])


def ms(op_type, inputs, outputs, **attrs):
    return helper.make_node(op_type, inputs, outputs, domain=MS, **attrs)


# ------------------------------------------------------------------ normalizations


@pytest.mark.parametrize("skip_shape", ["BSH", "1SH", "SH"])
@pytest.mark.parametrize("with_beta,with_bias", [(True, True), (True, False), (False, True),
                                                 (False, False)])
def test_skip_layer_normalization(skip_shape, with_beta, with_bias):
    b, s, hidden = 2, 5, 16
    feeds = {"x": randn(b, s, hidden), "skip": randn(*{"BSH": (b, s, hidden), "1SH": (1, s, hidden),
                                                       "SH": (s, hidden)}[skip_shape]),
             "gamma": randn(hidden)}
    inputs = ["x", "skip", "gamma", "", ""]
    if with_beta:
        feeds["beta"] = randn(hidden)
        inputs[3] = "beta"
    if with_bias:
        feeds["bias"] = randn(hidden)
        inputs[4] = "bias"
    while inputs[-1] == "":
        inputs.pop()
    node = ms("SkipLayerNormalization", inputs, ["y", "mean", "inv_std", "sum"], epsilon=1e-5)
    check(node, feeds, ["y", "mean", "inv_std", "sum"])


def test_skip_layer_normalization_default_epsilon_and_2d_input():
    feeds = {"x": randn(7, 32), "skip": randn(7, 32), "gamma": randn(32), "beta": randn(32)}
    check(ms("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"]), feeds, ["y"])


def test_skip_layer_normalization_only_sum_output():
    feeds = {"x": randn(2, 3, 8), "skip": randn(2, 3, 8), "gamma": randn(8), "bias": randn(8)}
    check(ms("SkipLayerNormalization", ["x", "skip", "gamma", "", "bias"], ["y", "", "", "sum"]),
          feeds, ["y", "sum"])


def test_skip_layer_normalization_float16():
    """float16: statistics in float32, the stored sum rounded to float16 first."""
    feeds = {k: v.astype(np.float16) for k, v in {
        "x": randn(2, 4, 32), "skip": randn(2, 4, 32), "gamma": randn(32), "beta": randn(32),
        "bias": randn(32)}.items()}
    check(ms("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"],
             ["y", "mean", "inv_std", "sum"]), feeds, ["y", "mean", "inv_std", "sum"],
          rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 16), (6, 24)])
def test_skip_simplified_layer_normalization(with_bias, shape):
    feeds = {"x": randn(*shape), "skip": randn(*shape), "gamma": randn(shape[-1])}
    inputs = ["x", "skip", "gamma"]
    if with_bias:
        feeds["bias"] = randn(shape[-1])
        inputs.append("bias")
    check(ms("SkipSimplifiedLayerNormalization", inputs, ["y", "mean", "inv_std", "sum"],
             epsilon=1e-6), feeds, ["y", "mean", "inv_std", "sum"])


def test_skip_simplified_layer_normalization_float16():
    feeds = {k: v.astype(np.float16) for k, v in {
        "x": randn(2, 3, 64), "skip": randn(2, 3, 64), "gamma": randn(64)}.items()}
    check(ms("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma"], ["y", "", "", "sum"]),
          feeds, ["y", "sum"], rtol=1e-3, atol=2e-3)


def test_skip_layer_normalization_rejects_a_bad_skip():
    feeds = {"x": randn(2, 3, 8), "skip": randn(2, 4, 8), "gamma": randn(8)}
    model = build([ms("SkipLayerNormalization", ["x", "skip", "gamma"], ["y"])], feeds, ["y"],
                  out_types={"y": TensorProto.FLOAT})
    with pytest.raises(ort.Fail, match="skip"):
        run_tritort(model, feeds)


def _simplified_layer_norm_session(node, feeds, outputs):
    """SimplifiedLayerNormalization lives in the default domain, where onnx's checker has no
    schema for it: the loader checks it as a custom op and the session runs it."""
    model = build([node], feeds, outputs, opset=17)
    want = run_ort(model, feeds)
    types = {o: _elem(w.dtype) for o, w in zip(outputs, want)}
    got = run_tritort(build([node], feeds, outputs, opset=17, out_types=types), feeds)
    return got, want


@pytest.mark.parametrize("axis", [-1, -2, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simplified_layer_normalization(axis, dtype):
    feeds = {"x": randn(2, 3, 8, dtype=dtype)}
    feeds["scale"] = randn(*feeds["x"].shape[axis:], dtype=dtype)
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y", "inv"],
                            axis=axis, epsilon=1e-5)
    got, want = _simplified_layer_norm_session(node, feeds, ["y", "inv"])
    for name, g, w in zip(["y", "inv"], got, want):
        assert_close(g, w, 1e-5 if dtype == np.float32 else 1e-12, 1e-6, name)


def test_simplified_layer_normalization_float16():
    feeds = {"x": randn(4, 64, dtype=np.float16), "scale": randn(64, dtype=np.float16)}
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y", "inv"])
    got, want = _simplified_layer_norm_session(node, feeds, ["y", "inv"])
    assert_close(got[0], want[0], 1e-3, 2e-3, "y")
    assert_close(got[1], want[1], 1e-5, 1e-6, "inv")


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_normalization_before_opset_17(axis):
    """onnxruntime's default-domain LayerNormalization-1, which models exported at opset < 17
    carry; onnx's checker has no schema for it, so the loader checks it as a custom op."""
    feeds = {"x": randn(2, 3, 8)}
    feeds["scale"], feeds["bias"] = randn(*feeds["x"].shape[axis:]), randn(*feeds["x"].shape[axis:])
    node = helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y", "mean", "inv"],
                            axis=axis, epsilon=1e-5)
    outputs = ["y", "mean", "inv"]
    want = run_ort(build([node], feeds, outputs, opset=14), feeds)
    types = {o: _elem(w.dtype) for o, w in zip(outputs, want)}
    got = run_tritort(build([node], feeds, outputs, opset=14, out_types=types), feeds)
    for name, g, w in zip(["y", "mean", "inv"], got, want):
        assert_close(g, w, 1e-5, 1e-6, name)


def embed_case(segments, mask, positions, outputs=("y", "mask_index", "emb_sum")):
    """An EmbedLayerNormalization node and its feeds and tables: optional segment ids, a
    mask (one row counting a 2, which onnxruntime does not count), position ids (1, S) or
    (B, S)."""
    b, s, hidden, vocab = 2, 5, 16, 11
    feeds = {"ids": randint(0, vocab, b, s)}
    inputs = ["ids", "", "word", "pos", "", "gamma", "beta", "", ""]
    inits = {"word": randn(vocab, hidden), "pos": randn(8, hidden), "gamma": randn(hidden),
             "beta": randn(hidden)}
    if segments:
        feeds["seg"] = randint(0, 2, b, s)
        inits["segtab"] = randn(2, hidden)
        inputs[1], inputs[4] = "seg", "segtab"
    if mask:
        feeds["mask"] = np.array([[1, 1, 1, 0, 0], [1, 1, 2, 1, 1]], np.int32)
        inputs[7] = "mask"
    if positions:
        feeds["posid"] = randint(0, 8, *((1, s) if positions == "1S" else (b, s)))
        inputs[8] = "posid"
    while inputs[-1] == "":
        inputs.pop()
    node = ms("EmbedLayerNormalization", inputs, list(outputs), epsilon=1e-5)
    return node, feeds, inits


@pytest.mark.parametrize("segments", [True, False])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("positions", [None, "1S", "BS"])
def test_embed_layer_normalization(segments, mask, positions):
    node, feeds, inits = embed_case(segments, mask, positions)
    check(node, feeds, list(node.output), inits=inits)


@pytest.mark.parametrize("level", ["ORT_DISABLE_ALL", "ORT_ENABLE_ALL"])
def test_embed_layer_normalization_rejects_an_out_of_range_id(level):
    """The node's own kernel raises; at EXTENDED and above the node is decomposed into
    Gathers (so it runs on a device), whose bounds check raises instead. (A negative id
    then indexes from the end, as ai.onnx Gather's do.)"""
    feeds = {"ids": np.array([[0, 9]], np.int32)}
    inits = {"word": randn(4, 8), "pos": randn(4, 8), "gamma": randn(8), "beta": randn(8)}
    node = ms("EmbedLayerNormalization", ["ids", "", "word", "pos", "", "gamma", "beta"], ["y"])
    model = build([node], feeds, ["y"], inits, out_types={"y": TensorProto.FLOAT})
    with pytest.raises((ort.Fail, ort.InvalidArgument), match="out of range|out of data bounds"):
        run_tritort(model, feeds,
                    graph_optimization_level=getattr(ort.GraphOptimizationLevel, level))


def test_embed_layer_normalization_mask_index_counts_ones_as_onnxruntime():
    ids = np.array([[1, 2, 3, 0, 1], [2, 2, 0, 0, 1]], np.int32)
    mask = np.array([[1, 1, 2, 1, 1], [1, 0, 1, 0, 0]], np.int32)
    feeds = {"ids": ids, "mask": mask}
    inits = {"word": randn(4, 8), "pos": randn(5, 8), "gamma": randn(8), "beta": randn(8)}
    node = ms("EmbedLayerNormalization",
              ["ids", "", "word", "pos", "", "gamma", "beta", "mask"], ["y", "mask_index"])
    model = build([node], feeds, ["y", "mask_index"], inits,
                  out_types={"y": TensorProto.FLOAT, "mask_index": TensorProto.INT32})
    want = run_ort(model, feeds)
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
        got = run_tritort(model, feeds,
                          graph_optimization_level=getattr(ort.GraphOptimizationLevel, level))
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ GELU family, activations


def _gelu_ref(x):
    from scipy.special import erf
    x = x.astype(np.float64)
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


@pytest.mark.parametrize("shape", [(2, 3, 16), (5,), ()])
def test_gelu(shape):
    x = randn(*shape, scale=3.0)
    check(ms("Gelu", ["x"], ["y"]), {"x": x}, ["y"])


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_gelu_other_types_against_float64(dtype):
    """onnxruntime's CPU Gelu is float32 only: double and float16 against exact values."""
    x = randn(4, 33, dtype=dtype, scale=3.0)
    (y,) = run_kernel(ms("Gelu", ["x"], ["y"]), {"x": x})
    assert y.dtype == dtype
    want = _gelu_ref(x)
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=1e-14 if dtype == np.float64
                               else 1e-3, atol=1e-14 if dtype == np.float64 else 1e-3)


def test_bias_gelu():
    check(ms("BiasGelu", ["a", "b"], ["y"]), {"a": randn(2, 4, 32), "b": randn(32)}, ["y"])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 4, 32), (7, 3)])
def test_fast_gelu(bias, shape):
    feeds = {"x": randn(*shape, scale=3.0)}
    if bias:
        feeds["bias"] = randn(shape[-1])
    check(ms("FastGelu", list(feeds), ["y"]), feeds, ["y"])


@pytest.mark.parametrize("alpha", [None, 1.0, -0.5])
def test_quick_gelu(alpha):
    attrs = {} if alpha is None else {"alpha": alpha}
    check(ms("QuickGelu", ["x"], ["y"], **attrs), {"x": randn(3, 5, 8, scale=4.0)}, ["y"])


def test_quick_gelu_extreme_values_stay_finite():
    x = np.array([-1e4, -100.0, 0.0, 100.0, 1e4, np.inf, -np.inf], np.float32)
    check(ms("QuickGelu", ["x"], ["y"]), {"x": x}, ["y"])


def test_bias_add():
    """onnxruntime's CPU provider has no BiasAdd kernel (CUDA only): exact float64 reference."""
    feeds = {"x": randn(2, 6, 8), "bias": randn(8), "skip": randn(2, 6, 8)}
    (y,) = run_kernel(ms("BiasAdd", ["x", "bias", "skip"], ["y"]), feeds)
    np.testing.assert_allclose(y, feeds["x"] + feeds["bias"] + feeds["skip"], rtol=1e-6)
    model = build([ms("BiasAdd", ["x", "bias", "skip"], ["y"])], feeds, ["y"],
                  out_types={"y": TensorProto.FLOAT})
    (got,) = run_tritort(model, feeds)
    np.testing.assert_array_equal(got, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_bias_split_gelu(dtype):
    """CUDA only in onnxruntime: against a float64 reference of the spec's formula."""
    feeds = {"x": randn(2, 4, 16, dtype=dtype), "bias": randn(16, dtype=dtype)}
    (y,) = run_kernel(ms("BiasSplitGelu", ["x", "bias"], ["y"]), feeds)
    s = feeds["x"].astype(np.float64) + feeds["bias"].astype(np.float64)
    want = s[..., :8] * _gelu_ref(s[..., 8:])
    assert y.dtype == dtype and y.shape == (2, 4, 8)
    tol = 1e-6 if dtype == np.float32 else 2e-3
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("sa,sb,attrs", [
    ((3, 4), (4, 5), {}),
    ((3, 4), (5, 4), {"transB": 1, "alpha": 0.125}),
    ((4, 3), (4, 5), {"transA": 1}),
    ((2, 4, 3), (2, 5, 4), {"transA": 1, "transB": 1, "alpha": -2.0}),
    ((2, 3, 4), (4, 5), {}),
    ((4,), (4, 5), {}),
    ((3, 4), (4,), {"alpha": 3.0}),
    ((4, 2, 3, 5), (2, 3, 5, 6), {"transBatchA": 1}),
    ((4, 2, 3, 5), (2, 3, 4, 6), {"transBatchA": 1, "transA": 1}),
    ((2, 3, 4, 5), (6, 2, 3, 5), {"transBatchB": 1, "transB": 1}),
    ((4, 3, 5), (5, 3, 6), {"transBatchA": 1, "transBatchB": 1, "alpha": 0.5}),
    ((1, 3, 4), (2, 1, 4, 5), {}),
])
def test_fused_matmul(sa, sb, attrs):
    check(ms("FusedMatMul", ["a", "b"], ["y"], **attrs), {"a": randn(*sa), "b": randn(*sb)},
          ["y"])


def test_fused_matmul_trans_batch_needs_equal_ranks():
    feeds = {"a": randn(4, 3, 5), "b": randn(5, 6)}
    model = build([ms("FusedMatMul", ["a", "b"], ["y"], transBatchA=1)], feeds, ["y"],
                  out_types={"y": TensorProto.FLOAT})
    with pytest.raises(ort.Fail, match="same rank"):
        run_tritort(model, feeds)


@pytest.mark.parametrize("activation,params", [
    (None, None), ("Relu", None), ("Tanh", None), ("Sigmoid", None), ("LeakyRelu", [0.2]),
    ("Clip", [-0.5, 0.75]), ("HardSigmoid", [0.3, 0.4])])
@pytest.mark.parametrize("with_z", [True, False])
def test_fused_conv(activation, params, with_z):
    feeds = {"x": randn(2, 3, 7, 7)}
    inits = {"w": randn(4, 3, 3, 3), "b": randn(4)}
    inputs = ["x", "w", "b"]
    if with_z:
        feeds["z"] = randn(2, 4, 4, 4)
        inputs.append("z")
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    if activation:
        attrs["activation"] = activation
    if params:
        attrs["activation_params"] = params
    check(ms("FusedConv", inputs, ["y"], **attrs), feeds, ["y"], inits=inits)


@pytest.mark.parametrize("group,auto_pad,dil", [(1, "SAME_UPPER", 1), (3, "NOTSET", 2),
                                               (6, "VALID", 1)])
def test_fused_conv_grouped_and_padded(group, auto_pad, dil):
    feeds = {"x": randn(1, 6, 9, 8)}
    inits = {"w": randn(6, 6 // group, 3, 3)}
    attrs = {"group": group, "activation": "Relu", "dilations": [dil, dil]}
    if auto_pad != "NOTSET":
        attrs["auto_pad"] = auto_pad
    check(ms("FusedConv", ["x", "w"], ["y"], **attrs), feeds, ["y"], inits=inits)


def test_fused_conv_1d():
    check(ms("FusedConv", ["x", "w", "b"], ["y"], activation="Relu"),
          {"x": randn(2, 3, 10)}, ["y"], inits={"w": randn(5, 3, 3), "b": randn(5)})


# ------------------------------------------------------------------ unsupported contrib ops


def _two_unsupported_nodes():
    feeds = {"x": randn(2, 8)}
    nodes = [ms("Gelu", ["x"], ["g"], name="gelu"),
             ms("NoSuchContribOp", ["g"], ["a"], name="first_missing"),
             ms("AlsoMissing", ["a"], ["y"], name="second_missing")]
    return build(nodes, feeds, ["y"], out_types={"y": TensorProto.FLOAT})


def test_unsupported_contrib_op_names_the_node_and_op():
    with pytest.raises(NotImplemented) as info:
        ort.InferenceSession(_two_unsupported_nodes().SerializeToString(), providers=CPU)
    message = str(info.value)
    assert "NoSuchContribOp" in message and "first_missing" in message
    assert "com.microsoft" in message


def test_unsupported_contrib_ops_are_all_listed():
    with pytest.raises(NotImplemented) as info:
        ort.InferenceSession(_two_unsupported_nodes().SerializeToString(), providers=CPU)
    assert "second_missing" in str(info.value) and "AlsoMissing" in str(info.value)


def test_unsupported_contrib_op_lists_the_supported_ones():
    with pytest.raises(NotImplemented) as info:
        ort.InferenceSession(_two_unsupported_nodes().SerializeToString(), providers=CPU)
    message = str(info.value)
    for op in ("SkipLayerNormalization", "GroupQueryAttention", "FastGelu", "QGemm"):
        assert op in message


def test_every_contrib_row_is_in_the_com_microsoft_domain():
    """The kernels of this issue are registered where onnxruntime registers them."""
    expected = {"SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
                "EmbedLayerNormalization", "Gelu", "BiasGelu", "FastGelu", "QuickGelu",
                "BiasAdd", "BiasSplitGelu", "FusedMatMul", "FusedConv", "Attention",
                "MultiHeadAttention", "RotaryEmbedding", "GroupQueryAttention", "MatMulNBits",
                "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearAdd",
                "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearGlobalAveragePool",
                "QLinearConcat", "QLinearAveragePool", "QLinearSoftmax"}
    registered = {op for d, op, _ in fallback_cpu.REGISTRY.ops() if d == MS}
    assert expected <= registered, expected - registered
    assert REGISTRY.lookup("", "SimplifiedLayerNormalization", 1) is not None
    assert REGISTRY.lookup("", "LayerNormalization", 16)[0] == 1
