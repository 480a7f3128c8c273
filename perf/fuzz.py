"""Robustness fuzzer: invalid models and inputs must get ORT's errors, never a hang or a crash.

Mutants are made from the ONNX node conformance cases shipped with onnx (every op, with
valid inputs) and a few multi-node models of the fuzzer's own (weights over the loader's
1024-element threshold, folded shape arithmetic, a Loop): one or two mutations each, of
attributes (values, types, presence), types and shapes (declared and fed), input values
(NaN, extremes, large sizes), initializers (values, dims, dtype, truncated data), graph
structure (inputs, outputs, node order, duplicates, cycles, removed nodes), op types,
domains and opsets, inside control-flow bodies too. Mutant ``i`` of seed ``S`` depends on
nothing else, so any finding is replayed with ``--replay S:i``.

Each mutant runs in worker processes, one per runtime (tritort's CPU provider, tritort
Triton-first, onnxruntime as the oracle), each under a memory cap (``resource.setrlimit``)
and a per-mutant timeout. A worker creates the session and runs it on the mutant's feeds.
A tritort failure is:

- ``bug``: an exception that is not one of ORT's classes (``tritort.errors.OrtError``),
  at creation, at the run, or at a second run after a failed one (the session must stay
  usable);
- ``hang``: a run that goes on past the timeout is asked to stop through
  RunOptions.terminate; one that does not stop within GRACE_S seconds of that is a hang
  (where onnxruntime's did stop). One that stops is ``slow``, listed but not a failure: a
  valid model may run for ever (a Loop of 2**40 trips), and a Python runtime in Triton's
  interpreter is a thousand times slower per node than onnxruntime;
- ``crash``: the worker died (a signal, an abort, the memory cap's OOM).

Differences with onnxruntime (one rejects a model or input the other accepts, or outputs of
other dtypes or shapes) are counted and listed; they are not failures. Inputs onnxruntime's
Python binding cannot take (ml_dtypes arrays, numpy scalars) leave the oracle out ("n/a").

    python perf/fuzz.py --mutants 800 --seed 7 [--runtimes cpu,triton,ort] [--json out.json]
    python perf/fuzz.py --replay 7:123 --runtimes cpu      # one mutant, verbose
"""
from __future__ import annotations

import argparse
import collections
import copy
import functools
import json
import os
import pickle
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

RUNTIMES = {
    "cpu": ["CPUExecutionProvider"],
    "triton": ["TritonExecutionProvider", "CPUExecutionProvider"],
    "ort": ["CPUExecutionProvider"],
}
MEMORY_CAP = 6 << 30  # address space per worker: big inputs fail with MemoryError, not OOM
TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------- the seed corpus


