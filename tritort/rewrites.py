"""Graph fusion through onnxscript's rewriter (optimize stage, EXTENDED and above).

The graph goes to onnx_ir once (initializers wrapped, not copied), the rules below run, and
the nodes they changed come back. Attention becomes the internal ``ScaledDotProductAttention``
op both engines run (one flash-attention launch on Triton):

- onnxscript's SDPA rule (``ort_fusions.sdpa``: Q·Kᵀ with the key's transposes, scales on Q, K
  or the scores, an additive mask, Softmax, the IsNaN/Where guard exporters put after it);
- one rule of ours in onnxscript's pattern language for what that rule leaves: a key that
  arrives transposed (the internal op's own form), ``Where(condition, scores, fill)`` masks,
  two additive terms summed into one mask (T5's relative-position bias and padding mask), and
  Casts to the probabilities' own type before the product with V (LLaMA's legacy export,
  whose K and V arrive repeated to every query head).

Both keep the graph's exact scale (a Python float on the node; the proto attribute is float32).
A mask that is a causal triangle (a triangular constant, cropped top-left, or Trilu of ones the
exporter builds from the sequence lengths) becomes ``is_causal=1`` and is not loaded.

``CONTRIB_FUSIONS`` are ``ort_fusions``' rewrites to com.microsoft ops that both providers
run (GELUs, skip and RMS normalization); the others (MHA, GQA, rotary) would replace the
internal attention op, which the flash kernel runs, and are not used.
"""
from __future__ import annotations

import numpy as np
import onnx

from .contracts import ATTENTION_OP, INTERNAL_DOMAIN
from .graph import Graph, Node

# onnxscript.rewriter.ort_fusions entry points (model -> count) that write com.microsoft ops
# both providers run on the device, in order, with the ops a graph needs for each to match
# (a graph with none of them skips the conversion, and onnxscript's import).
CONTRIB_FUSIONS: tuple[tuple[str, frozenset[str]], ...] = (
    ("erfgelu.fuse_erfgelu", frozenset({"Erf"})),                      # Gelu
    ("gelu.fuse_gelu", frozenset({"Tanh"})),                           # FastGelu
    ("rms_normalization.fuse_rms_normalization", frozenset({"ReduceMean"})),
    ("skip_normalization.fuse_skip_layer_normalization", frozenset({"LayerNormalization"})),
    ("skip_normalization.fuse_skip_rms_normalization", frozenset({"ReduceMean"})),
    ("bias_gelu.fuse_bias_gelu", frozenset({"Erf", "Tanh", "Gelu"})),  # after the Gelus
)
_ATTENTION_TRIGGERS = frozenset({"Softmax"})


def fuse(graph: Graph) -> int:
    """Run the rewriter's fusions on ``graph`` in place; returns how many fired."""
    present = {n.op_type for n in graph.nodes if n.domain in ("", "ai.onnx")}
    fusions = [entry for entry, needs in CONTRIB_FUSIONS if needs & present]
    attention = bool(_ATTENTION_TRIGGERS & present)
    if not fusions and not attention:
        return 0  # nothing to match: skip the conversion (and onnxscript's import)
    import importlib

    from . import rewrite_rules as rules  # onnxscript imports here, only when needed
    model, originals = _to_ir(graph)
    count = rules.apply_attention_rules(model) if attention else 0
    for entry in fusions:
        module, fn = entry.rsplit(".", 1)
        count += getattr(importlib.import_module(
            f"onnxscript.rewriter.ort_fusions.{module}"), fn)(model)
    if count:
        _from_ir(graph, model, originals)
    return count


def _to_ir(graph: Graph):
    """The graph as an onnx_ir model; initializers become ir tensors over the same arrays."""
    import onnx_ir as ir

    protos = []
    for n in graph.nodes:
        p = n.proto
        if p.name != n.name:
            p = onnx.NodeProto()
            p.CopyFrom(n.proto)
            p.name = n.name
        protos.append(p)
    inits = {k: v for k, v in graph.initializers.items() if isinstance(v, np.ndarray)}
    listed = {vi.name for vi in list(graph.inputs) + list(graph.outputs)}
    # initializers travel as typed inputs, then get their arrays back without a copy
    extra = [onnx.helper.make_value_info(k, graph.value_types[k]) for k in inits
             if k not in listed and k in graph.value_types]
    value_info = [onnx.helper.make_value_info(k, t) for k, t in graph.value_types.items()
                  if k not in listed and k not in inits]
    proto = onnx.helper.make_graph(protos, graph.name, list(graph.inputs) + extra,
                                   graph.outputs, value_info=value_info)
    model = onnx.helper.make_model(proto, opset_imports=[
        onnx.helper.make_opsetid(d, v) for d, v in graph.opsets.items()])
    model.ir_version = 10
    irm = ir.serde.deserialize_model(model)
    n_inputs = len(graph.inputs)
    for value in list(irm.graph.inputs[n_inputs:]) + [
            v for v in irm.graph.inputs[:n_inputs] if v.name in inits]:
        value.const_value = ir.Tensor(inits[value.name], name=value.name)
        irm.graph.register_initializer(value)
    del irm.graph.inputs[n_inputs:]
    # the ir node is kept with its Node: while it lives, no node a rule creates can take its id
    originals = {id(node): (node, n) for node, n in zip(irm.graph, graph.nodes)}
    return irm, originals


def _from_ir(graph: Graph, model, originals: dict) -> None:
    """Bring the rewritten nodes back; untouched nodes keep their parsed objects."""
    import onnx_ir as ir

    nodes: list[Node] = []
    for i, node in enumerate(model.graph):
        for v in node.outputs:
            if v.name not in graph.value_types and v.type is not None:
                graph.value_types[v.name] = ir.serde.serialize_value(v).type
        if node.op_type == "Constant" and node.domain == "" and \
                originals.get(id(node), (None,))[0] is not node:
            value = node.attributes["value"].value.numpy()
            graph.initializers[node.outputs[0].name] = np.array(value, copy=True)
            graph.value_types[node.outputs[0].name] = onnx.helper.make_tensor_type_proto(
                onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
            continue
        kept = originals.get(id(node))
        old = kept[1] if kept is not None and kept[0] is node else None
        inputs = ["" if v is None else v.name for v in node.inputs]
        if old is not None:
            if inputs != old.inputs or [v.name for v in node.outputs] != old.outputs:
                old.inputs, old.outputs = inputs, [v.name for v in node.outputs]
                old.sync_proto()
            nodes.append(old)
            continue
        new = Node.from_proto(ir.serde.serialize_node(node), i)
        if new.domain == INTERNAL_DOMAIN and new.op_type == ATTENTION_OP:
            new.attrs["scale"] = float(node.attributes["scale"].value)  # exact, not float32
        nodes.append(new)
    for v in model.graph.initializers.values():
        if v.name not in graph.initializers and v.const_value is not None:
            graph.initializers[v.name] = v.const_value.numpy()
            graph.value_types.setdefault(v.name, ir.serde.serialize_value(v).type)
    seen: set[str] = set()
    for i, n in enumerate(nodes):  # names key later tables: keep them unique
        if n.name in seen:
            n.name = f"{n.name}__rw{i}"
        seen.add(n.name)
    graph.nodes = nodes
    for domain, version in model.opset_imports.items():
        graph.opsets.setdefault("" if domain == "ai.onnx" else domain, version)
    graph.opsets.setdefault(INTERNAL_DOMAIN, 1)
