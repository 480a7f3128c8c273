"""The models users bring (issue 13): tiny random-weight Hugging Face transformers exported with
torch.onnx and rewritten as published models are (onnxruntime's transformer optimizer, its
QOperator and MatMulNBits quantizers, onnxscript's ORT fusions), run on tritort's CPU provider
and on the Triton provider (interpreter) against onnxruntime on the same file; decoders in a
greedy loop with their KV cache fed back, tokens equal to onnxruntime's.

Each test checks the numbers first; then the Triton placement: every node left on the CPU
must carry the provider's reason (recorded as a test property), and what issue 13 asks for
(each contrib op on Triton, each attention block one attention launch, each MatMulNBits one
GEMM launch) is checked last, an unmet part being an xfail that names the nodes and reasons.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

import tritort as ort
from tests.triton_env import requires_triton
from tritort.contracts import ATTENTION_OP, INTERNAL_DOMAIN

pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the models are built with Hugging Face "
                    "transformers: pip install -e '.[dev]'")
pytest.importorskip("onnxruntime.transformers.optimizer")
import onnxruntime  # noqa: E402

from tests import real_models  # noqa: E402

CPU = ["CPUExecutionProvider"]
TRITON = "TritonExecutionProvider"
PROVIDERS = {"cpu": CPU, "triton": [TRITON, *CPU]}
MS = "com.microsoft"
ATTENTION_OPS = {(MS, "Attention"), (MS, "MultiHeadAttention"), (MS, "GroupQueryAttention"),
                 (INTERNAL_DOMAIN, ATTENTION_OP)}
providers = pytest.mark.parametrize("provider", [
    "cpu", pytest.param("triton", marks=requires_triton)])


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Each model exported once per test process, on first use."""
    folder = tmp_path_factory.mktemp("real_models")
    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in cache:
            cache[name] = str(getattr(real_models, name)(folder))
        return cache[name]
    return get


def _ops(path: str) -> Counter:
    return Counter((n.domain or "ai.onnx", n.op_type) for n in onnx.load(path).graph.node)


def _session(path: str, provider: str):
    return ort.InferenceSession(path, providers=PROVIDERS[provider])


# ------------------------------------------------------------------ placement facts

def _kernels(sess) -> list[dict]:
    return next(ep for ep in sess._program.providers if ep.name == TRITON).kernels


def _record_cpu_nodes(sess, record_property) -> dict[str, tuple[str, str]]:
    """Node name -> (op, why Triton passed) for every node the Triton session left on the
    CPU; each must have a reason."""
    left = {}
    for name, a in sess._program.partition.assignments.items():
        if a.provider.name != TRITON:
            assert a.declined.get(TRITON), (name, a.node.op_type, a.declined)
            left[name] = (a.node.op_type, a.declined[TRITON])
    record_property("cpu_nodes", {k: f"{op}: {why}" for k, (op, why) in left.items()})
    return left


def _gaps(sess) -> list[str]:
    """What issue 13 asks of the Triton placement that this session does not do yet."""
    assignments = sess._program.partition.assignments
    units = {n: r for r in _kernels(sess) for n in r["nodes"]}
    gaps = []
    for name, a in assignments.items():
        key = (a.node.domain or "ai.onnx", a.node.op_type)
        on_cpu = a.provider.name != TRITON
        why = a.declined.get(TRITON, "")
        if key in ATTENTION_OPS:
            unit = units.get(name)
            if on_cpu:
                gaps.append(f"{a.node.op_type} {name} on the CPU ({why})")
            elif unit["kind"] != "attention" or sum(
                    (assignments[n].node.domain, assignments[n].node.op_type) in ATTENTION_OPS
                    for n in unit["nodes"]) != 1:
                gaps.append(f"{a.node.op_type} {name} is not one attention launch: {unit}")
        elif key == ("ai.onnx", "Softmax"):
            gaps.append(f"Softmax {name}: attention not fused into one node")
        elif key == (MS, "MatMulNBits"):
            unit = units.get(name)
            if on_cpu:
                gaps.append(f"MatMulNBits {name} on the CPU ({why})")
            elif unit["kind"] != "tiled" or unit["nodes"][0] != name:
                gaps.append(f"MatMulNBits {name} is not one GEMM launch: {unit}")
        elif key[0] == MS and on_cpu:
            gaps.append(f"{a.node.op_type} {name} on the CPU ({why})")
    return gaps