@functools.lru_cache(maxsize=1)
def seed_cases() -> list[tuple[str, bytes, dict[str, Any]]]:
    """(name, serialized model, feeds) of every node conformance case, sorted by name."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    out = []
    for case in sorted(cases, key=lambda c: c.name):
        if not case.data_sets:
            continue
        inputs = [_to_value(x) for x in case.data_sets[0][0]]
        names = [i.name for i in case.model.graph.input]
        out.append((case.name, case.model.SerializeToString(), dict(zip(names, inputs))))
    return out


@functools.lru_cache(maxsize=1)
def synthetic_cases() -> list[tuple[str, bytes, dict[str, Any]]]:
    return [(n, m.SerializeToString(), f) for n, m, f in _synthetic_models()]


def _synthetic_models() -> list[tuple[str, onnx.ModelProto, dict[str, Any]]]:
    """Multi-node models with weights over the loader's 1024-element threshold, shape
    arithmetic the optimizer folds, and a Loop reading an outer weight: what the one-node
    conformance cases do not have."""
    from onnx import helper as h

    rng = np.random.default_rng(0)

    def w(name, *shape, dtype=np.float32):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(dtype), name)

    def i64(name, values):
        return numpy_helper.from_array(np.array(values, np.int64), name)

    def model(name, nodes, inputs, outputs, inits, opset=21):
        g = h.make_graph(nodes, name, inputs, outputs, inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
        m.ir_version = 10
        return m

    vi = h.make_tensor_value_info
    out = []
    mlp = model("mlp", [
        h.make_node("MatMul", ["x", "w1"], ["h1"]), h.make_node("Add", ["h1", "b1"], ["h2"]),
        h.make_node("Relu", ["h2"], ["h3"]), h.make_node("MatMul", ["h3", "w2"], ["h4"]),
        h.make_node("Softmax", ["h4"], ["y"], axis=-1)],
        [vi("x", TensorProto.FLOAT, ["N", 64])], [vi("y", TensorProto.FLOAT, ["N", 16])],
        [w("w1", 64, 64), w("b1", 64), w("w2", 64, 16)])
    out.append(("synthetic_mlp", mlp, {"x": rng.standard_normal((2, 64)).astype(np.float32)}))
    cnn = model("cnn", [
        h.make_node("Conv", ["x", "c1", "cb1"], ["a1"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["a1"], ["a2"]),
        h.make_node("MaxPool", ["a2"], ["a3"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Conv", ["a3", "c2"], ["a4"], kernel_shape=[3, 3], strides=[1, 1]),
        h.make_node("GlobalAveragePool", ["a4"], ["a5"]),
        h.make_node("Flatten", ["a5"], ["a6"]),
        h.make_node("Gemm", ["a6", "fc", "fcb"], ["y"], transB=1)],
        [vi("x", TensorProto.FLOAT, [1, 3, 16, 16])], [vi("y", TensorProto.FLOAT, [1, 10])],
        [w("c1", 16, 3, 3, 3), w("cb1", 16), w("c2", 32, 16, 3, 3), w("fc", 10, 32), w("fcb", 10)])
    out.append(("synthetic_cnn", cnn,
                {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}))
    att = model("attention", [
        h.make_node("Gather", ["table", "ids"], ["e"]),
        h.make_node("MatMul", ["e", "wq"], ["q"]), h.make_node("MatMul", ["e", "wk"], ["k"]),
        h.make_node("Shape", ["e"], ["shp"]),
        h.make_node("Slice", ["shp", "zero", "two"], ["bs"]),
        h.make_node("Concat", ["bs", "heads"], ["target"], axis=0),
        h.make_node("Reshape", ["q", "target"], ["q4"]),
        h.make_node("Reshape", ["k", "target"], ["k4"]),
        h.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
        h.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        h.make_node("MatMul", ["qt", "kt"], ["s"]),
        h.make_node("Softmax", ["s"], ["p"], axis=-1),
        h.make_node("Transpose", ["p"], ["pt"], perm=[0, 2, 1, 3]),
        h.make_node("Reshape", ["pt", "flat"], ["pf"]),
        h.make_node("LayerNormalization", ["e", "gamma", "beta"], ["ln"], axis=-1),
        h.make_node("ReduceMean", ["pf", "axes"], ["pm"], keepdims=1),
        h.make_node("Add", ["ln", "pm"], ["y"])],
        [vi("ids", TensorProto.INT64, [1, 8])], [vi("y", TensorProto.FLOAT, [1, 8, 32])],
        [w("table", 100, 32), w("wq", 32, 32), w("wk", 32, 32), i64("zero", [0]),
         i64("two", [2]), i64("heads", [4, 8]), i64("flat", [1, 8, -1]),
         w("gamma", 32), w("beta", 32), i64("axes", [-1])])
    out.append(("synthetic_attention", att,
                {"ids": rng.integers(0, 100, (1, 8)).astype(np.int64)}))
    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]),
         h.make_node("MatMul", ["s_in", "lw"], ["s_mm"]),
         h.make_node("Tanh", ["s_mm"], ["s_out"]),
         h.make_node("ReduceSum", ["s_out"], ["scan_out"], keepdims=0)], "body",
        [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []),
         vi("s_in", TensorProto.FLOAT, [1, 48])],
        [vi("cond_out", TensorProto.BOOL, []), vi("s_out", TensorProto.FLOAT, [1, 48]),
         vi("scan_out", TensorProto.FLOAT, [])])
    loop = model("loop", [
        h.make_node("Loop", ["trips", "", "s0"], ["s", "trace"], body=body)],
        [vi("trips", TensorProto.INT64, []), vi("s0", TensorProto.FLOAT, [1, 48])],
        [vi("s", TensorProto.FLOAT, [1, 48]), vi("trace", TensorProto.FLOAT, [None])],
        [w("lw", 48, 48)])
    out.append(("synthetic_loop", loop, {"trips": np.array(5, np.int64),
                                         "s0": rng.standard_normal((1, 48)).astype(np.float32)}))
    return out


def _to_value(x: Any) -> Any:
    if isinstance(x, TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, onnx.SequenceProto):
        return [_to_value(v) for v in numpy_helper.to_list(x)]
    if isinstance(x, onnx.OptionalProto):
        return _to_value(numpy_helper.to_optional(x))
    if isinstance(x, onnx.MapProto):
        return numpy_helper.to_dict(x)
    if isinstance(x, list):
        return [_to_value(v) for v in x]
    return x


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


# ---------------------------------------------------------------------------- the worker


def _cap_memory(limit: int) -> None:
    import resource

    for what in (resource.RLIMIT_AS,):
        soft, hard = resource.getrlimit(what)
        cap = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(what, (cap, hard))


def _summary(values) -> list:
    out = []
    for v in values:
        if isinstance(v, np.ndarray):
            out.append((str(v.dtype), list(v.shape)))
        elif isinstance(v, list):
            out.append(("seq", len(v)))
        else:
            out.append((type(v).__name__, None))
    return out


def _run_with_budget(ort, sess, feeds, budget: float | None):
    """``sess.run`` on a thread; past ``budget`` seconds its RunOptions.terminate is set.
    Returns the outputs, or raises what the run raised; a run that stopped on the flag
    raises _Slow. One that ignores the flag keeps this worker busy: the parent's timeout
    then calls it a hang."""
    ro = ort.RunOptions()
    box: dict[str, Any] = {}

    def work():
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                box["out"] = sess.run(None, feeds, ro)
        except BaseException as e:  # noqa: BLE001  (handed to the caller)
            box["err"] = e

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(budget)
    if thread.is_alive():
        ro.terminate = True
        thread.join()
        if "err" in box and "terminate" in str(box["err"]):
            raise _Slow(f"still running after {budget:.0f} s; stopped by its terminate flag")
    if "err" in box:
        raise box["err"]
    return box["out"]


class _Slow(Exception):
    pass


def run_one(runtime: str, model: bytes, feeds: dict[str, Any],
            budget: float | None = None) -> dict[str, Any]:
    """Create a session and run it once; what happened, as plain data. A run past
    ``budget`` seconds is asked to stop through RunOptions.terminate: one that stops is
    'slow' (a valid model may run for ever: a Loop of 2**40 trips), not a hang."""
    if runtime == "ort":
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as classes

        ours = tuple(c for c in vars(classes).values()
                     if isinstance(c, type) and issubclass(c, Exception))
        so = ort.SessionOptions()
        so.log_severity_level = 4
    else:
        import tritort as ort
        from tritort.errors import OrtError

        ours = (OrtError,)
        so = ort.SessionOptions()
    result: dict[str, Any] = {"runtime": runtime}
    stage = "load"
    try:
        sess = ort.InferenceSession(model, so, providers=RUNTIMES[runtime])
        if runtime == "triton":
            result["on_triton"] = "TritonExecutionProvider" in sess.placement().values()
        stage = "run"
        outputs = _run_with_budget(ort, sess, feeds, budget)
        result.update(stage="ok", outputs=_summary(outputs))
    except _Slow as e:
        result.update(stage="slow", msg=str(e))
    except ours as e:
        result.update(stage=stage, cls=type(e).__name__, msg=str(e)[:600])
    except BaseException as e:  # noqa: BLE001  (what the fuzzer is looking for)
        if isinstance(e, KeyboardInterrupt):
            raise
        result.update(stage=stage, cls=type(e).__name__, msg=str(e)[:600], bug=True,
                      tb="".join(traceback.format_exception(e)[-12:]))
        if runtime == "ort":  # its Python binding refused the feeds (ml_dtypes, scalars)
            result.update(stage="n/a", bug=False)
    if runtime != "ort" and result.get("stage") == "run" and not result.get("bug"):
        # the session must stay usable after an error: the same run fails the same way
        try:
            _run_with_budget(ort, sess, feeds, budget)
            result["again"] = "ok"
        except _Slow:
            result["again"] = "slow"
        except OrtError as e:
            result["again"] = type(e).__name__
        except Exception as e:  # noqa: BLE001
            result.update(bug=True, again=type(e).__name__,
                          tb="".join(traceback.format_exception(e)[-12:]))
    return result


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _recv_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(fd: int, deadline: float | None = None):
    (n,) = struct.unpack("<Q", _recv_exact(fd, 8, deadline))
    return pickle.loads(_recv_exact(fd, n, deadline))


def worker_main(runtime: str, memory_cap: int) -> None:
    """Read (model, feeds) requests on stdin, answer on the original stdout; anything the
    runtimes print goes to stderr."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if runtime == "triton" and "TRITON_INTERPRET" not in os.environ:
        try:
            import torch

            if not torch.cuda.is_available():
                os.environ["TRITON_INTERPRET"] = "1"
        except ImportError:
            pass
    if runtime != "ort":
        import tritort  # noqa: F401  (imported before the cap: its libraries map a lot)
    else:
        import onnxruntime  # noqa: F401
    _cap_memory(memory_cap)
    warnings.simplefilter("ignore")
    _send(out, {"ready": True})
    fd = sys.stdin.fileno()
    while True:
        try:
            request = _recv(fd)
        except EOFError:
            return
        feeds = request["feeds"]
        if "__fuzz_sleep__" in feeds:  # the harness's own tests: a hang and a crash
            time.sleep(feeds["__fuzz_sleep__"])
        if "__fuzz_abort__" in feeds:
            os.abort()
        _send(out, run_one(runtime, request["model"], feeds, request.get("budget")))


