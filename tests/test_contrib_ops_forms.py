"""The rarer forms of the com.microsoft attention operators on the NumPy provider (and a
session with the Triton provider first, where the node may stay on the CPU provider):
MultiHeadAttention's shared past/present buffer (``past_sequence_length``), beam search
(``cache_indirection``) and (3B + 2) key_padding_mask, RotaryEmbedding's
``is_packed_batching``, Attention's ``do_rotary``; GroupQueryAttention's quantized and
window-sized KV caches in Triton-first sessions (their NumPy tests:
tests/test_contrib_ops_kv_caches.py).

Where onnxruntime's CPU kernel runs a form it is the oracle (float32, rtol/atol 1e-5);
where it refuses one, the test says so and compares with an exact float64 NumPy reference
or with onnxruntime running an equivalent graph.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import tritort as ort
from tests.test_contrib_ops import (  # noqa: F401  (_seeded: the autouse seeding fixture)
    _seeded, build, check, ms, randint, randn, run_ort, run_tritort,
)
from tests.triton_env import requires_triton, triton_runs

TOL = {"rtol": 1e-5, "atol": 1e-5}
TRITON = "TritonExecutionProvider"
N, H = 2, 4
D = N * H


def run_triton_session(model, feeds):
    """Outputs of a session that lists the Triton provider first (nodes it declines run on
    the CPU provider)."""
    sess = ort.InferenceSession(model.SerializeToString(),
                                providers=[TRITON, "CPUExecutionProvider"])
    return sess.run(None, feeds)


# ------------------------------------------------------------------ MultiHeadAttention


def mha_shared_case(b, s, past_len, cap, beams=1, mask=None, bias=False, causal=0, qk=False,
                    attention_bias=False):
    """(node, feeds, outputs, inits) of MultiHeadAttention over (b * beams, N, cap, H) buffers
    whose first ``past_len`` rows hold the cache (the rows after them hold stale values the
    node must keep); ``mask``: None, "lengths" (B) or "2d" (B, T) 0/1 with both ends kept;
    ``beams`` > 1 adds a cache_indirection."""
    rows, t = b * beams, past_len + s
    feeds = {"q": randn(rows, s, D), "k": randn(rows, s, D), "v": randn(rows, s, D),
             "pk": randn(rows, N, cap, H), "pv": randn(rows, N, cap, H),
             "psl": np.array([past_len], np.int32)}
    inputs = ["q", "k", "v", "", "", "", "pk", "pv", "psl"]
    inits = {}
    if bias:
        inits["bias"] = randn(3 * D)
        inputs[3] = "bias"
    if mask == "lengths":
        feeds["m"] = np.array([t, max(t - 2, 1)][:rows], np.int32)
        inputs[4] = "m"
    elif mask == "2d":
        m = (randn(rows, t) > -0.7).astype(np.int32)
        m[:, 0] = m[:, -1] = 1
        feeds["m"] = m
        inputs[4] = "m"
    if attention_bias:
        feeds["ab"] = randn(rows, N, s, t)
        inputs[5] = "ab"
    if beams > 1:
        feeds["ci"] = randint(0, beams, b, beams, cap)
        inputs.append("ci")
    outputs = ["y", "present_k", "present_v"] + (["qk"] if qk else [])
    node = ms("MultiHeadAttention", inputs, outputs, name="mha", num_heads=N,
              unidirectional=int(causal))
    return node, feeds, outputs, inits


@pytest.mark.parametrize("b,s,past_len,cap,causal", [
    (1, 1, 3, 8, 0), (2, 1, 5, 8, 0), (1, 3, 2, 8, 0), (1, 3, 2, 8, 1), (2, 2, 0, 6, 1),
    (1, 2, 6, 8, 1),
])
@pytest.mark.parametrize("bias", [False, True])
def test_mha_shared_buffer(b, s, past_len, cap, causal, bias):
    node, feeds, outputs, inits = mha_shared_case(b, s, past_len, cap, bias=bias, causal=causal)
    check(node, feeds, outputs, inits=inits, **TOL)


def test_mha_shared_buffer_with_key_padding_mask_and_scores():
    node, feeds, outputs, inits = mha_shared_case(2, 1, 3, 8, mask="2d", qk=True)
    # the scores keep -10000 at masked keys: float32 rounds those to about 1e-3
    check(node, feeds, outputs, inits=inits, **TOL, tol={"qk": (1e-5, 2e-3)}, types={})


@pytest.mark.parametrize("b,beams,past_len,cap", [(1, 2, 3, 8), (2, 2, 4, 6), (1, 3, 5, 8),
                                                  (2, 3, 0, 4)])
@pytest.mark.parametrize("mask", [None, "2d"])
def test_mha_beam_search_cache_indirection(b, beams, past_len, cap, mask):
    node, feeds, outputs, inits = mha_shared_case(b, 1, past_len, cap, beams=beams, mask=mask,
                                              bias=True, qk=True)
    check(node, feeds, outputs, inits=inits, **TOL, tol={"qk": (1e-5, 2e-3)}, types={})


def test_mha_cache_indirection_is_not_read_by_a_prompt():
    """With S > 1 onnxruntime's CPU kernel attends each row's own cache: so does tritort."""
    node, feeds, outputs, inits = mha_shared_case(1, 2, 3, 8, beams=2)
    check(node, feeds, outputs, inits=inits, **TOL)


def test_mha_beam_search_reads_other_beams():
    """The indirection changes the result (the test above is not vacuous): float64 check of
    row 1 reading beam 0's cached keys and values."""
    node, feeds, outputs, inits = mha_shared_case(1, 1, 3, 8, beams=2)
    feeds["ci"][:] = 0
    model = build([node], feeds, outputs, out_types={o: TensorProto.FLOAT for o in outputs})
    y = run_tritort(model, feeds)[0]
    q = feeds["q"].reshape(2, N, H).astype(np.float64)
    keys = np.concatenate([feeds["pk"][0, :, :3], feeds["k"][1].reshape(N, 1, H)], axis=1)
    vals = np.concatenate([feeds["pv"][0, :, :3], feeds["v"][1].reshape(N, 1, H)], axis=1)
    scores = np.einsum("nh,nth->nt", q[1], keys) / np.sqrt(H)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    want = np.einsum("nt,nth->nh", p / p.sum(-1, keepdims=True), vals).reshape(D)
    np.testing.assert_allclose(y[1, 0], want, **TOL)


