"""RotaryEmbedding nodes on an attention's query and key run inside the attention unit on the
Triton provider (interpreter mode): Q rotated on the flash kernel's tiles, K in the KV append
(or on its tiles without a cache), with the RotaryEmbedding's own semantics (per-token
position_ids, com.microsoft's offset, ai.onnx's caches without position_ids; interleaved or
halves; partial rotation; 3-D and 4-D inputs). Compared with onnxruntime's CPU kernels at
rtol/atol 1e-5; each case also checks the unit: one attention unit listing the rotary nodes,
no unit of their own, and the launches one run makes.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.test_contrib_ops import (  # noqa: F401  (_seeded: the autouse seeding fixture)
    _seeded, build, ms, randint, randn, run_ort,
)
from tests.test_triton_contrib_attention import _launches, _session
from tests.triton_env import requires_triton

pytestmark = requires_triton
TOL = {"rtol": 1e-5, "atol": 1e-5}
B, S, N, NK, H = 2, 3, 2, 1, 8
MAX_POS = 16


def _units(sess) -> list[dict]:
    return next(ep for ep in sess._program.providers
                if ep.name == "TritonExecutionProvider").kernels


def _rotary(x: str, out: str, name: str, form: str, heads: int, **attrs):
    """A RotaryEmbedding of ``form``: "ids" / "offset" (com.microsoft, position_ids (B, S) or
    one offset), "onnx_ids" / "onnx_direct" (ai.onnx, with position_ids or caches (B, S, R/2))."""
    if form in ("ids", "offset"):
        return ms("RotaryEmbedding", [x, form, "cos", "sin"], [out], name=name,
                  num_heads=heads, **attrs)
    inputs = [x, "cos_bs", "sin_bs"] if form == "onnx_direct" else [x, "cos", "sin", "ids"]
    attrs.setdefault("num_heads", heads)
    return helper.make_node("RotaryEmbedding", inputs, [out], name=name, **attrs)


def _position_feeds(rot: int, s: int, offset: int = 2) -> dict:
    return {"ids": randint(0, MAX_POS, B, s, dtype=np.int64),
            "offset": np.array([offset], np.int64),
            "cos": randn(MAX_POS, rot // 2), "sin": randn(MAX_POS, rot // 2),
            "cos_bs": randn(B, s, rot // 2), "sin_bs": randn(B, s, rot // 2)}


def _check(nodes, feeds, outputs, fused: set[str], launches: int, unfused: set[str] = frozenset(),
           opset: int = 23, compare=None, elem=TensorProto.FLOAT, tol=TOL):
    """Both providers' outputs agree; the attention unit lists ``fused`` (rotary nodes), each
    of ``unfused`` is a unit of its own; one run makes ``launches`` launches."""
    used = {i for n in nodes for i in n.input}
    feeds = {k: v for k, v in feeds.items() if k in used}
    model = build(nodes, feeds, outputs, opset=opset,
                  out_types={o: elem for o in outputs})
    want = run_ort(model, feeds)
    sess = _session(model)
    got, kernels = _launches(sess, feeds)
    for i, (name, g, w) in enumerate(zip(outputs, got, want, strict=True)):
        assert g.shape == w.shape, (name, g.shape, w.shape)
        if compare is not None:
            g, w = compare(i, g, w)
        np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), **tol,
                                   err_msg=name)
    units = _units(sess)
    attention = [u for u in units if u["kind"] == "attention"]
    assert len(attention) == 1, units
    assert fused <= set(attention[0]["nodes"]), attention[0]
    for name in unfused:
        assert [u["nodes"] for u in units if name in u["nodes"]] == [[name]], units
    assert len(units) == 1 + len(unfused), units
    assert kernels == launches, kernels
    return sess


# ------------------------------------------------------------------ MultiHeadAttention


def _mha(q: str, k: str, outputs=("y",), past=False, **attrs):
    inputs = [q, k, "v", "", "", ""] + (["pk", "pv"] if past else [])
    return ms("MultiHeadAttention", inputs, list(outputs), name="mha", num_heads=N, **attrs)


@pytest.mark.parametrize("form", ["ids", "offset", "onnx_ids", "onnx_direct"])
def test_mha_rotary_q_and_k_without_cache(form):
    """No cache: K rotated on the flash kernel's K tiles; one launch."""
    feeds = {"q": randn(B, S, N * H), "k": randn(B, S, N * H), "v": randn(B, S, N * H),
             **_position_feeds(H, S)}
    nodes = [_rotary("q", "qr", "rot_q", form, N), _rotary("k", "kr", "rot_k", form, N),
             _mha("qr", "kr", unidirectional=1)]
    _check(nodes, feeds, ["y"], {"rot_q", "rot_k"}, launches=1)


