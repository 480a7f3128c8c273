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
