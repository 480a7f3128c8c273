"""com.microsoft GroupQueryAttention and MultiHeadAttention on the Triton provider
(interpreter mode) against onnxruntime's CPU kernels, float32 at rtol/atol 1e-5.

Each node must land on Triton as one unit whose run is exactly one flash-attention launch,
plus one KV-append launch where the node writes present_key/present_value. Only what the
operators define is compared (as in tests/test_contrib_ops_gqa.py): output rows of valid
query tokens and present rows below each batch entry's total length.
"""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto

import tritort as ort
from tests.test_contrib_ops import (  # noqa: F401  (_seeded: the autouse seeding fixture)
    _seeded, build, ms, randn, run_ort,
)
from tests.test_contrib_ops_gqa import NK, N, gqa_case
from tests.triton_env import requires_triton

pytestmark = requires_triton
TRITON = "TritonExecutionProvider"
TOL = {"rtol": 1e-5, "atol": 1e-5}


def shared_cache_step(sess, feeds: dict, cache: list, output: str, through: str):
    """One step of a model whose past key/value (inputs pk, pv) and presents (pko, pvo)
    share buffers: through ``run()`` the presents come back as the next cache, through an
    IOBinding they are written into the bound past buffers. Returns (output, cache)."""
    if through == "run":
        y, pk, pv = sess.run(None, {**feeds, "pk": cache[0].numpy(), "pv": cache[1].numpy()})
        return y, [ort.OrtValue.ortvalue_from_numpy(pk), ort.OrtValue.ortvalue_from_numpy(pv)]
    io = sess.io_binding()
    for name, value in feeds.items():
        io.bind_cpu_input(name, value)
    io.bind_ortvalue_input("pk", cache[0])
    io.bind_ortvalue_input("pv", cache[1])
    io.bind_output(output)
    io.bind_ortvalue_output("pko", cache[0])
    io.bind_ortvalue_output("pvo", cache[1])
    sess.run_with_iobinding(io)
    return io.copy_outputs_to_cpu()[0], cache


def _session(model):
    return ort.InferenceSession(model.SerializeToString(),
                                providers=[TRITON, "CPUExecutionProvider"])


def _launches(sess, feeds):
    """(outputs, the number of kernels one run launches), every node checked to be on
    Triton. A plan that binds (no host reads) records its launches on the first run and
    replays them on the second: both runs must give the same outputs."""
    from tritort.codegen import launch

    placed = sess._program.partition.assignments
    for name, where in placed.items():
        assert where.provider.name == TRITON, (name, where.declined)
    with launch.recording() as launches:
        got = sess.run(None, feeds)
    bound = sess._bound_plans.bound()
    if bound:  # the binding run recorded the launches itself
        assert not launches
        replayed = sess.run(None, feeds)
        for g, r in zip(got, replayed):
            np.testing.assert_array_equal(g, r)
        return got, len(bound[0].launches)
    return got, len(launches)


def assert_one_flash_launch(kernels: int, append: bool):
    """One flash-attention launch, preceded by the KV append when the node writes a cache."""
    assert kernels == 1 + append, kernels


def run_gqa(node, feeds, outputs, seqlens, s, tol=TOL):
    elem = TensorProto.FLOAT16 if feeds["q"].dtype == np.float16 else TensorProto.FLOAT
    model = build([node], feeds, outputs, out_types={o: elem for o in outputs})
    node.name = node.name or "gqa"
    want = run_ort(model, feeds)
    got, kernels = _launches(_session(model), feeds)
    assert_one_flash_launch(kernels, append=True)
    totals = np.array(seqlens) + 1
    valid = np.minimum(s, totals)
    for i in range(len(seqlens)):
        np.testing.assert_allclose(got[0][i, :valid[i]], want[0][i, :valid[i]], **tol,
                                   err_msg=f"output, batch {i}")
        for j in (1, 2):
            assert got[j].shape == want[j].shape, (outputs[j], got[j].shape, want[j].shape)
            np.testing.assert_allclose(got[j][i, :, :totals[i]], want[j][i, :, :totals[i]],
                                       **tol, err_msg=f"{outputs[j]}, batch {i}")
    return got, want


