"""Horizontal GEMM fusion (tritort/horizontal.py) and Split as views on Triton.

MatMuls reading one activation over constant weights become one MatMul (+ one bias Add) and a
Split: the optimized graph is checked, outputs are compared with onnxruntime on the CPU
provider and on Triton (interpreter), where the Split runs no kernel. Cases that must stay
apart are checked too.
"""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP, helper, numpy_helper

import tritort as ort
from tests import models
from tests.triton_env import requires_triton, triton_session
from tritort import loader, optimizer
from tritort.options import GraphOptimizationLevel

_rng = np.random.default_rng(14)
E, HEADS = 8, 2


def _init(name, *shape):
    return numpy_helper.from_array(_rng.standard_normal(shape).astype(np.float32), name)


def _shape(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _attention_block(bias=True):
    """X (B, S, E) -> Q, K, V projections (+ bias) -> heads -> softmax(Q Kᵀ / √d) V -> (B, S, E)."""
    nodes, inits = [], [_shape("heads", [0, 0, HEADS, E // HEADS]), _shape("merged", [0, 0, E]),
                        numpy_helper.from_array(np.array(0.5, np.float32), "scale")]
    for p in "qkv":
        inits.append(_init(f"W{p}", E, E))
        if bias:
            inits.append(_init(f"b{p}", E))
            nodes += [helper.make_node("MatMul", ["X", f"W{p}"], [f"{p}_mm"], name=f"{p}_mm"),
                      helper.make_node("Add", [f"{p}_mm", f"b{p}"], [p], name=f"{p}_add")]
        else:
            nodes.append(helper.make_node("MatMul", ["X", f"W{p}"], [p], name=f"{p}_mm"))
        nodes.append(helper.make_node("Reshape", [p, "heads"], [f"{p}4"], name=f"{p}_heads"))
    nodes += [
        helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3], name="qt"),
        helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1], name="kt"),
        helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3], name="vt"),
        helper.make_node("MatMul", ["qt", "kt"], ["scores"], name="scores"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scaled"),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1, name="probs"),
        helper.make_node("MatMul", ["probs", "vt"], ["ctx"], name="ctx"),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3], name="ctx_t"),
        helper.make_node("Reshape", ["ctx_t", "merged"], ["Y"], name="merge"),
    ]
    return _make(nodes, [models.vi("X", shape=["B", "S", E])], ["Y"], inits, opset=17)


def _make(nodes, inputs, outputs, inits, opset):
    return models.make(nodes, inputs, [models.vi(o) for o in outputs], inits, opset=opset)


def _optimized(model):
    return optimizer.optimize(loader.load(model.SerializeToString()).graph,
                              GraphOptimizationLevel.ORT_ENABLE_ALL)


def _ops(graph):
    return [n.op_type for n in graph.nodes]


def _feeds():
    return {"X": _rng.standard_normal((2, 3, E)).astype(np.float32)}


def _expected(model, feeds):
    return onnxruntime.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("bias", [True, False])
def test_qkv_projections_become_one_matmul_and_a_split(bias):
    model = _attention_block(bias)
    graph = _optimized(model)
    ops = _ops(graph)
    assert ops.count("MatMul") == 1 and ops.count("Split") == 1, ops
    assert ops.count("Add") == (1 if bias else 0), ops
    mm = next(n for n in graph.nodes if n.op_type == "MatMul")
    assert graph.initializers[mm.inputs[1]].shape == (E, 3 * E)
    for n in graph.nodes:  # every value the rewrite wrote is typed
        assert all(graph.value(v) is not None for v in n.inputs + n.outputs if v), n.name
    feeds = _feeds()
    got = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got[0], _expected(model, feeds)[0], rtol=1e-5, atol=1e-5)


@requires_triton
def test_fused_projection_on_triton_splits_as_views():
    model = _attention_block()
    sess = triton_session(model, on_triton=[])
    assigned = {a.provider.name for a in sess._program.partition.assignments.values()}
    assert assigned == {"TritonExecutionProvider"}, assigned
    feeds = _feeds()
    np.testing.assert_allclose(sess.run(None, feeds)[0], _expected(model, feeds)[0],
                               rtol=1e-4, atol=1e-5)
    reports = [r for ep in sess._program.providers for r in getattr(ep, "kernels", [])]
    # one GEMM with the concatenated bias as its epilogue; the Split runs no kernel
    gemm = [r for r in reports if any(n.endswith("horizontal_MatMul") for n in r["nodes"])]
    assert len(gemm) == 1 and gemm[0]["kernel"] is not None, reports
    assert any(n.endswith("horizontal_Add") for n in gemm[0]["nodes"]), gemm
    splits = [r for r in reports if any(n.endswith("horizontal_Split") for n in r["nodes"])]
    assert len(splits) == 1 and splits[0]["kernel"] is None, splits


