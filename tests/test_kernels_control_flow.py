"""Focused checks of the sequence, optional and control-flow kernels of fallback_cpu.

Subgraphs run through a tiny stand-in executor (``StandInGraph``) that evaluates nodes
with the registry's kernels, so these tests need no session. Oracles are onnxruntime,
onnx.reference and the ONNX conformance data.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritort.fallback_cpu import REGISTRY, NodeContext  # noqa: E402
from tests.conformance import assert_same, node_cases, to_value  # noqa: E402
from tritort.graph import Node  # noqa: E402

ort = pytest.importorskip("onnxruntime")

try:  # the session may be mid-rewrite; the stand-in alone still tests the kernels
    from tritort import InferenceSession as SESSION
except Exception:  # noqa: BLE001
    SESSION = None


class StandInGraph:
    """Runs a (sub)graph node by node with the registry's kernels; a session stand-in."""

    def __init__(self, graph: onnx.GraphProto, opsets: dict[str, int],
                 types: dict[str, onnx.TypeProto] | None = None):
        types = types or {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            types.setdefault(vi.name, vi.type)
        self.input_names = [i.name for i in graph.input]
        self.output_names = [o.name for o in graph.output]
        self.initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.nodes = []
        for i, proto in enumerate(graph.node):
            node = Node.from_proto(proto, i)
            opset = opsets.get(node.domain, 1)
            since, factory = REGISTRY.lookup(node.domain, node.op_type, opset)
            ctx = NodeContext(
                node.op_type, node.domain, node.name, node.attrs, opset, since,
                node.inputs, node.outputs, [types.get(n) for n in node.inputs],
                [types.get(n) for n in node.outputs], proto, opsets,
                subgraph=lambda attr, attrs=node.attrs: StandInGraph(attrs[attr], opsets),
                implicit_inputs=node.implicit_inputs)
            self.nodes.append((node, factory(ctx)))

    def run(self, feeds: list, outer: dict) -> list:
        env = {**outer, **self.initializers, **dict(zip(self.input_names, feeds))}
        for node, kernel in self.nodes:
            args = [env[n] if n else None for n in node.inputs]
            args += [env[n] for n in node.implicit_inputs]
            for name, value in zip(node.outputs, kernel(*args)):
                if name:
                    env[name] = value
        return [env[n] for n in self.output_names]


def run_model(model: onnx.ModelProto, feeds: list) -> list:
    """Run through the stand-in and, where tritort's session exists, through it too."""
    got = run_stand_in(model, feeds)
    if SESSION is not None:
        sess = SESSION(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [i.name for i in model.graph.input]
        via_session = sess.run(None, dict(zip(names, feeds)))
        for i, (a, b) in enumerate(zip(got, via_session)):
            assert_same(a, b, 0, 0, f"session output {i}")
    return got


def run_stand_in(model: onnx.ModelProto, feeds: list) -> list:
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type for vi in list(inferred.graph.value_info)}
    return StandInGraph(model.graph, opsets, types).run(feeds, {})


def ort_run(model: onnx.ModelProto, feeds: list) -> list:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: v for i, v in zip(sess.get_inputs(), feeds)})


def make_model(nodes, inputs, outputs, opset: int, initializers=()) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 10
    return model


def tensor(name, elem=TP.FLOAT, shape=None):
    return oh.make_tensor_value_info(name, elem, shape)


def seq_info(name, elem=TP.FLOAT, shape=None):
    return oh.make_value_info(
        name, oh.make_sequence_type_proto(oh.make_tensor_type_proto(elem, shape)))


# --- conformance cases that use subgraphs (direct_kernels.py skips those) -------------------

SUBGRAPH_CASES = sorted(
    name for name, case in node_cases().items()
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in case.model.graph.node for a in n.attribute)
    and {n.op_type for n in case.model.graph.node} <= {
        "If", "Loop", "Scan", "SequenceMap", "Constant", "SequenceEmpty", "SequenceLength"})


