"""com.microsoft GroupQueryAttention on tritort's NumPy provider against onnxruntime.

Only what the operator defines is compared: output rows of valid query tokens, and present
K/V rows below each batch entry's total length (onnxruntime leaves the rest of a fresh present
buffer uninitialized). float32 at rtol/atol 1e-5; onnxruntime requires head sizes that are
multiples of 16 for rotary embedding, so those cases use H = 16 or 32.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import tritort as ort
from tests.test_contrib_ops import (  # noqa: F401  (_seeded: the autouse seeding fixture)
    _seeded, build, ms, randn, run_ort, run_tritort,
)

TOL = {"rtol": 1e-5, "atol": 1e-5}
N, NK = 4, 2


def gqa_case(b, s, seqlens, total, past=None, h=8, packed=False, rot=None, position_ids=None,
             attention_bias=None, head_sink=None, qk=False, dtype=np.float32, **attrs):
    """Feeds and node of one GQA call; ``past`` is the past buffer length (None: no past)."""
    q, k, v = randn(b, s, N * h, dtype=dtype), randn(b, s, NK * h, dtype=dtype), \
        randn(b, s, NK * h, dtype=dtype)
    if packed:
        feeds, inputs = {"q": np.concatenate([q, k, v], -1)}, ["q", "", ""]
    else:
        feeds, inputs = {"q": q, "k": k, "v": v}, ["q", "k", "v"]
    inputs += ["", ""]
    if past is not None:
        feeds["pk"], feeds["pv"] = randn(b, NK, past, h, dtype=dtype), randn(b, NK, past, h,
                                                                             dtype=dtype)
        inputs[3:5] = ["pk", "pv"]
    feeds["seqlens"] = np.array(seqlens, np.int32)
    feeds["total"] = np.array(total, np.int32)
    inputs += ["seqlens", "total", "", "", "", "", ""]
    if rot:
        feeds["cos"], feeds["sin"] = randn(32, rot // 2, dtype=dtype), randn(32, rot // 2,
                                                                           dtype=dtype)
        inputs[7:9] = ["cos", "sin"]
        attrs["do_rotary"] = 1
    if position_ids is not None:
        feeds["pos"] = position_ids
        inputs[9] = "pos"
    if attention_bias is not None:
        feeds["ab"] = attention_bias
        inputs[10] = "ab"
    if head_sink is not None:
        feeds["sink"] = head_sink
        inputs[11] = "sink"
    while inputs[-1] == "":
        inputs.pop()
    outputs = ["y", "present_k", "present_v"] + (["qk"] if qk else [])
    node = ms("GroupQueryAttention", inputs, outputs, num_heads=N, kv_num_heads=NK, **attrs)
    return node, feeds, outputs


def run_both(node, feeds, outputs, seqlens, s, query_seqlens=None, tol=TOL):
    elem = TensorProto.FLOAT16 if feeds["q"].dtype == np.float16 else TensorProto.FLOAT
    types = {o: elem for o in outputs}
    model = build([node], feeds, outputs, out_types=types)
    want = run_ort(model, feeds)
    got = run_tritort(model, feeds)
    totals = np.array(seqlens) + 1
    valid = np.minimum(s, totals) if query_seqlens is None else np.asarray(query_seqlens)
    for i in range(len(seqlens)):
        np.testing.assert_allclose(got[0][i, :valid[i]].astype(np.float64),
                                   want[0][i, :valid[i]].astype(np.float64), **tol,
                                   err_msg=f"output, batch {i}")
        for j in (1, 2):
            assert got[j].shape == want[j].shape, (outputs[j], got[j].shape, want[j].shape)
            np.testing.assert_allclose(got[j][i, :, :totals[i]].astype(np.float64),
                                       want[j][i, :, :totals[i]].astype(np.float64), **tol,
                                       err_msg=f"{outputs[j]}, batch {i}")
    if len(outputs) > 3:
        assert got[3].shape == want[3].shape
        for i in range(len(seqlens)):
            np.testing.assert_allclose(got[3][i, :, :valid[i]], want[3][i, :, :valid[i]], **tol)
    return got, want


@pytest.mark.parametrize("seqlens", [[4, 4], [4, 1]])
@pytest.mark.parametrize("past", [None, 8])
def test_gqa_first_prompt(seqlens, past):
    """Prompt of 5 tokens, right padded in the second case; with an empty shared buffer."""
    node, feeds, outputs = gqa_case(2, 5, seqlens, 5, past=past)
    run_both(node, feeds, outputs, seqlens, 5)


@pytest.mark.parametrize("buffer,total", [(3, 4), (8, 4), (8, 8)])
def test_gqa_decode_step(buffer, total):
    """One new token per entry, past lengths 3 and 1 in a buffer of 3 (growing) or 8 (shared
    past/present buffer), total_sequence_length the batch's max or the buffer size."""
    seqlens = [3, 1] if buffer > 3 else [3, 3]
    node, feeds, outputs = gqa_case(2, 1, seqlens, total, past=buffer)
    run_both(node, feeds, outputs, seqlens, 1)


