"""Helpers for scripts and the command line: valid random inputs for a model, concrete input
shapes, and a one-line placement summary of a session.

Random inputs are derived from the graph, so they are valid for it: an integer input that
indexes a Gather's table stays within the table, an attention mask is all ones.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator, Union

import numpy as np
import onnx

from . import dtypes
from .errors import InvalidArgument
from .loader import read_model

# Ops that hand their first input on with the same values (reshaped, broadcast or cast): an
# input that reaches a Gather's indices through them still indexes that Gather's table.
PASS_THROUGH = frozenset({"Cast", "Unsqueeze", "Reshape", "Flatten", "Squeeze", "Expand",
                          "Identity"})
# com.microsoft's fused BERT embedding: input slot -> the slot of the table it indexes
EMBED_LAYER_NORM_TABLES = {0: 2, 1: 4, 8: 3}
EMBED_LAYER_NORM_MASK = 7
SMALL_INT_HIGH = 4  # other ints: 0..3
STRINGS = ("a", "b", "c")


@dataclass
class InputInfo:
    """What the graph says about one input, as far as making valid values goes."""

    name: str
    type: str  # ORT's type text, e.g. 'tensor(int64)'
    shape: list | None  # ints, symbolic names (str) or None per dim; None: rank unknown
    index_bound: int | None = None  # values must lie in [0, index_bound): it indexes a table
    is_mask: bool = False

    @property
    def is_tensor(self) -> bool:
        return self.type.startswith("tensor(") and self.type[len("tensor("):-1] in dtypes.BY_NAME

    @property
    def element(self) -> dtypes.DType:
        return dtypes.BY_NAME[self.type[len("tensor("):-1]]


# a path, bytes, onnx.ModelProto, or describe_inputs's list
ModelLike = Union[str, os.PathLike, bytes, onnx.ModelProto, list]


def parse_shapes(specs: list[str]) -> dict[str, list[int]]:
    """``["ids=1,128", ...]`` -> ``{"ids": [1, 128]}``; InvalidArgument names a bad spec."""
    shapes = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",") if d.strip()]
        except ValueError:
            sep = ""
        if not sep or not name or any(d < 0 for d in shapes.get(name, [])):
            raise InvalidArgument(f"a shape is NAME=D0,D1,... (integers >= 0), got '{spec}'")
    return shapes


def describe_inputs(model: ModelLike) -> list[InputInfo]:
    """The model's inputs (initializers excluded), with the value constraints the graph
    implies. ``model``: a path, bytes or onnx.ModelProto."""
    if isinstance(model, list):
        return model
    proto, _ = read_model(model)
    graph = _with_shapes(proto).graph
    initializers = {t.name for t in graph.initializer}
    consumers = defaultdict(list)  # value -> [(node, input slot)], subgraphs included
    for node in _all_nodes(graph):
        for slot, name in enumerate(node.input):
            if name:
                consumers[name].append((node, slot))
    shapes = _known_shapes(graph)
    infos = []
    for vi in graph.input:
        if vi.name in initializers:
            continue
        info = InputInfo(vi.name, dtypes.type_string(vi.type), _declared_shape(vi.type))
        if info.is_tensor:
            _trace_uses(info, consumers, shapes)
            info.is_mask = info.is_mask or "mask" in info.name.lower()
        infos.append(info)
    return infos


def input_shapes(model: ModelLike, shapes: dict[str, list[int]] | None = None,
                 default_dim: int | None = 1) -> dict[str, list[int] | None]:
    """Concrete dims per input: ``shapes[name]`` where given; a symbolic dim otherwise takes
    the value its name has in a given shape (inputs sharing 'batch' agree), else
    ``default_dim``. With ``default_dim=None`` an input left with unknown dims maps to None."""
    infos = describe_inputs(model)
    shapes = dict(shapes or {})
    by_name = {info.name: info for info in infos}
    unknown = sorted(set(shapes) - set(by_name))
    if unknown:
        raise InvalidArgument(f"shapes name unknown inputs {unknown}; the inputs are "
                              f"{sorted(by_name)}")
    symbols: dict[str, int] = {}
    for name, dims in shapes.items():
        declared = by_name[name].shape
        if declared is None:
            continue
        if len(dims) != len(declared):
            raise InvalidArgument(f"input '{name}': expected rank {len(declared)} "
                                  f"{declared}, got {len(dims)} dims {dims}")
        for axis, (want, got) in enumerate(zip(declared, dims)):
            if isinstance(want, int) and want != got:
                raise InvalidArgument(f"input '{name}': expected dim {axis} = {want}, got "
                                      f"{got}")
            if isinstance(want, str):
                symbols.setdefault(want, got)
    resolved: dict[str, list[int] | None] = {}
    for info in infos:
        if info.name in shapes:
            resolved[info.name] = list(shapes[info.name])
            continue
        if info.shape is None:  # rank unknown: a scalar, as before
            resolved[info.name] = [] if default_dim is not None else None
            continue
        dims = [d if isinstance(d, int) else symbols.get(d, default_dim) for d in info.shape]
        resolved[info.name] = None if None in dims else dims
    return resolved


def random_inputs(model: ModelLike, shapes: dict[str, list[int]] | None = None, *,
                  seed: int | np.random.Generator = 0,
                  default_dim: int = 1) -> dict[str, np.ndarray]:
    """Random feeds that are valid for the model: table indices within every table they
    index, masks all ones (True), other ints 0..3, bools random, floats standard normal,
    strings from a small set. Dims as ``input_shapes`` resolves them.

    ``model``: a path, bytes, onnx.ModelProto, or ``describe_inputs``'s list."""
    infos = describe_inputs(model)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    dims_of = input_shapes(infos, shapes, default_dim)
    feeds = {}
    for info in infos:
        if not info.is_tensor:
            raise InvalidArgument(f"input '{info.name}' is {info.type}; only tensor inputs "
                                  "get random values")
        feeds[info.name] = _random_tensor(info, dims_of[info.name], rng)
    return feeds


