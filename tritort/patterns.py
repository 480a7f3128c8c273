"""Pattern fusions of the optimize stage: rewrites that make fewer, bigger nodes.

- Per-channel affine ops after a Conv or Gemm with constant weights (BatchNormalization in
  inference mode, Mul / Div / Add / Sub by a per-channel constant) fold into the weights and
  the bias, so they cost nothing at run time.
- DequantizeLinear -> MatMul on float8 operands with per-tensor scales becomes one
  ``Float8MatMul`` node of the internal domain.

Attention is fused through onnxscript's rewriter (:mod:`tritort.rewrites`); these matchers
remain because no rewriter rule writes what they do (see each one's comment).

Every rewrite checks that the values it removes are read by nothing else and are not graph
outputs, and keeps the final value's name, so shapes and types known at load time still hold.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx

from . import dtypes
from .contracts import FLOAT8_MATMUL_OP, FLOAT8_TYPES, INTERNAL_DOMAIN
from .graph import Graph, Node


class _Uses:
    """Who reads each value, kept current as rewrites remove nodes."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.readers: dict[str, list[Node]] = {}
        for n in graph.nodes:
            for v in n.all_inputs:
                self.readers.setdefault(v, []).append(n)
        self.outputs = set(graph.output_names)
        self.overridable = set(graph.input_names)

    def only_reader(self, value: str) -> Node | None:
        """The one node reading value, if it is private to it (not a graph output)."""
        readers = self.readers.get(value, [])
        if len(readers) != 1 or value in self.outputs:
            return None
        return readers[0]

    def constant(self, value: str) -> np.ndarray | None:
        if not value or value in self.overridable:
            return None
        c = self.graph.initializers.get(value)
        return c if isinstance(c, np.ndarray) else None


def _fresh_name(graph: Graph, base: str) -> str:
    name, i = base, 0
    while name in graph.initializers or name in graph.value_types:
        i += 1
        name = f"{base}_{i}"
    return name


def _add_constant(graph: Graph, base: str, value: np.ndarray) -> str:
    name = _fresh_name(graph, base)
    graph.initializers[name] = value
    graph.value_types[name] = onnx.helper.make_tensor_type_proto(
        dtypes.from_numpy(value.dtype).onnx, value.shape)
    return name


def _rank(graph: Graph, value: str) -> int | None:
    v = graph.value(value)
    return None if v is None else v.rank


def _shape(graph: Graph, value: str) -> tuple | None:
    """Dims as ints or symbolic names; None when any dim is unknown."""
    v = graph.value(value)
    return None if v is None or v.shape is None or None in v.shape else v.shape


# ------------------------------------------------------------------ per-channel affine folding


def _channel_vector(c: np.ndarray, rank: int, channels: int, axis: int) -> np.ndarray | None:
    """c as a [channels] vector when, broadcast against a rank-``rank`` output, it varies only
    along ``axis``; else None."""
    if c.ndim > rank:
        return None
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if any(d != 1 for i, d in enumerate(full.shape) if i != axis):
        return None
    if full.shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(full.reshape(-1), (channels,)).astype(np.float64)