# ------------------------------------------------------------------ GroupQueryAttention


@pytest.mark.parametrize("seqlens,past", [([4, 4], None), ([4, 1], 8)])
def test_gqa_prompt(seqlens, past):
    node, feeds, outputs = gqa_case(2, 5, seqlens, 5, past=past)
    run_gqa(node, feeds, outputs, seqlens, 5)


@pytest.mark.parametrize("buffer,total", [(3, 4), (8, 8)])
def test_gqa_decode_step(buffer, total):
    seqlens = [3, 1] if buffer > 3 else [3, 3]
    node, feeds, outputs = gqa_case(2, 1, seqlens, total, past=buffer)
    run_gqa(node, feeds, outputs, seqlens, 1)


@pytest.mark.parametrize("case", ["prompt", "decode", "chunk"])
def test_gqa_local_window(case):
    b, s, seqlens, total, past = {"prompt": (2, 6, [5, 5], 6, None),
                                  "decode": (2, 1, [6, 3], 7, 8),
                                  "chunk": (1, 3, [6], 7, 8)}[case]
    node, feeds, outputs = gqa_case(b, s, seqlens, total, past=past, local_window_size=3)
    run_gqa(node, feeds, outputs, seqlens, s)


@pytest.mark.parametrize("softcap,scale", [(2.0, None), (5.0, 0.7)])
def test_gqa_softcap_and_scale(softcap, scale):
    attrs = {"softcap": softcap} if softcap else {}
    if scale is not None:
        attrs["scale"] = scale
    node, feeds, outputs = gqa_case(2, 4, [3, 3], 4, **attrs)
    run_gqa(node, feeds, outputs, [3, 3], 4)


@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (1, N, 4, 6)])
def test_gqa_attention_bias(shape):
    total = shape[-1]
    b = 1 if total > 4 else 2
    node, feeds, outputs = gqa_case(b, 4, [3] * b, total, past=8 if total > 4 else None,
                                    attention_bias=randn(*shape), softcap=3.0)
    run_gqa(node, feeds, outputs, [3] * b, 4)


@pytest.mark.parametrize("sink,smooth", [(True, None), (False, 1)])
def test_gqa_head_sink_and_smooth_softmax(sink, smooth):
    attrs = {} if smooth is None else {"smooth_softmax": smooth}
    node, feeds, outputs = gqa_case(2, 4, [3, 2], 4, head_sink=randn(N) if sink else None,
                                    **attrs)
    run_gqa(node, feeds, outputs, [3, 2], 4)


def test_gqa_not_causal():
    node, feeds, outputs = gqa_case(2, 4, [3, 3], 4, causal=0)
    run_gqa(node, feeds, outputs, [3, 3], 4)


@pytest.mark.parametrize("packed,interleaved,h,rot,case", [
    (False, 0, 16, 16, "prompt"), (True, 1, 16, 16, "decode"), (False, 1, 32, 16, "prompt"),
    (True, 0, 32, 16, "decode")])
def test_gqa_rotary(packed, interleaved, h, rot, case):
    """RoPE on Q tiles in the flash launch and on K in the append launch; full and partial
    rotation (caches narrower than H / 2), halves and interleaved pairs."""
    b, s, seqlens, total, past = {"prompt": (2, 4, [3, 2], 4, None),
                                  "decode": (2, 1, [5, 2], 6, 8)}[case]
    node, feeds, outputs = gqa_case(b, s, seqlens, total, past=past, h=h, rot=rot,
                                    packed=packed, rotary_interleaved=interleaved)
    run_gqa(node, feeds, outputs, seqlens, s)


