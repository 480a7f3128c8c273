"""The fuzzer's mutants (perf/fuzz.py): cases of the seed corpus (perf/fuzz_corpus.py) with
one or two mutations each, of attributes, types and shapes, feeds, initializers, graph
structure, op types, domains and opsets. Mutant ``i`` of seed ``S`` depends on nothing else (:func:`make_mutant`).
"""
from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from fuzz_corpus import seed_cases, synthetic_cases  # perf/ is on the path (perf/fuzz.py)

# ---------------------------------------------------------------------------- the mutator

INTS = [-1, 0, 1, 2, 3, 5, -3, 100, 2**31 - 1, -2**31, 2**40, -2**40]
FLOATS = [float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e30, 2.5]
STRINGS = ["", "garbage", "NOTSET", "SAME_UPPER", "VALID", "nearest", "linear", "cubic",
           "constant", "reflect", "edge", "DCR", "CRD", "tanh", "none", "max", "RIGHT"]
ELEM_TYPES = [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16,
              TensorProto.INT8, TensorProto.UINT8, TensorProto.INT32, TensorProto.INT64,
              TensorProto.BOOL, TensorProto.STRING, TensorProto.UINT64, TensorProto.INT4,
              TensorProto.FLOAT8E4M3FN]
OP_TYPES = ["Add", "Relu", "MatMul", "Conv", "MaxPool", "Reshape", "Gather", "Concat",
            "Softmax", "Transpose", "Slice", "Cast", "Where", "ReduceSum", "Expand", "Pad",
            "Split", "Loop", "If", "Identity", "NonExistentOp", "Resize", "TopK", "Einsum"]


@dataclass
class Mutant:
    seed: int
    index: int
    case: str
    model: bytes
    feeds: dict[str, Any]
    mutations: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.seed}:{self.index}"


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """The graph and every subgraph in it, outermost first."""
    out = [graph]
    for node in graph.node:
        for a in node.attribute:
            for g in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                out.extend(_graphs(g))
    return out


def _pick_graph(model: onnx.ModelProto, rng: random.Random) -> onnx.GraphProto:
    graphs = _graphs(model.graph)
    return graphs[0] if len(graphs) == 1 or rng.random() < 0.5 else rng.choice(graphs[1:])


def _pick_node(model, rng, cond=lambda n: True):
    graph = _pick_graph(model, rng)
    nodes = [n for n in graph.node if cond(n)]
    if not nodes:
        nodes = [n for g in _graphs(model.graph) for n in g.node if cond(n)]
    return (graph, rng.choice(nodes)) if nodes else (graph, None)


def _int(rng, old=None) -> int:
    if old is not None and rng.random() < 0.3:
        return old + rng.choice([-1, 1, 2])
    return rng.choice(INTS)


def m_attr_value(model, feeds, rng):
    _, node = _pick_node(model, rng, lambda n: any(a.type != AttributeProto.GRAPH
                                                   for a in n.attribute))
    if node is None:
        return None
    attr = rng.choice([a for a in node.attribute if a.type != AttributeProto.GRAPH])
    t = attr.type
    if t == AttributeProto.INT:
        attr.i = _int(rng, attr.i)
    elif t == AttributeProto.INTS:
        values = list(attr.ints)
        r = rng.random()
        if values and r < 0.5:
            i = rng.randrange(len(values))
            values[i] = _int(rng, values[i])
        elif values and r < 0.7:
            values.pop()
        elif r < 0.85:
            values.append(_int(rng))
        else:
            values = []
        del attr.ints[:]
        attr.ints.extend(values)
    elif t == AttributeProto.FLOAT:
        attr.f = rng.choice(FLOATS)
    elif t == AttributeProto.FLOATS:
        values = list(attr.floats) or [1.0]
        values[rng.randrange(len(values))] = rng.choice(FLOATS)
        del attr.floats[:]
        attr.floats.extend(values if rng.random() < 0.8 else values[:-1])
    elif t == AttributeProto.STRING:
        attr.s = rng.choice(STRINGS).encode()
    elif t == AttributeProto.STRINGS:
        values = list(attr.strings) or [b""]
        values[rng.randrange(len(values))] = rng.choice(STRINGS).encode()
        del attr.strings[:]
        attr.strings.extend(values)
    elif t == AttributeProto.TENSOR:
        _mutate_tensor(attr.t, rng)
    else:
        return None
    return f"attr_value {node.op_type}.{attr.name}"


