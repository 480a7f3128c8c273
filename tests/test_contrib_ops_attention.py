"""com.microsoft Attention, MultiHeadAttention, RotaryEmbedding and GroupQueryAttention on
tritort's NumPy provider against onnxruntime (float32, rtol 1e-5 / atol 1e-5 unless a test
says otherwise: scores are sums over the head size, so absolute errors of a few 1e-7 appear
where outputs pass through zero).

Where onnxruntime's CPU kernels refuse a form the spec allows (packed QKV/KV in
MultiHeadAttention, the 4-D Attention mask, a shared past/present buffer in Attention), the
test compares with the same computation written in float64 NumPy, or with onnxruntime running
an equivalent unpacked model.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import tritort as ort
from tests.test_contrib_ops import (  # noqa: F401  (_seeded: the autouse seeding fixture)
    _seeded, build, check, ms, randint, randn, run_ort, run_tritort,
)

TOL = {"rtol": 1e-5, "atol": 1e-5}


def heads(x, n):
    b, s, d = x.shape
    return x.reshape(b, s, n, d // n).transpose(0, 2, 1, 3)


def merge(y):
    b, n, s, h = y.shape
    return y.transpose(0, 2, 1, 3).reshape(b, s, n * h)


def ref_attention(q, k, v, add=None, scale=None):
    """float64 softmax(scale q k^T + add) v on (B, N, S, H) heads."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    sc = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ np.swapaxes(k, -1, -2) * sc
    if add is not None:
        s = s + add
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


# ------------------------------------------------------------------ Attention (contrib)

B, S, N, H, DIN = 2, 4, 2, 8, 12
D = N * H


def _attention(mask=None, past=None, attention_bias=None, outputs=("y",), weights=None,
               bias=True, **attrs):
    feeds = {"x": randn(B, S, DIN)}
    inits = {"w": weights if weights is not None else randn(DIN, 3 * D, scale=0.5)}
    inputs = ["x", "w", "", "", "", ""]
    if bias:
        inits["b"] = randn(inits["w"].shape[1])
        inputs[2] = "b"
    if mask is not None:
        feeds["m"] = mask
        inputs[3] = "m"
    if past is not None:
        feeds["past"] = past
        inputs[4] = "past"
    if attention_bias is not None:
        feeds["ab"] = attention_bias
        inputs[5] = "ab"
    while inputs[-1] == "":
        inputs.pop()
    return ms("Attention", inputs, list(outputs), num_heads=N, **attrs), feeds, inits


@pytest.mark.parametrize("mask", [None, "1d", "2b", "3b2", "2d", "3d", "2d_causal"])
@pytest.mark.parametrize("unidirectional", [0, 1])
def test_attention_masks(mask, unidirectional):
    masks = {
        None: None,
        "1d": np.array([2, 4], np.int32),
        "2b": np.array([4, 3, 1, 0], np.int32),
        "3b2": np.array([3, 2, 0, 3, 5, 0, 3, 5], np.int32),  # lengths, then packed offsets
        "2d": np.array([[1, 0, 1, 1], [1, 1, 1, 0]], np.int32),
        "3d": (randn(B, S, S) > -0.5).astype(np.int32),
        "2d_causal": np.array([[0, 1, 1, 1], [1, 1, 0, 1]], np.int32),
    }
    node, feeds, inits = _attention(masks[mask], unidirectional=unidirectional)
    check(node, feeds, ["y"], inits=inits, **TOL)


def test_attention_fully_masked_row_averages_raw_scores():
    """A row with every key masked: onnxruntime adds -10000 to all scores (float32), so the
    softmax is that of the raw scores, rounded at 10000's ulp (1e-3): looser tolerance."""
    node, feeds, inits = _attention(np.array([[0, 0, 0, 0], [1, 1, 0, 0]], np.int32))
    check(node, feeds, ["y"], inits=inits, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("unidirectional", [0, 1])
@pytest.mark.parametrize("mask", [None, "1d", "2d", "2b"])
def test_attention_with_past(unidirectional, mask):
    p = 3
    masks = {None: None, "1d": np.array([6, 7], np.int32),
             "2d": np.array([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]], np.int32),
             "2b": np.array([7, 6, 1, 0], np.int32)}
    node, feeds, inits = _attention(masks[mask], past=randn(2, B, N, p, H),
                                    outputs=("y", "present"), unidirectional=unidirectional)
    check(node, feeds, ["y", "present"], inits=inits, **TOL)