@pytest.mark.parametrize("case,match", [
    ("bias_with_beams", "attention_bias with cache_indirection"),
    ("overflow", "do not fit"),
    ("no_past", "need past_key"),
])
def test_mha_shared_buffer_refusals(case, match):
    node, feeds, outputs, _ = mha_shared_case(1, 1, 3, 8, beams=2)
    if case == "bias_with_beams":
        feeds["ab"] = randn(2, N, 1, 4)
        node.input[5] = "ab"
    elif case == "overflow":
        feeds["psl"][0] = 8
    else:
        node.input[6] = node.input[7] = ""
        del feeds["pk"], feeds["pv"]
    model = build([node], feeds, outputs, out_types={o: TensorProto.FLOAT for o in outputs})
    with pytest.raises(ort.Fail, match=match):
        run_tritort(model, feeds)


def loaded_type(node, feeds, outputs, name, cache=TensorProto.FLOAT):
    """(element type, dims) the loader gives ``name``, an output made intermediate by an
    Identity after it (so only the contrib shape rules type it)."""
    from onnx import helper

    from tritort import loader

    copies = [helper.make_node("Identity", [o], [o + "_out"]) for o in outputs]
    finals = [o + "_out" for o in outputs]
    model = build([node, *copies], feeds, finals,
                  out_types={o: TensorProto.FLOAT if o == "y_out" else cache for o in finals})
    t = loader.load(model).graph.value_types[name].tensor_type
    return t.elem_type, [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def test_mha_shared_buffer_presents_typed_at_load():
    node, feeds, outputs, _ = mha_shared_case(1, 1, 3, 8)
    for name in ("present_k", "present_v"):
        assert loaded_type(node, feeds, outputs, name) == (TensorProto.FLOAT, [1, N, 8, H])


@requires_triton
@pytest.mark.parametrize("beams", [1, 2])
def test_mha_shared_buffer_in_a_triton_session(beams):
    node, feeds, outputs, inits = mha_shared_case(1, 1, 3, 8, beams=beams, bias=True)
    model = build([node], feeds, outputs, inits,
                  out_types={o: TensorProto.FLOAT for o in outputs})
    for got, want in zip(run_triton_session(model, feeds), run_ort(model, feeds)):
        np.testing.assert_allclose(got, want, **TOL)


def test_mha_key_padding_mask_of_3b_plus_2():
    """Key lengths then a packed batch's offsets: onnxruntime's CPU kernel reads the
    lengths."""
    feeds = {"q": randn(2, 3, D), "k": randn(2, 4, D), "v": randn(2, 4, D),
             "m": np.array([3, 2, 0, 3, 6, 0, 4, 8], np.int32)}
    check(ms("MultiHeadAttention", ["q", "k", "v", "", "m"], ["y"], num_heads=N), feeds,
          ["y"], **TOL)


# ------------------------------------------------------------------ RotaryEmbedding


@pytest.mark.parametrize("layout", ["3d", "4d"])
@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_packed_batching_like_onnxruntime(layout, interleaved):
    """onnxruntime's CPU kernel reads a packed (ragged) batch in the usual layout with
    per-row positions: the attribute changes nothing there."""
    b, s, n, h = 2, 3, 2, 8
    x = randn(b, n, s, h) if layout == "4d" else randn(b, s, n * h)
    feeds = {"x": x, "pid": np.array([[0, 1, 2], [0, 1, 0]], np.int64)}
    inits = {"cos": randn(8, h // 2), "sin": randn(8, h // 2)}
    node = ms("RotaryEmbedding", ["x", "pid", "cos", "sin"], ["y"], num_heads=n,
              interleaved=interleaved, is_packed_batching=1)
    check(node, feeds, ["y"], inits=inits, **TOL)
    model = build([node], feeds, ["y"], inits, out_types={"y": TensorProto.FLOAT})
    if not triton_runs():
        return
    sess = ort.InferenceSession(model.SerializeToString(),
                                providers=[TRITON, "CPUExecutionProvider"])
    assert set(sess.placement().values()) == {TRITON}  # the rotation runs on Triton
    np.testing.assert_allclose(sess.run(None, feeds)[0], run_ort(model, feeds)[0], **TOL)


# ------------------------------------------------------------------ Attention do_rotary


def _rotary_caches(rot, positions=32):
    """cos/sin caches of the rotation onnxruntime's CUDA Attention computes (base 10000)."""
    angles = np.arange(positions)[:, None] * 10000.0 ** (-np.arange(0, rot, 2) / rot)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rotary_attention_in_ort(x, w, bias, past_kv, n, rot, past, unidirectional, shared=False):
    """onnxruntime running MatMul (+ bias) -> RotaryEmbedding on Q and K (positions past + s)
    -> MultiHeadAttention with past_key/past_value (a shared buffer: past_sequence_length);
    returns (output, present stacked as Attention's)."""
    from onnx import helper

    h = past_kv.shape[-1]
    d = n * h
    cos, sin = _rotary_caches(rot or h)
    rope = {"num_heads": n} | ({"rotary_embedding_dim": rot} if rot else {})
    proj = [helper.make_node("MatMul", ["x", "w"], ["qkv" if bias is None else "xw"])]
    inits = {"w": w, "sizes": np.array([d, d, d], np.int64), "pos": np.array([past], np.int64),
             "cos": cos, "sin": sin}
    if bias is not None:
        proj.append(helper.make_node("Add", ["xw", "b"], ["qkv"]))
        inits["b"] = bias
    mha_in = ["q_rot", "k_rot", "v", "", "", "", "pk", "pv"] + (["psl"] if shared else [])
    nodes = proj + [
        helper.make_node("Split", ["qkv", "sizes"], ["q", "k", "v"], axis=2),
        ms("RotaryEmbedding", ["q", "pos", "cos", "sin"], ["q_rot"], **rope),
        ms("RotaryEmbedding", ["k", "pos", "cos", "sin"], ["k_rot"], **rope),
        ms("MultiHeadAttention", mha_in, ["y", "present_k", "present_v"], num_heads=n,
           unidirectional=unidirectional),
    ]
    feeds = {"x": x, "pk": past_kv[0], "pv": past_kv[1]}
    if shared:
        feeds["psl"] = np.array([past], np.int32)
    want = run_ort(build(nodes, feeds, ["y", "present_k", "present_v"], inits), feeds)
    return want[0], np.stack(want[1:])


@pytest.mark.parametrize("rot", [None, 4])
@pytest.mark.parametrize("past,unidirectional", [(0, 0), (0, 1), (3, 1), (2, 0)])
def test_attention_do_rotary_as_rotary_embedding_and_mha(rot, past, unidirectional):
    """onnxruntime's CPU Attention refuses do_rotary: onnxruntime runs the equivalent graph
    (see _rotary_attention_in_ort) on the same weights."""
    b, s, din, n, h = 2, 3, 6, 2, 8
    x, w, bias = randn(b, s, din), randn(din, 3 * n * h, scale=0.5), randn(3 * n * h)
    past_kv = randn(2, b, n, past, h)
    attrs = {"num_heads": n, "unidirectional": unidirectional, "do_rotary": 1}
    if rot:
        attrs["rotary_embedding_dim"] = rot
    feeds = {"x": x, "past": past_kv}
    node = ms("Attention", ["x", "w", "b", "", "past"], ["y", "present"], **attrs)
    types = {"y": TensorProto.FLOAT, "present": TensorProto.FLOAT}
    got = run_tritort(build([node], feeds, ["y", "present"], {"w": w, "b": bias},
                            out_types=types), feeds)
    want = _rotary_attention_in_ort(x, w, bias, past_kv, n, rot, past, unidirectional)
    np.testing.assert_allclose(got[0], want[0], **TOL)
    np.testing.assert_allclose(got[1], want[1], **TOL)


def test_attention_do_rotary_on_a_shared_buffer():
    """do_rotary with past_present_share_buffer: positions start at past_sequence_length;
    onnxruntime runs the equivalent graph on MultiHeadAttention's shared buffer."""
    b, s, din, n, h, cap, past = 1, 1, 6, 2, 8, 6, 3
    x, w = randn(b, s, din), randn(din, 3 * n * h, scale=0.5)
    buffer = randn(2, b, n, cap, h)
    feeds = {"x": x, "past": buffer, "psl": np.array([past], np.int32)}
    node = ms("Attention", ["x", "w", "", "", "past", "", "psl"], ["y", "present"],
              num_heads=n, do_rotary=1, past_present_share_buffer=1, unidirectional=1)
    types = {"y": TensorProto.FLOAT, "present": TensorProto.FLOAT}
    got = run_tritort(build([node], feeds, ["y", "present"], {"w": w}, out_types=types), feeds)
    want = _rotary_attention_in_ort(x, w, None, buffer, n, None, past, 1, shared=True)
    np.testing.assert_allclose(got[0], want[0], **TOL)
    np.testing.assert_allclose(got[1], want[1], **TOL)


# ------------------------------------------------------------------ the Triton provider


def _triton_placement(model):
    """(session with the Triton provider first, {node name: (provider, Triton's reason)})."""
    sess = ort.InferenceSession(model.SerializeToString(),
                                providers=[TRITON, "CPUExecutionProvider"])
    placed = {name: (a.provider.name, a.declined.get(TRITON, ""))
              for name, a in sess._program.partition.assignments.items()}
    return sess, placed


@requires_triton
@pytest.mark.parametrize("form,reason", [
    ("mha_shared", None),  # tests/test_triton_mha_shared.py: their kernels
    ("mha_beams", None),
    ("gqa_int8", "k_quant_type"),
    ("gqa_int4", "k_quant_type"),
    ("gqa_window", "sliding_window_cache"),
    ("mha_3b2", None),
])
def test_forms_in_a_triton_session(form, reason):
    """Each form runs in a Triton-first session and matches onnxruntime; a node Triton
    declines stays on the CPU provider with the form named in the reason."""
    from tests.test_contrib_ops_kv_caches import _quant_case, _window_case

    skip = ()
    if form.startswith("mha_") and form != "mha_3b2":
        node, feeds, outputs, inits = mha_shared_case(2, 1, 3, 8, beams=2 if "beams" in form else 1,
                                                  bias=True)
    elif form == "mha_3b2":
        feeds = {"q": randn(2, 3, D), "k": randn(2, 4, D), "v": randn(2, 4, D),
                 "m": np.array([3, 2, 0, 3, 6, 0, 4, 8], np.int32)}
        node, outputs, inits = ms("MultiHeadAttention", ["q", "k", "v", "", "m"], ["y"],
                                  num_heads=N), ["y"], {}
    elif form == "gqa_window":
        node, feeds, outputs = _window_case([5], 1, 4, 3, 6)
        inits, skip = {}, (1, 2)
    else:
        bits = 8 if form == "gqa_int8" else 4
        node, feeds, outputs = _quant_case([3, 5], 1, 8, 8, "PER_CHANNEL", "PER_CHANNEL", bits)
        inits, skip = {}, (1, 2)
    node.name = "n"
    want = run_ort(build([node], feeds, outputs, inits), feeds)
    types = {o: helper_elem(w) for o, w in zip(outputs, want)}
    sess, placed = _triton_placement(build([node], feeds, outputs, inits, out_types=types))
    provider, declined = placed["n"]
    if reason is None:
        assert provider == TRITON, declined
    else:
        assert provider == "CPUExecutionProvider" and reason in declined, placed
    got = sess.run(None, feeds)
    for j, (g, w) in enumerate(zip(got, want)):
        if j in skip:  # rows past each entry's length are unspecified
            w, g = w[..., :4, :], g[..., :4, :]
        np.testing.assert_allclose(g, w, **TOL, err_msg=outputs[j])


def helper_elem(array):
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(array.dtype)


@requires_triton
@pytest.mark.parametrize("past", [0, 2])
def test_attention_do_rotary_in_a_triton_session(past):
    """The node stays a contrib Attention (the decomposition names do_rotary) on the CPU
    provider and matches onnxruntime's equivalent graph."""
    b, s, din, n, h = 2, 3, 6, 2, 8
    x, w, bias = randn(b, s, din), randn(din, 3 * n * h, scale=0.5), randn(3 * n * h)
    past_kv = randn(2, b, n, past, h)
    feeds = {"x": x, "past": past_kv}
    node = ms("Attention", ["x", "w", "b", "", "past"], ["y", "present"], num_heads=n,
              unidirectional=1, do_rotary=1, name="n")
    types = {"y": TensorProto.FLOAT, "present": TensorProto.FLOAT}
    sess, placed = _triton_placement(build([node], feeds, ["y", "present"],
                                           {"w": w, "b": bias}, out_types=types))
    assert placed["n"][0] == "CPUExecutionProvider", placed
    got = sess.run(None, feeds)
    want = _rotary_attention_in_ort(x, w, bias, past_kv, n, None, past, 1)
    np.testing.assert_allclose(got[0], want[0], **TOL)
    np.testing.assert_allclose(got[1], want[1], **TOL)