def m_attr_drop(model, feeds, rng):
    _, node = _pick_node(model, rng, lambda n: len(n.attribute) > 0)
    if node is None:
        return None
    attr = rng.choice(list(node.attribute))
    node.attribute.remove(attr)
    return f"attr_drop {node.op_type}.{attr.name}"


def m_attr_add(model, feeds, rng):
    _, node = _pick_node(model, rng)
    if node is None:
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, max_inclusive_version=30,
                                      domain=node.domain)
        names = [n for n in schema.attributes if n not in {a.name for a in node.attribute}]
    except Exception:
        names = []
    name = rng.choice(names) if names and rng.random() < 0.8 else "bogus_attr"
    value = rng.choice([_int(rng), rng.choice(FLOATS), rng.choice(STRINGS),
                        [_int(rng), _int(rng)], [1, 1, 1, 1]])
    node.attribute.append(helper.make_attribute(name, value))
    return f"attr_add {node.op_type}.{name}={value!r}"


def m_attr_retype(model, feeds, rng):
    _, node = _pick_node(model, rng, lambda n: any(a.type != AttributeProto.GRAPH
                                                   for a in n.attribute))
    if node is None:
        return None
    attr = rng.choice([a for a in node.attribute if a.type != AttributeProto.GRAPH])
    value = rng.choice([1, 2.0, "x", [1, 2], [1.0], ["a"],
                        numpy_helper.from_array(np.array([1], np.int64))])
    node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute(attr.name, value))
    return f"attr_retype {node.op_type}.{attr.name}->{type(value).__name__}"


def _cast_feed(value, elem_type):
    from onnx.helper import tensor_dtype_to_np_dtype

    if not isinstance(value, np.ndarray):
        return value
    try:
        if elem_type == TensorProto.STRING:
            return value.astype(str).astype(object)
        dt = tensor_dtype_to_np_dtype(elem_type)
        if value.dtype == object:
            return np.zeros(value.shape, dt)
        with np.errstate(all="ignore"):
            return value.astype(dt)
    except Exception:
        return value


def m_input_type(model, feeds, rng):
    inputs = [i for i in model.graph.input if i.type.HasField("tensor_type")]
    if not inputs:
        return None
    vi = rng.choice(inputs)
    elem = rng.choice([e for e in ELEM_TYPES if e != vi.type.tensor_type.elem_type])
    vi.type.tensor_type.elem_type = elem
    if vi.name in feeds and rng.random() < 0.8:  # else: the old type is fed
        feeds[vi.name] = _cast_feed(feeds[vi.name], elem)
    return f"input_type {vi.name}->{TensorProto.DataType.Name(elem)}"


def m_input_shape(model, feeds, rng):
    inputs = [i for i in model.graph.input if i.type.HasField("tensor_type")
              and i.type.tensor_type.HasField("shape")]
    if not inputs:
        return None
    vi = rng.choice(inputs)
    shape = vi.type.tensor_type.shape
    r = rng.random()
    if r < 0.3 and len(shape.dim):
        del shape.dim[rng.randrange(len(shape.dim))]
        what = "drop dim"
    elif r < 0.5:
        shape.dim.add().dim_value = rng.choice([1, 2, 3])
        what = "add dim"
    elif r < 0.8 and len(shape.dim):
        shape.dim[rng.randrange(len(shape.dim))].dim_value = rng.choice([0, 1, 7, 10**6])
        what = "dim value"
    else:
        vi.type.tensor_type.ClearField("shape")
        what = "unknown rank"
    return f"input_shape {vi.name} {what}"