def _check_placement(sess, provider, record_property, attention_blocks: int = 2) -> None:
    if provider != "triton":
        return
    _record_cpu_nodes(sess, record_property)
    # every layer's attention is found, fused or not, so no check below passes vacuously
    keys = [(a.node.domain or "ai.onnx", a.node.op_type)
            for a in sess._program.partition.assignments.values()]
    assert sum(k in ATTENTION_OPS or k == ("ai.onnx", "Softmax") for k in keys) == \
        attention_blocks, Counter(keys)
    gaps = _gaps(sess)
    record_property("triton_gaps", gaps)
    if gaps:
        pytest.xfail("Triton placement short of issue 13: " + "; ".join(gaps))


# ------------------------------------------------------------------ encoders

def _ids(rng, shape):
    return rng.integers(3, real_models.VOCAB, shape).astype(np.int64)


def _padded_mask():
    mask = np.ones((2, real_models.SEQ), np.int64)
    mask[1, -3:] = 0
    return mask


def _text_feeds(with_types: bool) -> dict:
    rng = np.random.default_rng(0)
    feeds = {"input_ids": _ids(rng, (2, real_models.SEQ)), "attention_mask": _padded_mask()}
    if with_types:
        feeds["token_type_ids"] = np.repeat([[0] * 5 + [1] * 3], 2, axis=0).astype(np.int64)
    return feeds