class Worker:
    """One worker process for one runtime; restarted after a hang or a crash."""

    def __init__(self, runtime: str, memory_cap: int = MEMORY_CAP) -> None:
        self.runtime = runtime
        self.memory_cap = memory_cap
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()

    def start(self) -> None:
        self.log.seek(0)
        self.log.truncate()
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", self.runtime,
             "--memory-cap", str(self.memory_cap)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
            start_new_session=True)
        hello = _recv(self.proc.stdout.fileno(), time.monotonic() + 300)
        assert hello == {"ready": True}, hello

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    def run(self, model: bytes, feeds: dict[str, Any], timeout: float,
            grace: float | None = None) -> dict[str, Any]:
        """Past ``timeout`` seconds the worker sets the run's terminate flag; a worker that
        has not answered ``grace`` (GRACE_S) seconds after that (twice: a failed run is run
        again) is stuck: a hang."""
        if self.proc is None:
            self.start()
        t0 = time.monotonic()
        limit = 2 * (timeout + (GRACE_S if grace is None else grace))
        try:
            _send(self.proc.stdin, {"model": model, "feeds": feeds, "budget": timeout})
            result = _recv(self.proc.stdout.fileno(), time.monotonic() + limit)
        except TimeoutError:
            self.stop()
            return {"runtime": self.runtime, "stage": "hang", "bug": True,
                    "msg": f"no answer within {limit:.0f} s (the terminate flag was set after "
                           f"{timeout:.0f} s)"}
        except (EOFError, BrokenPipeError):
            code = self.proc.wait()
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace")[-1500:]
            self.proc = None
            return {"runtime": self.runtime, "stage": "crash", "bug": True,
                    "msg": f"worker exited with {code}"
                           f"{' (' + signal.Signals(-code).name + ')' if code < 0 else ''}",
                    "tb": tail}
        result["seconds"] = round(time.monotonic() - t0, 3)
        return result


