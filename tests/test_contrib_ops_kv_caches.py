"""GroupQueryAttention's KV cache forms on the NumPy provider: quantized caches (PER_TENSOR /
PER_CHANNEL, int8 and packed 4-bit uint8, with k_scale / v_scale) and window-sized caches
(``sliding_window_cache``), alone and with RoPE, attention_bias, softcap, right-padded
chunks and local windows. onnxruntime's CPU kernel is the oracle (float32 outputs at
rtol/atol 1e-5, caches bit-exact); for the form it refuses (differing K and V modes) the
test says so and compares with a float64 NumPy reference. Triton-first sessions with these
forms are in tests/test_contrib_ops_forms.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import tritort as ort
from tests.test_contrib_ops import (  # noqa: F401  (_seeded: the autouse seeding fixture)
    _seeded, build, check, ms, randint, randn, run_ort, run_tritort,
)
from tests.test_contrib_ops_forms import TOL, loaded_type

GN, GNK, GH = 4, 2, 8  # onnxruntime's CPU kernel wants the head size a multiple of 8


def _quant_case(seqlens, s, past, total, k_mode, v_mode, bits, h=GH, **attrs):
    """A GQA call on quantized caches: ``past`` the past buffers' length (None: no past)."""
    b = len(seqlens)
    cache = np.int8 if bits == 8 else np.uint8
    width = h if bits == 8 else h // 2
    feeds = {"q": randn(b, s, GN * h), "k": randn(b, s, GNK * h), "v": randn(b, s, GNK * h)}
    inputs = ["q", "k", "v", "", ""]
    if past is not None:
        lo, hi = (-128, 128) if bits == 8 else (0, 256)
        feeds["pk"] = randint(lo, hi, b, GNK, past, width, dtype=cache)
        feeds["pv"] = randint(lo, hi, b, GNK, past, width, dtype=cache)
        inputs[3:5] = ["pk", "pv"]
    feeds["seqlens"] = np.array(seqlens, np.int32)
    feeds["total"] = np.array(total, np.int32)
    inputs += ["seqlens", "total", "", "", "", "", "", "ks", "vs"]
    for name, mode in (("ks", k_mode), ("vs", v_mode)):
        feeds[name] = (np.array([0.05 if bits == 8 else 0.4], np.float32) if mode == "PER_TENSOR"
                       else (np.abs(randn(1, GNK, 1, h)) * 0.05 + 0.02 * (16 / 2 ** bits)))
    node = ms("GroupQueryAttention", inputs, ["y", "present_k", "present_v"], num_heads=GN,
              kv_num_heads=GNK, k_quant_type=k_mode, v_quant_type=v_mode,
              kv_cache_bit_width=bits, **attrs)
    return node, feeds, ["y", "present_k", "present_v"]


QUANT_MODES = [("PER_TENSOR", "PER_TENSOR", 8), ("PER_CHANNEL", "PER_CHANNEL", 8),
               ("PER_TENSOR", "PER_TENSOR", 4), ("PER_CHANNEL", "PER_CHANNEL", 4)]
QUANT_STEPS = {  # seqlens, S, past buffer, total
    "decode": ([3, 5], 1, 8, 8),
    "decode_growing": ([3, 3], 1, 3, 4),
    "chunk": ([4], 2, 6, 6),
    "prompt": ([1, 2], 3, 0, 3),
}


@pytest.mark.parametrize("k_mode,v_mode,bits", QUANT_MODES)
@pytest.mark.parametrize("step", list(QUANT_STEPS))
def test_gqa_quantized_cache(k_mode, v_mode, bits, step):
    seqlens, s, past, total = QUANT_STEPS[step]
    node, feeds, outputs = _quant_case(seqlens, s, past, total, k_mode, v_mode, bits)
    cache = TensorProto.INT8 if bits == 8 else TensorProto.UINT8
    types = {"y": TensorProto.FLOAT, "present_k": cache, "present_v": cache}
    got = check(node, feeds, outputs, **TOL, skip=("present_k", "present_v"), types=types)
    want = run_ort(build([node], feeds, outputs, out_types=types), feeds)
    for i, seen in enumerate(np.array(seqlens) + 1):  # rows past T are unspecified
        for j in (1, 2):
            assert got[j].dtype == want[j].dtype and got[j].shape == want[j].shape
            np.testing.assert_array_equal(got[j][i, :, :seen], want[j][i, :, :seen])


