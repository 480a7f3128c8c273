"""Attention fused through onnxscript's rewriter (tritort/rewrites.py) on torch.onnx exports of
small random-weight transformers: one internal attention node per layer, causal masks as the
node's flag, and outputs equal to onnxruntime's on the original export, on the CPU provider
and on the Triton provider (interpreter)."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime
import pytest

import tritort as ort
from tests.triton_env import requires_triton
from tritort import loader, optimizer
from tritort.contracts import ATTENTION_OP, INTERNAL_DOMAIN
from tritort.options import GraphOptimizationLevel

torch = pytest.importorskip("torch")
F = torch.nn.functional
LAYERS, HIDDEN, HEADS, SEQ = 2, 16, 2, 5


class Layer(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.qkv = torch.nn.Linear(HIDDEN, 3 * HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, HIDDEN)
        self.ln = torch.nn.LayerNorm(HIDDEN)

    def forward(self, x, mask):
        b, s, _ = x.shape
        q, k, v = (t.reshape(b, s, HEADS, HIDDEN // HEADS).transpose(1, 2)
                   for t in self.qkv(x).split(HIDDEN, dim=-1))
        if self.kind == "gpt":      # F.sdpa's own causal mask
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.kind == "bert":   # a boolean padding mask: the exporters add IsNaN/Where
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif self.kind == "gpt_eager":  # a triangular buffer cropped to the length
            scores = q @ k.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS)
            keep = self.causal[:s, :s]
            a = torch.softmax(scores + torch.where(keep, 0.0, torch.finfo(x.dtype).min), -1) @ v
        else:                       # ViT: no mask
            a = F.scaled_dot_product_attention(q, k, v)
        return self.ln(x + self.out(a.transpose(1, 2).reshape(b, s, HIDDEN)))


class Net(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.layers = torch.nn.ModuleList(Layer(kind) for _ in range(LAYERS))
        for layer in self.layers:
            layer.register_buffer("causal", torch.tril(torch.ones(16, 16, dtype=torch.bool)))

    def forward(self, x, keep=None):
        mask = None if keep is None else keep[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return x


KINDS = {"bert": True, "gpt": False, "gpt_eager": False, "vit": False}  # takes a padding mask


def _export(kind: str, dynamo: bool, path) -> str:
    torch.manual_seed(0)
    net = Net(kind).eval()
    x = torch.randn(2, SEQ, HIDDEN)
    args = (x, torch.ones(2, SEQ, dtype=torch.bool)) if KINDS[kind] else (x,)
    names = ["x", "keep"][:len(args)]
    f = str(path / f"{kind}_{int(dynamo)}.onnx")
    if dynamo:
        dims = {0: torch.export.Dim("b", max=64), 1: torch.export.Dim("s", max=16)}
        torch.onnx.export(net, args, f, dynamo=True, input_names=names, opset_version=18,
                          dynamic_shapes=tuple(dims for _ in args))
    else:  # fixed sizes: the exporter's shape arithmetic folds to constants
        torch.onnx.export(net, args, f, dynamo=False, input_names=names, opset_version=17)
    return f


def _feeds(kind: str, seq: int = SEQ) -> dict:
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, seq, HIDDEN)).astype(np.float32)}
    if KINDS[kind]:
        keep = np.ones((2, seq), bool)
        keep[0, -2:] = False  # padding
        feeds["keep"] = keep
    return feeds


CASES = [(k, d) for k in KINDS for d in (True, False)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(kind, dynamo):
        if (kind, dynamo) not in cache:
            cache[kind, dynamo] = _export(kind, dynamo, path)
        return cache[kind, dynamo]
    return get


def _attention_nodes(path, level=GraphOptimizationLevel.ORT_ENABLE_ALL):
    graph = optimizer.optimize(loader.load(path).graph, level)
    return graph, [n for n in graph.nodes if (n.domain, n.op_type) == (INTERNAL_DOMAIN,
                                                                        ATTENTION_OP)]


def _expected(path, feeds):
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]


@pytest.mark.parametrize("kind,dynamo", CASES)
def test_one_attention_node_per_layer(exported, kind, dynamo):
    path = exported(kind, dynamo)
    graph, attention = _attention_nodes(path)
    assert len(attention) == LAYERS
    assert not any(n.op_type == "Softmax" for n in graph.nodes)
    # a padding mask can hide a whole row: the export's NaN guard then reads the output
    outputs = {n.outputs[0] for n in attention}
    assert all(n.inputs[0] in outputs for n in graph.nodes if n.op_type == "IsNaN")
    causal = kind.startswith("gpt")
    for n in attention:
        assert n.attrs["is_causal"] == int(causal)
        assert len(n.inputs) == (4 if KINDS[kind] else 3)  # a causal mask is not loaded
        assert n.attrs["scale"] == pytest.approx(1 / math.sqrt(HIDDEN // HEADS), rel=1e-6)
    # BASIC leaves attention alone
    assert not _attention_nodes(path, GraphOptimizationLevel.ORT_ENABLE_BASIC)[1]


@pytest.mark.parametrize("kind,dynamo", CASES)
def test_cpu_matches_onnxruntime(exported, kind, dynamo):
    path = exported(kind, dynamo)
    feeds = _feeds(kind)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, _expected(path, feeds), rtol=1e-4, atol=1e-5)


def test_other_lengths_with_dynamic_shapes(exported):
    path = exported("gpt", True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for seq in (1, 3, 9):
        feeds = _feeds("gpt", seq)
        np.testing.assert_allclose(sess.run(None, feeds)[0], _expected(path, feeds),
                                   rtol=1e-4, atol=1e-5)


def test_fully_padded_row_gives_zeros_like_the_guarded_export(exported):
    # the IsNaN/Where guard turns an all-hidden row into zeros; the fused graph keeps that
    path = exported("bert", True)
    feeds = _feeds("bert")
    feeds["keep"][1] = False
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    expected = _expected(path, feeds)
    assert not np.isnan(expected).any()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@requires_triton
@pytest.mark.parametrize("kind", ["bert", "gpt", "vit"])
def test_triton_runs_the_fused_node(exported, kind):
    path = exported(kind, True)
    feeds = _feeds(kind)
    sess = ort.InferenceSession(path, providers=["TritonExecutionProvider",
                                                 "CPUExecutionProvider"])
    placed = [a for a in sess._program.partition.assignments.values()
              if a.node.op_type == ATTENTION_OP]
    assert len(placed) == LAYERS
    assert all(a.provider.name == "TritonExecutionProvider" for a in placed), \
        [a.declined for a in placed]
    np.testing.assert_allclose(sess.run(None, feeds)[0], _expected(path, feeds),
                               rtol=1e-4, atol=1e-5)


def test_saved_optimized_model_has_the_internal_op(exported, tmp_path):
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(exported("gpt", True), so, providers=["CPUExecutionProvider"])
    saved = onnx.load(str(tmp_path / "opt.onnx"))
    assert sum(n.op_type == ATTENTION_OP for n in saved.graph.node) == LAYERS


# ------------------------------------------------------------------ real exports (issue 13)
# tests/real_models.py's builders: tiny random-weight Hugging Face models, torch.onnx's
# TorchScript exporter.


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    pytest.importorskip("transformers")
    from tests import real_models

    folder = tmp_path_factory.mktemp("real_exports")
    cache = {}

    def get(name):
        if name not in cache:
            if name == "llama":
                cache[name] = str(real_models._llama_plain(folder, "llama"))
            else:
                cache[name] = str(getattr(real_models, name)(folder))
        return cache[name]
    return get


def _t5_feeds(seed=0):
    from tests import real_models

    rng = np.random.default_rng(seed)
    mask = np.ones((2, real_models.SEQ), np.int64)
    mask[1, -3:] = 0  # padding
    return {"input_ids": rng.integers(3, real_models.VOCAB, (2, real_models.SEQ)),
            "attention_mask": mask}


@pytest.mark.parametrize("name", ["t5_encoder", "t5_encoder_plain"])
def test_t5_relative_position_bias_joins_the_mask(real, name):
    """T5 scales nothing and adds its relative-position bias, then the padding mask, to the
    scores: one node per layer with scale 1 and the two terms summed as its additive mask."""
    path = real("t5_encoder")  # the ORT-optimized model; the plain export lies beside it
    if name == "t5_encoder_plain":
        path = path.replace("t5_encoder_opt.onnx", "t5_encoder.onnx")
    graph, attention = _attention_nodes(path)
    assert len(attention) == 2 and not any(n.op_type == "Softmax" for n in graph.nodes)
    for n in attention:
        assert n.attrs["scale"] == 1.0 and n.attrs["is_causal"] == 0
        assert len(n.inputs) == 4
        assert next(m for m in graph.nodes if n.inputs[3] in m.outputs).op_type == "Add"
    feeds = _t5_feeds()
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, _expected(path, feeds), rtol=1e-4, atol=1e-5)


def _llama_feeds(past: int, seq: int, seed: int = 0) -> dict:
    from tests import real_models

    layers, kv_heads = real_models.LLAMA["layers"], real_models.LLAMA["kv_heads"]
    head = real_models.LLAMA["hidden"] // real_models.LLAMA["heads"]
    rng = np.random.default_rng(seed)
    inputs, _ = real_models.decoder_names(layers)
    mask = np.ones((1, past + seq), np.int64)
    return {"input_ids": rng.integers(3, real_models.VOCAB, (1, seq)), "attention_mask": mask,
            "position_ids": np.arange(past, past + seq, dtype=np.int64)[None],
            **{n: rng.standard_normal((1, kv_heads, past, head)).astype(np.float32)
               for n in inputs[3:]}}


def test_llama_legacy_export_fuses_past_rotary_and_repeated_heads(real):
    """The legacy exporter's LLaMA attention: rotary arithmetic on Q and K, K and V repeated
    to every query head (Expand/Reshape), the scores scaled, the causal-and-padding mask
    added, and Softmax's float32 upcast (two Casts to float32) before the product with V."""
    from tests import real_models

    path = real("llama")
    graph, attention = _attention_nodes(path)
    assert len(attention) == real_models.LLAMA["layers"]
    assert not any(n.op_type == "Softmax" for n in graph.nodes)
    head = real_models.LLAMA["hidden"] // real_models.LLAMA["heads"]
    for n in attention:
        assert n.attrs["scale"] == pytest.approx(1 / math.sqrt(head), rel=1e-6)
        # the mask also carries attention_mask's padding: loaded, not a causal flag
        assert n.attrs["is_causal"] == 0 and len(n.inputs) == 4
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    want = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for past, seq in ((0, 5), (3, 2), (4, 1)):  # a prompt, then steps with a cache
        feeds = _llama_feeds(past, seq)
        for got, expected in zip(sess.run(None, feeds), want.run(None, feeds), strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_cast_to_another_type_after_softmax_is_not_fused():
    """Only Casts to the probabilities' own type are skipped: a Cast to float16 rounds."""
    from onnx import TensorProto, helper

    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 2, 3, 4])
    kt = helper.make_tensor_value_info("kt", TensorProto.FLOAT, [1, 2, 4, 3])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT16, [1, 2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("Cast", ["p"], ["p16"], to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["p16", "v"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [q, kt, v], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    graph = optimizer.optimize(loader.load(model).graph, GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert [n.op_type for n in graph.nodes if n.op_type in ("Softmax", ATTENTION_OP)] == \
        ["Softmax"]


@requires_triton
@pytest.mark.parametrize("name", ["t5_encoder", "llama"])
def test_triton_runs_the_fused_real_attention(real, name):
    """The summed T5 mask keeps a known rank (its dims that may differ get names of their
    own), so the Triton template claims the node like any other mask."""
    path = real(name)
    feeds = _t5_feeds() if name == "t5_encoder" else _llama_feeds(3, 2)
    sess = ort.InferenceSession(path, providers=["TritonExecutionProvider",
                                                 "CPUExecutionProvider"])
    placed = [a for a in sess._program.partition.assignments.values()
              if a.node.op_type == ATTENTION_OP]
    assert len(placed) == 2
    assert all(a.provider.name == "TritonExecutionProvider" for a in placed), \
        [a.declined for a in placed]
    want = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, feeds)
    for got, expected in zip(sess.run(None, feeds), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_a_new_node_reusing_a_removed_nodes_id_is_not_taken_for_it():
    """Rules delete nodes and create others; CPython may give a new node the id() of a
    deleted one. The node coming back must be the new one (this once turned a MatMul into
    a one-input node, depending on the hash seed)."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    from tritort import rewrites

    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
        opset_imports=[helper.make_opsetid("", 17)])
    graph = loader.load(model.SerializeToString()).graph
    irm, originals = rewrites._to_ir(graph)
    relu = next(iter(irm.graph))
    sigmoid = ir.node("Sigmoid", inputs=[relu.inputs[0]], name="sigmoid")
    irm.graph.insert_after(relu, sigmoid)
    irm.graph.outputs[0] = sigmoid.outputs[0]
    relu.outputs[0].name = "unused"
    sigmoid.outputs[0].name = "y"
    irm.graph.remove(relu, safe=True)
    # the deleted Relu's entry now under the new node's id, as a reused id would leave it
    originals[id(sigmoid)] = (relu, originals.pop(next(iter(originals))))
    rewrites._from_ir(graph, irm, originals)
    assert [(n.op_type, n.inputs, n.outputs) for n in graph.nodes] == [("Sigmoid", ["x"], ["y"])]
