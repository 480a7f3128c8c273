"""An LLM-style decode loop (issue 13): the hand-built decoder of tests/llm_decoder.py
(GroupQueryAttention, rotary inside it or as RotaryEmbedding nodes, MatMulNBits weights,
(Skip)SimplifiedLayerNormalization) decoded greedily — a prompt of 5 tokens, then 5 single
tokens — on tritort's NumPy and Triton providers against onnxruntime's CPU provider on the
same file. The KV cache is either one buffer of MAX_LEN rows per past/present pair bound
through IOBinding (past_key_values.* and present.* the same memory, as onnxruntime-genai runs
it), or the present outputs of run() fed back as the next past.

Tokens must be equal, logits and the cache rows written so far close. On Triton every
GroupQueryAttention must be one attention launch and every MatMulNBits one GEMM launch.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

import tritort as ort
from tests import llm_decoder as llm
from tests.triton_env import requires_triton

PROMPT = [5, 17, 42, 9, 7]
STEPS = 5  # single-token steps after the prompt
CPU = ["CPUExecutionProvider"]
TRITON = "TritonExecutionProvider"
PROVIDERS = {"cpu": CPU, "triton": [TRITON, *CPU]}
VARIANTS = {
    # name: (rotary, bits, block size, dtype, more GroupQueryAttention attributes)
    "gqa_rotary_4bit_b32": ("gqa", 4, 32, "float32", {}),
    "rotary_nodes_4bit_b16": ("node", 4, 16, "float32", {}),
    "gqa_rotary_8bit_b32": ("gqa", 8, 32, "float32", {}),
    "packed_qkv_4bit_b32": ("packed", 4, 32, "float32", {}),
    "gqa_rotary_4bit_b32_fp16": ("gqa", 4, 32, "float16", {}),
    # a sliding window shorter than the decode (Mistral, Phi-3) and a logit cap (Gemma 2)
    "window_softcap_4bit_b32": ("gqa", 4, 32, "float32",
                                {"local_window_size": 3, "softcap": 1.5}),
}
TOL = {"float32": {"rtol": 1e-5, "atol": 1e-5},
       # a logit near 3 is 2 ** -9 from the next float16: a different summation order shows
       "float16": {"rtol": 2e-3, "atol": 4e-3}}


@pytest.fixture(scope="module")
def models():
    cache: dict[str, bytes] = {}

    def get(name: str) -> bytes:
        if name not in cache:
            rotary, bits, block, dtype, attention = VARIANTS[name]
            cache[name] = llm.decoder(rotary, bits, block, dtype, **attention)
        return cache[name]
    return get


class _Steps:
    """The feeds of each greedy step for prompts of any lengths, right padded (what
    GroupQueryAttention's seqlens_k describes): the prompt, then one token per entry."""

    def __init__(self, rotary: str, prompts: list[list[int]]):
        self.rotary, self.lengths = rotary, np.array([len(p) for p in prompts])
        width = self.lengths.max()
        self.ids = np.array([p + [0] * (width - len(p)) for p in prompts], np.int64)
        self.positions = np.repeat(np.arange(width)[None], len(prompts), 0)
        self.last = self.lengths - 1  # the row of each entry's next-token logits

    def feeds(self) -> dict[str, np.ndarray]:
        total = self.lengths.max()
        feeds = {"input_ids": self.ids, "attention_mask": (
            np.arange(total)[None] < self.lengths[:, None]).astype(np.int64)}
        if self.rotary == "node":
            feeds["position_ids"] = self.positions.astype(np.int64)
        return feeds

    def advance(self, logits: np.ndarray) -> tuple[list[int], np.ndarray]:
        """This step's tokens and logits; the next step's feeds follow from them."""
        last = logits[np.arange(len(self.lengths)), self.last]
        tokens = last.argmax(-1)
        self.ids, self.positions = tokens[:, None].astype(np.int64), self.lengths[:, None]
        self.lengths, self.last = self.lengths + 1, np.zeros_like(self.lengths)
        return tokens.tolist(), last


def _empty_cache(batch: int, rows: int = llm.MAX_LEN, dtype: str = "float32") -> np.ndarray:
    return np.zeros((batch, llm.KV_HEADS, rows, llm.HEAD), dtype)


def decode_shared_buffers(runtime, sess, rotary: str, prompts=(PROMPT,), dtype="float32"):
    """Greedy decode through IOBinding, each present.* bound to its past_key_values.* buffer.
    ``runtime`` is onnxruntime or tritort (the same API)."""
    inputs, outputs = llm.io_names(position_ids=rotary == "node")
    buffers = [runtime.OrtValue.ortvalue_from_numpy(_empty_cache(len(prompts), dtype=dtype))
               for _ in outputs[1:]]
    binding = sess.io_binding()
    pasts = [n for n in inputs if n.startswith("past")]
    steps, tokens, logits = _Steps(rotary, list(prompts)), [], []
    for _ in range(1 + STEPS):
        for name, value in steps.feeds().items():
            binding.bind_cpu_input(name, value)
        # logits change shape after the prompt: onnxruntime would reuse the first allocation
        binding.clear_binding_outputs()
        binding.bind_output("logits", "cpu")
        for past, present, buffer in zip(pasts, outputs[1:], buffers, strict=True):
            binding.bind_ortvalue_input(past, buffer)
            binding.bind_ortvalue_output(present, buffer)
        sess.run_with_iobinding(binding)
        step_tokens, step_logits = steps.advance(binding.copy_outputs_to_cpu()[0])
        tokens.append(step_tokens)
        logits.append(step_logits)
    return tokens, logits, _written([b.numpy() for b in buffers], steps.lengths - 1)


def decode_fed_back(sess, rotary: str, prompts=(PROMPT,), rows: int = llm.MAX_LEN,
                    dtype: str = "float32"):
    """Greedy decode through run(): the first past is an empty buffer of ``rows`` (0: a cache
    that grows each step), each step's present the next step's past."""
    inputs, _ = llm.io_names(position_ids=rotary == "node")
    pasts = [n for n in inputs if n.startswith("past")]
    cache = [_empty_cache(len(prompts), rows, dtype) for _ in pasts]
    steps, tokens, logits = _Steps(rotary, list(prompts)), [], []
    for _ in range(1 + STEPS):
        total = steps.lengths.max()
        out = sess.run(None, {**steps.feeds(), **dict(zip(pasts, cache))})
        cache = out[1:]
        assert all(c.shape[2] == max(rows, total) for c in cache), [c.shape for c in cache]
        step_tokens, step_logits = steps.advance(out[0])
        tokens.append(step_tokens)
        logits.append(step_logits)
    return tokens, logits, _written(cache, steps.lengths - 1)


def _written(cache: list[np.ndarray], lengths: np.ndarray) -> list[np.ndarray]:
    """Copies of the rows each entry has written (the rest of a buffer is undefined; an
    onnxruntime OrtValue's numpy() does not keep its memory alive)."""
    return [c[i, :, :n].copy() for c in cache for i, n in enumerate(lengths)]


def _decode(runtime, sess, rotary: str, cache: str, prompts=(PROMPT,), dtype="float32"):
    if cache == "shared":
        return decode_shared_buffers(runtime, sess, rotary, prompts, dtype)
    return decode_fed_back(sess, rotary, prompts, 0 if cache == "growing" else llm.MAX_LEN,
                           dtype)


def _compare(got, want, dtype: str = "float32") -> None:
    assert got[0] == want[0]
    for step, (g, w) in enumerate(zip(got[1], want[1], strict=True)):
        assert g.dtype == w.dtype == dtype, (g.dtype, w.dtype)
        np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), **TOL[dtype],
                                   err_msg=f"logits, step {step}")
    for i, (g, w) in enumerate(zip(got[2], want[2], strict=True)):
        np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), **TOL[dtype],
                                   err_msg=f"cache {i}")


