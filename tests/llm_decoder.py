"""A tiny LLaMA-style decoder in the layout LLM builders (onnxruntime-genai's model builder)
write, built node by node with onnx.helper from random weights (fixed seed), for
tests/test_llm_decoder.py.

Inputs: input_ids (B, S), attention_mask (B, total), past_key_values.{i}.key/value
(B, N_kv, past, H) — past and present share one buffer of ``MAX_LEN`` rows when the caller
binds them so; outputs: logits (B, S, VOCAB), present.{i}.key/value. seqlens_k and
total_sequence_length are computed in the graph from attention_mask as the builder writes them.
Each layer: SimplifiedLayerNormalization (the first) or SkipSimplifiedLayerNormalization,
q/k/v MatMulNBits, rotary (inside GroupQueryAttention or as RotaryEmbedding nodes on Q and K
fed by position_ids), GroupQueryAttention, o_proj MatMulNBits, SkipSimplifiedLayerNormalization,
SiLU-gated MLP of MatMulNBits; then a final SkipSimplifiedLayerNormalization and an lm_head
MatMulNBits. The MatMul weights are quantized by onnxruntime's MatMulNBitsQuantizer
(asymmetric: with zero points).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# head size 16: onnxruntime's CPU GroupQueryAttention rotates only multiples of 16
VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD = 64, 64, 2, 4, 2, 16
INTERMEDIATE, MAX_LEN, EPS = 128, 16, 1e-5
MS = "com.microsoft"


def io_names(layers: int = LAYERS, position_ids: bool = False) -> tuple[list[str], list[str]]:
    """Graph input and output names, in order."""
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    inputs = ["input_ids", "attention_mask"] + (["position_ids"] if position_ids else [])
    return inputs + past, ["logits", *present]


class _Graph:
    """Nodes and initializers collected while the decoder is written."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, outputs: int | list[str] = 1,
             domain: str = "", **attrs) -> list[str]:
        outs = outputs if isinstance(outputs, list) else \
            [f"{name}/output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs

    def matmul(self, x: str, k: int, n: int, name: str) -> str:
        """A MatMul with a constant (k, n) weight; the quantizer turns it into MatMulNBits."""
        w = (self.rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        return self.node("MatMul", [x, self.const(f"{name}.weight", w)], name)[0]

    def norm_weight(self, name: str) -> str:
        return self.const(name, (1 + 0.1 * self.rng.standard_normal(HIDDEN)).astype(np.float32))

    def skip_norm(self, x: str, skip: str, name: str) -> tuple[str, str]:
        """SkipSimplifiedLayerNormalization: (normalized, x + skip)."""
        outs = [f"{name}/output_0", "", "", f"{name}/output_3"]
        self.node("SkipSimplifiedLayerNormalization", [x, skip, self.norm_weight(
            f"{name}.weight")], name, outs, domain=MS, epsilon=EPS)
        return outs[0], outs[3]


def _rotary_caches() -> tuple[np.ndarray, np.ndarray]:
    inv_freq = 1.0 / 10000 ** (np.arange(0, HEAD, 2) / HEAD)
    angles = np.arange(MAX_LEN)[:, None] * inv_freq[None]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def build(rotary: str = "gqa", seed: int = 0, **attention: float) -> onnx.ModelProto:
    """The float decoder (MatMul weights not yet quantized). ``rotary``: "gqa" (do_rotary=1 on
    GroupQueryAttention), "packed" (the same with one packed QKV projection) or "node"
    (com.microsoft RotaryEmbedding on Q and K, position_ids an input). ``attention``: more
    GroupQueryAttention attributes (local_window_size, softcap)."""
    g = _Graph(seed)
    inputs, outputs = io_names(LAYERS, position_ids=rotary == "node")
    cos, sin = _rotary_caches()
    g.const("cos_cache", cos)
    g.const("sin_cache", sin)

    # attention_mask -> seqlens_k (int32, per batch entry) and total_sequence_length (scalar)
    mask_sum = g.node("ReduceSum", ["attention_mask", g.const("/model/one_axis", np.array(
        [1], np.int64))], "/model/attn_mask_reformat/ReduceSum", keepdims=0)[0]
    minus_one = g.node("Sub", [mask_sum, g.const("/model/one", np.array(1, np.int64))],
                       "/model/attn_mask_reformat/Sub")[0]
    seqlens_k = g.node("Cast", [minus_one], "/model/attn_mask_reformat/seqlens_k",
                       to=TensorProto.INT32)[0]
    mask_shape = g.node("Shape", ["attention_mask"], "/model/attn_mask_reformat/Shape")[0]
    total_64 = g.node("Gather", [mask_shape, g.const("/model/index_one", np.array(1, np.int64))],
                      "/model/attn_mask_reformat/Gather", axis=0)[0]
    total = g.node("Cast", [total_64], "/model/attn_mask_reformat/total_seq_len",
                   to=TensorProto.INT32)[0]

    embeddings = g.const("model.embed_tokens.weight",
                         g.rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32))
    hidden = g.node("Gather", [embeddings, "input_ids"], "/model/embed_tokens/Gather")[0]
    normed = g.node("SimplifiedLayerNormalization", [hidden, g.norm_weight(
        "model.layers.0.input_layernorm.weight")], "/model/layers.0/input_layernorm",
        axis=-1, epsilon=EPS)[0]
    residual = hidden
    for i in range(LAYERS):
        prefix = f"/model/layers.{i}"
        if i > 0:
            normed, residual = g.skip_norm(hidden, residual, f"{prefix}/input_layernorm")
        if rotary == "packed":  # the builder's packed form: one qkv_proj, Q|K|V on the last axis
            q = g.matmul(normed, HIDDEN, (HEADS + 2 * KV_HEADS) * HEAD,
                         f"{prefix}/attn/qkv_proj/MatMul")
            k = v = ""
        else:
            q = g.matmul(normed, HIDDEN, HEADS * HEAD, f"{prefix}/attn/q_proj/MatMul")
            k = g.matmul(normed, HIDDEN, KV_HEADS * HEAD, f"{prefix}/attn/k_proj/MatMul")
            v = g.matmul(normed, HIDDEN, KV_HEADS * HEAD, f"{prefix}/attn/v_proj/MatMul")
        rotary_inputs: list[str] = []
        if rotary == "node":
            q, k = (g.node("RotaryEmbedding", [x, "position_ids", "cos_cache", "sin_cache"],
                           f"{prefix}/attn/{which}_rotary/RotaryEmbedding", domain=MS,
                           num_heads=heads)[0]
                    for x, which, heads in ((q, "q", HEADS), (k, "k", KV_HEADS)))
        else:
            rotary_inputs = ["cos_cache", "sin_cache"]
        attn = g.node("GroupQueryAttention",
                      [q, k, v, inputs[-2 * LAYERS + 2 * i], inputs[-2 * LAYERS + 2 * i + 1],
                       seqlens_k, total, *rotary_inputs], f"{prefix}/attn/GroupQueryAttention",
                      [f"{prefix}/attn/GroupQueryAttention/output_0", outputs[1 + 2 * i],
                       outputs[2 + 2 * i]], domain=MS, num_heads=HEADS, kv_num_heads=KV_HEADS,
                      do_rotary=int(rotary != "node"), rotary_interleaved=0,
                      scale=float(HEAD ** -0.5), **attention)[0]
        o = g.matmul(attn, HEADS * HEAD, HIDDEN, f"{prefix}/attn/o_proj/MatMul")
        normed, residual = g.skip_norm(o, residual, f"{prefix}/post_attention_layernorm")
        gate = g.matmul(normed, HIDDEN, INTERMEDIATE, f"{prefix}/mlp/gate_proj/MatMul")
        up = g.matmul(normed, HIDDEN, INTERMEDIATE, f"{prefix}/mlp/up_proj/MatMul")
        sig = g.node("Sigmoid", [gate], f"{prefix}/mlp/act_fn/Sigmoid")[0]
        silu = g.node("Mul", [gate, sig], f"{prefix}/mlp/act_fn/Mul")[0]
        gated = g.node("Mul", [silu, up], f"{prefix}/mlp/Mul")[0]
        hidden = g.matmul(gated, INTERMEDIATE, HIDDEN, f"{prefix}/mlp/down_proj/MatMul")
    final, _ = g.skip_norm(hidden, residual, "/model/layers.final_norm_layernorm")
    g.matmul(final, HIDDEN, VOCAB, "/lm_head/MatMul")
    g.nodes[-1].output[0] = "logits"

    dims = {"input_ids": ["batch_size", "sequence_length"],
            "attention_mask": ["batch_size", "total_sequence_length"],
            "position_ids": ["batch_size", "sequence_length"]}
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dims[n])
                    for n in inputs if not n.startswith("past")]
    graph_inputs += [helper.make_tensor_value_info(
        n, TensorProto.FLOAT, ["batch_size", KV_HEADS, "past_sequence_length", HEAD])
        for n in inputs if n.startswith("past")]
    graph_outputs = [helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, ["batch_size", "sequence_length", VOCAB])]
    # named as the builder names it, though a shared buffer keeps MAX_LEN rows while
    # attention_mask's total_sequence_length grows: equal names are not equal sizes here
    graph_outputs += [helper.make_tensor_value_info(
        n, TensorProto.FLOAT, ["batch_size", KV_HEADS, "total_sequence_length", HEAD])
        for n in outputs[1:]]
    model = helper.make_model(
        helper.make_graph(g.nodes, "llm_decoder", graph_inputs, graph_outputs, g.inits),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)])
    model.ir_version = 10
    return model


def quantize(model: onnx.ModelProto, bits: int = 4, block_size: int = 32) -> onnx.ModelProto:
    """Every MatMul with a constant weight as MatMulNBits, asymmetric (with zero points)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, bits=bits)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    return quantizer.model.model


def decoder(rotary: str = "gqa", bits: int = 4, block_size: int = 32,
            dtype: str = "float32", **attention: float) -> bytes:
    """The serialized MatMulNBits decoder; ``dtype`` "float16" converts weights, activations,
    inputs and outputs (the KV cache, logits) to float16 first, as builders do for GPUs."""
    model = build(rotary, **attention)
    if dtype == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True)
    return quantize(model, bits, block_size).SerializeToString()