def _projections(a_inputs, weights, inputs=(), opset=17, extra_inits=()):
    """One MatMul (+ bias) per weight; a_inputs[i] is the i-th MatMul's A."""
    nodes, inits, outs = [], list(extra_inits), []
    for i, (a, w) in enumerate(zip(a_inputs, weights)):
        if isinstance(w, np.ndarray):
            inits.append(numpy_helper.from_array(w, f"W{i}"))
            w = f"W{i}"
        inits.append(_init(f"b{i}", 4))
        nodes += [helper.make_node("MatMul", [a, w], [f"mm{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"Y{i}"], name=f"add{i}")]
        outs.append(f"Y{i}")
    return _make(nodes, list(inputs), outs, inits, opset=opset)


def _w(k, n=4):
    return _rng.standard_normal((k, n)).astype(np.float32)


def _check_cpu(model, feeds):
    got = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, e in zip(got, _expected(model, feeds)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_different_inputs_do_not_fuse():
    model = _projections(["X", "Z"], [_w(6), _w(6)],
                         [models.vi("X", shape=[3, 6]), models.vi("Z", shape=[3, 6])])
    assert "Split" not in _ops(_optimized(model))
    _check_cpu(model, {"X": _w(3, 6), "Z": _w(3, 6)})


def test_a_weight_computed_at_run_time_does_not_fuse():
    model = _projections(["X", "X"], [_w(6), "R"],
                         [models.vi("X", shape=[3, 6]), models.vi("R", shape=[6, 4])])
    assert "Split" not in _ops(_optimized(model))
    _check_cpu(model, {"X": _w(3, 6), "R": _w(6)})


def test_a_weight_that_is_also_a_graph_input_does_not_fuse():
    """W1 is an initializer a feed may override: its value is not known at session creation."""
    model = _projections(["X", "X"], [_w(6), _w(6)],
                         [models.vi("X", shape=[3, 6]), models.vi("W1", shape=[6, 4])])
    assert "Split" not in _ops(_optimized(model))
    feeds = {"X": _w(3, 6), "W1": _w(6)}
    _check_cpu(model, feeds)


def test_different_k_does_not_fuse():
    """X's last dim is symbolic, so a model with (6, 4) and (5, 4) weights loads; at most one
    of them can be right at run time, and they are not concatenated."""
    model = _projections(["X", "X"], [_w(6), _w(5)], [models.vi("X", shape=[3, "K"])])
    assert "Split" not in _ops(_optimized(model))


def test_a_product_read_elsewhere_keeps_its_bias_add_outside():
    """mm0 is also a graph output: the fused MatMul reproduces it, and its Add stays."""
    model = _projections(["X", "X", "X"], [_w(6), _w(6), _w(6)],
                         [models.vi("X", shape=[3, 6])])
    model.graph.output.append(helper.make_tensor_value_info("mm0", TP.FLOAT, None))
    graph = _optimized(model)
    ops = _ops(graph)
    # mm0 alone keeps its Add; mm1 and mm2 fuse with their biases
    assert ops.count("Split") == 1 and ops.count("MatMul") == 2, ops
    _check_cpu(model, {"X": _w(3, 6)})


def test_gate_and_up_without_bias_fuse():
    nodes = [helper.make_node("MatMul", ["X", "Wg"], ["g"], name="gate"),
             helper.make_node("MatMul", ["X", "Wu"], ["u"], name="up"),
             helper.make_node("Sigmoid", ["g"], ["s"], name="sig"),
             helper.make_node("Mul", ["g", "s"], ["silu"], name="silu"),
             helper.make_node("Mul", ["silu", "u"], ["Y"], name="gated")]
    model = _make(nodes, [models.vi("X", shape=["N", 6])], ["Y"],
                        [numpy_helper.from_array(_w(6, 5), "Wg"),
                         numpy_helper.from_array(_w(6, 5), "Wu")], opset=13)
    ops = _ops(_optimized(model))
    assert ops.count("MatMul") == 1 and ops.count("Split") == 1, ops
    _check_cpu(model, {"X": _w(3, 6)})


def test_old_opset_writes_split_sizes_as_an_attribute():
    model = _projections(["X", "X"], [_w(6, 4), _w(6, 4)], [models.vi("X", shape=[3, 6])],
                         opset=11)
    graph = _optimized(model)
    split = next(n for n in graph.nodes if n.op_type == "Split")
    assert split.attrs["split"] == [4, 4] and len(split.inputs) == 1
    _check_cpu(model, {"X": _w(3, 6)})


@requires_triton
@pytest.mark.parametrize("opset, axis, sizes, outs", [
    (13, 0, [1, 3], 2),
    (13, 1, [2, 2, 1], 3),
    (13, -1, None, 2),           # equal parts from the output count
    (11, 2, [2, 4], 2),          # sizes as an attribute
    (18, -1, "num_outputs", 3),  # 6 = 2 + 2 + 2
    (18, 1, "num_outputs", 2),   # 5 = 3 + 2: a smaller tail
])
def test_split_is_views_on_triton(opset, axis, sizes, outs):
    names = [f"Y{i}" for i in range(outs)]
    inputs, inits, attrs = ["T"], [], {"axis": axis}
    if sizes == "num_outputs":
        attrs["num_outputs"] = outs
    elif sizes and opset >= 13:
        inputs.append("sizes")
        inits.append(_shape("sizes", sizes))
    elif sizes:
        attrs["split"] = sizes
    nodes = [helper.make_node("Transpose", ["X"], ["T"], perm=[1, 0, 2], name="t"),
             helper.make_node("Split", inputs, names, name="split", **attrs),
             helper.make_node("Relu", [names[-1]], ["R"], name="relu")]
    model = _make(nodes, [models.vi("X", shape=["A", "B", 6])], names + ["R"], inits,
                        opset=opset)
    sess = triton_session(model)
    x = _rng.standard_normal((5, 4, 6)).astype(np.float32)
    for got, want in zip(sess.run(None, {"X": x}), _expected(model, {"X": x})):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    reports = [r for ep in sess._program.providers for r in getattr(ep, "kernels", [])]
    split = [r for r in reports if r["nodes"] == ["split"]]
    assert len(split) == 1 and split[0]["kernel"] is None, reports