ENCODERS = {
    # model: (feeds, com.microsoft ops the optimizer must have written)
    "bert": (lambda: _text_feeds(True),
             {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu"}),
    "distilbert": (lambda: _text_feeds(False),
                   {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization",
                    "BiasGelu"}),
    # onnxruntime's T5 attention fusion does not match this transformers release's export
    "t5_encoder": (lambda: _text_feeds(False), {"SkipSimplifiedLayerNormalization"}),
    "clip_vision": (lambda: {"pixel_values": np.random.default_rng(0).standard_normal(
        (2, 3, 32, 32)).astype(np.float32)}, {"Attention", "SkipLayerNormalization",
                                              "QuickGelu"}),
}


@pytest.mark.parametrize("name", list(ENCODERS))
@providers
def test_ort_optimized_encoder(models, name, provider, record_property):
    path = models(f"{name}")
    make_feeds, fused = ENCODERS[name]
    ops = _ops(path)
    assert all(ops[MS, op] for op in fused), ops
    feeds = make_feeds()
    expected = onnxruntime.InferenceSession(path, providers=CPU).run(None, feeds)
    sess = _session(path, provider)
    for got, want in zip(sess.run(None, feeds), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    _check_placement(sess, provider, record_property)


# ------------------------------------------------------------------ decoders

DECODERS = {
    # model: (layers, kv heads, head size, com.microsoft ops it must carry)
    "gpt2": (2, 4, 8, {"SkipLayerNormalization", "FastGelu"}),
    "llama_nbits": (real_models.LLAMA["layers"], real_models.LLAMA["kv_heads"],
                    real_models.LLAMA["hidden"] // real_models.LLAMA["heads"], {"MatMulNBits"}),
    "llama_fused_nbits": (real_models.LLAMA["layers"], real_models.LLAMA["kv_heads"],
                          real_models.LLAMA["hidden"] // real_models.LLAMA["heads"],
                          {"MatMulNBits", "MultiHeadAttention", "SkipSimplifiedLayerNormalization",
                           "SimplifiedLayerNormalization"}),
}
PROMPT = [5, 17, 42, 99, 7]


def greedy_decode(sess, layers: int, kv_heads: int, head_size: int, steps: int = 4):
    """The prompt with an empty cache, then one token a step with the cache fed back."""
    inputs, _ = real_models.decoder_names(layers)
    past = [np.zeros((1, kv_heads, 0, head_size), np.float32) for _ in inputs[3:]]
    ids, total, tokens, logits = np.array([PROMPT], np.int64), 0, [], []
    for _ in range(steps):
        length = ids.shape[1]
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, total + length), np.int64),
                 "position_ids": np.arange(total, total + length, dtype=np.int64)[None],
                 **dict(zip(inputs[3:], past))}
        out = sess.run(None, feeds)
        logits.append(out[0][:, -1])
        past, total = out[1:], total + length
        tokens.append(int(out[0][0, -1].argmax()))
        ids = np.array([[tokens[-1]]], np.int64)
    return tokens, logits, past


@pytest.mark.parametrize("name", list(DECODERS))
@providers
def test_greedy_decode_gives_onnxruntimes_tokens(models, name, provider, record_property):
    path = models(name)
    layers, kv_heads, head_size, fused = DECODERS[name]
    ops = _ops(path)
    assert all(ops[MS, op] or ops["ai.onnx", op] for op in fused), ops
    want_tokens, want_logits, want_cache = greedy_decode(
        onnxruntime.InferenceSession(path, providers=CPU), layers, kv_heads, head_size)
    sess = _session(path, provider)
    tokens, logits, cache = greedy_decode(sess, layers, kv_heads, head_size)
    assert tokens == want_tokens
    for got, want in zip(logits + cache, want_logits + want_cache, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    _check_placement(sess, provider, record_property)


# ------------------------------------------------------------------ a QOperator CNN

@providers
def test_qoperator_quantized_cnn(models, provider, record_property):
    path = models("qoperator_cnn")
    ops = _ops(path)
    assert all(ops[MS, op] for op in ("QLinearAdd", "QLinearGlobalAveragePool", "QGemm")), ops
    assert ops["ai.onnx", "QLinearConv"] == 2
    x = real_models.cnn_images(100, batch=2)
    want = onnxruntime.InferenceSession(path, providers=CPU).run(None, {"x": x})[0]
    sess = _session(path, provider)
    got = sess.run(None, {"x": x})[0]
    # the output is dequantized from uint8: a rounding tie may land one step away
    step = float(onnx.numpy_helper.to_array(next(
        t for t in onnx.load(path).graph.initializer if t.name.startswith("y_scale"))))
    np.testing.assert_allclose(got, want, rtol=0, atol=step * 1.001)
    assert np.mean(got == want) >= 0.9
    _check_placement(sess, provider, record_property, attention_blocks=0)


# ------------------------------------------------------------------ unsupported contrib ops

@providers
def test_unsupported_contrib_op_is_named_with_what_is_supported(provider):
    """com.microsoft Inverse runs on onnxruntime's CPU; tritort names it, its node, and the
    contrib ops it does run, whichever providers the session asked for."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 3])
    node = onnx.helper.make_node("Inverse", ["x"], ["y"], name="invert", domain=MS)
    model = onnx.helper.make_model(
        onnx.helper.make_graph([node], "g", [x], [y]),
        opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid(MS, 1)])
    feeds = {"x": np.eye(3, dtype=np.float32) * 2}
    np.testing.assert_allclose(onnxruntime.InferenceSession(
        model.SerializeToString(), providers=CPU).run(None, feeds)[0], np.eye(3) / 2)
    with pytest.raises(ort.NotImplemented) as info:
        ort.InferenceSession(model.SerializeToString(), providers=PROVIDERS[provider])
    message = str(info.value)
    assert "Inverse" in message and "invert" in message and MS in message
    for op in ("SkipLayerNormalization", "MultiHeadAttention", "MatMulNBits", "QLinearAdd"):
        assert op in message, message