def _check_placement(sess, rotary: str, record_property) -> None:
    """Every GroupQueryAttention one attention launch (with its RotaryEmbedding nodes), every
    MatMulNBits one GEMM launch (the unit's first node: dequantization in its operand
    prologue); whatever stays on the CPU says why."""
    assignments = sess._program.partition.assignments
    units = {name: unit for unit in next(ep for ep in sess._program.providers
                                         if ep.name == TRITON).kernels
             for name in unit["nodes"]}
    on_cpu = {name: f"{a.node.op_type}: {a.declined.get(TRITON)}"
              for name, a in assignments.items() if a.provider.name != TRITON}
    record_property("cpu_nodes", on_cpu)
    assert all(not why.endswith(": None") for why in on_cpu.values()), on_cpu
    ops = {name: a.node.op_type for name, a in assignments.items()}
    attention = [n for n, op in ops.items() if op == "GroupQueryAttention"]
    nbits = [n for n, op in ops.items() if op == "MatMulNBits"]
    assert len(attention) == llm.LAYERS
    assert len(nbits) == (5 if rotary == "packed" else 7) * llm.LAYERS + 1
    for name in attention:
        assert name in units, on_cpu[name]
        fused = [ops[n] for n in units[name]["nodes"]]
        assert units[name]["kind"] == "attention" and \
            fused.count("GroupQueryAttention") == 1, units[name]
        # the RotaryEmbedding nodes on Q and K run inside the attention launch: as many
        # units as GroupQueryAttention's own do_rotary
        assert fused.count("RotaryEmbedding") == (2 if rotary == "node" else 0), units[name]
    for name in nbits:
        assert name in units, on_cpu[name]
        assert units[name]["kind"] == "tiled" and units[name]["nodes"][0] == name, units[name]
    # total_sequence_length (Shape, Gather, Cast to int32) stays on the host, where
    # GroupQueryAttention reads it: no run waits for the device mid-way
    report = sess.placement_report().splitlines()[-1]
    assert report.endswith("(device values read on the host): none"), report


