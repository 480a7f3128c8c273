"""Codegen in Triton's interpreter: golden tile IR and source, fusion, cache, dump dir."""
from __future__ import annotations

import warnings

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper

import tritort as ort
from tests import models
from tests.triton_env import interpreter_only, requires_triton

pytestmark = requires_triton
TRITON_FIRST = ["TritonExecutionProvider", "CPUExecutionProvider"]


def add_relu_cast():
    nodes = [helper.make_node("Add", ["A", "B"], ["S"], name="add"),
             helper.make_node("Relu", ["S"], ["R"], name="relu"),
             helper.make_node("Cast", ["R"], ["Y"], name="cast", to=TP.FLOAT16)]
    return models.make(nodes, [models.vi("A", shape=["N", 3]), models.vi("B", shape=[3])],
                       [models.vi("Y", TP.FLOAT16, ["N", 3])])


GOLDEN_IR = """\
kernel fused_0_add_relu_cast rank=2 nodes=[add, relu, cast]
  in0: A float[rank 2] (broadcast load)
  in1: B float[rank 1] (broadcast load)
  t0 = add(in0, in1):float
  t1 = max(t0, 0:float):float
  t2 = cast<float16>(t1)
  out0: Y float16 = t2
"""

GOLDEN_BODY = """\
    x0 = tl.load(in0 + (i0 * s0_0 + i1 * s0_1), mask=mask)
    x1 = tl.load(in1 + (i0 * s1_0 + i1 * s1_1), mask=mask)
    t0 = x0 + x1
    t1 = tl.maximum(t0, 0.0, propagate_nan=tl.PropagateNan.ALL)
    t2 = t1.to(tl.float16).to(tl.float32)
    tl.store(out0 + offs, (t2).to(tl.float16), mask=mask)
"""


@pytest.fixture()
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TRITORT_DUMP_DIR", str(tmp_path / "dump"))
    return tmp_path


def test_golden_tile_ir_and_source(dirs):
    sess = ort.InferenceSession(add_relu_cast().SerializeToString(), providers=TRITON_FIRST)
    assert sess.get_providers() == TRITON_FIRST
    dump = dirs / "dump"
    assert (dump / "fused_0_add_relu_cast.tileir.txt").read_text() == GOLDEN_IR
    source = (dump / "fused_0_add_relu_cast.py").read_text()
    assert source.startswith("# tritort fused kernel fused_0_add_relu_cast\n"
                             "# ONNX nodes: add (Add), relu (Relu), cast (Cast)\n")
    assert source.endswith(GOLDEN_BODY)
    a = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    b = np.float32([0.5, -1, 2])
    ref = onnxruntime.InferenceSession(add_relu_cast().SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"A": a, "B": b})[0],
                                  ref.run(None, {"A": a, "B": b})[0])


def test_second_session_reuses_cached_kernels(dirs):
    from tritort.codegen import cache

    first = ort.InferenceSession(add_relu_cast().SerializeToString(), providers=TRITON_FIRST)
    files = sorted((dirs / "cache").glob("*.py"))
    assert len(files) == 1
    cache._loaded.clear()  # as a new process would start
    second = ort.InferenceSession(add_relu_cast().SerializeToString(), providers=TRITON_FIRST)
    ep = second._program.providers[0]
    assert [k["cached"] for k in ep.kernels] == [True]
    assert sorted((dirs / "cache").glob("*.py")) == files
    x = {"A": np.ones((2, 3), np.float32), "B": np.ones(3, np.float32)}
    np.testing.assert_array_equal(first.run(None, x)[0], second.run(None, x)[0])


def _groups(model):
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=TRITON_FIRST)
    return sess, [(s.ep_name, [n.name for n in s.get_nodes()])
                  for s in sess.get_provider_graph_assignment_info()]


def test_chain_and_siblings_of_one_shape_fuse():
    nodes = [helper.make_node("Mul", ["X", "X"], ["sq"], name="sq"),
             helper.make_node("Sigmoid", ["X"], ["sg"], name="sig"),
             helper.make_node("Add", ["sq", "sg"], ["Y"], name="add"),
             helper.make_node("Neg", ["X"], ["Z"], name="neg")]
    model = models.make(nodes, [models.vi("X", shape=["N", 4])],
                        [models.vi("Y", shape=["N", 4]), models.vi("Z", shape=["N", 4])])
    sess, groups = _groups(model)
    assert groups == [("TritonExecutionProvider", ["sq", "sig", "add", "neg"])]
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    ref = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(None, {"X": x})
    for got, exp in zip(sess.run(None, {"X": x}), ref):
        np.testing.assert_allclose(got, exp, rtol=1e-6, atol=1e-6)