# ---------------------------------------------------------------------------- the driver


def outcome(r: dict[str, Any]) -> str:
    """'ok', 'load', 'run', 'slow' (stopped by its terminate flag past the timeout), 'n/a'
    (the oracle could not take the feeds), or a failure kind ('bug', 'hang', 'crash')."""
    if r["stage"] in ("hang", "crash"):
        return r["stage"]
    if r.get("bug"):
        return "bug"
    return r["stage"]


GRACE_S = 15.0


def _failure(results: dict[str, dict]) -> list[tuple[str, str]]:
    """(runtime, kind) of each tritort failure, and 'slow' runs (listed, not failures: a
    valid model may run for ever, a Loop of 2**40 trips, and a Python runtime in Triton's
    interpreter is a thousand times slower per node than onnxruntime)."""
    out = []
    oracle = results.get("ort")
    for runtime, r in results.items():
        if runtime == "ort":
            continue
        kind = outcome(r)
        if kind == "hang" and oracle is not None and outcome(oracle) == "hang":
            continue
        if kind in ("bug", "hang", "crash", "slow"):
            out.append((runtime, kind))
    return out


def _difference(results: dict[str, dict]) -> list[str]:
    """How tritort's answers differ from onnxruntime's (accept vs reject, stage)."""
    oracle = results.get("ort")
    if oracle is None or outcome(oracle) in ("hang", "crash", "n/a", "slow"):
        return []
    out = []
    for runtime, r in results.items():
        if runtime == "ort" or outcome(r) in ("bug", "hang", "crash", "slow"):
            continue
        a, b = outcome(r), outcome(oracle)
        if a != b:
            out.append(f"{runtime}: tritort {a}" + (f" {r.get('cls')}" if a != "ok" else "")
                       + f", onnxruntime {b}" + (f" {oracle.get('cls')}" if b != "ok" else ""))
        elif a == "ok" and not _same_outputs(r.get("outputs"), oracle.get("outputs")):
            out.append(f"{runtime}: outputs {r.get('outputs')} vs onnxruntime "
                       f"{oracle.get('outputs')}")
    return out


