"""Optimize stage: graph rewrites chosen by GraphOptimizationLevel.

BASIC and above: constant folding (including shapes known at load time), identity
elimination, per-channel affine ops (BatchNormalization, ...) folded into Conv/Gemm weights,
and dead-node removal. Folding evaluates nodes with the NumPy provider. EXTENDED and above:
pattern fusions that write internal ops (attention, float8 matmul; see
:mod:`tritort.patterns`).
"""
from __future__ import annotations

import numpy as np
import onnx

from . import patterns
from .graph import Graph, Node
from .options import GraphOptimizationLevel
from .providers import CompileInfo
from .providers.cpu import CPUExecutionProvider

# Ops whose result differs between runs, or that are cheaper left as they are.
_NEVER_FOLD = frozenset({
    "RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial",
    "Bernoulli", "Dropout", "If", "Loop", "Scan", "SequenceMap",
})
_FOLD_LIMIT_BYTES = 64 << 20


def optimize(graph: Graph, level: GraphOptimizationLevel) -> Graph:
    if level == GraphOptimizationLevel.ORT_DISABLE_ALL:
        return graph
    eliminate_identities(graph)
    fold_constants(graph)
    patterns.fold_channel_affine(graph)
    if level >= GraphOptimizationLevel.ORT_ENABLE_EXTENDED:
        patterns.fuse_attention(graph)
        patterns.fuse_float8_matmul(graph)
    remove_dead_nodes(graph)
    return graph


def _consumers(graph: Graph) -> dict[str, list[Node]]:
    users: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for name in n.all_inputs:
            users.setdefault(name, []).append(n)
    return users


def eliminate_identities(graph: Graph) -> None:
    outputs = set(graph.output_names)
    keep = []
    rename: dict[str, str] = {}
    for n in graph.nodes:
        tensor_in = graph.value_types.get(n.inputs[0]) if n.inputs else None
        if (n.op_type == "Identity" and n.outputs[0] not in outputs and tensor_in is not None
                and tensor_in.HasField("tensor_type")):
            rename[n.outputs[0]] = rename.get(n.inputs[0], n.inputs[0])
            continue
        keep.append(n)
    if not rename:
        return
    for n in keep:
        if any(x in rename for x in n.implicit_inputs):
            return  # subgraphs read the name itself; renaming would need rewriting them
    for n in keep:
        if any(x in rename for x in n.inputs):
            n.inputs = [rename.get(x, x) for x in n.inputs]
            _sync_proto(n)
    graph.nodes = keep


def fold_constants(graph: Graph) -> None:
    cpu = CPUExecutionProvider()
    info = CompileInfo(graph.opsets, graph.value_types, build_subgraph=None)
    overridable = set(graph.input_names)
    known = {k for k in graph.initializers if k not in overridable}
    remaining = []
    for n in graph.nodes:
        value_inputs = [x for x in n.inputs if x]
        foldable = (n.op_type not in _NEVER_FOLD and not n.subgraphs and not n.implicit_inputs
                    and not _keeps_float8(n, graph)
                    and n.domain in ("", "ai.onnx.ml") and all(x in known for x in value_inputs)
                    and cpu.claim(n, graph) is None)
        folded = _try_fold(n, graph, cpu, info) if foldable else None
        if folded is None:
            folded = _fold_shape(n, graph)
        if folded is None:
            remaining.append(n)
            continue
        for name, value in zip(n.outputs, folded):
            if name:
                graph.initializers[name] = value
                known.add(name)
                graph.value_types[name] = onnx.helper.make_tensor_type_proto(
                    onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
    graph.nodes = remaining


def _keeps_float8(n: Node, graph: Graph) -> bool:
    """float8 weights stay float8 (half the bytes; an fp8 GEMM reads them as they are)."""
    if n.op_type != "DequantizeLinear" or n.domain != "":
        return False
    t = graph.value_types.get(n.inputs[0])
    return t is not None and t.HasField("tensor_type") and \
        t.tensor_type.elem_type in patterns.FLOAT8_TYPES


def _try_fold(n: Node, graph: Graph, cpu, info) -> list[np.ndarray] | None:
    try:
        fn = cpu.compile([n], info)[0].fn
        results = fn(*[graph.initializers[x] if x else None for x in n.inputs])
    except Exception:  # leave the node for run time, where its error names it
        return None
    results = list(results)[:len(n.outputs)]
    if len(results) < len([o for o in n.outputs if o]):
        return None
    if not all(isinstance(r, np.ndarray) and r.dtype != object for r in results):
        return None
    if sum(r.nbytes for r in results) > _FOLD_LIMIT_BYTES:
        return None
    return [np.array(r, copy=True) for r in results]


def _fold_shape(n: Node, graph: Graph) -> list[np.ndarray] | None:
    """Shape of a value whose dims were all known at load time."""
    if n.op_type != "Shape" or n.domain != "":
        return None
    t = graph.value_types.get(n.inputs[0])
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    shape = np.array([d.dim_value for d in dims], dtype=np.int64)
    rank = len(shape)
    start, end = n.attrs.get("start", 0), n.attrs.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return [shape[start:end]]


def remove_dead_nodes(graph: Graph) -> None:
    live = set(graph.output_names)
    kept = []
    for n in reversed(graph.nodes):
        if any(o in live for o in n.outputs if o):
            kept.append(n)
            live.update(n.all_inputs)
    graph.nodes = kept[::-1]
    graph.initializers = {k: v for k, v in graph.initializers.items()
                          if k in live or k in graph.input_names}


def _sync_proto(n: Node) -> None:
    proto = onnx.NodeProto()
    proto.CopyFrom(n.proto)
    del proto.input[:]
    proto.input.extend(n.inputs)
    n.proto = proto