def _affine(n: Node, value: str, uses: _Uses, rank: int, channels: int, axis: int
            ) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) with n(value) == value * s + t per channel, or None."""
    if n.domain != "":
        return None
    if n.op_type == "BatchNormalization":
        if n.inputs[0] != value or len([o for o in n.outputs if o]) != 1 or \
                n.attrs.get("training_mode", 0) or len(n.inputs) < 5:
            return None
        consts = [uses.constant(v) for v in n.inputs[1:5]]
        if any(c is None or c.shape != (channels,) for c in consts):
            return None
        scale, bias, mean, var = (c.astype(np.float64) for c in consts)
        s = scale / np.sqrt(var + float(n.attrs.get("epsilon", 1e-5)))
        return s, bias - mean * s
    if n.op_type not in ("Mul", "Div", "Add", "Sub") or len(n.inputs) != 2:
        return None
    other = n.inputs[1] if n.inputs[0] == value else n.inputs[0]
    if n.op_type in ("Div", "Sub") and n.inputs[0] != value:
        return None  # c / y and c - y are not affine in y per channel the same way
    c = uses.constant(other)
    vec = None if c is None else _channel_vector(c, rank, channels, axis)
    if vec is None:
        return None
    if n.op_type == "Div" and not np.all(vec):
        return None
    ones, zeros = np.ones(channels), np.zeros(channels)
    return {"Mul": (vec, zeros), "Div": (1.0 / vec, zeros), "Add": (ones, vec),
            "Sub": (ones, -vec)}[n.op_type]


# weights that absorb a per-channel affine op, rounded once to their own type (float8 weights
# are not re-quantized)
_FOLDABLE = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64,
                                            ml_dtypes.bfloat16))


# onnxscript's batchnorm rules fold a lone BatchNormalization only; this also folds per-channel
# Mul/Div/Add/Sub chains and merges them into one BatchNormalization.
def fold_channel_affine(graph: Graph) -> int:
    """Fold per-channel affine followers into Conv / Gemm weights; returns how many folded."""
    uses = _Uses(graph)
    removed: set[str] = set()
    folded = 0
    for n in graph.nodes:
        if n.name in removed or n.domain != "" or \
                n.op_type not in ("Conv", "Gemm", "BatchNormalization"):
            continue
        while True:
            follower = uses.only_reader(n.outputs[0])
            if follower is None or follower.name in removed or not _fold_into(n, follower,
                                                                                 uses, graph):
                break
            removed.add(follower.name)
            folded += 1
    if removed:
        graph.nodes = [n for n in graph.nodes if n.name not in removed]
    return folded


def _fold_into(n: Node, follower: Node, uses: _Uses, graph: Graph) -> bool:
    if n.op_type == "BatchNormalization":
        return _fold_into_batchnorm(n, follower, uses, graph)
    w = uses.constant(n.inputs[1]) if len(n.inputs) > 1 else None
    if w is None or w.dtype not in _FOLDABLE:
        return False
    if n.op_type == "Conv":
        channels, axis, rank = w.shape[0], 1, w.ndim
    else:
        if w.ndim != 2:
            return False
        channels = w.shape[0] if n.attrs.get("transB", 0) else w.shape[1]
        axis, rank = 1, 2
    found = _affine(follower, n.outputs[0], uses, rank, channels, axis)
    if found is None:
        return False
    s, t = found
    bias_name = n.inputs[2] if len(n.inputs) > 2 else ""
    bias = uses.constant(bias_name) if bias_name else np.zeros(channels, w.dtype)
    if bias is None:
        return False
    if n.op_type == "Conv":
        if bias.shape != (channels,):
            return False
        new_w = w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))
        new_b = bias.astype(np.float64) * s + t
    else:
        beta = float(n.attrs.get("beta", 1.0))
        vec = _channel_vector(bias, 2, channels, 1) if bias_name else np.zeros(channels)
        if vec is None:
            return False
        new_w = w.astype(np.float64) * (s[:, None] if n.attrs.get("transB", 0) else s[None, :])
        new_b = beta * vec * s + t
        n.attrs["beta"] = 1.0
    new_w_name = _add_constant(graph, f"{n.inputs[1]}__folded", new_w.astype(w.dtype))
    new_b_name = _add_constant(graph, f"{n.name}__bias_folded", new_b.astype(w.dtype))
    _replace(n, [n.inputs[0], new_w_name, new_b_name], follower, uses)
    return True


def _fold_into_batchnorm(n: Node, follower: Node, uses: _Uses, graph: Graph) -> bool:
    """BatchNormalization then more per-channel affine ops: one BatchNormalization whose
    mean is 0 and variance 1 (its scale absorbs the sqrt(1 + epsilon))."""
    rank = _rank(graph, n.outputs[0])
    scale = uses.constant(n.inputs[1])
    if rank is None or rank < 2 or scale is None or scale.dtype not in _FOLDABLE:
        return False
    channels = scale.shape[0]
    first = _affine(n, n.inputs[0], uses, rank, channels, 1)
    second = _affine(follower, n.outputs[0], uses, rank, channels, 1)
    if first is None or second is None:
        return False
    (s0, t0), (s1, t1) = first, second
    eps = float(n.attrs.get("epsilon", 1e-5))
    dt = scale.dtype
    values = [(s0 * s1 * math.sqrt(1.0 + eps), "scale"), (t0 * s1 + t1, "bias"),
              (np.zeros(channels), "mean"), (np.ones(channels), "var")]
    names = [_add_constant(graph, f"{n.name}__{what}_folded", v.astype(dt))
             for v, what in values]
    _replace(n, [n.inputs[0], *names], follower, uses)
    return True


def _replace(n: Node, inputs: list[str], follower: Node, uses: _Uses) -> None:
    """n now reads ``inputs`` and computes what ``follower`` did (which is dropped)."""
    for old in n.inputs:
        readers = uses.readers.get(old, [])
        if n in readers:
            readers.remove(n)
    n.inputs = inputs
    for v in inputs:
        uses.readers.setdefault(v, []).append(n)
    n.outputs = [follower.outputs[0]]
    for v in follower.all_inputs:
        readers = uses.readers.get(v, [])
        if follower in readers:
            readers.remove(follower)
    n.sync_proto()


# ------------------------------------------------------------------ float8 matmul

def _per_tensor_dequantize(graph: Graph, uses: _Uses, producer: dict, value: str):
    """(x8, scale) when value = DequantizeLinear(x8, scale) of a float8 tensor with one
    scale and no zero point, read only here; else None."""
    n = producer.get(value)
    if n is None or n.op_type != "DequantizeLinear" or n.domain != "" or \
            uses.only_reader(value) is None or n.attrs.get("block_size", 0):
        return None
    x, scale = n.inputs[0], n.inputs[1]
    v = graph.value(x)
    if v is None or v.elem_type not in FLOAT8_TYPES:
        return None
    shape = _shape(graph, scale)
    if shape is None or any(d != 1 for d in shape):
        return None
    if len(n.inputs) > 2 and n.inputs[2]:
        zero = uses.constant(n.inputs[2])
        if zero is None or np.any(zero.astype(np.float32) != 0):
            return None
    return n, x, scale


# No rewriter rule writes an fp8 GEMM: Float8MatMul is tritort's own op.
def fuse_float8_matmul(graph: Graph) -> int:
    """MatMul(DequantizeLinear(a8, sa), DequantizeLinear(b8, sb)) with per-tensor scales
    becomes ``Float8MatMul(a8, sa, b8, sb)``: (a8 @ b8) * sa * sb, one fp8 GEMM."""
    uses = _Uses(graph)
    producer = graph.producers()
    removed: set[str] = set()
    for i, mm in enumerate(graph.nodes):
        if mm.op_type != "MatMul" or mm.domain != "":
            continue
        sides = [_per_tensor_dequantize(graph, uses, producer, v) for v in mm.inputs[:2]]
        if any(s is None for s in sides) or sides[0][0] is sides[1][0]:
            continue
        (dq_a, a8, sa), (dq_b, b8, sb) = sides
        inputs = [a8, sa, b8, sb]
        graph.nodes[i] = Node(mm.name, FLOAT8_MATMUL_OP, INTERNAL_DOMAIN, inputs,
                              list(mm.outputs), {},
                              onnx.helper.make_node(FLOAT8_MATMUL_OP, inputs, mm.outputs,
                                                    name=mm.name, domain=INTERNAL_DOMAIN))
        removed.update((dq_a.name, dq_b.name))
    if removed:
        graph.nodes = [n for n in graph.nodes if n.name not in removed]
        graph.opsets.setdefault(INTERNAL_DOMAIN, 1)
    return len(removed) // 2