# ml_dtypes types onnxruntime's Python binding hands back as their raw storage
_RAW_STORAGE = {"uint8": ("float8", "int4", "uint4", "float4", "int2", "uint2"),
                "uint16": ("bfloat16",)}


def _same_outputs(ours, theirs) -> bool:
    if ours is None or theirs is None or len(ours) != len(theirs):
        return ours == theirs
    for (dt, shape), (odt, oshape) in zip(ours, theirs):
        if shape != oshape:
            return False
        if dt != odt and not dt.startswith(_RAW_STORAGE.get(odt, ("-",))):
            return False
    return True


def fuzz(mutants: int, seed: int, runtimes: list[str], timeout: float = TIMEOUT_S,
         memory_cap: int = MEMORY_CAP, start: int = 0, log: Callable[[str], None] | None = None,
         ) -> dict[str, Any]:
    """Run mutants ``start .. start+mutants-1`` of ``seed`` on each runtime."""
    workers = {rt: Worker(rt, memory_cap) for rt in runtimes}
    report: dict[str, Any] = {"seed": seed, "mutants": 0, "runtimes": runtimes,
                              "failures": [], "slow": [], "differences": [], "outcomes": {}}
    outcomes = collections.Counter()
    t0 = time.monotonic()
    try:
        for index in range(start, start + mutants):
            m = make_mutant(seed, index)
            results = {rt: w.run(m.model, m.feeds, timeout) for rt, w in workers.items()}
            report["mutants"] += 1
            for rt, r in results.items():
                outcomes[f"{rt}:{outcome(r)}"] += 1
                if r.get("on_triton"):
                    outcomes[f"{rt}:placed nodes on Triton"] += 1
            entry = {"mutant": m.key, "case": m.case, "mutations": m.mutations}
            for rt, kind in _failure(results):
                r = results[rt]
                report["slow" if kind == "slow" else "failures"].append({
                    **entry, "runtime": rt, "kind": kind, "cls": r.get("cls"),
                    "msg": r.get("msg"), "tb": r.get("tb"), "ort": _brief(results.get("ort"))})
                if log:
                    log(f"{'SLOW' if kind == 'slow' else 'FAIL'} {m.key} {m.case} "
                        f"{m.mutations} {rt} {kind} {r.get('cls')}: {str(r.get('msg'))[:200]}")
            diffs = _difference(results)
            if diffs:
                report["differences"].append({**entry, "diffs": diffs, "tritort": {
                    rt: _brief(r) for rt, r in results.items() if rt != "ort"},
                    "ort": _brief(results.get("ort"))})
            if log and (index - start + 1) % 50 == 0:
                log(f"{index - start + 1} mutants, {time.monotonic() - t0:.0f} s, "
                    f"{len(report['failures'])} failures")
    finally:
        for w in workers.values():
            w.stop()
    report["outcomes"] = dict(sorted(outcomes.items()))
    report["seconds"] = round(time.monotonic() - t0, 1)
    return report