def _relax(model, name):
    """Declare input ``name`` of unknown shape, so any fed shape reaches the kernels."""
    for vi in model.graph.input:
        if vi.name == name and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")


def m_feed_shape(model, feeds, rng):
    names = [k for k, v in feeds.items() if isinstance(v, np.ndarray)]
    if not names:
        return None
    name = rng.choice(names)
    x = feeds[name]
    r = rng.random()
    if r < 0.2 and x.ndim:
        axis = rng.randrange(x.ndim)
        x = np.take(x, np.arange(0), axis=axis)
        what = f"0-size axis {axis}"
    elif r < 0.35:
        x = x[None]
        what = "extra leading dim"
    elif r < 0.5 and x.ndim:
        x = x.reshape(-1)
        what = "flattened"
    elif r < 0.65 and x.ndim >= 2:
        x = np.swapaxes(x, 0, -1)
        what = "transposed view"
    elif r < 0.8 and x.ndim and x.shape[-1] > 1:
        x = x[..., ::2]
        what = "strided view"
    elif r < 0.9 and x.size:
        x = np.asarray(x.reshape(-1)[:1]).reshape(())
        what = "scalar"
    else:
        x = np.concatenate([x, x], axis=0) if x.ndim else np.stack([x, x])
        what = "doubled"
    feeds[name] = x
    if rng.random() < 0.8:
        _relax(model, name)
    return f"feed_shape {name} {what}"


def m_feed_values(model, feeds, rng):
    names = [k for k, v in feeds.items() if isinstance(v, np.ndarray) and v.size
             and v.dtype.kind in "biuf"]
    if not names:
        return None
    name = rng.choice(names)
    x = np.array(feeds[name])
    flat = x.reshape(-1)
    idx = rng.randrange(flat.size)
    if x.dtype.kind == "f":
        with np.errstate(over="ignore"):  # 1e30 is inf in float16: meant
            flat[idx] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30])
        if rng.random() < 0.3:
            flat[:] = np.nan
    elif x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        flat[idx] = rng.choice([info.max, info.min, 0, -1 if info.min < 0 else 0,
                                min(info.max, 10**6), min(info.max, 2**31)])
    else:
        flat[:] = not flat[idx]
    feeds[name] = x
    return f"feed_values {name}"


def m_feed_sizes(model, feeds, rng):
    """Integer inputs (shapes, repeats, indices, trip counts) all set to one large value:
    what a model that computes sizes from its inputs can be asked to allocate."""
    names = [k for k, v in feeds.items() if isinstance(v, np.ndarray) and v.size
             and v.dtype.kind in "iu"]
    if not names:
        return None
    name = rng.choice(names)
    x = feeds[name]
    value = min(rng.choice([2**16, 2**20, 2**31, 2**40]), int(np.iinfo(x.dtype).max))
    feeds[name] = np.full_like(x, value)
    return f"feed_sizes {name}={value}"


