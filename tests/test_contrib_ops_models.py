"""End to end: small random-weight transformers exported with torch.onnx, fused by
onnxruntime's transformer optimizer into com.microsoft operators, run on tritort's CPU provider
and compared with onnxruntime running the same optimized model (and the unoptimized export).
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import pytest

import tritort as ort

torch = pytest.importorskip("torch")
optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
import onnxruntime  # noqa: E402

CPU = ["CPUExecutionProvider"]
HIDDEN, HEADS, VOCAB, MAXPOS = 32, 4, 50, 16


class _Layer(torch.nn.Module):
    def __init__(self, gelu):
        super().__init__()
        nn = torch.nn
        self.head_size = HIDDEN // HEADS
        self.q, self.k, self.v, self.o = (nn.Linear(HIDDEN, HIDDEN) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(HIDDEN, eps=1e-12), nn.LayerNorm(HIDDEN, eps=1e-12)
        self.up, self.down = nn.Linear(HIDDEN, 2 * HIDDEN), nn.Linear(2 * HIDDEN, HIDDEN)
        self.gelu = gelu

    def _split(self, x):
        b, t, _ = x.size()
        return x.view(b, t, HEADS, self.head_size).permute(0, 2, 1, 3)

    def forward(self, x, mask):
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size) + mask
        ctx = torch.matmul(torch.nn.functional.softmax(scores, dim=-1), v)
        ctx = ctx.permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(ctx.size(0), ctx.size(1), HIDDEN)
        a = self.ln1(self.o(ctx) + x)
        return self.ln2(self.down(torch.nn.functional.gelu(self.up(a),
                                                           approximate=self.gelu)) + a)


class TinyBert(torch.nn.Module):
    """BERT's structure as Hugging Face writes it: embeddings + LayerNorm, an extended
    additive mask, post-LN encoder layers."""

    def __init__(self, gelu="none", layers=2):
        super().__init__()
        nn = torch.nn
        self.word, self.pos = nn.Embedding(VOCAB, HIDDEN), nn.Embedding(MAXPOS, HIDDEN)
        self.segment = nn.Embedding(2, HIDDEN)
        self.ln = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList([_Layer(gelu) for _ in range(layers)])

    def forward(self, input_ids, attention_mask, token_type_ids):
        positions = torch.arange(input_ids.size(1), dtype=torch.long).unsqueeze(0)
        x = self.ln(self.word(input_ids) + self.pos(positions) + self.segment(token_type_ids))
        mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return x


def _export_and_optimize(tmp_path, gelu):
    torch.manual_seed(0)
    model = TinyBert(gelu).eval()
    ids = torch.randint(0, VOCAB, (2, 8))
    args = (ids, torch.ones(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {k: {0: "batch", 1: "seq"} for k in names + ["hidden"]}
    plain = str(tmp_path / "bert.onnx")
    torch.onnx.export(model, args, plain, input_names=names, output_names=["hidden"],
                      dynamic_axes=axes, opset_version=14, dynamo=False)
    fused = optimizer.optimize_model(plain, model_type="bert", num_heads=HEADS,
                                     hidden_size=HIDDEN)
    path = str(tmp_path / "bert_opt.onnx")
    fused.save_model_to_file(path)
    return plain, path


def _feeds(rng):
    return {"input_ids": rng.integers(0, VOCAB, (2, 8)).astype(np.int64),
            "attention_mask": np.array([[1] * 8, [1] * 5 + [0] * 3], np.int64),
            "token_type_ids": np.array([[0] * 4 + [1] * 4, [0] * 8], np.int64)}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("gelu,expect", [("none", "BiasGelu"), ("tanh", "FastGelu")])
def test_ort_optimized_bert(tmp_path, gelu, expect):
    plain, path = _export_and_optimize(tmp_path, gelu)
    ops = Counter((n.domain, n.op_type) for n in onnx.load(path).graph.node)
    for op in ("SkipLayerNormalization", "Attention", "EmbedLayerNormalization", expect):
        assert ops[("com.microsoft", op)] > 0, ops
    feeds = _feeds(np.random.default_rng(0))
    want = onnxruntime.InferenceSession(path, providers=CPU).run(None, feeds)[0]
    got = ort.InferenceSession(path, providers=CPU).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # and the fused graph computes what the plain export does
    plain_out = onnxruntime.InferenceSession(plain, providers=CPU).run(None, feeds)[0]
    np.testing.assert_allclose(got, plain_out, rtol=1e-4, atol=1e-4)


class _SmallCnn(torch.nn.Module):
    """Conv/ReLU, a residual Add, AveragePool, x * sigmoid(x), GlobalAveragePool, Linear,
    Softmax: quantized as QOperators these become QLinearConv, QLinearAdd, QLinearAveragePool,
    QLinearSigmoid, QLinearMul, QLinearGlobalAveragePool, QGemm and QLinearSoftmax."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.nn.functional.avg_pool2d(torch.relu(self.c2(a)) + a, 2)
        b = torch.sigmoid(b) * b
        p = torch.nn.functional.adaptive_avg_pool2d(b, 1).flatten(1)
        return torch.softmax(self.fc(p), -1)


def qoperator_cnn(tmp_path) -> str:
    """The small CNN exported and quantized by onnxruntime's QOperator quantizer (uint8
    activations and weights, calibrated on 8 random images); its path."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(0)
    plain, path = str(tmp_path / "cnn.onnx"), str(tmp_path / "cnn_q.onnx")
    torch.onnx.export(_SmallCnn().eval(), (torch.randn(1, 3, 8, 8),), plain, input_names=["x"],
                      output_names=["y"], opset_version=13, dynamo=False)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.data = iter([{"x": np.random.default_rng(i).standard_normal(
                (1, 3, 8, 8)).astype(np.float32)} for i in range(8)])

        def get_next(self):
            return next(self.data, None)

    quantization.quantize_static(plain, path, Reader(),
                                 quant_format=quantization.QuantFormat.QOperator,
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QUInt8)
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_qoperator_quantized_cnn(tmp_path):
    path = qoperator_cnn(tmp_path)
    ops = Counter((n.domain, n.op_type) for n in onnx.load(path).graph.node)
    for op in ("QLinearAdd", "QLinearAveragePool", "QLinearSigmoid", "QLinearMul",
               "QLinearGlobalAveragePool", "QGemm", "QLinearSoftmax"):
        assert ops[("com.microsoft", op)] > 0, ops
    sess = ort.InferenceSession(path, providers=CPU)
    reference = onnxruntime.InferenceSession(path, providers=CPU)
    for seed in range(4):
        x = np.random.default_rng(100 + seed).standard_normal((1, 3, 8, 8)).astype(np.float32)
        # the softmax output's quantum is 1/256: at most one apart on a rounding tie
        np.testing.assert_allclose(sess.run(None, {"x": x})[0],
                                   reference.run(None, {"x": x})[0], rtol=0, atol=1 / 256 + 1e-7)
