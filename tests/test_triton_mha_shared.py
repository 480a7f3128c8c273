"""com.microsoft MultiHeadAttention on one shared past/present KV buffer
(``past_sequence_length``, and beam search's ``cache_indirection`` on it) on the Triton
provider (interpreter mode), against onnxruntime's CPU kernel, float32 at rtol/atol 1e-5.

Each node lands on Triton as one append launch (the new rows written at the offset read on
the device) and one flash-attention launch; the run reads nothing back on the host, so the
session binds its plan and replays it. Presents are the whole (B, N, M, H) buffer, as
onnxruntime returns them; a decode loop binds them onto the past buffers through IOBinding.
com.microsoft Attention with past_present_share_buffer reaches the same kernel through its
decomposition at EXTENDED (tritort/contrib_decompose.py).
"""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper

import tritort as ort
from tests.test_contrib_ops import (  # noqa: F401  (_seeded: the autouse seeding fixture)
    _seeded, build, ms, randn, run_ort,
)
from tests.test_contrib_ops_forms import mha_shared_case
from tests.test_triton_contrib_attention import _launches, _session, shared_cache_step
from tests.triton_env import requires_triton

pytestmark = requires_triton
TRITON = "TritonExecutionProvider"
TOL = {"rtol": 1e-5, "atol": 1e-5}
N, H, CAP = 2, 4, 8
D = N * H
NO_HOST_READS = "host synchronizations during a run (device values read on the host): none"


def _case(b, s, past, causal, mask=None, attention_bias=False, bias=True):
    """(node, feeds, inits) of MultiHeadAttention over (b, N, CAP, H) shared buffers."""
    node, feeds, _, inits = mha_shared_case(b, s, past, CAP, mask=mask, bias=bias,
                                            causal=causal, attention_bias=attention_bias)
    return node, feeds, inits


def _check_step(node, feeds, inits, elem=TensorProto.FLOAT, tol=TOL):
    outputs = list(node.output)
    model = build([node], feeds, outputs, inits, out_types={o: elem for o in outputs})
    want = run_ort(model, feeds)
    sess = _session(model)
    got, kernels = _launches(sess, feeds)
    assert kernels == 2, kernels  # the append, then the flash launch
    for name, g, w in zip(outputs, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, w.shape)
        np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), **tol,
                                   err_msg=name)
    assert sess._bound_plans.refusals == {}
    assert sess.placement_report().endswith(NO_HOST_READS)
    return sess


@pytest.mark.parametrize("past", [0, 3])
@pytest.mark.parametrize("s", [1, 3])
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("mask", [None, "2d"])
def test_prompt_and_decode_steps(past, s, causal, mask):
    _check_step(*_case(2, s, past, causal, mask))


@pytest.mark.parametrize("causal", [0, 1])
def test_key_lengths_attention_bias_and_no_bias(causal):
    _check_step(*_case(2, 3, 3, causal, "lengths", attention_bias=True, bias=False))


def test_float16_step():
    """float16 buffers: the kernels compute in float32 and round once (a float16 ulp of the
    outputs' magnitude apart from onnxruntime's)."""
    node, feeds, inits = _case(2, 3, 3, 1, "2d")
    feeds = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()}
    inits = {k: v.astype(np.float16) for k, v in inits.items()}
    _check_step(node, feeds, inits, TensorProto.FLOAT16, {"rtol": 2e-3, "atol": 2e-3})


def test_the_kernels_read_the_offset_on_the_device():
    """One bound plan serves every past length: the replay reads past_sequence_length where
    it lies, so a later offset gives onnxruntime's result with no new recording."""
    node, feeds, inits = _case(1, 1, 2, 1)
    outputs = list(node.output)
    model = build([node], feeds, outputs, inits,
                  out_types={o: TensorProto.FLOAT for o in outputs})
    sess = _check_step(node, feeds, inits)
    for past in (5, 0, 7):
        feeds["psl"] = np.array([past], np.int32)
        got, want = sess.run(None, feeds), run_ort(model, feeds)
        for name, g, w in zip(outputs, got, want):
            np.testing.assert_allclose(g, w, **TOL, err_msg=f"{name}, past {past}")
    assert len(sess._bound_plans.bound()) == 1


