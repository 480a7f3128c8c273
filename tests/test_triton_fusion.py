"""Pointwise prologues and epilogues fused into reduction and Softmax kernels (interpreter
mode), against onnxruntime; the templates' declarations fusion reads; the bytes-saved score;
the partition and acyclicity checks."""
from __future__ import annotations


import ml_dtypes
import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper

import tritort as ort
from tritort.codegen import fusion
from tests import models
from tests.triton_env import requires_triton

pytestmark = requires_triton
TRITON_FIRST = ["TritonExecutionProvider", "CPUExecutionProvider"]
T = "TritonExecutionProvider"


def _axes(values, name="axes"):
    return helper.make_tensor(name, TP.INT64, [len(values)], values)


def _scalar(name, value, elem=TP.FLOAT):
    return helper.make_tensor(name, elem, [], [value])


def _node(op, ins, out, name, **attrs):
    return helper.make_node(op, ins, [out], name=name, **attrs)


def _session(model, dump=None, monkeypatch=None):
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=TRITON_FIRST)
    groups = [(s.ep_name, [n.name for n in s.get_nodes()])
              for s in sess.get_provider_graph_assignment_info()]
    return sess, groups


def _check(model, sess, feeds, tol=1e-5):
    """Compare with onnxruntime; bfloat16 models run there in float32 (it lacks the kernels)."""
    ref_model, ref_feeds = model, feeds
    if any(v.dtype == ml_dtypes.bfloat16 for v in feeds.values()):
        ref_model = type(model)()
        ref_model.CopyFrom(model)
        for vi in list(ref_model.graph.input) + list(ref_model.graph.output):
            if vi.type.tensor_type.elem_type == TP.BFLOAT16:
                vi.type.tensor_type.elem_type = TP.FLOAT
        ref_feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    ref = onnxruntime.InferenceSession(ref_model.SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(None, ref_feeds)
    for got, want in zip(sess.run(None, feeds), ref):
        np.testing.assert_allclose(np.asarray(got).astype(np.float64),
                                   np.asarray(want).astype(np.float64), rtol=tol, atol=tol)


def _randn(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- declarations

REDUCE_OPS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceLogSum", "ReduceSumSquare", "ReduceLogSumExp"}


def test_fusion_takes_what_templates_declare():
    """The planner reads only the templates' declarations: these pin which ops anchor
    fusion, how, and how many passes a prologue is recomputed on."""
    from tritort.codegen.templates import KINDS, TEMPLATES, Template

    assert all(t.kind in KINDS for t in TEMPLATES.values())
    declared = lambda attr: {op for op, t in TEMPLATES.items() if getattr(t, attr)}  # noqa: E731
    assert {op: TEMPLATES[op].passes for op in declared("prologue")} == {
        **{op: 1 for op in REDUCE_OPS}, "ReduceLogSumExp": 2, "Softmax": 2, "LogSoftmax": 2,
        "LayerNormalization": 3, "RMSNormalization": 3, "SimplifiedLayerNormalization": 2}
    row_wise_results = {"Softmax", "LogSoftmax", "LayerNormalization", "RMSNormalization",
                        "SimplifiedLayerNormalization", "com.microsoft.SkipLayerNormalization",
                        "com.microsoft.SkipSimplifiedLayerNormalization"}
    assert declared("epilogue") == REDUCE_OPS | row_wise_results | {
        "MatMul", "Gemm", "Float8MatMul", "Conv", "MatMulInteger", "com.microsoft.MatMulNBits",
        "com.microsoft.QGemm", "QLinearMatMul"}
    assert declared("per_element_epilogue") == row_wise_results
    # attention: RotaryEmbedding nodes on the query and key (tests/test_triton_rotary_fusion.py)
    assert declared("operand_prologues") == {"MatMul", "Gemm", "Conv",
                                             "ScaledDotProductAttention",
                                             "com.microsoft.MultiHeadAttention",
                                             "com.microsoft.GroupQueryAttention"}
    assert {op for op, t in TEMPLATES.items() if t.anchors_fusion()} == \
        declared("prologue") | declared("epilogue") | declared("operand_prologues")
    assert {TEMPLATES[op].kind for op in ("MatMul", "Conv", "Softmax", "MaxPool", "Attention",
                                          "Gather")} == set(KINDS)
    with pytest.raises(TypeError, match="declares kind None"):
        type("Undeclared", (Template,), {})


# --------------------------------------------------------------------------- the score

def test_estimated_bytes_counts_symbolic_dims_as_assumed_size():
    assert fusion.estimated_bytes((2, 3), "float") == 24
    assert fusion.estimated_bytes(("N", 4), "float16") == fusion.ASSUMED_DIM * 4 * 2
    assert fusion.estimated_bytes((), "double") == 8


def test_prologue_score():
    # x*x -> ReduceSum, float32: the square is neither written nor read: 2 tensors saved
    assert fusion.prologue_score(data_bytes=400, input_bytes=400, passes=1) == 800
    # Softmax reads its input twice: the prologue's input is read twice when fused
    assert fusion.prologue_score(data_bytes=400, input_bytes=400, passes=2) == 800
    # a double -> float16 Cast before Softmax: the re-read doubles cost more than is saved
    assert fusion.prologue_score(data_bytes=200, input_bytes=800, passes=2) < 0
    # a broadcast input (a per-column scale) costs almost nothing to re-read
    assert fusion.prologue_score(data_bytes=400, input_bytes=4 + 400, passes=2) > 0


def test_epilogue_score():
    assert fusion.epilogue_score(64, result_stored=False) == 128  # not written, not re-read
    assert fusion.epilogue_score(64, result_stored=True) == 64  # still written


def test_symbolic_broadcast():
    assert fusion.broadcast_shape([("N", 4), (4,)]) == ("N", 4)
    assert fusion.broadcast_shape([("N", 1), (1, "M")]) == ("N", "M")
    assert fusion.broadcast_shape([("N", 4), ("M", 4)]) is None  # N may be 1 at run time
    assert fusion.broadcasts_to((4,), ("N", 4)) and not fusion.broadcasts_to((3,), ("N", 4))


def test_acyclic_check():
    from tritort.graph import Node

    a = Node("a", "Relu", "", ["x"], ["y"], {}, None)
    b = Node("b", "Relu", "", ["y"], ["z"], {}, None)
    c = Node("c", "Add", "", ["z", "x"], ["w"], {}, None)
    fusion.check_acyclic([[a], [b], [c]])
    fusion.check_acyclic([[a, b, c]])
    with pytest.raises(AssertionError, match="cycle"):
        fusion.check_acyclic([[a, c], [b]])  # a -> b -> c: the group {a, c} waits on itself


# ------------------------------------------------------------------------- prologues

@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceLogSumExp", "ReduceL2"])
def test_square_prologue(op):
    nodes = [_node("Mul", ["X", "X"], "sq", "sq"),
             _node(op, ["sq", "axes"], "Y", "red", keepdims=0)]
    model = models.make(nodes, [models.vi("X", shape=["B", 5])], [models.vi("Y", shape=None)],
                        [_axes([1])], opset=18)
    sess, groups = _session(model)
    assert groups == [(T, ["sq", "red"])]
    _check(model, sess, {"X": _randn((3, 5))})


def test_exp_and_cast_prologues():
    nodes = [_node("Exp", ["X"], "e", "exp"),
             _node("ReduceSum", ["e", "axes"], "S", "sum", keepdims=1),
             _node("Cast", ["H"], "h", "cast", to=TP.FLOAT),
             _node("ReduceMean", ["h", "axes"], "M", "mean", keepdims=1)]
    model = models.make(nodes, [models.vi("X", shape=[2, 6]),
                                models.vi("H", TP.FLOAT16, [2, 6])],
                        [models.vi("S", shape=[2, 1]), models.vi("M", shape=[2, 1])],
                        [_axes([1])], opset=18)
    sess, groups = _session(model)
    assert groups == [(T, ["exp", "sum"]), (T, ["cast", "mean"])]
    _check(model, sess, {"X": _randn((2, 6)), "H": _randn((2, 6), np.float16, 1)})


def test_centred_square_prologue_reads_the_mean_with_broadcast_strides():
    """Sub(x, mean) -> Mul -> ReduceMean: the first mean is its own kernel; the variance
    kernel loads it per row while computing the centred square on each tile."""
    nodes = [_node("ReduceMean", ["X", "axes"], "mu", "mean"),
             _node("Sub", ["X", "mu"], "d", "centre"),
             _node("Mul", ["d", "d"], "d2", "square"),
             _node("ReduceMean", ["d2", "axes"], "var", "variance")]
    model = models.make(nodes, [models.vi("X", shape=["B", "S", 8])],
                        [models.vi("var", shape=["B", "S", 1])], [_axes([-1])], opset=18)
    sess, groups = _session(model)
    assert groups == [(T, ["mean"]), (T, ["centre", "square", "variance"])]
    for shape in [(2, 3, 8), (1, 5, 8)]:  # symbolic dims: the same kernels
        _check(model, sess, {"X": _randn(shape, seed=shape[1]) + 3})
    assert len(sess._program.providers[0].kernels) == 2


def test_softmax_prologue_and_ir_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_DUMP_DIR", str(tmp_path))
    nodes = [_node("Mul", ["X", "scale"], "s", "scale_mul"),
             _node("Add", ["s", "mask"], "m", "mask_add"),
             _node("Softmax", ["m"], "P", "softmax", axis=-1)]
    model = models.make(nodes, [models.vi("X", shape=["B", 4, 6]), models.vi("mask", shape=[6])],
                        [models.vi("P", shape=["B", 4, 6])], [_scalar("scale", 0.5)], opset=13)
    sess, groups = _session(model)
    assert groups == [(T, ["scale_mul", "mask_add", "softmax"])]
    _check(model, sess, {"X": _randn((2, 4, 6)), "mask": np.float32([0, 0, -1e9, 0, 0, 0])})
    ir = (tmp_path / "softmax_0.tileir.txt").read_text()
    assert "fused prologue" in ir and "nodes=[scale_mul, mask_add]" in ir
    source = (tmp_path / "softmax_0.py").read_text()
    assert "# fused ONNX nodes: 'scale_mul' (Mul), 'mask_add' (Add)" in source


# ------------------------------------------------------------------------- epilogues

def test_inverse_std_epilogue(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_DUMP_DIR", str(tmp_path))
    nodes = [_node("ReduceMean", ["X", "axes"], "m", "mean"),
             _node("Add", ["m", "eps"], "me", "add_eps"),
             _node("Sqrt", ["me"], "s", "sqrt"),
             _node("Reciprocal", ["s"], "Y", "recip")]
    model = models.make(nodes, [models.vi("X", shape=["B", 7])], [models.vi("Y", shape=["B", 1])],
                        [_axes([1]), _scalar("eps", 1e-5)], opset=18)
    sess, groups = _session(model)
    assert groups == [(T, ["mean", "add_eps", "sqrt", "recip"])]
    _check(model, sess, {"X": np.abs(_randn((4, 7)))})
    ir = (tmp_path / "reducemean_0.tileir.txt").read_text()
    assert "fused epilogue" in ir and "nodes=[add_eps, sqrt, recip]" in ir and \
        "m: not stored" in ir
    source = (tmp_path / "reducemean_0.py").read_text()
    assert "'add_eps' (Add), 'sqrt' (Sqrt), 'recip' (Reciprocal)" in source
    assert "tl.sqrt(" in source


def test_log_epilogue_keeps_a_result_read_elsewhere_and_loads_per_row_inputs():
    """keepdims=0: the bias ([C]) broadcasts to the [B, C] result; the sum itself is also a
    graph output, so it is stored as well."""
    nodes = [_node("ReduceSum", ["X", "axes"], "S", "sum", keepdims=0),
             _node("Log", ["S"], "l", "log"),
             _node("Add", ["l", "bias"], "Y", "bias_add")]
    model = models.make(nodes, [models.vi("X", shape=["B", "C", 5]),
                                models.vi("bias", shape=["C"])],
                        [models.vi("S", shape=["B", "C"]), models.vi("Y", shape=["B", "C"])],
                        [_axes([2])], opset=18)
    sess, groups = _session(model)
    assert groups == [(T, ["sum", "log", "bias_add"])]
    _check(model, sess, {"X": np.abs(_randn((2, 3, 5))) + 0.1, "bias": _randn((3,), seed=2)})


def test_epilogue_over_all_axes_and_empty_inputs():
    """keepdims=0 over every axis: a 0-d result, a 0-d per-row input; empty reduced axes
    give the identity, then the epilogue."""
    nodes = [_node("Exp", ["X"], "e", "exp"),
             _node("ReduceSum", ["e"], "S", "sum", keepdims=0),
             _node("Log", ["S"], "L", "log"),
             _node("Mul", ["L", "k"], "Y", "mul")]
    model = models.make(nodes, [models.vi("X", shape=["A", "B"])], [models.vi("Y", shape=[])],
                        [_scalar("k", 2.0)], opset=18)
    sess, groups = _session(model)
    assert groups == [(T, ["exp", "sum", "log", "mul"])]
    for shape in [(3, 4), (0, 4), (2, 0), (1, 1)]:
        _check(model, sess, {"X": _randn(shape)})


def test_rms_norm_as_primitives_becomes_two_kernels():
    """Pow -> ReduceMean -> Add eps -> Sqrt fuse; Div broadcasts the per-row result against
    the reduced axis, so it stays a kernel of its own."""
    nodes = [_node("Pow", ["X", "two"], "sq", "pow"),
             _node("ReduceMean", ["sq", "axes"], "ms", "mean"),
             _node("Add", ["ms", "eps"], "mse", "add_eps"),
             _node("Sqrt", ["mse"], "rms", "sqrt"),
             _node("Div", ["X", "rms"], "n", "div"),
             _node("Mul", ["n", "gamma"], "Y", "scale")]
    gamma = helper.make_tensor("gamma", TP.FLOAT, [8], _randn((8,), seed=3))
    model = models.make(nodes, [models.vi("X", shape=["B", "S", 8])],
                        [models.vi("Y", shape=["B", "S", 8])],
                        [_axes([-1]), _scalar("eps", 1e-6), _scalar("two", 2.0), gamma], opset=18)
    sess, groups = _session(model)
    assert groups == [(T, ["pow", "mean", "add_eps", "sqrt"]), (T, ["div", "scale"])]
    for shape in [(2, 3, 8), (1, 1, 8)]:
        _check(model, sess, {"X": _randn(shape, seed=4)})


@pytest.mark.parametrize("dtype, elem, tol", [(np.float16, TP.FLOAT16, 3e-3),
                                              (ml_dtypes.bfloat16, TP.BFLOAT16, 2e-2)])
def test_low_precision_prologue_and_epilogue(dtype, elem, tol):
    nodes = [_node("Mul", ["X", "X"], "sq", "sq"),
             _node("ReduceMean", ["sq", "axes"], "m", "mean"),
             _node("Sqrt", ["m"], "Y", "sqrt")]
    model = models.make(nodes, [models.vi("X", elem, ["B", 16])],
                        [models.vi("Y", elem, ["B", 1])], [_axes([1])], opset=18)
    sess, groups = _session(model)
    assert groups == [(T, ["sq", "mean", "sqrt"])]
    _check(model, sess, {"X": _randn((3, 16), dtype)}, tol)


# ------------------------------------------------------------------- what must not fuse

def test_data_read_outside_is_stored_by_its_prologue():
    """Exp's output is read by Div too: the reduction computes it on its one pass and
    stores it (Div broadcasts the sum against the reduced axis: no epilogue)."""
    nodes = [_node("Exp", ["X"], "E", "exp"),
             _node("ReduceSum", ["E", "axes"], "S", "sum"),
             _node("Div", ["E", "S"], "Y", "div")]
    model = models.make(nodes, [models.vi("X", shape=[2, 5])], [models.vi("Y", shape=[2, 5])],
                        [_axes([1])], opset=18)
    sess, groups = _session(model)
    assert groups == [(T, ["exp", "sum"]), (T, ["div"])]
    _check(model, sess, {"X": _randn((2, 5))})


def test_intermediate_read_outside_is_not_a_prologue():
    """Only the data itself may be stored: a value inside the prologue read elsewhere stops
    it there."""
    nodes = [_node("Exp", ["X"], "E", "exp"),
             _node("Neg", ["E"], "n", "neg"),
             _node("ReduceSum", ["n", "axes"], "S", "sum"),
             _node("Div", ["E", "S"], "Y", "div")]
    model = models.make(nodes, [models.vi("X", shape=[2, 5])], [models.vi("Y", shape=[2, 5])],
                        [_axes([1])], opset=18)
    sess, groups = _session(model)
    assert (T, ["neg", "sum"]) in groups and (T, ["exp"]) in groups
    _check(model, sess, {"X": _randn((2, 5))})


def test_unknown_shape_is_not_fused():
    nodes = [_node("Mul", ["X", "X"], "sq", "sq"),
             _node("ReduceSum", ["sq", "axes"], "S", "sum"),
             _node("Neg", ["S"], "Y", "neg")]
    # X's first dim has neither a size nor a name: the square cannot be loaded with known
    # broadcast strides. Shape inference names the dim of the square and the sum (unk__0),
    # so the epilogue, over a symbolically known shape, still fuses.
    model = models.make(nodes, [models.vi("X", shape=[None, 4])],
                        [models.vi("Y", shape=None)], [_axes([1])], opset=18)
    sess, groups = _session(model)
    assert groups == [(T, ["sq"]), (T, ["sum", "neg"])]
    _check(model, sess, {"X": _randn((3, 4))})


def test_negative_score_is_not_fused():
    """double -> float16 before Softmax: re-reading the doubles on both passes costs more
    than writing and reading the halves."""
    nodes = [_node("Cast", ["X"], "h", "cast", to=TP.FLOAT16),
             _node("Softmax", ["h"], "Y", "softmax", axis=-1)]
    model = models.make(nodes, [models.vi("X", TP.DOUBLE, ["B", 8])],
                        [models.vi("Y", TP.FLOAT16, ["B", 8])], opset=13)
    sess, groups = _session(model)
    assert groups == [(T, ["cast"]), (T, ["softmax"])]
    _check(model, sess, {"X": _randn((3, 8), np.float64)}, 2e-3)


def test_epilogue_input_made_from_the_result_elsewhere_is_not_fused():
    """An input computed from the reduction on the CPU (TopK) cannot join its epilogue: the
    kernel would wait on itself."""
    nodes = [_node("ReduceSum", ["X", "axes"], "S", "sum"),
             helper.make_node("TopK", ["S", "k"], ["top", "idx"], name="topk", axis=0),
             _node("Add", ["S", "top"], "Y", "add")]
    model = models.make(nodes, [models.vi("X", shape=[1, 5])], [models.vi("Y", shape=[1, 1])],
                        [_axes([1]), helper.make_tensor("k", TP.INT64, [1], [1])], opset=18)
    sess, groups = _session(model)
    assert groups == [(T, ["sum"]), ("CPUExecutionProvider", ["topk"]), (T, ["add"])]
    _check(model, sess, {"X": _randn((1, 5))})


def test_epilogue_input_produced_after_the_reduction_is_not_fused():
    nodes = [_node("ReduceSum", ["X", "axes"], "S", "sum"),
             _node("Neg", ["S"], "n", "neg"),
             _node("Add", ["S", "n2"], "Y", "add"),
             _node("Abs", ["X"], "a", "abs_x")]
    # n2 comes from a node placed after the sum in topological order
    nodes.insert(2, _node("ReduceMax", ["X", "axes"], "n2", "max"))
    model = models.make(nodes, [models.vi("X", shape=[2, 5])],
                        [models.vi("Y", shape=[2, 1]), models.vi("n", shape=[2, 1]),
                         models.vi("a", shape=[2, 5])], [_axes([1])], opset=18)
    sess, groups = _session(model)
    assert (T, ["sum", "neg"]) in groups and (T, ["max", "add"]) in groups
    _check(model, sess, {"X": _randn((2, 5))})