@pytest.mark.parametrize("case", ["prompt", "decode"])
def test_gqa_rotary_position_ids(case):
    b, s, seqlens, total, past = {"prompt": (2, 4, [3, 3], 4, None),
                                  "decode": (2, 1, [5, 2], 6, 8)}[case]
    pos = (np.array([[2, 3, 4, 5], [7, 8, 9, 10]], np.int64) if case == "prompt"
           else np.array([[11], [3]], np.int64))
    node, feeds, outputs = gqa_case(b, s, seqlens, total, past=past, h=16, rot=16,
                                    position_ids=pos)
    run_gqa(node, feeds, outputs, seqlens, s)


def test_gqa_float16_decode_with_rotary():
    node, feeds, outputs = gqa_case(2, 1, [3, 1], 8, past=8, h=16, rot=16, dtype=np.float16)
    run_gqa(node, feeds, outputs, [3, 1], 1, tol={"rtol": 2e-3, "atol": 2e-3})


def test_gqa_packed_decode_with_window_and_softcap():
    node, feeds, outputs = gqa_case(2, 1, [6, 4], 8, past=8, packed=True, local_window_size=4,
                                    softcap=4.0)
    run_gqa(node, feeds, outputs, [6, 4], 1)


# ------------------------------------------------------------------ MultiHeadAttention

B, S, H, L = 2, 4, 8, 5
D = N * H


def _mha(inputs, outputs=("y",), **attrs):
    while inputs and inputs[-1] == "":
        inputs = inputs[:-1]
    return ms("MultiHeadAttention", inputs, list(outputs), name="mha", num_heads=N, **attrs)


def run_mha(node, feeds, outputs, inits=None, ort_model=None, ort_feeds=None, tol=TOL):
    """tritort on Triton against onnxruntime (on ``ort_model`` / ``ort_feeds`` where
    onnxruntime's CPU kernel lacks the form tested)."""
    types = {o: TensorProto.FLOAT for o in outputs}
    model = build([node], feeds, outputs, inits, out_types=types)
    want = run_ort(ort_model or model, ort_feeds or feeds)
    got, kernels = _launches(_session(model), feeds)
    assert_one_flash_launch(kernels, append=len(outputs) > 1 or len(node.input) > 6)
    for name, g, w in zip(outputs, got, want):
        assert g.shape == w.shape, (name, g.shape, w.shape)
        np.testing.assert_allclose(g, w, **tol, err_msg=name)
    return got


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
    run_mha(_mha(inputs), feeds, ["y"], inits)


@pytest.mark.parametrize("shape", [(B, N, S, L), (1, 1, S, L), (B, 1, S, L)])
def test_mha_attention_bias_with_mask_filter_value_and_scale(shape):
    feeds = {"q": randn(B, S, D), "k": randn(B, L, D), "v": randn(B, L, D), "ab": randn(*shape),
             "m": np.array([[1, 1, 0, 1, 1], [1, 0, 1, 1, 1]], np.int32)}
    run_mha(_mha(["q", "k", "v", "", "m", "ab"], mask_filter_value=-3.0, scale=0.5), feeds,
            ["y"])


@pytest.mark.parametrize("unidirectional", [0, 1])
@pytest.mark.parametrize("mask", [None, "1d", "2d"])
def test_mha_self_attention_with_past(unidirectional, mask):
    """present = past + the new rows (bias added) by the append launch; causal rows see
    keys up to past + s."""
    p = 3
    feeds = {"q": randn(B, S, D), "k": randn(B, S, D), "v": randn(B, S, D),
             "pk": randn(B, N, p, H), "pv": randn(B, N, p, H)}
    inputs = ["q", "k", "v", "bias", "", "", "pk", "pv"]
    if mask:
        feeds["m"] = {"1d": np.array([5, 7], np.int32),
                      "2d": np.array([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 1]],
                                     np.int32)}[mask]
        inputs[4] = "m"
    node = _mha(inputs, ("y", "present_k", "present_v"), unidirectional=unidirectional)
    run_mha(node, feeds, ["y", "present_k", "present_v"], {"bias": randn(3 * D)})