def _mutate_tensor(t: TensorProto, rng):
    try:
        a = numpy_helper.to_array(t)
    except Exception:
        return
    r = rng.random()
    if r < 0.4 and a.size and a.dtype.kind in "iuf":
        a = np.array(a)
        a.reshape(-1)[rng.randrange(a.size)] = rng.choice(
            [-1, 0, 1, 2**20, -2**20] if a.dtype.kind in "iu" else [np.nan, np.inf, -1.0, 0.0])
        new = numpy_helper.from_array(a, t.name)
    elif r < 0.55 and a.ndim:
        new = numpy_helper.from_array(np.ascontiguousarray(a.reshape(-1)[:-1] if a.size else a),
                                      t.name)
    elif r < 0.7:
        new = copy.deepcopy(t)
        new.dims.append(rng.choice([0, 2, 3]))  # dims no longer match the data
    elif r < 0.8:
        new = copy.deepcopy(t)
        new.data_type = rng.choice(ELEM_TYPES)  # the data stays: a mismatch
    elif r < 0.9:
        new = numpy_helper.from_array(np.ascontiguousarray(a), t.name)
        if new.raw_data:
            new.raw_data = new.raw_data[:len(new.raw_data) // 2]
        else:
            new.dims.append(2)
    else:
        new = numpy_helper.from_array(np.ascontiguousarray(a.astype(np.float64)
                                      if a.dtype.kind != "O" else a), t.name)
    t.CopyFrom(new)


def m_initializer(model, feeds, rng):
    graph = _pick_graph(model, rng)
    tensors = list(graph.initializer)
    tensors += [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
                if a.type == AttributeProto.TENSOR]
    if not tensors:
        return None
    t = rng.choice(tensors)
    _mutate_tensor(t, rng)
    return f"initializer {t.name or 'Constant'}"


def _value_names(graph):
    names = [i.name for i in graph.input] + [t.name for t in graph.initializer]
    return names + [o for n in graph.node for o in n.output if o]


def m_node_input(model, feeds, rng):
    graph, node = _pick_node(model, rng)
    if node is None:
        return None
    r = rng.random()
    names = _value_names(graph)
    if node.input and r < 0.3:
        i = rng.randrange(len(node.input))
        node.input[i] = ""
        what = f"omit input {i}"
    elif node.input and r < 0.5:
        node.input.pop()
        what = "drop last input"
    elif r < 0.7 and names:
        node.input.append(rng.choice(names))
        what = "extra input"
    elif node.input and names:
        i = rng.randrange(len(node.input))
        node.input[i] = rng.choice(names)
        what = f"rewire input {i}"
    else:
        node.input.append("nowhere")
        what = "undefined input"
    return f"node_input {node.op_type} {what}"


def m_node_output(model, feeds, rng):
    graph, node = _pick_node(model, rng)
    if node is None:
        return None
    r = rng.random()
    if r < 0.3:
        node.output.append("extra_out")
        what = "extra output"
    elif r < 0.6 and len(node.output) > 1:
        node.output.pop()
        what = "drop last output"
    elif r < 0.8 and node.output:
        names = _value_names(graph)
        node.output[rng.randrange(len(node.output))] = rng.choice(names)
        what = "output renamed to an existing value"
    else:
        node.output[0] = "" if node.output else "x"
        what = "first output omitted"
    return f"node_output {node.op_type} {what}"


def m_op_type(model, feeds, rng):
    _, node = _pick_node(model, rng)
    if node is None:
        return None
    old = node.op_type
    node.op_type = rng.choice([o for o in OP_TYPES if o != old])
    return f"op_type {old}->{node.op_type}"


def m_opset(model, feeds, rng):
    ops = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    r = rng.random()
    if ops and r < 0.7:
        old = ops[0].version
        ops[0].version = rng.choice([1, 6, 7, 9, 11, 13, max(1, old - 1), old + 1, 30])
        return f"opset {old}->{ops[0].version}"
    if ops and r < 0.85:
        model.opset_import.remove(ops[0])
        return "opset import removed"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    _, node = _pick_node(model, rng)
    if node is not None:
        node.domain = rng.choice(["com.example", "ai.onnx.ml", "com.microsoft", "bogus"])
        return f"node domain {node.op_type} -> {node.domain}"
    return None


def m_node_order(model, feeds, rng):
    graph = _pick_graph(model, rng)
    nodes = list(graph.node)
    if len(nodes) < 2:
        return None
    r = rng.random()
    if r < 0.5:
        nodes.reverse()
        what = "reversed"
    else:
        rng.shuffle(nodes)
        what = "shuffled"
    del graph.node[:]
    graph.node.extend(nodes)
    return f"node_order {what}"


def m_node_structure(model, feeds, rng):
    graph, node = _pick_node(model, rng)
    if node is None:
        return None
    r = rng.random()
    if r < 0.3:
        graph.node.append(copy.deepcopy(node))
        return f"duplicate node {node.op_type}"
    if r < 0.6:
        graph.node.remove(node)
        return f"remove node {node.op_type}"
    if node.output and node.input:
        node.input[0] = node.output[0]
        return f"self-cycle {node.op_type}"
    return None


def m_graph_io(model, feeds, rng):
    graph = _pick_graph(model, rng)
    r = rng.random()
    if r < 0.3 and graph.output:
        vi = rng.choice(list(graph.output))
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = rng.choice(ELEM_TYPES)
            return f"graph output type {vi.name}"
    if r < 0.5 and graph.output:
        vi = rng.choice(list(graph.output))
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.shape.Clear()
            for d in rng.choice([[1], [2, 3], [7, 7, 7], []]):
                vi.type.tensor_type.shape.dim.add().dim_value = d
            return f"graph output shape {vi.name}"
    if r < 0.65:
        graph.output.append(helper.make_tensor_value_info("dangling", TensorProto.FLOAT, None))
        return "graph output nothing produces"
    if r < 0.8 and graph.input:
        vi = rng.choice(list(graph.input))
        graph.input.remove(vi)
        return f"graph input removed {vi.name}"
    if graph.input:
        graph.input.append(copy.deepcopy(graph.input[0]))
        return "graph input listed twice"
    return None


def m_value_info(model, feeds, rng):
    graph = _pick_graph(model, rng)
    names = [o for n in graph.node for o in n.output if o]
    names = [n for n in names if n not in {o.name for o in graph.output}] or names
    if not names:
        return None
    name = rng.choice(names)
    graph.value_info.append(helper.make_tensor_value_info(
        name, rng.choice(ELEM_TYPES), rng.choice([None, [1], [2, 2], [0]])))
    return f"value_info {name}"


def m_ir_version(model, feeds, rng):
    model.ir_version = rng.choice([0, 1, 3, 6, 99])
    return f"ir_version {model.ir_version}"


MUTATIONS: list[tuple[Callable, int]] = [
    (m_attr_value, 14), (m_attr_drop, 5), (m_attr_add, 4), (m_attr_retype, 3),
    (m_input_type, 8), (m_input_shape, 6), (m_feed_shape, 12), (m_feed_values, 8),
    (m_feed_sizes, 3),
    (m_initializer, 8), (m_node_input, 6), (m_node_output, 4), (m_op_type, 3), (m_opset, 4),
    (m_node_order, 2), (m_node_structure, 3), (m_graph_io, 4), (m_value_info, 3),
    (m_ir_version, 1),
]


def make_mutant(seed: int, index: int) -> Mutant:
    """Mutant ``index`` of ``seed``: a function of the two numbers only."""
    rng = random.Random(f"tritort-fuzz:{seed}:{index}")
    cases = synthetic_cases() if rng.random() < 0.15 else seed_cases()
    name, data, feeds = cases[rng.randrange(len(cases))]
    for _ in range(20):
        model = onnx.ModelProto()
        model.ParseFromString(data)
        mutant_feeds = {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else
                            copy.deepcopy(v)) for k, v in feeds.items()}
        applied = []
        for _ in range(1 if rng.random() < 0.7 else 2):
            fn = rng.choices([f for f, _ in MUTATIONS], [w for _, w in MUTATIONS])[0]
            try:
                what = fn(model, mutant_feeds, rng)
            except Exception as e:  # a mutation that does not apply to this model
                what = None
                if os.environ.get("TRITORT_FUZZ_DEBUG"):
                    raise RuntimeError(f"mutation {fn.__name__} failed") from e
            if what:
                applied.append(what)
        if applied:
            return Mutant(seed, index, name, model.SerializeToString(), mutant_feeds, applied)
    return Mutant(seed, index, name, data, dict(feeds), ["none"])