@pytest.mark.parametrize("shape", [(B, N, S, S), (1, 1, S, S), (B, 1, S, S), (1, N, S, S)])
def test_attention_bias_and_scale(shape):
    node, feeds, inits = _attention(np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.int32),
                                    attention_bias=randn(*shape), scale=0.3)
    check(node, feeds, ["y"], inits=inits, **TOL)


def test_attention_qkv_hidden_sizes_and_no_bias():
    w = randn(DIN, D + D + 3 * N, scale=0.5)
    node, feeds, inits = _attention(weights=w, qkv_hidden_sizes=[D, D, 3 * N])
    check(node, feeds, ["y"], inits=inits, **TOL)
    node, feeds, inits = _attention(bias=False, mask_filter_value=-5.0)
    check(node, feeds, ["y"], inits=inits, **TOL)


def test_attention_mask_filter_value():
    node, feeds, inits = _attention(np.array([[1, 0, 1, 1], [1, 1, 0, 0]], np.int32),
                                    mask_filter_value=-2.0)
    check(node, feeds, ["y"], inits=inits, **TOL)


def _attention_ref(feeds, inits, past=None, add=None, past_len=None):
    proj = feeds["x"].astype(np.float64) @ inits["w"] + inits["b"]
    q, k, v = (heads(proj[..., i * D:(i + 1) * D], N) for i in range(3))
    if past is not None:
        pk, pv = past[0][:, :, :past_len], past[1][:, :, :past_len]
        k, v = np.concatenate([pk, k], 2), np.concatenate([pv, v], 2)
    return merge(ref_attention(q, k, v, add)), k, v


def test_attention_shared_past_present_buffer():
    """onnxruntime's CPU kernel rejects past_present_share_buffer (it reads
    past_sequence_length wrongly): the float64 reference of the spec instead."""
    p, m = 2, 7
    buf = randn(2, B, N, m, H)
    node, feeds, inits = _attention(past=buf, outputs=("y", "present"), unidirectional=1,
                                    past_present_share_buffer=1)
    node.input.extend(["", "psl"])
    feeds["psl"] = np.array([p], np.int32)
    y, present = run_tritort(build([node], feeds, ["y", "present"], inits,
                                   out_types={"y": TensorProto.FLOAT,
                                              "present": TensorProto.FLOAT}), feeds)
    causal = np.where(np.arange(p + S)[None] <= p + np.arange(S)[:, None], 0, -10000.0)
    want, k, v = _attention_ref(feeds, inits, buf, causal, p)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert present.shape == buf.shape
    np.testing.assert_allclose(present[0, :, :, :p + S], k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(present[1, :, :, :p + S], v, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(present[:, :, :, p + S:], buf[:, :, :, p + S:])


def test_attention_4d_mask():
    """The (B, 1, M, M) mask (GPT-2 Megatron form; CUDA only in onnxruntime) with past: rows
    past .. past + S, columns 0 .. T, against the float64 reference."""
    p, m = 2, 9
    mask = (randn(B, 1, m, m) > -0.7).astype(np.int32)
    mask[..., 0] = 1
    past = randn(2, B, N, p, H)
    node, feeds, inits = _attention(mask, past=past, outputs=("y", "present"))
    y, _ = run_tritort(build([node], feeds, ["y", "present"], inits,
                             out_types={"y": TensorProto.FLOAT, "present": TensorProto.FLOAT}),
                       feeds)
    add = np.where(mask[:, :, p:p + S, :p + S] > 0, 0, -10000.0)
    want, _, _ = _attention_ref(feeds, inits, past, add, p)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs,feeds_mask,match", [
    ({"do_rotary": 1, "rotary_embedding_dim": 10}, None, "rotary_embedding_dim 10"),
    ({}, np.zeros((B, 5), np.int32), "fits none"),
])
def test_attention_refusals(attrs, feeds_mask, match):
    node, feeds, inits = _attention(feeds_mask, **attrs)
    model = build([node], feeds, ["y"], inits, out_types={"y": TensorProto.FLOAT})
    with pytest.raises(ort.Fail, match=match):
        run_tritort(model, feeds)


# ------------------------------------------------------------------ MultiHeadAttention

