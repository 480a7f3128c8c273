"""onnxruntime's com.microsoft activations, normalizations and RotaryEmbedding on the Triton
provider (interpreter mode), against onnxruntime: each node must land on Triton, and fuse
where its row says it does (BiasGelu into a GEMM's epilogue, say)."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper

import tritort as ort
from tests.test_contrib_ops import MS, _elem, build, ms, randint, randn, run_ort
from tests.triton_env import requires_triton

pytestmark = requires_triton
T = "TritonExecutionProvider"
TRITON_FIRST = [T, "CPUExecutionProvider"]


def _typed(nodes, feeds, outputs, inits=None, opset=17, symbolic=True):
    """The model with its outputs typed as onnxruntime computes them (onnx's shape inference
    does not know com.microsoft ops), dims symbolic unless ``symbolic`` is False; returns
    (model, onnxruntime's outputs)."""
    want = run_ort(build(nodes, feeds, outputs, inits, opset), feeds)
    model = build(nodes, feeds, outputs, inits, opset)
    for vi, w in zip(model.graph.output, want):
        dims = [f"{vi.name}_{i}" for i in range(w.ndim)] if symbolic else list(w.shape)
        vi.CopyFrom(helper.make_tensor_value_info(vi.name, _elem(w.dtype), dims))
    return model, want


def _session(model):
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=TRITON_FIRST)


def _kernels(sess):
    """The Triton units' node names, one list per kernel launch."""
    return [[n.name for n in s.get_nodes()] for s in sess.get_provider_graph_assignment_info()
            if s.ep_name == T]


def _placed_on_triton(sess, names):
    placed = sess._program.partition.assignments
    for name in names:
        assert placed[name].provider.name == T, (name, placed[name].declined)


def check_triton(nodes, feeds, outputs, inits=None, opset=17, rtol=1e-5, atol=1e-5,
                 skip=()):
    """Run ``nodes`` on Triton and on onnxruntime; every node must run on Triton."""
    nodes = [nodes] if not isinstance(nodes, list) else nodes
    for i, n in enumerate(nodes):
        n.name = n.name or f"n{i}_{n.op_type}"
    model, want = _typed(nodes, feeds, outputs, inits, opset)
    sess = _session(model)
    _placed_on_triton(sess, [n.name for n in nodes])
    got = sess.run(None, feeds)
    for name, g, w in zip(outputs, got, want):
        if name in skip:
            continue
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.shape)
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol,
                                   atol=atol, err_msg=name)
    return sess


# ------------------------------------------------------------------ activations


@pytest.mark.parametrize("shape", [(2, 3, 16), (5,), ()])
def test_gelu(shape):
    check_triton(ms("Gelu", ["x"], ["y"]), {"x": randn(*shape, scale=3.0)}, ["y"])


def test_bias_gelu():
    check_triton(ms("BiasGelu", ["a", "b"], ["y"]), {"a": randn(2, 4, 32), "b": randn(32)},
                 ["y"])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 4, 32), (7, 3)])
def test_fast_gelu(bias, shape):
    feeds = {"x": randn(*shape, scale=3.0)}
    if bias:
        feeds["bias"] = randn(shape[-1])
    check_triton(ms("FastGelu", list(feeds), ["y"]), feeds, ["y"])


@pytest.mark.parametrize("alpha", [None, 1.0, -0.5])
def test_quick_gelu(alpha):
    attrs = {} if alpha is None else {"alpha": alpha}
    check_triton(ms("QuickGelu", ["x"], ["y"], **attrs), {"x": randn(3, 5, 8, scale=4.0)},
                 ["y"])


def test_bias_add():
    """onnxruntime runs BiasAdd on CUDA only: against float64 numpy."""
    feeds = {"x": randn(2, 3, 8), "bias": randn(8), "skip": randn(2, 3, 8)}
    model = build([ms("BiasAdd", ["x", "bias", "skip"], ["y"], name="ba")], feeds, ["y"])
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                 ["b", "s", 8]))
    sess = _session(model)
    _placed_on_triton(sess, ["ba"])
    (got,) = sess.run(None, feeds)
    want = sum(v.astype(np.float64) for v in feeds.values())
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ normalizations


@pytest.mark.parametrize("skip_shape", ["BSH", "1SH", "SH"])
@pytest.mark.parametrize("with_beta,with_bias", [(True, True), (True, False), (False, True),
                                                 (False, False)])