def test_mha_causal_self_attention_presents_without_past():
    feeds = {"q": randn(B, S, D), "k": randn(B, S, D), "v": randn(B, S, D)}
    run_mha(_mha(["q", "k", "v"], ("y", "pk", "pv"), unidirectional=1), feeds,
            ["y", "pk", "pv"])


def test_mha_key_value_in_heads_take_only_the_query_bias():
    feeds = {"q": randn(B, S, D), "k": randn(B, N, L, H), "v": randn(B, N, L, H)}
    run_mha(_mha(["q", "k", "v", "bias"]), feeds, ["y"], {"bias": randn(3 * D)})


@pytest.mark.parametrize("form", ["qkv", "kv"])
def test_mha_packed_qkv_and_kv(form):
    """onnxruntime's CPU kernel implements neither packed form: it runs the unpacked
    inputs."""
    q, k, v = randn(B, S, D), randn(B, S, D), randn(B, S, D)
    bias = randn(3 * D)
    plain = {"q": q, "k": k, "v": v}
    ort_model = build([_mha(["q", "k", "v", "bias"])], plain, ["y"], {"bias": bias})
    if form == "qkv":
        feeds = {"qkv": np.stack([a.reshape(B, S, N, H) for a in (q, k, v)], axis=3)}
        node = _mha(["qkv", "", "", "bias"])
    else:
        feeds = {"q": q, "kv": np.stack([a.reshape(B, S, N, H) for a in (k, v)], axis=3)}
        node = _mha(["q", "kv", "", "bias"])
    run_mha(node, feeds, ["y"], {"bias": bias}, ort_model=ort_model, ort_feeds=plain)


# ------------------------------------------------------------------ a decode loop