@pytest.mark.parametrize("batch,beams,past,s", [(1, 2, 3, 1), (2, 2, 4, 1), (1, 3, 0, 1),
                                                (2, 3, 5, 1), (1, 2, 3, 2)])
@pytest.mark.parametrize("mask", [None, "2d"])
def test_beam_search_reads_the_cache_through_cache_indirection(batch, beams, past, s, mask):
    """Row b * beam + j reads cached key t from beam cache_indirection[b, j, t] in a one-token
    step (a prompt, s > 1, reads its own rows, as onnxruntime's CPU kernel does)."""
    rows = batch * beams
    node, feeds, inits = _case(rows, s, past, 0, mask)
    feeds["ci"] = np.random.default_rng(past).integers(0, beams, (batch, beams, CAP)) \
        .astype(np.int32)
    node.input.append("ci")
    _check_step(node, feeds, inits)


def test_placement_names_the_shared_buffer():
    sess = _check_step(*_case(1, 1, 3, 1))
    placed = sess._program.partition.assignments["mha"]
    assert placed.provider.name == TRITON, placed.declined
    [unit] = [u for u in next(ep for ep in sess._program.providers if ep.name == TRITON).kernels
              if "mha" in u["nodes"]]
    assert unit["kind"] == "attention", unit


def test_past_sequence_length_without_past_stays_on_the_cpu():
    feeds = {"q": randn(1, 1, D), "k": randn(1, 1, D), "v": randn(1, 1, D),
             "psl": np.array([0], np.int32)}
    node = ms("MultiHeadAttention", ["q", "k", "v", "", "", "", "", "", "psl"], ["y"],
              name="mha", num_heads=N)
    model = build([node], feeds, ["y"], out_types={"y": TensorProto.FLOAT})
    placed = _session(model)._program.partition.assignments["mha"]
    assert placed.provider.name == "CPUExecutionProvider"
    assert "past_sequence_length without past_key" in placed.declined[TRITON]


# ------------------------------------------------------------------ a greedy decode loop

VOCAB, PROMPT, STEPS = 16, [3, 7, 1], 4