@pytest.mark.parametrize("variant,cache", [
    ("gqa_rotary_4bit_b32", "shared"), ("gqa_rotary_4bit_b32", "fed_back"),
    ("rotary_nodes_4bit_b16", "shared"), ("rotary_nodes_4bit_b16", "fed_back"),
    ("gqa_rotary_8bit_b32", "shared"), ("packed_qkv_4bit_b32", "fed_back"),
    ("gqa_rotary_4bit_b32_fp16", "shared"), ("window_softcap_4bit_b32", "shared")])
@pytest.mark.parametrize("provider", ["cpu", pytest.param("triton", marks=requires_triton)])
def test_greedy_decode_gives_onnxruntimes_tokens(models, variant, cache, provider,
                                                 record_property):
    model = models(variant)
    rotary, dtype = VARIANTS[variant][0], VARIANTS[variant][3]
    nodes = onnx.load_from_string(model).graph.node
    ops = {(n.domain, n.op_type) for n in nodes}
    assert ("com.microsoft", "GroupQueryAttention") in ops
    assert (("com.microsoft", "RotaryEmbedding") in ops) == (rotary == "node")
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    _, bits, block, _, _ = VARIANTS[variant]
    for node in nbits:  # every weight quantized as asked, with zero points
        attrs = {a.name: a.i for a in node.attribute}
        assert (attrs["bits"], attrs["block_size"]) == (bits, block), attrs
        assert len(node.input) >= 4 and node.input[3], node.input
    want = _decode(onnxruntime, onnxruntime.InferenceSession(model, providers=CPU), rotary,
                   cache, dtype=dtype)
    sess = ort.InferenceSession(model, providers=PROVIDERS[provider])
    _compare(_decode(ort, sess, rotary, cache, dtype=dtype), want, dtype)
    if provider == "triton":
        _check_placement(sess, rotary, record_property)


def test_rotary_variants_agree():
    """GroupQueryAttention's own rotary and RotaryEmbedding nodes on Q and K are the same
    model: onnxruntime gives both the same tokens (so neither variant tests a no-op)."""
    tokens = []
    for rotary in ("gqa", "node"):
        sess = onnxruntime.InferenceSession(llm.decoder(rotary), providers=CPU)
        tokens.append(decode_fed_back(sess, rotary)[0])
    assert tokens[0] == tokens[1]
    assert len({t for step in tokens[0] for t in step}) > 1  # one repeated token hides errors


@pytest.mark.parametrize("cache", ["shared", "growing"])
@pytest.mark.parametrize("provider", ["cpu", pytest.param("triton", marks=requires_triton)])
def test_batch_of_unequal_prompts(models, cache, provider):
    """Two prompts (5 and 3 tokens, right padded) decoded together: each entry's seqlens_k,
    positions and cache rows are its own; the cache in shared buffers or growing each step."""
    model, rotary = models("rotary_nodes_4bit_b16"), "node"
    prompts = (PROMPT, [3, 11, 60])
    want = _decode(onnxruntime, onnxruntime.InferenceSession(model, providers=CPU), rotary,
                   cache, prompts)
    sess = ort.InferenceSession(model, providers=PROVIDERS[provider])
    _compare(_decode(ort, sess, rotary, cache, prompts), want)


@requires_triton
def test_second_decode_replays_into_shared_torch_buffers(models):
    """torch tensors bound as the shared KV buffers: the first decode records each step's
    launches (one input signature per step: attention_mask grows), a second decode into fresh
    buffers replays them, the kernels writing present.* straight into the past buffers they
    read; both give onnxruntime's tokens."""
    torch = pytest.importorskip("torch")
    model, rotary = models("gqa_rotary_4bit_b32"), "gqa"
    want = decode_shared_buffers(onnxruntime, onnxruntime.InferenceSession(
        model, providers=CPU), rotary)
    sess = ort.InferenceSession(model, providers=PROVIDERS["triton"])
    inputs, outputs = llm.io_names()
    pasts = [n for n in inputs if n.startswith("past")]
    for _ in range(2):
        buffers = [torch.zeros(1, llm.KV_HEADS, llm.MAX_LEN, llm.HEAD) for _ in outputs[1:]]
        binding, steps, tokens, logits = sess.io_binding(), _Steps(rotary, [PROMPT]), [], []
        for _ in range(1 + STEPS):
            for name, value in steps.feeds().items():
                binding.bind_input(name, torch.from_numpy(value))
            binding.clear_binding_outputs()
            binding.bind_output("logits", "cpu")
            for past, present, buffer in zip(pasts, outputs[1:], buffers, strict=True):
                binding.bind_input(past, buffer)
                binding.bind_output(present, buffer)
            sess.run_with_iobinding(binding)
            step_tokens, step_logits = steps.advance(binding.copy_outputs_to_cpu()[0])
            tokens.append(step_tokens)
            logits.append(step_logits)
        _compare((tokens, logits, _written([b.numpy() for b in buffers], steps.lengths - 1)),
                 want)
    assert sess._bound_plans.refusals == {}
    assert len(sess._bound_plans.bound()) == 1 + STEPS
