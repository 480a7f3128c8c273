"""Builders for tests/test_real_models*.py: tiny random-weight Hugging Face ``transformers``
models built from config objects (nothing downloaded), exported with torch.onnx's TorchScript
exporter (what onnxruntime's transformer optimizer matches), then rewritten the way users
receive them: onnxruntime's transformer optimizer, its QOperator quantizer, its MatMulNBits
quantizer, onnxscript's ORT fusions."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

SEQ = 8
VOCAB = 128


def _quiet_export(model, args, path, **kwargs) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=False, **kwargs)


def _ort_optimize(plain: Path, out: Path, model_type: str, heads: int, hidden: int) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = optimize_model(str(plain), model_type=model_type, num_heads=heads,
                               hidden_size=hidden, opt_level=0)
    fused.save_model_to_file(str(out))
    return out


class _Keywords(torch.nn.Module):
    """Feeds positional export inputs to a Hugging Face model by name."""

    def __init__(self, model, names, outputs):
        super().__init__()
        self.model, self.names, self.outputs = model, names, outputs

    def forward(self, *args):
        out = self.model(**dict(zip(self.names, args)), use_cache=False)
        return tuple(out[k] for k in self.outputs)


def _eager(config):
    config._attn_implementation = "eager"  # the matmul/softmax graph the optimizer fuses
    return config


# ------------------------------------------------------------------ encoders

def bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = _eager(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64,
                               max_position_embeddings=32))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    model = _Keywords(BertModel(config, add_pooling_layer=False).eval(), names,
                      ["last_hidden_state"])
    ids = torch.randint(0, VOCAB, (2, SEQ))
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    plain = folder / "bert.onnx"
    _quiet_export(model, args, plain, input_names=names, output_names=["last_hidden_state"],
                  dynamic_axes={k: {0: "batch", 1: "seq"} for k in names}, opset_version=14)
    return _ort_optimize(plain, folder / "bert_opt.onnx", "bert", 4, 32)


def distilbert(folder: Path) -> Path:
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    config = _eager(DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                     hidden_dim=64, max_position_embeddings=32))
    model = DistilBertModel(config).eval()
    names = ["input_ids", "attention_mask"]
    ids = torch.randint(0, VOCAB, (2, SEQ))
    plain = folder / "distilbert.onnx"
    _quiet_export(model, (ids, torch.ones_like(ids)), plain, input_names=names,
                  output_names=["last_hidden_state"],
                  dynamic_axes={k: {0: "batch", 1: "seq"} for k in names}, opset_version=14)
    return _ort_optimize(plain, folder / "distilbert_opt.onnx", "bert", 4, 32)


def t5_encoder(folder: Path) -> Path:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = _eager(T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                             num_heads=4, relative_attention_num_buckets=8,
                             relative_attention_max_distance=16))
    model = T5EncoderModel(config).eval()
    names = ["input_ids", "attention_mask"]
    ids = torch.randint(0, VOCAB, (2, SEQ))
    plain = folder / "t5_encoder.onnx"
    _quiet_export(model, (ids, torch.ones_like(ids)), plain, input_names=names,
                  output_names=["last_hidden_state"],
                  dynamic_axes={k: {0: "batch", 1: "seq"} for k in names}, opset_version=14)
    return _ort_optimize(plain, folder / "t5_encoder_opt.onnx", "t5", 4, 32)


def clip_vision(folder: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = _eager(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=32, patch_size=8))
    model = CLIPVisionModel(config).eval()
    plain = folder / "clip_vision.onnx"
    _quiet_export(model, (torch.randn(1, 3, 32, 32),), plain, input_names=["pixel_values"],
                  output_names=["last_hidden_state", "pooler_output"],
                  dynamic_axes={"pixel_values": {0: "batch"}}, opset_version=14)
    return _ort_optimize(plain, folder / "clip_vision_opt.onnx", "clip", 4, 32)


# ------------------------------------------------------------------ decoders with a KV cache

class _Decoder(torch.nn.Module):
    """A causal LM with its cache as plain tensors: (input_ids, attention_mask, position_ids,
    past_key_0, past_value_0, ...) -> (logits, present_key_0, present_value_0, ...)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])),
                             config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=cache, use_cache=True)
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def decoder_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    present = [p.replace("past", "present") for p in past]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def _export_decoder(model, path: Path, layers: int, kv_heads: int, head_size: int,
                    dynamo: bool = False) -> None:
    inputs, outputs = decoder_names(layers)
    batch, seq, past = 1, 2, 3  # a non-empty past: the tracer keeps the concatenation
    args = (torch.randint(0, VOCAB, (batch, seq)), torch.ones(batch, past + seq, dtype=torch.long),
            torch.arange(past, past + seq).unsqueeze(0),
            *[torch.randn(batch, kv_heads, past, head_size) for _ in range(2 * layers)])
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    axes.update({n: {0: "batch", 2: "past"} for n in inputs[3:]})
    axes.update({n: {0: "batch", 2: "total"} for n in outputs[1:]})
    if not dynamo:
        _quiet_export(_Decoder(model).eval(), args, path, input_names=inputs,
                      output_names=outputs, dynamic_axes=axes, opset_version=14)
        return
    dims = {name: torch.export.Dim(name) for name in ("seq", "total", "past")}
    shapes = ({1: dims["seq"]}, {1: dims["total"]}, {1: dims["seq"]},
              tuple({2: dims["past"]} for _ in range(2 * layers)))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_Decoder(model).eval(), args, dynamo=True, verbose=False,
                                    input_names=inputs, output_names=outputs,
                                    dynamic_shapes=shapes, opset_version=18)
    program.save(str(path))