def _brief(r: dict | None) -> str | None:
    if r is None:
        return None
    kind = outcome(r)
    return kind if kind == "ok" else f"{kind} {r.get('cls')}: {str(r.get('msg'))[:300]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mutants", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first mutant index")
    p.add_argument("--runtimes", default="cpu,triton,ort",
                   help="comma-separated: cpu, triton (Triton first), ort (the oracle)")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S)
    p.add_argument("--memory-cap", type=int, default=MEMORY_CAP, help="bytes per worker")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--replay", help="SEED:INDEX: print the mutant and run it in this process")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.memory_cap)
        return 0
    runtimes = [r for r in args.runtimes.split(",") if r]
    if args.replay:
        seed, index = (int(v) for v in args.replay.split(":"))
        m = make_mutant(seed, index)
        print(f"mutant {m.key}: case {m.case}, mutations {m.mutations}")
        print(onnx.printer.to_text(onnx.load_from_string(m.model).graph)[:4000])
        print({k: (getattr(v, "dtype", None), getattr(v, "shape", None)) for k, v in
               m.feeds.items()})
        for rt in runtimes:
            if rt == "triton":
                os.environ.setdefault("TRITON_INTERPRET", "1")
            r = run_one(rt, m.model, m.feeds, args.timeout)
            print(rt, json.dumps(r, indent=1, default=str))
        return 0
    report = fuzz(args.mutants, args.seed, runtimes, args.timeout, args.memory_cap,
                  args.start, log=lambda s: print(s, flush=True))
    kinds = collections.Counter(f"{f['runtime']}:{f['kind']}" for f in report["failures"])
    print(f"{report['mutants']} mutants (seed {args.seed}) in {report['seconds']} s; "
          f"failures: {dict(kinds) or 'none'}")
    print("outcomes:", report["outcomes"])
    if report["slow"]:
        print(f"slow (stopped by the terminate flag after the timeout; not failures): "
              f"{[f['mutant'] for f in report['slow']]}")
    print(f"differences with onnxruntime: {len(report['differences'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