@pytest.mark.parametrize("interleaved,rot", [(1, H), (0, H // 2), (1, H // 2)])
def test_mha_rotary_interleaved_and_partial(interleaved, rot):
    """Interleaved pairs or halves over the first ``rot`` channels (ai.onnx's
    rotary_embedding_dim; com.microsoft's caches half as wide), past and present K/V."""
    feeds = {"q": randn(B, S, N * H), "k": randn(B, S, N * H), "v": randn(B, S, N * H),
             "pk": randn(B, N, 2, H), "pv": randn(B, N, 2, H), **_position_feeds(rot, S)}
    extra = {"rotary_embedding_dim": rot} if rot != H else {}
    nodes = [_rotary("q", "qr", "rot_q", "onnx_ids", N, interleaved=interleaved, **extra),
             _rotary("k", "kr", "rot_k", "offset" if rot == H else "onnx_ids", N,
                     interleaved=interleaved, **({} if rot == H else extra)),
             _mha("qr", "kr", ("y", "present_k", "present_v"), past=True)]
    _check(nodes, feeds, ["y", "present_k", "present_v"], {"rot_q", "rot_k"}, launches=2)


def test_mha_rotary_decode_step_with_past():
    """One new token at offset past: K rotated as the append writes it into present."""
    p = 4
    feeds = {"q": randn(B, 1, N * H), "k": randn(B, 1, N * H), "v": randn(B, 1, N * H),
             "pk": randn(B, N, p, H), "pv": randn(B, N, p, H), **_position_feeds(H, 1, p)}
    nodes = [_rotary("q", "qr", "rot_q", "offset", N), _rotary("k", "kr", "rot_k", "offset", N),
             _mha("qr", "kr", ("y", "present_k", "present_v"), past=True, unidirectional=1)]
    _check(nodes, feeds, ["y", "present_k", "present_v"], {"rot_q", "rot_k"}, launches=2)


def test_mha_rotary_key_in_heads():
    """ai.onnx's 4-D input (B, N, S, H): the key already in heads, rotated on its tiles."""
    feeds = {"q": randn(B, S, N * H), "k": randn(B, N, S, H), "v": randn(B, N, S, H),
             **_position_feeds(H, S)}
    nodes = [_rotary("q", "qr", "rot_q", "onnx_ids", N),
             helper.make_node("RotaryEmbedding", ["k", "cos", "sin", "ids"], ["kr"],
                              name="rot_k"),
             _mha("qr", "kr")]
    _check(nodes, feeds, ["y"], {"rot_q", "rot_k"}, launches=1)


def test_mha_rotary_on_the_shared_buffer():
    """past_sequence_length: the append writes the rotated K rows at the offset read on the
    device."""
    m, p = 6, 2
    feeds = {"q": randn(B, 2, N * H), "k": randn(B, 2, N * H), "v": randn(B, 2, N * H),
             "pk": randn(B, N, m, H), "pv": randn(B, N, m, H),
             "psl": np.array([p], np.int32), **_position_feeds(H, 2, p)}
    nodes = [_rotary("q", "qr", "rot_q", "ids", N), _rotary("k", "kr", "rot_k", "ids", N),
             ms("MultiHeadAttention", ["qr", "kr", "v", "", "", "", "pk", "pv", "psl"],
                ["y", "present_k", "present_v"], name="mha", num_heads=N, unidirectional=1)]

    def valid(i, g, w):  # present rows past + L .. M are the buffer's, whatever they hold
        return (g, w) if i == 0 else (g[:, :, :p + 2], w[:, :, :p + 2])

    _check(nodes, feeds, ["y", "present_k", "present_v"], {"rot_q", "rot_k"}, launches=2,
           compare=valid)


def test_rotary_read_elsewhere_is_not_fused():
    """The rotated query is a graph output too: that node keeps its own launch (the key's
    still fuses)."""
    feeds = {"q": randn(B, S, N * H), "k": randn(B, S, N * H), "v": randn(B, S, N * H),
             **_position_feeds(H, S)}
    nodes = [_rotary("q", "qr", "rot_q", "ids", N), _rotary("k", "kr", "rot_k", "ids", N),
             _mha("qr", "kr")]
    _check(nodes, feeds, ["y", "qr"], {"rot_k"}, launches=2, unfused={"rot_q"})


@pytest.mark.parametrize("past", [False, True])
def test_mha_bias_is_added_after_the_rotation(past):
    """MultiHeadAttention's bias is added to the rotary nodes' outputs: on the tiles (or in
    the append) the rotation comes first."""
    feeds = {"q": randn(B, S, N * H), "k": randn(B, S, N * H), "v": randn(B, S, N * H),
             "bias": randn(3 * N * H), "pk": randn(B, N, 2, H), "pv": randn(B, N, 2, H),
             **_position_feeds(H, S)}
    outputs = ["y", "present_k", "present_v"] if past else ["y"]
    nodes = [_rotary("q", "qr", "rot_q", "ids", N, interleaved=1),
             _rotary("k", "kr", "rot_k", "ids", N, interleaved=1),
             ms("MultiHeadAttention", ["qr", "kr", "v", "bias", "", ""] +
                (["pk", "pv"] if past else []), outputs, name="mha", num_heads=N)]
    _check(nodes, feeds, outputs, {"rot_q", "rot_k"}, launches=1 + past)


# ------------------------------------------------------------------ GroupQueryAttention


def _gqa_nodes(form: str, past: bool, **attrs):
    return [_rotary("q", "qr", "rot_q", form, N, **attrs),
            _rotary("k", "kr", "rot_k", form, NK, **attrs),
            ms("GroupQueryAttention", ["qr", "kr", "v"] + (["pk", "pv"] if past else ["", ""])
               + ["seqlens", "total"], ["y", "present_k", "present_v"], name="gqa",
               num_heads=N, kv_num_heads=NK)]


@pytest.mark.parametrize("form,interleaved", [("ids", 0), ("offset", 1), ("onnx_ids", 0)])
def test_gqa_rotary_nodes_prompt(form, interleaved):
    """A prompt with every token's position_ids (not only the first, as GroupQueryAttention's
    own do_rotary reads them)."""
    feeds = {"q": randn(B, S, N * H), "k": randn(B, S, NK * H), "v": randn(B, S, NK * H),
             "seqlens": np.array([S - 1, S - 1], np.int32), "total": np.array(S, np.int32),
             **_position_feeds(H, S)}
    _check(_gqa_nodes(form, False, interleaved=interleaved), feeds,
           ["y", "present_k", "present_v"], {"rot_q", "rot_k"}, launches=2)


def test_gqa_rotary_nodes_decode_on_a_shared_buffer():
    """A one-token step per entry at its own position, the caches one shared buffer."""
    m = 8
    seqlens = [4, 2]
    feeds = {"q": randn(B, 1, N * H), "k": randn(B, 1, NK * H), "v": randn(B, 1, NK * H),
             "pk": randn(B, NK, m, H), "pv": randn(B, NK, m, H),
             "seqlens": np.array(seqlens, np.int32), "total": np.array(5, np.int32),
             **_position_feeds(H, 1)}
    feeds["ids"] = np.array(seqlens, np.int64)[:, None]

    def valid(i, g, w):  # present rows each entry has written
        if i == 0:
            return g, w
        return ([g[b, :, :seqlens[b] + 1] for b in range(B)],
                [w[b, :, :seqlens[b] + 1] for b in range(B)])

    def compare(i, g, w):
        g, w = valid(i, g, w)
        return (np.concatenate([x.reshape(-1) for x in g]) if i else g,
                np.concatenate([x.reshape(-1) for x in w]) if i else w)

    _check(_gqa_nodes("ids", True), feeds, ["y", "present_k", "present_v"],
           {"rot_q", "rot_k"}, launches=2, compare=compare)


# ------------------------------------------------------------------ tritort's attention op


@pytest.mark.parametrize("form,q_batch", [("onnx_ids", B), ("onnx_direct", B), ("onnx_ids", 1)])
def test_exported_attention_takes_the_query_rotary(form, q_batch):
    """MatMul / Softmax / MatMul as exporters write it becomes tritort's attention op, whose
    Q (B, H, S, D) is the rotary node's output: rotated on the flash kernel's tiles (a Q of
    batch 1 broadcast over the keys' batch too). K reaches it through a Transpose: that
    rotary node keeps a launch of its own."""
    from tritort.contracts import ATTENTION_OP

    feeds = {"q": randn(q_batch, N, S, H), "k": randn(B, N, S, H), "v": randn(B, N, S, H),
             **_position_feeds(H, S)}
    if q_batch == 1:
        feeds["ids"] = feeds["ids"][:1]
    nodes = [helper.make_node("RotaryEmbedding", ["q"] + (["cos", "sin", "ids"] if
                              form == "onnx_ids" else ["cos_bs", "sin_bs"]), ["qr"],
                              name="rot_q"),
             helper.make_node("RotaryEmbedding", ["k", "cos", "sin", "ids_k"], ["kr"],
                              name="rot_k"),
             helper.make_node("Transpose", ["kr"], ["kt"], perm=[0, 1, 3, 2], name="kt"),
             helper.make_node("MatMul", ["qr", "kt"], ["scores"], name="qk"),
             helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale"),
             helper.make_node("Softmax", ["scaled"], ["p"], axis=-1, name="softmax"),
             helper.make_node("MatMul", ["p", "v"], ["y"], name="pv")]
    feeds["ids_k"] = randint(0, MAX_POS, B, S, dtype=np.int64)
    if form == "onnx_direct" and q_batch == 1:
        feeds["cos_bs"], feeds["sin_bs"] = feeds["cos_bs"][:1], feeds["sin_bs"][:1]
    used = {i for n in nodes for i in n.input}
    feeds = {k: v for k, v in feeds.items() if k in used}
    model = build(nodes, feeds, ["y"], {"scale": np.array(H ** -0.5, np.float32)}, opset=23,
                  out_types={"y": TensorProto.FLOAT})
    want = run_ort(model, feeds)
    sess = _session(model)
    got = sess.run(None, feeds)
    np.testing.assert_allclose(got[0], want[0], **TOL)
    ops = {a.node.name: a.node.op_type for a in sess._program.partition.assignments.values()}
    attention = [u for u in _units(sess) if u["kind"] == "attention"]
    assert len(attention) == 1 and ATTENTION_OP in {ops[n] for n in attention[0]["nodes"]}
    assert "rot_q" in attention[0]["nodes"] and "rot_k" not in attention[0]["nodes"], attention


def test_one_rotary_output_as_query_and_key_is_not_fused():
    """The same rotated value is the query and the key: the node keeps its own launch."""
    feeds = {"q": randn(B, S, N * H), "v": randn(B, S, N * H), **_position_feeds(H, S)}
    nodes = [_rotary("q", "qr", "rot_q", "ids", N), _mha("qr", "qr")]
    _check(nodes, feeds, ["y"], set(), launches=2, unfused={"rot_q"})


def test_mha_rotary_float16():
    """float16: the rotated Q / K are rounded to float16 once, as the rotary node stores them."""
    f16 = np.float16
    feeds = {"q": randn(B, S, N * H, dtype=f16), "k": randn(B, S, N * H, dtype=f16),
             "v": randn(B, S, N * H, dtype=f16), "pk": randn(B, N, 2, H, dtype=f16),
             "pv": randn(B, N, 2, H, dtype=f16), **_position_feeds(H, S)}
    feeds["cos"], feeds["sin"] = feeds["cos"].astype(f16), feeds["sin"].astype(f16)
    nodes = [_rotary("q", "qr", "rot_q", "ids", N, interleaved=1),
             _rotary("k", "kr", "rot_k", "ids", N, interleaved=1),
             _mha("qr", "kr", ("y", "present_k", "present_v"), past=True, unidirectional=1)]
    _check(nodes, feeds, ["y", "present_k", "present_v"], {"rot_q", "rot_k"}, launches=2,
           elem=TensorProto.FLOAT16, tol={"rtol": 2e-3, "atol": 2e-3})