def test_skip_layer_normalization(skip_shape, with_beta, with_bias):
    b, s, hidden = 2, 5, 16
    feeds = {"x": randn(b, s, hidden),
             "skip": randn(*{"BSH": (b, s, hidden), "1SH": (1, s, hidden),
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
    outputs = ["y", "mean", "inv_std", "sum"]
    check_triton(ms("SkipLayerNormalization", inputs, outputs, epsilon=1e-5), feeds, outputs)


@pytest.mark.parametrize("outputs", [["y"], ["y", "", "", "sum"], ["y", "mean"],
                                     ["y", "", "inv_std"]], ids=str)
def test_skip_layer_normalization_optional_outputs(outputs):
    feeds = {"x": randn(2, 3, 8), "skip": randn(2, 3, 8), "gamma": randn(8), "bias": randn(8)}
    check_triton(ms("SkipLayerNormalization", ["x", "skip", "gamma", "", "bias"], outputs),
                 feeds, [o for o in outputs if o])


def test_skip_layer_normalization_2d_input_and_default_epsilon():
    feeds = {"x": randn(7, 32), "skip": randn(7, 32), "gamma": randn(32), "beta": randn(32)}
    check_triton(ms("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"]), feeds,
                 ["y"])


def test_skip_layer_normalization_float16():
    """float16: statistics in float32, the stored sum rounded to float16 first."""
    feeds = {k: v.astype(np.float16) for k, v in {
        "x": randn(2, 4, 32), "skip": randn(2, 4, 32), "gamma": randn(32), "beta": randn(32),
        "bias": randn(32)}.items()}
    outputs = ["y", "mean", "inv_std", "sum"]
    check_triton(ms("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], outputs),
                 feeds, outputs, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 16), (6, 24)])
def test_skip_simplified_layer_normalization(with_bias, shape):
    feeds = {"x": randn(*shape), "skip": randn(*shape), "gamma": randn(shape[-1])}
    inputs = ["x", "skip", "gamma"]
    if with_bias:
        feeds["bias"] = randn(shape[-1])
        inputs.append("bias")
    outputs = ["y", "mean", "inv_std", "sum"]
    check_triton(ms("SkipSimplifiedLayerNormalization", inputs, outputs, epsilon=1e-6), feeds,
                 outputs)


def test_skip_simplified_layer_normalization_float16():
    feeds = {k: v.astype(np.float16) for k, v in {
        "x": randn(2, 3, 64), "skip": randn(2, 3, 64), "gamma": randn(64)}.items()}
    check_triton(ms("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma"],
                    ["y", "", "", "sum"]), feeds, ["y", "sum"], rtol=1e-3, atol=2e-3)


def test_skip_layer_normalization_with_a_bad_skip_stays_on_the_cpu():
    feeds = {"x": randn(2, 3, 8), "skip": randn(2, 1, 8), "gamma": randn(8)}
    model = build([ms("SkipLayerNormalization", ["x", "skip", "gamma"], ["y"], name="sln")],
                  feeds, ["y"], out_types={"y": TensorProto.FLOAT})
    sess = _session(model)
    assignment = sess._program.partition.assignments["sln"]
    assert assignment.provider.name == "CPUExecutionProvider"
    assert "skip of shape [2, 1, 8]" in str(assignment.declined)
    with pytest.raises(ort.Fail, match="skip"):
        sess.run(None, feeds)


@pytest.mark.parametrize("axis", [-1, -2, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simplified_layer_normalization(axis, dtype):
    """Default domain, where onnxruntime registers it (the loader checks it as a custom op)."""
    feeds = {"x": randn(2, 3, 8, dtype=dtype)}
    feeds["scale"] = randn(*feeds["x"].shape[axis:], dtype=dtype)
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y", "inv"],
                            axis=axis, epsilon=1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    check_triton(node, feeds, ["y", "inv"], rtol=tol, atol=tol)


def test_simplified_layer_normalization_float16():
    feeds = {"x": randn(4, 64, dtype=np.float16), "scale": randn(64, dtype=np.float16)}
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y", "inv"])
    check_triton(node, feeds, ["y", "inv"], rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_normalization_before_opset_17(axis):
    """onnxruntime's default-domain LayerNormalization-1 takes ai.onnx LayerNormalization's
    row: the same computation."""
    feeds = {"x": randn(2, 3, 8)}
    feeds["scale"] = randn(*feeds["x"].shape[axis:])
    feeds["bias"] = randn(*feeds["x"].shape[axis:])
    node = helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y", "mean", "inv"],
                            axis=axis, epsilon=1e-5)
    check_triton(node, feeds, ["y", "mean", "inv"], opset=14)