def test_no_fusion_across_a_cpu_node_or_a_shape_change():
    k = helper.make_tensor("k", TP.INT64, [1], [1])
    nodes = [helper.make_node("Exp", ["X"], ["e"], name="exp"),
             helper.make_node("TopK", ["e", "k"], ["s", "i"], name="top", axis=1),
             helper.make_node("Div", ["e", "s"], ["Y"], name="div"),
             helper.make_node("Log", ["s"], ["L"], name="log")]
    model = models.make(nodes, [models.vi("X", shape=[2, 5])],
                        [models.vi("Y", shape=[2, 5]), models.vi("L", shape=[2, 1])], [k])
    sess, groups = _groups(model)
    # TopK runs on the CPU between the kernels; Log ([2, 1]) does not join Div ([2, 5])
    assert groups == [("TritonExecutionProvider", ["exp"]), ("CPUExecutionProvider", ["top"]),
                      ("TritonExecutionProvider", ["div"]), ("TritonExecutionProvider", ["log"])]
    x = np.random.default_rng(2).standard_normal((2, 5)).astype(np.float32)
    ref = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(None, {"X": x})
    for got, exp in zip(sess.run(None, {"X": x}), ref):
        np.testing.assert_allclose(got, exp, rtol=1e-6)
    report = sess.placement_report()
    assert "top" in report and "no Triton lowering for TopK" in report


def test_fusion_groups_partition_and_are_checked():
    from tritort.codegen.fusion import check_partition
    from tritort.graph import Node

    a = Node("a", "Relu", "", ["x"], ["y"], {}, None)
    b = Node("b", "Relu", "", ["y"], ["z"], {}, None)
    check_partition([a, b], [[a], [b]])
    with pytest.raises(AssertionError, match="partition"):
        check_partition([a, b], [[a, b], [b]])
    with pytest.raises(AssertionError, match="partition"):
        check_partition([a, b], [[a]])


def test_shape_arithmetic_stays_on_the_host_whatever_the_claim_order():
    """Values computed from shapes come from one pre-pass over the graph: a claim depends on
    neither the order claims come in nor the graphs claimed before."""
    from tritort.codegen import engine

    two = helper.make_tensor("two", TP.INT64, [], [2])
    nodes = [helper.make_node("Shape", ["X"], ["S"], name="shape"),
             helper.make_node("Mul", ["S", "two"], ["T"], name="double"),
             helper.make_node("Neg", ["T"], ["U"], name="neg"),
             helper.make_node("Reshape", ["X", "U"], ["Y"], name="reshape")]
    model = models.make(nodes, [models.vi("X", shape=["N", 3])], [models.vi("Y", shape=None)],
                        [two])
    sess = ort.InferenceSession(model.SerializeToString(), providers=TRITON_FIRST)
    placed = sess._program.partition.assignments
    for name in ("double", "neg"):
        assert placed[name].provider.name == "CPUExecutionProvider"
        assert "shape arithmetic" in placed[name].declined["TritonExecutionProvider"]
    graph, device = sess._program.graph, sess._program.providers[0]._device
    forward = [engine.claim(n, graph, device) for n in graph.nodes]
    backward = [engine.claim(n, graph, device) for n in reversed(graph.nodes)][::-1]
    assert forward == backward and engine.host_shape_values(graph) == {"S", "T", "U"}
    # the same names in another graph (a control-flow body, say) claimed for the same
    # session, without a Shape: int64 arithmetic like any other
    from tritort.graph import Graph

    plain = helper.make_graph([helper.make_node("Mul", ["S", "two"], ["T"], name="double")],
                              "body", [models.vi("S", TP.INT64, [2])],
                              [models.vi("T", TP.INT64, [2])], [two])
    body = Graph.from_proto(plain, {"": 21})
    assert engine.claim(body.nodes[0], body, device) is None