L = 5


def _mha(inputs, feeds, outputs=("y",), **attrs):
    while inputs and inputs[-1] == "":
        inputs = inputs[:-1]
    return ms("MultiHeadAttention", inputs, list(outputs), num_heads=N, **attrs)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mask", [None, "1d", "2d", "3d"])
def test_mha_cross_attention(bias, mask):
    feeds = {"q": randn(B, S, D), "k": randn(B, L, D), "v": randn(B, L, 3 * N)}
    inputs = ["q", "k", "v", "", ""]
    inits = {}
    if bias:
        inits["bias"] = randn(2 * D + 3 * N)
        inputs[3] = "bias"
    if mask:
        feeds["m"] = {"1d": np.array([3, 5], np.int32),
                      "2d": np.array([[1, 1, 0, 1, 1], [1, 1, 1, 1, 0]], np.int32),
                      "3d": (randn(B, S, L) > -0.5).astype(np.int32)}[mask]
        inputs[4] = "m"
    check(_mha(inputs, feeds), feeds, ["y"], inits=inits, **TOL)


def test_mha_scores_output_and_mask_filter_value():
    feeds = {"q": randn(B, S, D), "k": randn(B, L, D), "v": randn(B, L, D),
             "m": np.array([[1, 1, 0, 1, 1], [1, 0, 1, 1, 1]], np.int32),
             "ab": randn(1, N, S, L)}
    node = _mha(["q", "k", "v", "", "m", "ab"], feeds, ("y", "", "", "qk"),
                mask_filter_value=-3.0, scale=0.5)
    check(node, feeds, ["y", "qk"], types={}, **TOL)


@pytest.mark.parametrize("shape", [(B, N, S, L), (1, 1, S, L), (B, 1, S, L)])
def test_mha_attention_bias(shape):
    feeds = {"q": randn(B, S, D), "k": randn(B, L, D), "v": randn(B, L, D), "ab": randn(*shape)}
    check(_mha(["q", "k", "v", "", "", "ab"], feeds), feeds, ["y"], **TOL)


@pytest.mark.parametrize("unidirectional", [0, 1])
@pytest.mark.parametrize("mask", [None, "1d", "2d"])
def test_mha_self_attention_with_past(unidirectional, mask):
    p = 3
    feeds = {"q": randn(B, S, D), "k": randn(B, S, D), "v": randn(B, S, D),
             "pk": randn(B, N, p, H), "pv": randn(B, N, p, H)}
    inputs = ["q", "k", "v", "bias", "", "", "pk", "pv"]
    if mask:
        feeds["m"] = {"1d": np.array([5, 7], np.int32),
                      "2d": np.array([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 1]],
                                     np.int32)}[mask]
        inputs[4] = "m"
    node = _mha(inputs, feeds, ("y", "present_k", "present_v"), unidirectional=unidirectional)
    check(node, feeds, ["y", "present_k", "present_v"], inits={"bias": randn(3 * D)}, **TOL)


def test_mha_causal_self_attention_without_past():
    feeds = {"q": randn(B, S, D), "k": randn(B, S, D), "v": randn(B, S, D)}
    check(_mha(["q", "k", "v"], feeds, ("y", "pk", "pv"), unidirectional=1), feeds,
          ["y", "pk", "pv"], **TOL)


def test_mha_key_value_in_heads_take_only_the_query_bias():
    """Cross attention with cached K/V in heads (B, N, L, H): the bias applies to Q only."""
    feeds = {"q": randn(B, S, D), "k": randn(B, N, L, H), "v": randn(B, N, L, H)}
    check(_mha(["q", "k", "v", "bias"], feeds), feeds, ["y"], inits={"bias": randn(3 * D)},
          **TOL)


