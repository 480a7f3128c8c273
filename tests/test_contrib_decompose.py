"""com.microsoft Attention and EmbedLayerNormalization rewritten into ops both engines run on
the device (tritort/contrib_decompose.py), against onnxruntime on the CPU provider and on
Triton (interpreter): every node the rewrite writes lands on Triton, the attention as one
flash-attention unit. Forms the rewrite refuses keep the contrib node (and still match)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import tritort as ort
from tests.test_contrib_ops import (  # noqa: F401  (_seeded: the autouse seeding fixture)
    _seeded, assert_close, build, embed_case, ms, randint, randn, run_ort,
)
from tests.test_contrib_ops_attention import B, N, S, _attention
from tests.triton_env import requires_triton
from tritort.contracts import ATTENTION_OP, INTERNAL_DOMAIN

TRITON = "TritonExecutionProvider"
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "triton": [TRITON, "CPUExecutionProvider"]}
providers = pytest.mark.parametrize("provider", [
    "cpu", pytest.param("triton", marks=requires_triton)])
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _run(node, feeds, inits, outputs, provider, level=None, opset=17, dynamic=False):
    """(tritort's outputs, onnxruntime's, the session) for a one-node model; ``dynamic``:
    the inputs' dims are symbolic."""
    want = run_ort(build([node], feeds, outputs, inits, opset), feeds)
    types = {o: TensorProto.INT32 if w.dtype == np.int32 else TensorProto.FLOAT
             for o, w in zip(outputs, want)}
    model = build([node], feeds, outputs, inits, opset, out_types=types)
    if dynamic:
        for vi in model.graph.input:
            for i, d in enumerate(vi.type.tensor_type.shape.dim):
                d.dim_param = "batch" if i == 0 else f"{vi.name}_{i}" if i > 1 else "seq"
    so = ort.SessionOptions()
    if level is not None:
        so.graph_optimization_level = level
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=PROVIDERS[provider])
    return sess.run(None, feeds), want, sess


def _ops(sess) -> list[tuple[str, str]]:
    return [(a.node.domain, a.node.op_type)
            for a in sess._program.partition.assignments.values()]


def _check_decomposed(sess, provider, attention: bool) -> None:
    ops = _ops(sess)
    # the rewriter may fuse what the rewrite writes (Add + LayerNormalization: SkipLayerNorm)
    assert not {("com.microsoft", "Attention"), ("com.microsoft", "EmbedLayerNormalization")} \
        & set(ops), ops
    assert ops.count((INTERNAL_DOMAIN, ATTENTION_OP)) == int(attention), ops
    if provider != "triton":
        return
    for name, a in sess._program.partition.assignments.items():
        assert a.provider.name == TRITON, (name, a.node.op_type, a.declined)
    if attention:
        units = next(ep for ep in sess._program.providers if ep.name == TRITON).kernels
        sdpa = [a.node.name for a in sess._program.partition.assignments.values()
                if a.node.op_type == ATTENTION_OP]
        holding = [u for u in units if sdpa[0] in u["nodes"]]
        assert len(holding) == 1 and holding[0]["kind"] == "attention", holding


MASKS = {
    None: None,
    "lengths": np.array([2, 4], np.int32),
    "3b2": np.array([2, 4, 0, 4, 8, 0, 4, 8], np.int32),  # lengths, then packed offsets
    "2d": np.array([[1, 0, 1, 1], [1, 1, 1, 0]], np.int32),
    "2d_values": np.array([[3, 0, -1, 1], [1, 2, 1, 0]], np.int32),  # > 0 opens a key
    "3d": np.array([[[1, 0, 1, 1]] * S, [[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1],
                                         [1, 1, 1, 0]]], np.int32),
}


@providers
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("unidirectional", [0, 1])
def test_attention(provider, mask, unidirectional):
    node, feeds, inits = _attention(MASKS[mask], unidirectional=unidirectional)
    (got,), (want,), sess = _run(node, feeds, inits, ["y"], provider)
    assert_close(got, want, name="y", **TOL)
    _check_decomposed(sess, provider, attention=True)


@providers
def test_attention_bias_scale_filter_and_sizes(provider):
    w = randn(12, N * 8 + N * 8 + N * 3, scale=0.5)
    node, feeds, inits = _attention(MASKS["2d"], attention_bias=randn(1, N, S, S), scale=0.3,
                                    mask_filter_value=-50.0, weights=w,
                                    qkv_hidden_sizes=[N * 8, N * 8, N * 3])
    (got,), (want,), sess = _run(node, feeds, inits, ["y"], provider)
    assert_close(got, want, name="y", **TOL)
    _check_decomposed(sess, provider, attention=True)