@interpreter_only
def test_cuda_alias_and_unavailable_provider_warns(monkeypatch):
    data = models.add_relu().SerializeToString()
    sess = ort.InferenceSession(data, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert sess.get_providers() == TRITON_FIRST
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.warns(RuntimeWarning, match="TritonExecutionProvider was requested but cannot "
                                            "be used: torch sees no CUDA device"):
        sess = ort.InferenceSession(data, providers=TRITON_FIRST)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert "TritonExecutionProvider" not in ort.get_available_providers()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "TritonExecutionProvider" in ort.get_available_providers()
    with pytest.raises(ort.InvalidArgument, match="unknown provider option"):
        ort.InferenceSession(data, providers=[("TritonExecutionProvider", {"bogus": "1"})])


def test_profiling_has_one_event_per_fused_kernel(tmp_path):
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "p")
    sess = ort.InferenceSession(add_relu_cast().SerializeToString(), so, providers=TRITON_FIRST)
    sess.run(None, {"A": np.ones((2, 3), np.float32), "B": np.ones(3, np.float32)})
    import json

    events = json.load(open(sess.end_profiling()))
    kernels = [e for e in events if e["args"].get("provider") == "TritonExecutionProvider"]
    assert [e["args"]["op_name"] for e in kernels] == ["FusedKernel"]


def test_check_numerics_catches_a_wrong_kernel(monkeypatch, dirs):
    from tritort.codegen import lowering
    from tritort.codegen.lowering import Lowering, c, op

    so = ort.SessionOptions()
    so.add_session_config_entry("tritort.debug.check_numerics", "1")
    feeds = {"A": np.float32([[-1, 2, 3]]), "B": np.float32([1, -5, 1])}
    sess = ort.InferenceSession(add_relu_cast().SerializeToString(), so, providers=TRITON_FIRST)
    np.testing.assert_array_equal(sess.run(None, feeds)[0], np.float16([[0, 0, 4]]))
    wrong = Lowering(lambda attrs, xs, outs: [op("min", xs[0], c(0, xs[0]))],
                     lowering.LOWERINGS["Relu"].dtypes)
    monkeypatch.setitem(lowering.LOWERINGS, "Relu", wrong)
    sess = ort.InferenceSession(add_relu_cast().SerializeToString(), so, providers=TRITON_FIRST)
    with pytest.raises(ort.Fail, match=r"check_numerics: kernel fused_0_add_relu_cast output 'Y' "
                                       r"differs .* first at index \[0, 1\]"):
        sess.run(None, feeds)


def test_transformer_style_block_becomes_a_few_kernels(dirs):
    """LayerNorm -> pointwise chain -> residual -> Softmax -> residual: 2 kernels, each
    row-wise anchor computing the pointwise nodes after it on its result's elements."""
    rng = np.random.default_rng(5)
    inits = [helper.make_tensor(n, TP.FLOAT, [16], rng.standard_normal(16).astype(np.float32))
             for n in ("gamma", "beta", "bias")]
    nodes = [helper.make_node("LayerNormalization", ["X", "gamma", "beta"], ["ln"], name="ln",
                              axis=-1, epsilon=1e-5),
             helper.make_node("Add", ["ln", "bias"], ["h0"], name="bias_add"),
             helper.make_node("Gelu", ["h0"], ["h1"], name="gelu"),
             helper.make_node("Mul", ["h1", "ln"], ["h2"], name="gate"),
             helper.make_node("Add", ["h2", "X"], ["res"], name="residual"),
             helper.make_node("Softmax", ["res"], ["p"], name="softmax", axis=-1),
             helper.make_node("Add", ["p", "res"], ["Y"], name="residual2")]
    model = models.make(nodes, [models.vi("X", shape=["B", "S", 16])],
                        [models.vi("Y", shape=["B", "S", 16])], inits, opset=20)
    sess, groups = _groups(model)
    assert [provider for provider, _ in groups] == ["TritonExecutionProvider"] * 2
    # the bias Add and Gelu (one BiasGelu node after onnxscript's rewriter), gate, residual
    assert groups[0][1][0] == "ln" and len(groups[0][1]) in (4, 5) and \
        groups[0][1][-2:] == ["gate", "residual"]
    assert groups[1][1] == ["softmax", "residual2"]
    ref = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    for shape in ((2, 3, 16), (1, 7, 16)):  # symbolic batch and sequence: same kernels
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"X": x})[0], ref.run(None, {"X": x})[0],
                                   rtol=1e-5, atol=1e-5)


def test_constants_move_to_the_device_once_per_plan():
    w = helper.make_tensor("W", TP.FLOAT, [3], [1.0, -2.0, 3.0])
    model = models.make([helper.make_node("Mul", ["X", "W"], ["Y"], name="mul")],
                        [models.vi("X", shape=[2, 3])], [models.vi("Y", shape=[2, 3])], [w])
    sess = ort.InferenceSession(model.SerializeToString(), providers=TRITON_FIRST)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(sess.run(None, {"X": x})[0], x * np.float32([1, -2, 3]))
    plan = sess._plans.get(["Y"])
    copies = [s.label for s in plan.steps if s.op_type == "Copy"]
    assert not any("copy W " in label for label in copies), copies