def _decoder():
    """Embedding -> Q/K/V projections -> causal MultiHeadAttention on the shared buffers ->
    logits; the chunk length is symbolic so one session runs the prompt and every step."""
    inits = {"emb": randn(VOCAB, D), "wq": randn(D, D, scale=0.5),
             "wk": randn(D, D, scale=0.5), "wv": randn(D, D, scale=0.5),
             "bias": randn(3 * D), "wo": randn(D, VOCAB)}
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["x"], name="embed"),
             *[helper.make_node("MatMul", ["x", w], [w[1]], name=w) for w in ("wq", "wk", "wv")],
             ms("MultiHeadAttention", ["q", "k", "v", "bias", "", "", "pk", "pv", "psl"],
                ["y", "pko", "pvo"], name="mha", num_heads=N, unidirectional=1),
             helper.make_node("MatMul", ["y", "wo"], ["logits"], name="head")]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "chunk"]),
              helper.make_tensor_value_info("pk", TensorProto.FLOAT, [1, N, CAP, H]),
              helper.make_tensor_value_info("pv", TensorProto.FLOAT, [1, N, CAP, H]),
              helper.make_tensor_value_info("psl", TensorProto.INT32, [1])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "chunk", VOCAB]),
               helper.make_tensor_value_info("pko", TensorProto.FLOAT, [1, N, CAP, H]),
               helper.make_tensor_value_info("pvo", TensorProto.FLOAT, [1, N, CAP, H])]
    graph = helper.make_graph(nodes, "decoder", inputs, outputs,
                              [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.ravel())
                               for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


@pytest.mark.parametrize("through", ["iobinding", "run"])
def test_greedy_decode_loop_on_the_shared_buffer(through):
    """A 3-token prompt, then four greedy steps: each step's logits, token and whole buffer
    equal onnxruntime's. Through IOBinding present_key/present_value are bound onto the
    past's own OrtValues (one buffer, as past_present_share_buffer decoders run); through
    run() the presents are fed back. The prompt and the decode steps each record one plan,
    later steps replay it; nothing is read back on the host."""
    model = _decoder()
    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    oracle = onnxruntime.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    sess = ort.InferenceSession(model, providers=[TRITON, "CPUExecutionProvider"])
    assert set(sess.placement().values()) == {TRITON}, sess.placement()
    start = randn(2, 1, N, CAP, H)  # stale rows: the kernels must keep them
    want_cache = [start[0].copy(), start[1].copy()]
    cache = [ort.OrtValue.ortvalue_from_numpy(start[i].copy()) for i in (0, 1)]
    ids, past = list(PROMPT), 0
    for step in range(1 + STEPS):
        feeds = {"ids": np.array([ids], np.int64), "psl": np.array([past], np.int32)}
        want = oracle.run(None, {**feeds, "pk": want_cache[0], "pv": want_cache[1]})
        want_cache = want[1:]
        logits, cache = shared_cache_step(sess, feeds, cache, "logits", through)
        np.testing.assert_allclose(logits, want[0], **TOL, err_msg=f"step {step}")
        for j in (0, 1):
            np.testing.assert_allclose(cache[j].numpy(), want_cache[j], **TOL,
                                       err_msg=f"step {step}, cache {j}")
        token = int(np.argmax(logits[0, -1]))
        assert token == int(np.argmax(want[0][0, -1])), step
        past += len(ids)
        ids = [token]
    assert sess._bound_plans.refusals == {}
    assert len(sess._bound_plans.bound()) == 2  # the prompt's signature, the steps'
    assert sess.placement_report().endswith(NO_HOST_READS)


# ------------------------------------------------------------------ Attention, decomposed


def _attention_case(s, past, causal, mask):
    b, m = 2, CAP
    t = past + s
    feeds = {"x": randn(b, s, 6), "past": randn(2, b, N, m, H),
             "psl": np.array([past], np.int32)}
    inits = {"w": randn(6, 3 * D, scale=0.5), "b": randn(3 * D)}
    inputs = ["x", "w", "b", "", "past", "", "psl"]
    if mask is not None:
        feeds["m"] = {"lengths": np.array([t, t - 1], np.int32),
                      "2d": np.array([[1] * t, [0] + [1] * (t - 1)], np.int32)}[mask]
        inputs[3] = "m"
    node = ms("Attention", inputs, ["y", "present"], name="attn", num_heads=N,
              unidirectional=int(causal), past_present_share_buffer=1)
    return node, feeds, inits


def _attention_in_ort(feeds, inits, node):
    """onnxruntime's CPU Attention refuses past_present_share_buffer: it runs the same
    projection (in NumPy, float32) into its MultiHeadAttention on the shared buffers."""
    proj = feeds["x"] @ inits["w"] + inits["b"]
    q, k, v = (np.ascontiguousarray(proj[..., i * D:(i + 1) * D]) for i in range(3))
    mha_feeds = {"q": q, "k": k, "v": v, "pk": feeds["past"][0], "pv": feeds["past"][1],
                 "psl": feeds["psl"]}
    inputs = ["q", "k", "v", "", "", "", "pk", "pv", "psl"]
    if "m" in feeds:
        mha_feeds["m"] = feeds["m"]
        inputs[4] = "m"
    causal = next(a.i for a in node.attribute if a.name == "unidirectional")
    mha = ms("MultiHeadAttention", inputs, ["y", "pk_out", "pv_out"], num_heads=N,
             unidirectional=causal)
    y, pk, pv = run_ort(build([mha], mha_feeds, ["y", "pk_out", "pv_out"],
                              out_types={o: TensorProto.FLOAT for o in
                                         ("y", "pk_out", "pv_out")}), mha_feeds)
    return y, np.stack([pk, pv])


@pytest.mark.parametrize("s,past", [(3, 0), (1, 3), (3, 3)])
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("mask", [None, "lengths", "2d"])
def test_attention_with_a_shared_buffer_reaches_the_kernel(s, past, causal, mask):
    node, feeds, inits = _attention_case(s, past, causal, mask)
    model = build([node], feeds, ["y", "present"], inits,
                  out_types={"y": TensorProto.FLOAT, "present": TensorProto.FLOAT})
    sess = _session(model)
    ops = [(a.node.domain, a.node.op_type) for a in sess._program.partition.assignments.values()]
    assert ("com.microsoft", "Attention") not in ops, ops
    assert ops.count(("com.microsoft", "MultiHeadAttention")) == 1, ops
    for name, a in sess._program.partition.assignments.items():
        assert a.provider.name == TRITON, (name, a.node.op_type, a.declined)
    want = _attention_in_ort(feeds, inits, node)
    for _ in range(2):  # the recording run, then the replay
        got = sess.run(None, feeds)
        for name, g, w in zip(("y", "present"), got, want):
            assert g.shape == w.shape, (name, g.shape, w.shape)
            np.testing.assert_allclose(g, w, **TOL, err_msg=name)
    assert sess._bound_plans.refusals == {}
    assert sess.placement_report().endswith(NO_HOST_READS)


@pytest.mark.parametrize("case", ["no_length", "no_flag"])
def test_attention_half_shared_forms_keep_the_contrib_node(case):
    node, feeds, inits = _attention_case(1, 3, 1, None)
    if case == "no_length":
        del node.input[6]
        del feeds["psl"]
    else:
        kept = [a for a in node.attribute if a.name != "past_present_share_buffer"]
        del node.attribute[:]
        node.attribute.extend(kept)
    model = build([node], feeds, ["y", "present"], inits,
                  out_types={"y": TensorProto.FLOAT, "present": TensorProto.FLOAT})
    sess = _session(model)
    ops = [(a.node.domain, a.node.op_type) for a in sess._program.partition.assignments.values()]
    assert ("com.microsoft", "Attention") in ops, ops


def test_attention_decode_loop_with_present_bound_onto_past():
    """The decomposed Attention through IOBinding, present bound onto the past's own
    (2, B, N, M, H) OrtValue: a 3-token prompt then three one-token steps, each equal to
    onnxruntime's MultiHeadAttention on the same projection."""
    node, feeds, inits = _attention_case(3, 0, 1, None)
    model = build([node], feeds, ["y", "present"], inits,
                  out_types={"y": TensorProto.FLOAT, "present": TensorProto.FLOAT})
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "chunk"
    sess = _session(model)
    buffer = feeds["past"].copy()
    cache = ort.OrtValue.ortvalue_from_numpy(buffer.copy())
    past = 0
    for step, s in enumerate([3, 1, 1, 1]):
        feeds = {"x": randn(2, s, 6), "past": buffer, "psl": np.array([past], np.int32)}
        want_y, buffer = _attention_in_ort(feeds, inits, node)
        io = sess.io_binding()
        io.bind_cpu_input("x", feeds["x"])
        io.bind_cpu_input("psl", feeds["psl"])
        io.bind_ortvalue_input("past", cache)
        io.bind_output("y")
        io.bind_ortvalue_output("present", cache)
        sess.run_with_iobinding(io)
        np.testing.assert_allclose(io.copy_outputs_to_cpu()[0], want_y, **TOL,
                                   err_msg=f"step {step}")
        np.testing.assert_allclose(cache.numpy(), buffer, **TOL, err_msg=f"step {step}")
        past += s
    assert sess._bound_plans.refusals == {}
    assert sess.placement_report().endswith(NO_HOST_READS)