@pytest.mark.parametrize("name", SUBGRAPH_CASES)
def test_subgraph_conformance(name):
    case = node_cases()[name]
    for inputs, outputs in case.data_sets:
        got = run_model(case.model, to_value(list(inputs)))
        for vi, expected, actual in zip(case.model.graph.output, to_value(list(outputs)), got):
            assert_same(expected, actual, case.rtol, case.atol, vi.name)


# --- Loop -----------------------------------------------------------------------------------

def _loop_body_counting(stop_after: int | None):
    """Body: carried x -> x + 1, scan output x * 2, cond = iter < stop_after (or pass-through)."""
    nodes = [oh.make_node("Add", ["x_in", "one"], ["x_out"]),
             oh.make_node("Mul", ["x_in", "two"], ["scan"])]
    if stop_after is None:
        nodes.append(oh.make_node("Identity", ["cond_in"], ["cond_out"]))
    else:
        nodes.append(oh.make_node("Less", ["iter", "stop"], ["cond_out"]))
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(stop_after or 0, np.int64), "stop")]
    return oh.make_graph(
        nodes, "body",
        [tensor("iter", TP.INT64, []), tensor("cond_in", TP.BOOL, []), tensor("x_in", TP.FLOAT, [2])],
        [tensor("cond_out", TP.BOOL, []), tensor("x_out", TP.FLOAT, [2]),
         tensor("scan", TP.FLOAT, [2])], inits)


@pytest.mark.parametrize("trips,cond,stop_after", [
    (5, None, None),   # for loop
    (5, True, 2),      # for loop with early exit
    (None, True, 3),   # while loop
    (5, None, 1),      # trip count with the condition output still honoured
    (0, None, None),   # zero iterations: empty scan output shaped from the body type
    (3, False, None),  # condition false on entry
])
def test_loop_modes_match_onnxruntime(trips, cond, stop_after):
    names = ["M" if trips is not None else "", "c" if cond is not None else "", "x0"]
    node = oh.make_node("Loop", names, ["x_final", "scans"], body=_loop_body_counting(stop_after))
    inputs, feeds = [], []
    if trips is not None:
        inputs.append(tensor("M", TP.INT64, []))
        feeds.append(np.array(trips, np.int64))
    if cond is not None:
        inputs.append(tensor("c", TP.BOOL, []))
        feeds.append(np.array(cond))
    inputs.append(tensor("x0", TP.FLOAT, [2]))
    feeds.append(np.array([1.0, -1.0], np.float32))
    model = make_model([node], inputs, [tensor("x_final", TP.FLOAT, [2]),
                                        tensor("scans", TP.FLOAT, [None, 2])], 16)
    expected = ort_run(model, feeds)
    got = run_model(model, feeds)
    for e, a in zip(expected, got):
        assert_same(e, a, 1e-6, 1e-6)


