"""Horizontal GEMM fusion (optimize stage, EXTENDED and above, after the rewriter's fusions).

MatMuls that read the same activation with constant 2-D weights of the same K and dtype
(Q, K and V projections; LLaMA's gate and up) become one MatMul over the weights concatenated
along N, prepared here once at session creation, then one Split along the last axis whose
outputs take the original names. Where every member's MatMul feeds only an Add of a constant
1-D bias, the biases are concatenated too and the one Add follows the MatMul (a GEMM epilogue
on Triton, where the Split's outputs are views).

Each column of the product is the same dot product as before, so every consumer sees the
values it saw. Nothing fuses whose weight is also a graph input (an overridable
initializer), whose pre-bias product is read elsewhere (then the bias stays outside), or
whose output type is unknown.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from . import dtypes
from .graph import Graph, Node


@dataclass
class _Member:
    matmul: Node
    weight: np.ndarray
    bias_add: Node | None = None
    bias: np.ndarray | None = None

    @property
    def output(self) -> str:
        return (self.bias_add or self.matmul).outputs[0]


def fuse_shared_input_gemms(graph: Graph) -> int:
    """Fuse every group of two or more such MatMuls in place; returns how many groups."""
    overridable = set(graph.input_names)
    readers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for x in set(n.all_inputs):
            readers.setdefault(x, []).append(n)
    outputs = set(graph.output_names)

    def constant(name: str, rank: int) -> np.ndarray | None:
        value = graph.initializers.get(name)
        if name in overridable or not isinstance(value, np.ndarray) or value.ndim != rank:
            return None
        return value

    groups: dict[tuple, list[_Member]] = {}
    for n in graph.nodes:
        if n.op_type != "MatMul" or n.domain != "" or len(n.inputs) != 2 or not all(n.inputs):
            continue
        a, w = n.inputs
        weight = constant(w, 2)
        out = graph.value(n.outputs[0])
        if weight is None or a == w or out is None or out.rank is None or out.rank < 1:
            continue
        member = _Member(n, weight)
        add = _bias_add(n, readers, outputs)
        if add is not None:
            bias = constant(add.inputs[1] if add.inputs[0] == n.outputs[0] else add.inputs[0], 1)
            if bias is not None and bias.dtype == weight.dtype and \
                    bias.shape[0] == weight.shape[1]:
                member.bias_add, member.bias = add, bias
        key = (a, weight.shape[0], weight.dtype.str, member.bias is not None)
        groups.setdefault(key, []).append(member)

    taken: set[int] = set()
    replaced: dict[int, list[Node]] = {}  # position of a group's first MatMul -> its nodes
    count = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        nodes = _fused_nodes(graph, members)
        first = min(graph.nodes.index(m.matmul) for m in members)
        replaced[first] = nodes
        taken.update(id(m.matmul) for m in members)
        taken.update(id(m.bias_add) for m in members if m.bias_add is not None)
        count += 1
    if count:
        kept: list[Node] = []
        for i, n in enumerate(graph.nodes):
            kept.extend(replaced.get(i, ()))
            if id(n) not in taken:
                kept.append(n)
        graph.nodes = kept
    return count


def _bias_add(mm: Node, readers: dict[str, list[Node]], outputs: set[str]) -> Node | None:
    """The Add that is the only reader of ``mm``'s product, when nothing else needs it."""
    out = mm.outputs[0]
    users = readers.get(out, [])
    if out in outputs or len(users) != 1:
        return None
    add = users[0]
    if add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2 or \
            add.implicit_inputs or add.inputs[0] == add.inputs[1]:
        return None
    return add


def _fresh(graph: Graph, base: str, taken: set[str]) -> str:
    name, i = base, 0
    while name in graph.value_types or name in graph.initializers or name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def _fused_nodes(graph: Graph, members: list[_Member]) -> list[Node]:
    """MatMul (+ Add) + Split for one group; new initializers and value types written."""
    first = members[0].matmul
    used = {o for n in graph.nodes for o in n.outputs}
    base = first.name.replace("/", "_")
    weight = np.concatenate([m.weight for m in members], axis=1)
    widths = [m.weight.shape[1] for m in members]
    elem = dtypes.from_numpy(weight.dtype).onnx
    out_shape = list(graph.value(first.outputs[0]).shape)
    out_shape[-1] = sum(widths)

    def const(what: str, value: np.ndarray) -> str:
        name = _fresh(graph, f"{base}__horizontal_{what}", used)
        graph.initializers[name] = value
        graph.value_types[name] = onnx.helper.make_tensor_type_proto(
            dtypes.from_numpy(value.dtype).onnx, value.shape)
        return name

    def value(what: str) -> str:
        name = _fresh(graph, f"{base}__horizontal_{what}", used)
        dims = [f"{name}_dim{i}" if d is None else d for i, d in enumerate(out_shape)]
        graph.value_types[name] = onnx.helper.make_tensor_type_proto(elem, dims)
        return name

    def node(op_type: str, inputs: list[str], outs: list[str], **attrs) -> Node:
        proto = onnx.helper.make_node(op_type, inputs, outs,
                                      name=f"{first.name}/horizontal_{op_type}", **attrs)
        return Node.from_proto(proto, 0)

    product = value("matmul")
    nodes = [node("MatMul", [first.inputs[0], const("weight", weight)], [product])]
    if members[0].bias is not None:
        biased = value("add")
        bias = np.concatenate([m.bias for m in members])
        nodes.append(node("Add", [product, const("bias", bias)], [biased]))
        product = biased
    outs = [m.output for m in members]
    if graph.opsets.get("", 1) >= 13:
        nodes.append(node("Split", [product, const("split", np.array(widths, np.int64))],
                          outs, axis=-1))
    else:
        nodes.append(node("Split", [product], outs, axis=-1, split=widths))
    return nodes
