"""Optimize stage: graph rewrites chosen by GraphOptimizationLevel.

BASIC and above: constant folding (including shapes known at load time), identity
elimination, per-channel affine ops (BatchNormalization, ...) folded into Conv/Gemm weights,
and dead-node removal. Folding evaluates nodes with the NumPy provider. EXTENDED and above:
com.microsoft Attention / EmbedLayerNormalization rewritten into ops both engines run
(:mod:`tritort.contrib_decompose`), then pattern fusions that write internal ops (attention,
float8 matmul; see :mod:`tritort.rewrites`, :mod:`tritort.patterns`), and MatMuls that read
the same input over constant weights as one (:mod:`tritort.horizontal`).
"""
from __future__ import annotations

import numpy as np
import onnx

from . import contrib_decompose, horizontal, patterns, rewrites
from .contracts import FLOAT8_TYPES
from .graph import Graph, Node
from .fallback_cpu import build_kernel, missing_kernel

# GraphOptimizationLevel's values (an IntEnum of the API layer compares equal to them)
DISABLE_ALL, ENABLE_EXTENDED = 0, 2

# Ops whose result differs between runs, or that are cheaper left as they are.
_NEVER_FOLD = frozenset({
    "RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial",
    "Bernoulli", "Dropout", "If", "Loop", "Scan", "SequenceMap",
})
_FOLD_LIMIT_BYTES = 64 << 20


def optimize(graph: Graph, level: int, keep_quantized_weights: bool = False) -> Graph:
    """``keep_quantized_weights``: a provider reads int8 weights as stored (see
    :func:`_keeps_quantized`); float8 weights are kept whatever it says."""
    if level == DISABLE_ALL:
        return graph
    eliminate_identities(graph)
    fold_constants(graph, keep_quantized_weights)
    patterns.fold_channel_affine(graph)
    if level >= ENABLE_EXTENDED:
        contrib_decompose.decompose(graph)  # before the fusions, which may match its output
        rewrites.fuse(graph)
        horizontal.fuse_shared_input_gemms(graph)  # after the fusions: they match the MatMuls
        patterns.fuse_float8_matmul(graph)
    remove_dead_nodes(graph)
    return graph


def eliminate_identities(graph: Graph) -> None:
    outputs = set(graph.output_names)
    keep = []
    rename: dict[str, str] = {}
    for n in graph.nodes:
        tensor_in = graph.value(n.inputs[0]) if n.inputs else None
        if (n.op_type == "Identity" and n.outputs[0] not in outputs and tensor_in is not None
                and tensor_in.is_tensor):
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
            n.sync_proto()
    graph.nodes = keep


def fold_constants(graph: Graph, keep_quantized_weights: bool = False) -> None:
    overridable = set(graph.input_names)
    known = {k for k in graph.initializers if k not in overridable}
    remaining = []
    for n in graph.nodes:
        value_inputs = [x for x in n.inputs if x]
        foldable = (n.op_type not in _NEVER_FOLD and not n.subgraphs and not n.implicit_inputs
                    and not _keeps_quantized(n, graph, keep_quantized_weights)
                    and n.domain in ("", "ai.onnx.ml") and all(x in known for x in value_inputs)
                    and missing_kernel(n.domain, n.op_type, graph.opsets) is None)
        folded = _try_fold(n, graph) if foldable else None
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


_INT8_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
# ops whose quantized kernels take a DequantizeLinear operand as stored
_QUANTIZED_READERS = frozenset({"MatMul", "Gemm", "Conv"})


def _keeps_quantized(n: Node, graph: Graph, int8: bool) -> bool:
    """Weights that stay quantized: float8 always (half the bytes; an fp8 GEMM reads them as
    they are); int8 when a provider's GEMMs read them as stored and every reader of the
    dequantized weight is such a GEMM (a quarter of the bytes, an int8 tensor-core product)."""
    if n.op_type != "DequantizeLinear" or n.domain != "":
        return False
    v = graph.value(n.inputs[0])
    if v is None:
        return False
    if v.elem_type in FLOAT8_TYPES:
        return True
    if not int8 or v.elem_type not in _INT8_TYPES:
        return False
    readers = [r for r in graph.nodes if n.outputs[0] in r.inputs]
    return bool(readers) and n.outputs[0] not in graph.output_names and all(
        r.op_type in _QUANTIZED_READERS and r.domain == "" and
        _quantized_partner(r, n.outputs[0], graph) for r in readers)


def _quantized_partner(reader: Node, weight: str, graph: Graph) -> bool:
    """Is the reader's other operand an int8 DequantizeLinear of its own? Only then is the
    product an int8 one; against a float operand, weights kept quantized would be dequantized
    on every run instead of once here."""
    others = [v for v in reader.inputs[:2] if v and v != weight]
    if len(others) != 1:
        return False
    producer = next((p for p in graph.nodes if others[0] in p.outputs), None)
    if producer is None or producer.op_type != "DequantizeLinear" or producer.domain != "":
        return False
    source = graph.value(producer.inputs[0])
    readers = [r for r in graph.nodes if others[0] in r.inputs]
    return source is not None and source.elem_type in _INT8_TYPES and len(readers) == 1


def _try_fold(n: Node, graph: Graph) -> list[np.ndarray] | None:
    try:
        fn = build_kernel(n, graph.opsets, graph.value_types)
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
    v = graph.value(n.inputs[0])
    if v is None or v.static_shape is None:
        return None
    shape = np.array(v.static_shape, dtype=np.int64)
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