def test_loop_reads_outer_scope_and_nested_if():
    # Body: carried s += (i is even ? a : b), where a and b live in the outer graph.
    then_g = oh.make_graph([oh.make_node("Identity", ["a"], ["pick_t"])], "then", [],
                           [tensor("pick_t", TP.FLOAT, [3])])
    else_g = oh.make_graph([oh.make_node("Identity", ["b"], ["pick_e"])], "else", [],
                           [tensor("pick_e", TP.FLOAT, [3])])
    body = oh.make_graph(
        [oh.make_node("Mod", ["iter", "two"], ["rem"]),
         oh.make_node("Equal", ["rem", "zero"], ["even"]),
         oh.make_node("If", ["even"], ["pick"], then_branch=then_g, else_branch=else_g),
         oh.make_node("Add", ["s_in", "pick"], ["s_out"]),
         oh.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [tensor("iter", TP.INT64, []), tensor("cond_in", TP.BOOL, []), tensor("s_in", TP.FLOAT, [3])],
        [tensor("cond_out", TP.BOOL, []), tensor("s_out", TP.FLOAT, [3])],
        [numpy_helper.from_array(np.array(2, np.int64), "two"),
         numpy_helper.from_array(np.array(0, np.int64), "zero")])
    model = make_model(
        [oh.make_node("Neg", ["a0"], ["a"]), oh.make_node("Abs", ["a0"], ["b"]),
         oh.make_node("Loop", ["M", "", "s0"], ["s"], body=body)],
        [tensor("M", TP.INT64, []), tensor("a0", TP.FLOAT, [3]), tensor("s0", TP.FLOAT, [3])],
        [tensor("s", TP.FLOAT, [3])], 13)
    feeds = [np.array(5, np.int64), np.array([1.0, -2.0, 3.0], np.float32),
             np.zeros(3, np.float32)]
    assert_same(ort_run(model, feeds)[0], run_model(model, feeds)[0], 1e-6, 1e-6)


# --- Scan -----------------------------------------------------------------------------------

def _scan_body_sum():
    """Body: state += x_t; scan output state (after update); second scan output x_t * 2."""
    return oh.make_graph(
        [oh.make_node("Add", ["s_in", "x_t"], ["s_out"]),
         oh.make_node("Identity", ["s_out"], ["y_t"]),
         oh.make_node("Add", ["x_t", "x_t"], ["z_t"])],
        "body", [tensor("s_in", TP.FLOAT, [2]), tensor("x_t", TP.FLOAT, [2])],
        [tensor("s_out", TP.FLOAT, [2]), tensor("y_t", TP.FLOAT, [2]),
         tensor("z_t", TP.FLOAT, [2])])


@pytest.mark.parametrize("attrs", [
    {},
    {"scan_input_directions": [1], "scan_output_directions": [0, 1]},
    {"scan_input_axes": [1], "scan_output_axes": [1, -1]},
    {"scan_input_axes": [-1], "scan_input_directions": [1], "scan_output_axes": [0, 1],
     "scan_output_directions": [1, 0]},
])
def test_scan9_axes_and_directions_match_onnxruntime(attrs):
    axis = attrs.get("scan_input_axes", [0])[0] % 2
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    if axis == 1:
        x = np.ascontiguousarray(x.T)
    node = oh.make_node("Scan", ["s0", "x"], ["s", "y", "z"], body=_scan_body_sum(),
                        num_scan_inputs=1, **attrs)
    model = make_model([node], [tensor("s0", TP.FLOAT, [2]), tensor("x", TP.FLOAT, list(x.shape))],
                       [tensor("s", TP.FLOAT, [2]), tensor("y", TP.FLOAT, [None, None]),
                        tensor("z", TP.FLOAT, [None, None])], 16)
    feeds = [np.array([10.0, 20.0], np.float32), x]
    for e, a in zip(ort_run(model, feeds), run_model(model, feeds)):
        assert_same(e, a, 1e-6, 1e-6)


def test_scan8_sequence_lens_and_reverse_match_onnxruntime():
    # Two scan inputs: the same tensor forward and backward; batch 3 with ragged lengths.
    body = oh.make_graph(
        [oh.make_node("Add", ["s_in", "fw"], ["s_mid"]),
         oh.make_node("Sub", ["s_mid", "bw"], ["s_out"]),
         oh.make_node("Mul", ["fw", "bw"], ["y_t"])],
        "body", [tensor("s_in", TP.FLOAT, [2]), tensor("fw", TP.FLOAT, [2]),
                 tensor("bw", TP.FLOAT, [2])],
        [tensor("s_out", TP.FLOAT, [2]), tensor("y_t", TP.FLOAT, [2])])
    node = oh.make_node("Scan", ["lens", "s0", "x", "x"], ["s", "y"], body=body,
                        num_scan_inputs=2, directions=[0, 1])
    model = make_model([node], [tensor("lens", TP.INT64, [3]), tensor("s0", TP.FLOAT, [3, 2]),
                                tensor("x", TP.FLOAT, [3, 4, 2])],
                       [tensor("s", TP.FLOAT, [3, 2]), tensor("y", TP.FLOAT, [3, 4, 2])], 8)
    model.ir_version = 4
    rng = np.random.default_rng(0)
    feeds = [np.array([4, 2, 1], np.int64), rng.standard_normal((3, 2)).astype(np.float32),
             rng.standard_normal((3, 4, 2)).astype(np.float32)]
    for e, a in zip(ort_run(model, feeds), run_model(model, feeds)):
        assert_same(e, a, 1e-5, 1e-6)


# --- SequenceMap ----------------------------------------------------------------------------

def test_sequence_map_mixes_sequence_and_tensor_inputs():
    body = oh.make_graph(
        [oh.make_node("Add", ["a", "b"], ["c"]), oh.make_node("Shape", ["a"], ["shp"])], "body",
        [tensor("a", TP.FLOAT, None), tensor("b", TP.FLOAT, None)],
        [tensor("c", TP.FLOAT, None), tensor("shp", TP.INT64, [None])])
    seq_t = seq_info("xs", TP.FLOAT, None)
    node = oh.make_node("SequenceMap", ["xs", "t"], ["cs", "shapes"], body=body)
    model = make_model([node], [seq_t, tensor("t", TP.FLOAT, [1])],
                       [seq_info("cs", TP.FLOAT, None),
                        seq_info("shapes", TP.INT64, None)], 17)
    xs = [np.ones((2, 3), np.float32), np.arange(4, dtype=np.float32)]
    feeds = [xs, np.array([0.5], np.float32)]
    from onnx.reference import ReferenceEvaluator
    expected = ReferenceEvaluator(model).run(None, {"xs": xs, "t": feeds[1]})
    got = run_model(model, feeds)
    for e, a in zip(expected, got):
        assert_same(list(e), a, 1e-6, 1e-6)
    assert run_model(model, [[], feeds[1]]) == [[], []]


# --- sequence ops ---------------------------------------------------------------------------

def _single(op, inputs, outputs, opset=17, **attrs):
    return make_model([oh.make_node(op, [i.name for i in inputs], [o.name for o in outputs],
                                    **attrs)], inputs, outputs, opset)


@pytest.mark.parametrize("split,attrs", [
    (None, {"axis": -1, "keepdims": 0}),
    (None, {"axis": 1}),
    (np.array(2, np.int64), {"axis": 1}),               # chunks of 2 with a smaller last one
    (np.array([1, 4], np.int32), {"axis": 1, "keepdims": 0}),  # keepdims ignored with split
])
@pytest.mark.parametrize("width", [5, 0])
def test_split_to_sequence_matches_onnxruntime(split, attrs, width):
    if width == 0 and split is not None and split.ndim:
        split = np.zeros(2, split.dtype)
    x = np.arange(3 * width, dtype=np.float32).reshape(3, width)
    inputs = [tensor("x", TP.FLOAT, [3, width])]
    feeds = [x]
    if split is not None:
        inputs.append(tensor("split", TP.INT64 if split.dtype == np.int64 else TP.INT32,
                             list(split.shape)))
        feeds.append(split)
    model = _single("SplitToSequence", inputs, [seq_info("s", TP.FLOAT, None)],
                    **attrs)
    assert_same(ort_run(model, feeds)[0], run_model(model, feeds)[0], 0, 0)


@pytest.mark.parametrize("axis,new_axis", [(-1, 1), (0, 1), (-1, 0), (1, 0)])
def test_concat_from_sequence_matches_onnxruntime(axis, new_axis):
    xs = [np.full((2, 3), i, np.float32) for i in range(3)]
    model = _single("ConcatFromSequence", [seq_info("xs", TP.FLOAT, None)],
                    [tensor("y", TP.FLOAT, [None] * (2 + new_axis))], axis=axis,
                    new_axis=new_axis)
    assert_same(ort_run(model, [xs])[0], run_model(model, [xs])[0], 0, 0)


def test_sequence_ops_do_not_mutate_their_input():
    from tritort.fallback_cpu.sequence import sequence_erase, sequence_insert
    ctx = NodeContext("SequenceInsert", "", "n", {}, 17, 11, ["s", "t", "p"], ["o"])
    seq = [np.zeros(1), np.ones(1)]
    out = sequence_insert(ctx)(seq, np.full(1, 2.0), np.array(-1, np.int64))[0]
    assert [float(v[0]) for v in out] == [0.0, 2.0, 1.0] and len(seq) == 2
    out = sequence_erase(ctx)(seq, np.array(-2, np.int32))[0]
    assert [float(v[0]) for v in out] == [1.0] and len(seq) == 2
    out = sequence_erase(ctx)(seq)[0]
    assert [float(v[0]) for v in out] == [0.0]
    with pytest.raises(IndexError):
        sequence_insert(ctx)(seq, np.zeros(1), np.array(3, np.int64))


def _sequence_model(elem):
    seq_in = seq_info("xs", elem, None)
    nodes = [oh.make_node("SequenceAt", ["xs", "pos"], ["at"]),
             oh.make_node("SequenceLength", ["xs"], ["n"]),
             oh.make_node("ConcatFromSequence", ["xs"], ["cat"], axis=0)]
    return make_model(nodes, [seq_in, tensor("pos", TP.INT32, [])],
                      [tensor("at", elem, [None]), tensor("n", TP.INT64, []),
                       tensor("cat", elem, [None])], 17)


def test_sequence_at_length_and_float16_concat():
    xs = [np.array([1.5, 2.0], np.float16), np.array([-3.0], np.float16)]
    model = _sequence_model(TP.FLOAT16)
    from onnx.reference import ReferenceEvaluator
    expected = ReferenceEvaluator(model).run(None, {"xs": xs, "pos": np.array(-1, np.int32)})
    got = run_model(model, [xs, np.array(-1, np.int32)])
    for e, a in zip(expected, got):
        assert_same(np.asarray(e), a, 0, 0)
    assert got[2].dtype == np.float16 and got[1].dtype == np.int64 and got[1].ndim == 0


def test_bfloat16_sequences_are_outside_the_sequence_ops_constraints():
    """No sequence op's type constraint lists seq(tensor(bfloat16)): the model is refused
    at session creation, as onnxruntime refuses it."""
    if SESSION is None:
        pytest.skip("needs the session")
    import tritort

    model = _sequence_model(TP.BFLOAT16)
    with pytest.raises(tritort.InvalidGraph, match=r"seq\(tensor\(bfloat16\)\).*SequenceAt"):
        SESSION(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidGraph):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# --- optionals ------------------------------------------------------------------------------

def test_optional_roundtrip_and_empty():
    opt_t = oh.make_optional_type_proto(oh.make_tensor_type_proto(TP.FLOAT, [2]))
    nodes = [oh.make_node("Optional", [], ["empty"], type=oh.make_tensor_type_proto(TP.FLOAT, [2])),
             oh.make_node("OptionalHasElement", ["empty"], ["has_empty"]),
             oh.make_node("Optional", ["x"], ["full"]),
             oh.make_node("OptionalHasElement", ["full"], ["has_full"]),
             oh.make_node("OptionalGetElement", ["full"], ["y"]),
             oh.make_node("OptionalHasElement", [], ["has_none"]),
             oh.make_node("OptionalGetElement", ["x"], ["y2"])]
    model = make_model(nodes, [tensor("x", TP.FLOAT, [2])],
                       [oh.make_value_info("empty", opt_t), tensor("has_empty", TP.BOOL, []),
                        tensor("has_full", TP.BOOL, []), tensor("y", TP.FLOAT, [2]),
                        tensor("has_none", TP.BOOL, []), tensor("y2", TP.FLOAT, [2])], 18)
    x = np.array([1.0, 2.0], np.float32)
    empty, has_empty, has_full, y, has_none, y2 = run_model(model, [x])
    assert empty is None
    assert has_empty.dtype == np.bool_ and has_empty.shape == () and not has_empty
    assert has_full and not has_none
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(y2, x)