def _dequant64(stored, scale, bits):
    """float64 reading of a quantized cache (int8, or uint8 nibbles biased by 8, even column
    low), written out for the test."""
    if bits == 8:
        vals = stored.astype(np.float64)
    else:
        vals = np.empty(stored.shape[:-1] + (2 * stored.shape[-1],))
        vals[..., 0::2] = (stored & 15).astype(np.int64) - 8
        vals[..., 1::2] = (stored >> 4).astype(np.int64) - 8
    return vals * np.asarray(scale, np.float64).reshape((1,) * (4 - np.ndim(scale)) +
                                                        np.shape(scale))


@pytest.mark.parametrize("bits", [8, 4])
def test_gqa_quantized_cache_mixed_modes(bits):
    """K per tensor, V per channel: onnxruntime's CPU kernel refuses differing modes. Each
    cache must be what onnxruntime stores under that mode for both caches, and the output a
    float64 causal attention over those caches dequantized."""
    seqlens, s, past, total = [3, 5], 1, 8, 8
    node, feeds, outputs = _quant_case(seqlens, s, past, total, "PER_TENSOR", "PER_CHANNEL",
                                       bits)
    cache = TensorProto.INT8 if bits == 8 else TensorProto.UINT8
    types = {"y": TensorProto.FLOAT, "present_k": cache, "present_v": cache}
    got = run_tritort(build([node], feeds, outputs, out_types=types), feeds)
    for j, mode in ((1, "PER_TENSOR"), (2, "PER_CHANNEL")):
        same, same_feeds, _ = _quant_case(seqlens, s, past, total, mode, mode, bits)
        same_feeds.update({k: v for k, v in feeds.items() if k in same_feeds and k not in
                           ("ks", "vs")})
        same_feeds["ks" if j == 1 else "vs"] = feeds["ks" if j == 1 else "vs"]
        want = run_ort(build([same], same_feeds, outputs, out_types=types), same_feeds)[j]
        for i, seen in enumerate(np.array(seqlens) + 1):
            np.testing.assert_array_equal(got[j][i, :, :seen], want[i, :, :seen])
    keys = _dequant64(got[1], feeds["ks"], bits)
    vals = _dequant64(got[2], feeds["vs"], bits)
    q = feeds["q"].astype(np.float64).reshape(2, GN, GH)
    group = GN // GNK
    for i, seen in enumerate(np.array(seqlens) + 1):
        for head in range(GN):
            k_rows, v_rows = keys[i, head // group, :seen], vals[i, head // group, :seen]
            sc = k_rows @ q[i, head] / np.sqrt(GH)
            p = np.exp(sc - sc.max())
            want = (p / p.sum()) @ v_rows
            np.testing.assert_allclose(got[0][i, 0, head * GH:(head + 1) * GH], want, **TOL)


def _window_case(seqlens, s, capacity, window, total, ab=False):
    b = len(seqlens)
    feeds = {"q": randn(b, s, GN * GH), "k": randn(b, s, GNK * GH), "v": randn(b, s, GNK * GH),
             "pk": randn(b, GNK, capacity, GH), "pv": randn(b, GNK, capacity, GH),
             "seqlens": np.array(seqlens, np.int32), "total": np.array(total, np.int32)}
    inputs = ["q", "k", "v", "pk", "pv", "seqlens", "total"]
    if ab:
        feeds["ab"] = randn(b, 1, s, total)
        inputs += ["", "", "", "ab"]
    node = ms("GroupQueryAttention", inputs, ["y", "present_k", "present_v"], num_heads=GN,
              kv_num_heads=GNK, local_window_size=window, sliding_window_cache=1)
    return node, feeds, ["y", "present_k", "present_v"]


def resident_rows(t, capacity, window):
    """The window cache's resident count, as the operator's spec writes it."""
    if t <= capacity:
        return t
    g = capacity - window + 1
    return t - g * int(np.ceil((t - capacity) / g))


def compare_window_presents(got, want, seqlens, capacity, window):
    for i, seqlen in enumerate(seqlens):
        kept = resident_rows(seqlen + 1, capacity, window)
        for j in (1, 2):
            assert got[j].shape == want[j].shape and got[j].dtype == want[j].dtype
            np.testing.assert_allclose(got[j][i, :, :kept], want[j][i, :, :kept], **TOL)


WINDOW_STEPS = {  # seqlens, S, capacity, window, total
    "filling": ([3], 1, 4, 3, 4),
    "evicting": ([5], 1, 4, 3, 6),
    "slack": ([9], 1, 5, 3, 10),
    "ragged": ([6, 2], 1, 4, 4, 7),
    "chunk": ([8], 3, 4, 3, 9),
    "prompt": ([2], 3, 4, 3, 3),
    "step_over_capacity": ([7], 6, 4, 3, 8),
}


@pytest.mark.parametrize("step", list(WINDOW_STEPS))
def test_gqa_sliding_window_cache(step):
    seqlens, s, capacity, window, total = WINDOW_STEPS[step]
    node, feeds, outputs = _window_case(seqlens, s, capacity, window, total)
    got = check(node, feeds, outputs, **TOL, skip=("present_k", "present_v"))
    want = run_ort(build([node], feeds, outputs), feeds)
    compare_window_presents(got, want, seqlens, capacity, window)


def test_gqa_sliding_window_cache_with_absolute_attention_bias():
    seqlens, s, capacity, window, total = WINDOW_STEPS["evicting"]
    node, feeds, outputs = _window_case(seqlens, s, capacity, window, total, ab=True)
    check(node, feeds, outputs, **TOL, skip=("present_k", "present_v"))


def test_gqa_sliding_window_cache_decode_loop():
    """Ten decode steps through a window cache of capacity 5, window 3: each step feeds the
    previous step's presents back, on both runtimes."""
    capacity, window = 5, 3
    node, feeds, outputs = _window_case([0], 1, capacity, window, 1)
    model = build([node], feeds, outputs, out_types={o: TensorProto.FLOAT for o in outputs})
    states = {"ort": (feeds["pk"], feeds["pv"]), "tritort": (feeds["pk"], feeds["pv"])}
    for step in range(10):
        feeds.update(q=randn(1, 1, GN * GH), k=randn(1, 1, GNK * GH), v=randn(1, 1, GNK * GH),
                     seqlens=np.array([step], np.int32), total=np.array(step + 1, np.int32))
        outs = {}
        for who, runner in (("ort", run_ort), ("tritort", run_tritort)):
            pk, pv = states[who]
            outs[who] = runner(model, {**feeds, "pk": pk, "pv": pv})
            states[who] = outs[who][1], outs[who][2]
        np.testing.assert_allclose(outs["tritort"][0], outs["ort"][0], **TOL, err_msg=str(step))
        compare_window_presents(outs["tritort"], outs["ort"], [step], capacity, window)


@pytest.mark.parametrize("bits", [8, 4])
def test_gqa_sliding_window_quantized_cache(bits):
    seqlens, s, past, total = [5], 1, 4, 6
    node, feeds, outputs = _quant_case(seqlens, s, past, total, "PER_CHANNEL", "PER_CHANNEL",
                                       bits, h=32, local_window_size=3,
                                       sliding_window_cache=1)
    got = check(node, feeds, outputs, **TOL, skip=("present_k", "present_v"))
    want = run_ort(build([node], feeds, outputs), feeds)
    kept = resident_rows(seqlens[0] + 1, past, 3)
    for j in (1, 2):
        np.testing.assert_array_equal(got[j][:, :, :kept], want[j][:, :, :kept])


def test_gqa_window_cache_smaller_than_the_window_is_refused():
    node, feeds, outputs = _window_case([2], 1, 2, 3, 3)
    model = build([node], feeds, outputs, out_types={o: TensorProto.FLOAT for o in outputs})
    with pytest.raises(ort.Fail, match="fewer than local_window_size"):
        run_tritort(model, feeds)


def test_gqa_cache_presents_typed_at_load():
    """Presents take the past's element type and row width (a 4-bit cache packs two values
    a byte); a window cache keeps its capacity."""
    node, feeds, outputs = _quant_case([3], 1, 8, 8, "PER_TENSOR", "PER_TENSOR", 4)
    assert loaded_type(node, feeds, outputs, "present_k", TensorProto.UINT8) == \
        (TensorProto.UINT8, [1, GNK, None, GH // 2])
    node, feeds, outputs = _window_case([5], 1, 4, 3, 6)
    assert loaded_type(node, feeds, outputs, "present_v") == (TensorProto.FLOAT, [1, GNK, 4, GH])


@pytest.mark.parametrize("case,match", [
    ("float_past", "quantized caches are int8, got float32"),
    ("no_scale", "need v_scale"),
    ("tensor_scale_of_many", "PER_TENSOR v_scale has one element"),
    ("uint8_for_8_bits", "quantized caches are int8, got uint8"),
])
def test_gqa_quantized_cache_refusals(case, match):
    node, feeds, outputs = _quant_case([3], 1, 8, 8, "PER_TENSOR", "PER_TENSOR", 8)
    if case == "float_past":
        feeds["pk"], feeds["pv"] = randn(1, GNK, 8, GH), randn(1, GNK, 8, GH)
    elif case == "no_scale":
        node.input[13] = ""
        del feeds["vs"]
    elif case == "tensor_scale_of_many":
        feeds["vs"] = np.full(GH, 0.1, np.float32)
    else:
        feeds["pk"], feeds["pv"] = (feeds[k].view(np.uint8) for k in ("pk", "pv"))
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int8): TensorProto.INT8,
            np.dtype(np.uint8): TensorProto.UINT8}[feeds["pk"].dtype]
    model = build([node], feeds, outputs, out_types={"y": TensorProto.FLOAT,
                                                     "present_k": elem, "present_v": elem})
    with pytest.raises(ort.Fail, match=match):
        run_tritort(model, feeds)


@pytest.mark.parametrize("combo", ["rotary", "bias_and_softcap", "query_seqlens", "window",
                                   "window_rotary_chunk"])
def test_gqa_quantized_cache_with_other_inputs(combo):
    """Quantized caches with RoPE, attention_bias + softcap, right-padded chunks and a local
    window (a full-length or a window-sized cache), against onnxruntime."""
    # onnxruntime: a batch of one for a multi-token step after a past without query_seqlens
    seqlens, s, past, total = {"query_seqlens": ([4, 6], 2, 8, 8),
                               "window_rotary_chunk": ([7], 3, 4, 8)}.get(combo,
                                                                          ([5], 2, 8, 8))
    attrs = {"softcap": 2.0} if combo == "bias_and_softcap" else {}
    if combo.startswith("window"):
        attrs |= {"local_window_size": 3} | ({"sliding_window_cache": 1}
                                             if combo != "window" else {})
    # onnxruntime: 16 | H with RoPE, 32 | H for a 4-bit window cache
    h = 32 if combo == "window_rotary_chunk" else 16 if combo == "rotary" else GH
    node, feeds, outputs = _quant_case(seqlens, s, past, total, "PER_CHANNEL", "PER_CHANNEL",
                                       8, h=h, **attrs)
    inputs = list(node.input) + [""] * (17 - len(node.input))
    if "rotary" in combo:
        feeds["cos"], feeds["sin"] = randn(16, h // 2), randn(16, h // 2)
        inputs[7:9] = ["cos", "sin"]
        node.attribute.append(helper_attr("do_rotary", 1))
    if combo == "bias_and_softcap":
        feeds["ab"] = randn(len(seqlens), 1, s, total)
        inputs[10] = "ab"
    if combo == "query_seqlens":
        feeds["qs"] = np.array([1, 2], np.int32)
        inputs[16] = "qs"
    while not inputs[-1]:
        inputs.pop()
    node.input[:] = inputs
    types = {"y": TensorProto.FLOAT, "present_k": TensorProto.INT8,
             "present_v": TensorProto.INT8}
    got = run_tritort(build([node], feeds, outputs, out_types=types), feeds)
    want = run_ort(build([node], feeds, outputs, out_types=types), feeds)
    valid = feeds["qs"] if combo == "query_seqlens" else [s] * len(seqlens)
    for i, seqlen in enumerate(seqlens):
        np.testing.assert_allclose(got[0][i, :valid[i]], want[0][i, :valid[i]], **TOL)
        kept = resident_rows(seqlen + 1, past, 3) if "sliding_window_cache" in attrs else \
            seqlen + 1
        for j in (1, 2):
            np.testing.assert_array_equal(got[j][i, :, :kept], want[j][i, :, :kept])


def helper_attr(name, value):
    from onnx import helper

    return helper.make_attribute(name, value)


@pytest.mark.parametrize("bits", [8, 4])
def test_gqa_quantized_cache_float16(bits):
    """float16 queries and new K/V on quantized caches (the new rows quantized from their
    float16 values, the output rounded to float16 once)."""
    node, feeds, outputs = _quant_case([3, 5], 1, 8, 8, "PER_CHANNEL", "PER_CHANNEL", bits)
    for name in ("q", "k", "v"):
        feeds[name] = feeds[name].astype(np.float16)
    cache = TensorProto.INT8 if bits == 8 else TensorProto.UINT8
    types = {"y": TensorProto.FLOAT16, "present_k": cache, "present_v": cache}
    model = build([node], feeds, outputs, out_types=types)
    got, want = run_tritort(model, feeds), run_ort(model, feeds)
    np.testing.assert_allclose(got[0].astype(np.float32), want[0].astype(np.float32),
                               rtol=1e-3, atol=1e-3)
    for i, seen in enumerate((4, 6)):
        for j in (1, 2):
            np.testing.assert_array_equal(got[j][i, :, :seen], want[j][i, :, :seen])