def placement_summary(sess: Any) -> str:
    """'CPUExecutionProvider: 3 nodes, ...': how many nodes each provider runs."""
    counts: dict[str, int] = {}
    for ep in sess.placement().values():
        counts[ep] = counts.get(ep, 0) + 1
    return ", ".join(f"{ep}: {n} nodes" for ep, n in counts.items()) or "no nodes"


# ------------------------------------------------------------------------------ internals

def _random_tensor(info: InputInfo, dims: list[int], rng: np.random.Generator) -> np.ndarray:
    dtype = info.element.numpy
    if dtype == np.bool_:
        return np.ones(dims, np.bool_) if info.is_mask else rng.random(dims) > 0.5
    if dtype == object:
        return np.array(rng.choice(STRINGS, size=dims), dtype=object)
    if info.element.name.startswith(("int", "uint")):
        high = SMALL_INT_HIGH if info.index_bound is None else max(info.index_bound, 1)
        if info.is_mask:
            return np.full(dims, min(1, high - 1)).astype(dtype)
        return rng.integers(0, high, size=dims).astype(dtype)
    if info.is_mask:
        return np.ones(dims, np.float32).astype(dtype)
    return rng.standard_normal(dims).astype(np.float32).astype(dtype)


def _trace_uses(info: InputInfo, consumers: dict, shapes: dict) -> None:
    """Follow the input through pass-through ops to the nodes that use its values; set
    ``index_bound`` (the smallest table it indexes) and ``is_mask``."""
    integral = info.type == "tensor(bool)" or info.element.name.startswith(("int", "uint"))
    todo, seen = [(info.name, False)], set()
    while todo:
        value, after_cast = todo.pop()
        if (value, after_cast) in seen:
            continue
        seen.add((value, after_cast))
        for node, slot in consumers.get(value, []):
            if node.op_type in PASS_THROUGH and slot == 0:
                todo.append((node.output[0], after_cast or node.op_type == "Cast"))
                continue
            bound = _table_size(node, slot, shapes)
            if bound is not None:
                info.index_bound = bound if info.index_bound is None else min(
                    info.index_bound, bound)
            if integral and _used_as_mask(node, slot, after_cast):
                info.is_mask = True


def _used_as_mask(node: onnx.NodeProto, slot: int, after_cast: bool) -> bool:
    if node.op_type == "Where":
        return slot == 0
    if node.op_type == "EmbedLayerNormalization":
        return slot == EMBED_LAYER_NORM_MASK
    return after_cast and node.op_type in ("Sub", "Mul")


def _table_size(node: onnx.NodeProto, slot: int, shapes: dict) -> int | None:
    """The size of the axis that this use of an index tensor indexes, when known."""
    op = node.op_type
    if op == "EmbedLayerNormalization" and slot in EMBED_LAYER_NORM_TABLES:
        table = shapes.get(node.input[EMBED_LAYER_NORM_TABLES[slot]]) \
            if len(node.input) > EMBED_LAYER_NORM_TABLES[slot] else None
        return _dim(table, 0)
    if slot != 1 or op not in ("Gather", "GatherElements", "GatherND"):
        return None
    data = shapes.get(node.input[0])
    if op != "GatherND":
        return _dim(data, _attr(node, "axis", 0))
    batch_dims = _attr(node, "batch_dims", 0)
    depth = _dim(shapes.get(node.input[1]), -1)  # how many leading data axes a row indexes
    if data is None:
        return None
    axes = data[batch_dims:batch_dims + depth] if depth else data[batch_dims:]
    sizes = [d for d in axes if d is not None]
    return min(sizes) if sizes and len(sizes) == len(axes) else None


def _dim(shape: list | None, axis: int) -> int | None:
    if not shape or not -len(shape) <= axis < len(shape):
        return None
    return shape[axis]


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with inferred value_info; as it is when inference fails (custom ops)."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # onnx raises several unrelated types here; the graph's own info remains
        return model


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _all_nodes(sub)


def _known_shapes(graph: onnx.GraphProto) -> dict[str, list]:
    """Static dims (None where unknown) of every value whose shape the graph states."""
    shapes: dict[str, list] = {}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        declared = _declared_shape(vi.type)
        if declared is not None:
            shapes[vi.name] = [d if isinstance(d, int) else None for d in declared]
    for tensor in graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    for node in _all_nodes(graph):
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)
    return shapes


def _declared_shape(tp: onnx.TypeProto) -> list | None:
    """Per dim: an int, a symbolic name, or None (unnamed); None when the rank is unknown."""
    if tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or None
            for d in tp.tensor_type.shape.dim]
