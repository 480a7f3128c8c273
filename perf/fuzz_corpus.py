"""The fuzzer's seed corpus (perf/fuzz.py): every ONNX node conformance case shipped with
onnx (valid models and inputs), and a few multi-node models of the fuzzer's own.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


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