def test_mha_packed_qkv_and_kv():
    """onnxruntime's CPU kernel implements neither packed form: onnxruntime runs the
    unpacked inputs, tritort the packed ones."""
    q, k, v = randn(B, S, D), randn(B, S, D), randn(B, S, D)
    bias = randn(3 * D)
    want = run_ort(build([_mha(["q", "k", "v", "bias"], {})], {"q": q, "k": k, "v": v}, ["y"],
                         {"bias": bias}), {"q": q, "k": k, "v": v})[0]
    packed = np.stack([a.reshape(B, S, N, H) for a in (q, k, v)], axis=3)
    model = build([_mha(["qkv", "", "", "bias"], {})], {"qkv": packed}, ["y"], {"bias": bias},
                  out_types={"y": TensorProto.FLOAT})
    (got,) = run_tritort(model, {"qkv": packed})
    np.testing.assert_allclose(got, want, **TOL)
    kv = np.stack([a.reshape(B, S, N, H) for a in (k, v)], axis=3)
    model = build([_mha(["q", "kv", "", "bias"], {})], {"q": q, "kv": kv}, ["y"],
                  {"bias": bias}, out_types={"y": TensorProto.FLOAT})
    (got,) = run_tritort(model, {"q": q, "kv": kv})
    np.testing.assert_allclose(got, want, **TOL)


def test_mha_fully_masked_row():
    feeds = {"q": randn(B, S, D), "k": randn(B, L, D), "v": randn(B, L, D),
             "m": np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], np.int32)}
    check(_mha(["q", "k", "v", "", "m"], feeds), feeds, ["y"], rtol=1e-3, atol=2e-3)


def test_mha_causal_row_whose_visible_keys_are_all_masked():
    """The mask hides keys softly (-10000), causality outright: a query whose only visible
    keys are masked still averages those, as onnxruntime does."""
    feeds = {"q": randn(B, S, D), "k": randn(B, S, D), "v": randn(B, S, D),
             "m": np.array([[0, 0, 1, 1], [1, 1, 1, 0]], np.int32)}
    check(_mha(["q", "k", "v", "", "m"], feeds, unidirectional=1), feeds, ["y"],
          rtol=1e-3, atol=2e-3)


# ------------------------------------------------------------------ RotaryEmbedding


@pytest.mark.parametrize("layout", ["3d", "4d", "3d_no_heads"])
@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("positions", ["offset", "ids"])
@pytest.mark.parametrize("partial", [False, True])
def test_rotary_embedding(layout, interleaved, positions, partial):
    b, s, n, h = 2, 5, 3, 16
    if partial and layout == "3d_no_heads":
        pytest.skip("rotary_embedding_dim needs num_heads with 3-D input")
    rot = 8 if partial else h
    x = randn(b, n, s, h) if layout == "4d" else randn(b, s, n * h)
    pid = (randint(0, 20, b, s, dtype=np.int64) if positions == "ids"
           else np.array([3], np.int64))
    feeds = {"x": x, "pid": pid}
    inits = {"cos": randn(20, rot // 2), "sin": randn(20, rot // 2)}
    attrs = {"interleaved": interleaved}
    if layout != "3d_no_heads":
        attrs["num_heads"] = n
    if partial:
        attrs["rotary_embedding_dim"] = rot
    check(ms("RotaryEmbedding", ["x", "pid", "cos", "sin"], ["y"], **attrs), feeds, ["y"],
          inits=inits, **TOL)


def test_rotary_embedding_scale_attribute_is_ignored_like_onnxruntime():
    feeds = {"x": randn(1, 3, 16), "pid": np.array([1], np.int64)}
    inits = {"cos": randn(8, 8), "sin": randn(8, 8)}
    check(ms("RotaryEmbedding", ["x", "pid", "cos", "sin"], ["y"], scale=2.0), feeds, ["y"],
          inits=inits, **TOL)


def test_rotary_embedding_float16():
    x = randn(1, 4, 2 * 16, dtype=np.float16)
    inits = {"cos": randn(8, 8, dtype=np.float16), "sin": randn(8, 8, dtype=np.float16)}
    check(ms("RotaryEmbedding", ["x", "pid", "cos", "sin"], ["y"], num_heads=2),
          {"x": x, "pid": np.array([1], np.int64)}, ["y"], inits=inits, rtol=2e-3, atol=2e-3)


def test_rotary_embedding_position_out_of_range():
    feeds = {"x": randn(1, 3, 16), "pid": np.array([7], np.int64)}
    inits = {"cos": randn(8, 8), "sin": randn(8, 8)}
    model = build([ms("RotaryEmbedding", ["x", "pid", "cos", "sin"], ["y"])], feeds, ["y"],
                  inits, out_types={"y": TensorProto.FLOAT})
    with pytest.raises(ort.Fail, match="outside the cos/sin caches"):
        run_tritort(model, feeds)