def _loop_model(h: int, cap: int):
    """GQA with RoPE and a local window over a shared (1, NK, cap, h) KV buffer; the chunk
    length is symbolic, so one session runs the prompt and every decode step."""
    feeds = {"q": randn(1, 4, N * h), "k": randn(1, 4, NK * h), "v": randn(1, 4, NK * h),
             "pk": np.zeros((1, NK, cap, h), np.float32),
             "pv": np.zeros((1, NK, cap, h), np.float32),
             "seqlens": np.array([3], np.int32), "total": np.array(4, np.int32),
             "cos": randn(32, h // 2), "sin": randn(32, h // 2)}
    node = ms("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "seqlens", "total", "cos",
                                      "sin"], ["y", "pko", "pvo"], name="gqa", num_heads=N,
              kv_num_heads=NK, do_rotary=1, local_window_size=6)
    model = build([node], feeds, ["y", "pko", "pvo"],
                  out_types={o: TensorProto.FLOAT for o in ("y", "pko", "pvo")})
    for vi in model.graph.input[:3]:
        vi.type.tensor_type.shape.dim[1].dim_param = "chunk"
    return model


@pytest.mark.parametrize("through", ["run", "iobinding"])
def test_gqa_decode_loop_on_a_shared_buffer(through):
    """A 4-token prompt then four decode steps, present fed back as past: through run(),
    or through IOBinding with present_key/present_value bound to the past's own OrtValues
    (one buffer, as onnxruntime's shared-buffer decoders run). Every step's output and
    cache rows equal onnxruntime's; every step is one append and one flash launch."""
    from tritort.codegen import launch

    h, cap = 16, 12
    model = _loop_model(h, cap)
    sess = _session(model)
    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    oracle = onnxruntime.InferenceSession(model.SerializeToString(), so,
                                          providers=["CPUExecutionProvider"])
    rope = {"cos": randn(32, h // 2), "sin": randn(32, h // 2)}
    want_cache = [np.zeros((1, NK, cap, h), np.float32) for _ in range(2)]
    cache = [ort.OrtValue.ortvalue_from_numpy(c.copy()) for c in want_cache]
    length = 0
    for step, s in enumerate([4, 1, 1, 1, 1]):
        length += s
        feeds = {"q": randn(1, s, N * h), "k": randn(1, s, NK * h), "v": randn(1, s, NK * h),
                 "seqlens": np.array([length - 1], np.int32),
                 "total": np.array(length, np.int32), **rope}
        want = oracle.run(None, {**feeds, "pk": want_cache[0], "pv": want_cache[1]})
        want_cache = want[1:]
        with launch.recording() as launches:
            y, cache = shared_cache_step(sess, feeds, cache, "y", through)
        assert len(launches) == 2, (step, len(launches))
        np.testing.assert_allclose(y, want[0], **TOL, err_msg=f"step {step}")
        for j in (0, 1):
            np.testing.assert_allclose(cache[j].numpy()[:, :, :length],
                                       want[1 + j][:, :, :length], **TOL,
                                       err_msg=f"step {step}, cache {j}")


# ------------------------------------------------------------------ typing and refusals


def test_untyped_outputs_are_typed_at_load_and_claimed():
    """The node's outputs are intermediate values (Identity after each), typed by nothing but
    the contrib shape rules: output, present_key and present_value of both ops get types, so
    Triton claims the nodes."""
    from onnx import helper

    node, feeds, outputs = gqa_case(2, 1, [3, 1], 8, past=8, name="gqa")
    mha = _mha(["q", "k", "v"], ("y", "present_k", "present_v"))
    mha_feeds = {"q": randn(B, S, D), "k": randn(B, L, D), "v": randn(B, L, D)}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for n, f in ((node, feeds), (mha, mha_feeds)):
        copies = [helper.make_node("Identity", [o], [o + "_out"], name=o) for o in n.output]
        finals = [o + "_out" for o in n.output]
        model = build([n, *copies], f, finals, out_types={o: TensorProto.FLOAT for o in finals})
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=[TRITON, "CPUExecutionProvider"])
        placed = sess._program.partition.assignments[n.name]
        assert placed.provider.name == TRITON, placed.declined
        got = sess.run(None, f)
        want = run_ort(model, f)
        np.testing.assert_allclose(got[0], want[0], **TOL)


@pytest.mark.parametrize("op,attrs,extra,reason", [
    ("gqa", {"qk_output": 1}, "qk", "qk_output"),
    ("gqa", {}, "query_seqlens", "query_seqlens"),
    ("mha", {}, "qk", "qk output"),
    ("mha", {}, "kpm4", "key_padding_mask of rank 4"),
])
def test_refused_forms_stay_on_the_cpu_with_their_reason(op, attrs, extra, reason):
    if op == "gqa":
        node, feeds, outputs = gqa_case(1, 2, [1], 2, qk=extra == "qk", name="n", **attrs)
        if extra == "query_seqlens":
            node.input.extend([""] * (16 - len(node.input)) + ["qs"])
            feeds["qs"] = np.array([2], np.int32)
    else:
        feeds = {"q": randn(B, S, D), "k": randn(B, L, D), "v": randn(B, L, D)}
        inputs, outputs = ["q", "k", "v"], ["y"]
        if extra == "qk":
            outputs = ["y", "", "", "qk"]
        if extra == "kpm4":
            feeds["m"] = np.ones((B, 1, L, L), np.int32)
            inputs += ["", "m"]
        node = _mha(inputs, outputs)
        node.name = "n"
    model = build([node], feeds, [o for o in outputs if o],
                  out_types={o: TensorProto.FLOAT for o in outputs if o})
    placed = _session(model)._program.partition.assignments["n"]
    assert placed.provider.name == "CPUExecutionProvider"
    assert reason in placed.declined[TRITON], placed.declined