@pytest.mark.parametrize("buffer", [2, 8])
def test_gqa_chunk_after_past(buffer):
    """Three new tokens after two cached ones (onnxruntime allows it with batch 1)."""
    node, feeds, outputs = gqa_case(1, 3, [4], 5, past=buffer)
    run_both(node, feeds, outputs, [4], 3)


@pytest.mark.parametrize("case", ["prompt", "decode", "chunk"])
def test_gqa_local_window(case):
    b, s, seqlens, total, past = {"prompt": (2, 6, [5, 5], 6, None),
                                  "decode": (2, 1, [6, 3], 7, 8),
                                  "chunk": (1, 3, [6], 7, 8)}[case]
    node, feeds, outputs = gqa_case(b, s, seqlens, total, past=past, local_window_size=3)
    run_both(node, feeds, outputs, seqlens, s)


@pytest.mark.parametrize("softcap,scale", [(2.0, None), (0.0, 0.3), (5.0, 0.7)])
def test_gqa_softcap_and_scale(softcap, scale):
    attrs = {"softcap": softcap} if softcap else {}
    if scale is not None:
        attrs["scale"] = scale
    node, feeds, outputs = gqa_case(2, 4, [3, 3], 4, **attrs)
    run_both(node, feeds, outputs, [3, 3], 4)


@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (1, N, 4, 4), (1, N, 4, 6)])
def test_gqa_attention_bias(shape):
    """attention_bias (with softcap: the bias comes after it); its last dim is
    total_sequence_length (6 in the third case: a static cache of 8, more columns than keys
    seen; onnxruntime then wants batch 1)."""
    total = shape[-1]
    b = 1 if total > 4 else 2
    node, feeds, outputs = gqa_case(b, 4, [3] * b, total, past=8 if total > 4 else None,
                                    attention_bias=randn(*shape), softcap=3.0)
    run_both(node, feeds, outputs, [3] * b, 4)


def test_gqa_attention_bias_in_decode():
    node, feeds, outputs = gqa_case(2, 1, [3, 1], 8, past=8, attention_bias=randn(1, N, 1, 8))
    run_both(node, feeds, outputs, [3, 1], 1)


@pytest.mark.parametrize("sink,smooth", [(True, None), (False, 1), (True, 1)])
def test_gqa_head_sink_and_smooth_softmax(sink, smooth):
    attrs = {} if smooth is None else {"smooth_softmax": smooth}
    node, feeds, outputs = gqa_case(2, 4, [3, 2], 4, head_sink=randn(N) if sink else None,
                                    **attrs)
    run_both(node, feeds, outputs, [3, 2], 4)


def test_gqa_not_causal():
    node, feeds, outputs = gqa_case(2, 4, [3, 3], 4, causal=0)
    run_both(node, feeds, outputs, [3, 3], 4)


@pytest.mark.parametrize("mode", [1, 2])
def test_gqa_qk_output(mode):
    node, feeds, outputs = gqa_case(2, 3, [2, 1], 3, qk=True, qk_output=mode)
    run_both(node, feeds, outputs, [2, 1], 3)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("h,rot", [(16, 16), (32, 16)])
@pytest.mark.parametrize("case", ["prompt", "decode"])
def test_gqa_rotary(packed, interleaved, h, rot, case):
    b, s, seqlens, total, past = {"prompt": (2, 4, [3, 2], 4, None),
                                  "decode": (2, 1, [5, 2], 6, 8)}[case]
    node, feeds, outputs = gqa_case(b, s, seqlens, total, past=past, h=h, rot=rot,
                                    packed=packed, rotary_interleaved=interleaved)
    run_both(node, feeds, outputs, seqlens, s)


@pytest.mark.parametrize("case", ["prompt", "decode"])
def test_gqa_rotary_position_ids(case):
    """Explicit positions: the first prompt reads only the tensor's first entry (an offset
    for every batch entry), as onnxruntime does."""
    b, s, seqlens, total, past = {"prompt": (2, 4, [3, 3], 4, None),
                                  "decode": (2, 1, [5, 2], 6, 8)}[case]
    pos = (np.array([[2, 3, 4, 5], [7, 8, 9, 10]], np.int64) if case == "prompt"
           else np.array([[11], [3]], np.int64))
    node, feeds, outputs = gqa_case(b, s, seqlens, total, past=past, h=16, rot=16,
                                    position_ids=pos)
    run_both(node, feeds, outputs, seqlens, s)


def test_gqa_packed_decode_with_window_and_softcap():
    node, feeds, outputs = gqa_case(2, 1, [6, 4], 8, past=8, packed=True, local_window_size=4,
                                    softcap=4.0)
    run_both(node, feeds, outputs, [6, 4], 1)


