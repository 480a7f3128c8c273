"""Small models built with onnx.helper for the API tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper, numpy_helper


def make(nodes, inputs, outputs, initializers=(), opset=21, functions=(), **kw) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, kw.pop("name", "g"), inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              functions=list(functions), **kw)
    model.ir_version = 10
    return model


def vi(name, elem=TP.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def add_relu(shape=("N", 3)) -> onnx.ModelProto:
    """Y = Relu(A + B), Z = A * 2 (an initializer)."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    return make(
        [helper.make_node("Add", ["A", "B"], ["S"], name="add"),
         helper.make_node("Relu", ["S"], ["Y"], name="relu"),
         helper.make_node("Mul", ["A", "two"], ["Z"], name="scale")],
        [vi("A", shape=list(shape)), vi("B", shape=list(shape))],
        [vi("Y", shape=list(shape)), vi("Z", shape=list(shape))], [two])


def with_overridable_initializer() -> onnx.ModelProto:
    """Y = X + W where W is an initializer also listed as a graph input."""
    w = numpy_helper.from_array(np.ones((2,), dtype=np.float32), "W")
    return make([helper.make_node("Add", ["X", "W"], ["Y"], name="add")],
                [vi("X", shape=[2]), vi("W", shape=[2])], [vi("Y", shape=[2])], [w])


def identity(elem=TP.FLOAT, shape=(2,)) -> onnx.ModelProto:
    return make([helper.make_node("Identity", ["X"], ["Y"], name="id")],
                [vi("X", elem, list(shape))], [vi("Y", elem, list(shape))])


def slow_chain(n: int = 200, size: int = 256) -> onnx.ModelProto:
    """A long chain of MatMul+Tanh: long enough to be interrupted mid-run."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((size, size)) / size).astype(np.float32), "W")
    nodes, prev = [], "X"
    for i in range(n):
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"], name=f"tanh{i}"))
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["Y"], name="out"))
    return make(nodes, [vi("X", shape=[size, size])], [vi("Y", shape=[size, size])], [w])


def relu_nonzero() -> onnx.ModelProto:
    """Y = NonZero(Relu(X)): Relu can run on a device, NonZero only on the host."""
    return make([helper.make_node("Relu", ["X"], ["R"], name="relu"),
                 helper.make_node("NonZero", ["R"], ["Y"], name="nonzero")],
                [vi("X", shape=[4])], [vi("Y", TP.INT64, shape=None)])