def gpt2(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = _eager(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                               n_positions=64, bos_token_id=1, eos_token_id=2))
    plain = folder / "gpt2.onnx"
    _export_decoder(GPT2LMHeadModel(config).eval(), plain, 2, 4, 8)
    return _ort_optimize(plain, folder / "gpt2_opt.onnx", "gpt2", 4, 32)


LLAMA = dict(layers=2, heads=4, kv_heads=2, hidden=64)


def _llama_plain(folder: Path, name: str, dynamo: bool = False) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = _eager(LlamaConfig(vocab_size=VOCAB, hidden_size=LLAMA["hidden"],
                                intermediate_size=128, num_hidden_layers=LLAMA["layers"],
                                num_attention_heads=LLAMA["heads"],
                                num_key_value_heads=LLAMA["kv_heads"],
                                max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                                pad_token_id=0))
    plain = folder / f"{name}.onnx"
    _export_decoder(LlamaForCausalLM(config).eval(), plain, LLAMA["layers"], LLAMA["kv_heads"],
                    LLAMA["hidden"] // LLAMA["heads"], dynamo)
    return plain


def _nbits(model: onnx.ModelProto, out: Path) -> Path:
    """Every MatMul with a constant weight as a 4-bit MatMulNBits (blocks of 32)."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=False)
    quantizer.process()
    onnx.save(quantizer.model.model, str(out))
    return out


def llama_nbits(folder: Path) -> Path:
    return _nbits(onnx.load(str(_llama_plain(folder, "llama"))), folder / "llama_nbits.onnx")


def llama_fused_nbits(folder: Path) -> Path:
    """torch.export of the decoder, onnxscript's ORT fusions (what they find in this
    transformers release: MultiHeadAttention, SkipSimplifiedLayerNormalization,
    SimplifiedLayerNormalization), then 4-bit MatMulNBits weights."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model, _ = optimize_for_ort(ir.load(str(_llama_plain(folder, "llama_dynamo", dynamo=True))))
    return _nbits(ir.to_proto(model), folder / "llama_fused_nbits.onnx")


# ------------------------------------------------------------------ a QOperator CNN

class _Cnn(torch.nn.Module):
    """Conv/ReLU, a residual Add, MaxPool, GlobalAveragePool, Linear: quantize_static's
    QOperator format writes QLinearConv, QLinearAdd, MaxPool on uint8, QLinearGlobalAveragePool
    and QGemm."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        a = torch.relu(self.stem(x))
        b = torch.nn.functional.max_pool2d(torch.relu(self.body(a)) + a, 2)
        return self.head(torch.nn.functional.adaptive_avg_pool2d(b, 1).flatten(1))


def cnn_images(seed: int, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 8, 8)).astype(np.float32)


def qoperator_cnn(folder: Path) -> Path:
    from onnxruntime import quantization as q

    torch.manual_seed(0)
    plain, out = folder / "cnn.onnx", folder / "cnn_qop.onnx"
    _quiet_export(_Cnn().eval(), (torch.randn(1, 3, 8, 8),), plain, input_names=["x"],
                  output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                  opset_version=13)

    class Calibration(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": cnn_images(seed)} for seed in range(8)])

        def get_next(self):
            return next(self.batches, None)

    q.quantize_static(str(plain), str(out), Calibration(), quant_format=q.QuantFormat.QOperator,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
    return out