def test_gqa_query_seqlens():
    """Right-padded chunks (query_seqlens): 2 and 1 valid tokens of 3 after 3 and 0 cached
    ones; only valid rows enter the cache."""
    node, feeds, outputs = gqa_case(2, 3, [4, 0], 8, past=8)
    node.input.extend([""] * (16 - len(node.input)) + ["qs"])
    feeds["qs"] = np.array([2, 1], np.int32)
    run_both(node, feeds, outputs, [4, 0], 3, query_seqlens=[2, 1])


def test_gqa_float16():
    node, feeds, outputs = gqa_case(2, 1, [3, 1], 8, past=8, h=16, rot=16, dtype=np.float16)
    run_both(node, feeds, outputs, [3, 1], 1, tol={"rtol": 2e-3, "atol": 2e-3})


def test_gqa_decode_loop_matches_onnxruntime_token_by_token():
    """A prompt then four decode steps through one shared KV buffer, present fed back as
    past, on both runtimes: every step's output and cache agree."""
    b, h, cap = 1, 16, 12
    cos, sin = randn(32, 8), randn(32, 8)
    pk = np.zeros((b, NK, cap, h), np.float32)
    pv = np.zeros_like(pk)
    state = {"ort": (pk, pv), "tritort": (pk, pv)}
    length = 0
    for step, s in enumerate([4, 1, 1, 1, 1]):
        q, k, v = randn(b, s, N * h), randn(b, s, NK * h), randn(b, s, NK * h)
        length += s
        node = ms("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "seqlens", "total", "cos",
                                          "sin"], ["y", "pko", "pvo"], num_heads=N,
                  kv_num_heads=NK, do_rotary=1, local_window_size=6)
        outs = {}
        for name, runner in (("ort", run_ort), ("tritort", run_tritort)):
            feeds = {"q": q, "k": k, "v": v, "pk": state[name][0], "pv": state[name][1],
                     "seqlens": np.array([length - 1], np.int32),
                     "total": np.array(length, np.int32), "cos": cos, "sin": sin}
            model = build([node], feeds, ["y", "pko", "pvo"],
                          out_types={o: TensorProto.FLOAT for o in ("y", "pko", "pvo")})
            outs[name] = runner(model, feeds)
            state[name] = (outs[name][1], outs[name][2])
        np.testing.assert_allclose(outs["tritort"][0], outs["ort"][0], **TOL,
                                   err_msg=f"step {step}")
        np.testing.assert_allclose(outs["tritort"][1][:, :, :length],
                                   outs["ort"][1][:, :, :length], **TOL)


@pytest.mark.parametrize("attrs,match", [
    ({"sliding_window_cache": 1, "local_window_size": 2}, "sliding_window_cache needs past"),
    ({"sliding_window_cache": 1}, "local_window_size > 0"),
    ({"k_quant_type": "PER_TENSOR"}, "both NONE or both quantized"),
    ({"k_quant_type": "PER_TENSOR", "v_quant_type": "PER_TENSOR"}, "need past_key"),
    ({"k_quant_type": "PER_BLOCK", "v_quant_type": "PER_BLOCK"}, "one of NONE"),
    ({"causal": 0, "local_window_size": 2}, "local_window_size"),
])
def test_gqa_refusals(attrs, match):
    node, feeds, outputs = gqa_case(1, 2, [1], 2, **attrs)
    model = build([node], feeds, outputs,
                  out_types={o: TensorProto.FLOAT for o in outputs})
    with pytest.raises(ort.Fail, match=match):
        run_tritort(model, feeds)


def test_gqa_rejects_a_past_longer_than_its_buffer():
    node, feeds, outputs = gqa_case(1, 1, [6], 7, past=3)
    model = build([node], feeds, outputs, out_types={o: TensorProto.FLOAT for o in outputs})
    with pytest.raises(ort.Fail, match="past buffers hold 3"):
        run_tritort(model, feeds)


def test_gqa_q_k_norm_weights():
    """Per-head RMS normalization of Q and K (CUDA/WebGPU only in onnxruntime): onnxruntime
    runs the node on Q and K normalized beforehand, tritort normalizes them itself."""
    b, s, h = 2, 3, 16
    node, feeds, outputs = gqa_case(b, s, [2, 2], 3, h=h, rot=16)
    wq, wk = randn(h), randn(h)

    def rms(x, w, heads):
        x4 = x.reshape(b, s, heads, h).astype(np.float64)
        y = x4 / np.sqrt((x4 * x4).mean(-1, keepdims=True) + 1e-6) * w
        return y.reshape(b, s, heads * h).astype(np.float32)

    normed = dict(feeds, q=rms(feeds["q"], wq, N), k=rms(feeds["k"], wk, NK))
    types = {o: TensorProto.FLOAT for o in outputs}
    want = run_ort(build([node], normed, outputs, out_types=types), normed)
    node.input.extend([""] * (14 - len(node.input)) + ["wq", "wk"])
    got = run_tritort(build([node], feeds, outputs, {"wq": wq, "wk": wk}, out_types=types),
                      feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-5)
