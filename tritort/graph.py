"""The in-memory graph every stage after loading works on.

Nodes keep their parsed attributes, so no later stage re-reads protobuf. A node whose
subgraphs read values of the enclosing graph lists those names in ``implicit_inputs``:
planning treats them as ordinary inputs, so their lifetimes stay right.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

_A = AttributeProto

def attribute_value(attr: onnx.AttributeProto) -> Any:
    """An attribute as a Python value: str decoded, tensors as numpy, graphs as GraphProto."""
    t = attr.type
    if t == _A.FLOAT:
        return float(attr.f)
    if t == _A.INT:
        return int(attr.i)
    if t == _A.STRING:
        return attr.s.decode("utf-8", errors="surrogateescape")
    if t == _A.TENSOR:
        return numpy_helper.to_array(attr.t)
    if t == _A.GRAPH:
        return attr.g
    if t == _A.SPARSE_TENSOR:
        return attr.sparse_tensor
    if t == _A.TYPE_PROTO:
        return attr.tp
    if t == _A.FLOATS:
        return [float(v) for v in attr.floats]
    if t == _A.INTS:
        return [int(v) for v in attr.ints]
    if t == _A.STRINGS:
        return [s.decode("utf-8", errors="surrogateescape") for s in attr.strings]
    if t == _A.TENSORS:
        return [numpy_helper.to_array(v) for v in attr.tensors]
    if t == _A.GRAPHS:
        return list(attr.graphs)
    if t == _A.TYPE_PROTOS:
        return list(attr.type_protos)
    if t == _A.SPARSE_TENSORS:
        return list(attr.sparse_tensors)
    return onnx.helper.get_attribute_value(attr)


@dataclass
class Node:
    name: str
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    proto: onnx.NodeProto
    implicit_inputs: list[str] = field(default_factory=list)

    @classmethod
    def from_proto(cls, proto: onnx.NodeProto, index: int) -> "Node":
        attrs = {a.name: attribute_value(a) for a in proto.attribute}
        name = proto.name or f"{proto.op_type}_{index}"
        domain = "" if proto.domain in ("", "ai.onnx") else proto.domain
        node = cls(name, proto.op_type, domain, list(proto.input), list(proto.output), attrs, proto)
        node.implicit_inputs = sorted(outer_scope_names(proto))
        return node

    @property
    def subgraphs(self) -> dict[str, onnx.GraphProto]:
        return {k: v for k, v in self.attrs.items() if isinstance(v, onnx.GraphProto)}

    @property
    def all_inputs(self) -> list[str]:
        return [i for i in self.inputs if i] + self.implicit_inputs

    def describe(self) -> str:
        return f"{self.op_type} node '{self.name}'"

    def sync_proto(self) -> None:
        """Rebuild the proto from the fields after a rewrite changed them (later stages read
        only inputs, outputs and attributes from it; subgraph attributes stay as they are)."""
        proto = onnx.NodeProto()
        proto.CopyFrom(self.proto)
        del proto.input[:]
        proto.input.extend(self.inputs)
        del proto.output[:]
        proto.output.extend(self.outputs)
        for a in list(proto.attribute):
            if a.name in self.attrs and not isinstance(self.attrs[a.name], onnx.GraphProto):
                proto.attribute.remove(a)
                proto.attribute.append(onnx.helper.make_attribute(a.name, self.attrs[a.name]))
        self.proto = proto


def outer_scope_names(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from enclosing scopes (recursively)."""
    used: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == _A.GRAPH else list(attr.graphs)
        for g in graphs:
            used |= free_names(g)
    return used


def free_names(graph: onnx.GraphProto) -> set[str]:
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    defined |= {i.values.name for i in graph.sparse_initializer}
    free: set[str] = set()
    for n in graph.node:
        for name in list(n.input) + sorted(outer_scope_names(n)):
            if name and name not in defined:
                free.add(name)
        defined.update(o for o in n.output if o)
    for o in graph.output:
        if o.name not in defined:
            free.add(o.name)
    return free


@dataclass(frozen=True)
class ValueInfo:
    """What load-time inference knows of a value, parsed once from its TypeProto.

    ``kind`` is the TypeProto's case ('tensor_type', 'sequence_type', ...). For tensors,
    ``elem_type`` is the ONNX element type and ``shape`` a tuple of dims (int, a symbolic
    name, or None), or None when even the rank is unknown."""

    kind: str | None
    elem_type: int | None
    shape: tuple | None
    type: onnx.TypeProto

    @classmethod
    def of(cls, tp: onnx.TypeProto) -> "ValueInfo":
        kind = tp.WhichOneof("value")
        if kind != "tensor_type":
            return cls(kind, None, None, tp)
        t = tp.tensor_type
        shape = None
        if t.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else
                          (d.dim_param or None) for d in t.shape.dim)
        return cls(kind, t.elem_type or None, shape, tp)

    @property
    def is_tensor(self) -> bool:
        return self.kind == "tensor_type"

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def static_shape(self) -> tuple[int, ...] | None:
        """The shape when every dim is known, else None."""
        if self.shape is None or not all(isinstance(d, int) for d in self.shape):
            return None
        return self.shape


@dataclass
class Graph:
    name: str
    nodes: list[Node]
    inputs: list[onnx.ValueInfoProto]
    outputs: list[onnx.ValueInfoProto]
    initializers: dict[str, Any]
    value_types: dict[str, onnx.TypeProto]
    opsets: dict[str, int]
    doc_string: str = ""
    _values: dict[str, ValueInfo] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_proto(cls, graph: onnx.GraphProto, opsets: dict[str, int],
                   initializers: dict[str, Any] | None = None) -> "Graph":
        if initializers is None:
            initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        value_types: dict[str, onnx.TypeProto] = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            if vi.type.WhichOneof("value") is not None:
                value_types[vi.name] = vi.type
        for t in graph.initializer:
            value_types.setdefault(t.name, onnx.helper.make_tensor_type_proto(t.data_type, t.dims))
        nodes = [Node.from_proto(n, i) for i, n in enumerate(graph.node)]
        seen: set[str] = set()
        for i, node in enumerate(nodes):  # node names key every later table: keep them unique
            if node.name in seen:
                node.name = f"{node.name}__{i}"
            seen.add(node.name)
        return cls(graph.name, nodes, list(graph.input), list(graph.output), initializers,
                   value_types, dict(opsets), graph.doc_string)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def value(self, name: str) -> ValueInfo | None:
        """The parsed type of ``name`` (None if unknown); parsed once per TypeProto object,
        so a stage that replaces ``value_types[name]`` is seen by the next lookup."""
        tp = self.value_types.get(name)
        if tp is None:
            return None
        cached = self._values.get(name)
        if cached is None or cached.type is not tp:
            cached = self._values[name] = ValueInfo.of(tp)
        return cached

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def to_proto(self) -> onnx.GraphProto:
        inits = [numpy_helper.from_array(np.asarray(v), name=k)
                 for k, v in self.initializers.items() if isinstance(v, np.ndarray)]
        listed = {vi.name for vi in list(self.inputs) + list(self.outputs)}
        value_info = [onnx.helper.make_value_info(k, t) for k, t in self.value_types.items()
                      if k not in listed and k not in self.initializers]
        return onnx.helper.make_graph([n.proto for n in self.nodes], self.name, self.inputs,
                                      self.outputs, inits, doc_string=self.doc_string,
                                      value_info=value_info)