def test_attention_without_bias_and_with_attention_bias_only():
    node, feeds, inits = _attention(None, bias=False, attention_bias=randn(B, 1, S, S))
    (got,), (want,), sess = _run(node, feeds, inits, ["y"], "cpu")
    assert_close(got, want, name="y", **TOL)
    _check_decomposed(sess, "cpu", attention=True)


@providers
@pytest.mark.parametrize("mask", [None, "lengths", "2b", "total"])
@pytest.mark.parametrize("unidirectional", [0, 1])
@pytest.mark.parametrize("past", [3, 0, None])
def test_attention_with_past_as_multi_head_attention(provider, mask, unidirectional, past):
    """Past / present state: the projection, then one MultiHeadAttention with past_key /
    past_value (on Triton one flash-attention unit with its KV append); ``past`` None: no past
    input but a present output."""
    t = S + (past or 0)
    masks = {None: None, "lengths": np.array([t - 1, t], np.int32),
             "2b": np.array([t, t - 1, 1, 0], np.int32),
             "total": (randn(B, t) > -0.8).astype(np.int32)}
    node, feeds, inits = _attention(masks[mask], past=None if past is None else
                                    randn(2, B, N, past, 8), outputs=("y", "present"),
                                    unidirectional=unidirectional)
    got, want, sess = _run(node, feeds, inits, ["y", "present"], provider)
    for name, g, w in zip(("y", "present"), got, want):
        assert_close(g, w, name=name, **TOL)
    ops = _ops(sess)
    assert ("com.microsoft", "Attention") not in ops and \
        ops.count(("com.microsoft", "MultiHeadAttention")) == 1, ops
    if provider == "triton":
        for name, a in sess._program.partition.assignments.items():
            assert a.provider.name == TRITON, (name, a.node.op_type, a.declined)


@pytest.mark.parametrize("case", ["2b", "basic_level"])
def test_attention_refused_forms_keep_the_contrib_node(case):
    kwargs, level = {}, None
    if case == "2b":
        kwargs = {"mask": np.array([4, 3, 1, 0], np.int32)}
    else:
        level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    node, feeds, inits = _attention(**kwargs)
    outputs = list(node.output)
    got, want, sess = _run(node, feeds, inits, outputs, "cpu", level)
    for name, g, w in zip(outputs, got, want):
        assert_close(g, w, name=name, **TOL)
    assert ("com.microsoft", "Attention") in _ops(sess)


@providers
@pytest.mark.parametrize("segments", [True, False])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("positions", [None, "1S", "BS"])
def test_embed_layer_normalization(provider, segments, mask, positions):
    node, feeds, inits = embed_case(segments, mask, positions)
    got, want, sess = _run(node, feeds, inits, list(node.output), provider)
    for name, g, w in zip(node.output, got, want):
        assert_close(g, w, name=name, **TOL)
    _check_decomposed(sess, provider, attention=False)


@providers
def test_embed_layer_normalization_y_only(provider):
    node, feeds, inits = embed_case(True, True, None, outputs=("y", "", ""))
    (got,), (want,), sess = _run(node, feeds, inits, ["y"], provider)
    assert_close(got, want, name="y", **TOL)
    _check_decomposed(sess, provider, attention=False)


@providers
def test_symbolic_dims_and_opset_14(provider):
    """Dims known only by name: key positions and default positions come from the input's
    shape at run time; below opset 17 the LayerNormalization written is onnxruntime's
    default-domain form."""
    node, feeds, inits = embed_case(True, True, None)
    got, want, sess = _run(node, feeds, inits, list(node.output), provider, opset=14,
                           dynamic=True)
    for name, g, w in zip(node.output, got, want):
        assert_close(g, w, name=name, **TOL)
    assert ("com.microsoft", "EmbedLayerNormalization") not in _ops(sess)
    node, feeds, inits = _attention(MASKS["lengths"], unidirectional=1)
    (got,), (want,), sess = _run(node, feeds, inits, ["y"], provider, opset=14, dynamic=True)
    assert_close(got, want, name="y", **TOL)
    assert ("com.microsoft", "Attention") not in _ops(sess)
    if provider == "triton":
        assignments = sess._program.partition.assignments.values()
        sdpa = [a for a in assignments if a.node.op_type == ATTENTION_OP]
        assert len(sdpa) == 1 and sdpa[0].provider.name == TRITON, sdpa[0].declined
