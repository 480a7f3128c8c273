"""Invalid models are refused at session creation with ORT's classes and messages that name
the node, attribute or initializer and show expected against actual; shapes known only at
run time are checked then; valid models that onnx's strict inference gets wrong still load.
Last, a property test of run()'s inputs against the session's declared inputs."""
from __future__ import annotations

import time

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort as ort
from tests import models

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    HAVE_HYPOTHESIS = True
except ImportError:  # the dev extra installs it; the other tests run without it
    HAVE_HYPOTHESIS = False

CPU = ["CPUExecutionProvider"]
ORT_CLASSES = onnxruntime.capi.onnxruntime_pybind11_state


def vi(name, elem=TP.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def one_node(op, inputs, outputs, ins, outs, inits=(), opset=21, **attrs):
    return models.make([helper.make_node(op, inputs, outputs, **attrs)], ins, outs, inits,
                       opset=opset)


def ort_refuses(model, cls_name):
    """onnxruntime refuses ``model`` at creation with the class of that name."""
    with pytest.raises(getattr(ORT_CLASSES, cls_name)):
        onnxruntime.InferenceSession(model.SerializeToString(), providers=CPU)


def raw_initializer(name, dims, nbytes):
    t = numpy_helper.from_array(np.zeros(dims, np.float32), name)
    t.raw_data = b"\0" * nbytes
    return t


def short_float_data(name, n):
    """A float initializer of ``n`` elements holding one value too few (onnx.helper refuses
    to build it, so one is dropped afterwards)."""
    t = helper.make_tensor(name, TP.FLOAT, [n], [1.0] * n)
    t.float_data.pop()
    return t


def without_opsets(model):
    del model.opset_import[:]
    return model


# (id, model, tritort class, message pattern, onnxruntime class): the same class as ORT's
INVALID = [
    ("type outside the constraints",
     one_node("Not", ["X"], ["Y"], [vi("X", TP.INT8, [2])], [vi("Y", TP.BOOL, [2])]),
     ort.InvalidGraph,
     r"Type 'tensor\(int8\)' of input parameter \(X\) of operator \(Not\) in node \(Not_0\)"
     r".*accepts tensor\(bool\)", "InvalidGraph"),
    ("type parameter bound to two types",
     one_node("Less", ["A", "B"], ["Y"], [vi("A", TP.INT8, [2]), vi("B", TP.INT16, [2])],
              [vi("Y", TP.BOOL, [2])]),
     ort.Fail, r"Type parameter \(T\) of Optype \(Less\) bound to different types "
               r"\(tensor\(int8\) and tensor\(int16\)\) in node \(Less_0\).*input 'B'", "Fail"),
    ("declared output type contradicts the op",
     one_node("Relu", ["X"], ["Y"], [vi("X", shape=[2])], [vi("Y", TP.INT64, [2])]),
     ort.Fail, r"Type \(tensor\(int64\)\) of output arg \(Y\) of node \(Relu_0\) does not match "
               r"expected type \(tensor\(float\)\)", "Fail"),
    ("shape inference error",
     one_node("Add", ["A", "B"], ["Y"], [vi("A", shape=[2]), vi("B", shape=[3])],
              [vi("Y")]),
     ort.Fail, r"Node \(Add_0\) Op \(Add\) \[ShapeInferenceError\] Incompatible dimensions",
     "Fail"),
    ("attribute out of range for the input's rank",
     one_node("Softmax", ["X"], ["Y"], [vi("X", shape=[2])], [vi("Y", shape=[2])], axis=5),
     ort.Fail, r"Node \(Softmax_0\) Op \(Softmax\) .*'axis' must be in \[-1 , 0\]. Its actual "
               r"value is: 5", "Fail"),
    ("a shape computed from Shape contradicts Expand's input",
     models.make([helper.make_node("Shape", ["B"], ["s"]),
                  helper.make_node("Expand", ["A", "s"], ["Y"])],
                 [vi("A", shape=[3]), vi("B", shape=[4])], [vi("Y")]),
     ort.Fail, r"Node \(Expand_1\) Op \(Expand\) \[ShapeInferenceError\]", "Fail"),
    ("required attribute missing",
     one_node("MaxPool", ["X"], ["Y"], [vi("X", shape=[1, 1, 4, 4])], [vi("Y")]),
     ort.InvalidGraph, r"In Node 'MaxPool_0' \(MaxPool\): Required attribute 'kernel_shape'",
     "InvalidGraph"),
    ("attribute of the wrong type",
     one_node("Softmax", ["X"], ["Y"], [vi("X", shape=[2])], [vi("Y", shape=[2])], axis=1.5),
     ort.InvalidGraph, r"In Node 'Softmax_0' \(Softmax\).*axis'. Expected: 'INT', actual: "
                       r"'FLOAT'", "InvalidGraph"),
    ("attribute value no kernel implements",
     one_node("BitShift", ["A", "B"], ["Y"], [vi("A", TP.UINT8, [2]), vi("B", TP.UINT8, [2])],
              [vi("Y", TP.UINT8, [2])], direction="UP"),
     ort.Fail, r"BitShift node 'BitShift_0': attribute 'direction' is 'UP'; expected one of "
               r"'LEFT', 'RIGHT'", "Fail"),
    ("LpNormalization p outside 1 and 2",
     one_node("LpNormalization", ["X"], ["Y"], [vi("X", shape=[2, 2])], [vi("Y", shape=[2, 2])],
              p=3),
     ort.Fail, r"attribute 'p' is 3; expected one of 1, 2", "Fail"),
    ("initializer with too few values",
     one_node("Add", ["X", "W"], ["Y"], [vi("X", shape=[4])], [vi("Y")],
              [short_float_data("W", 4)]),
     ort.Fail, r"Initializer 'W': dims \[4\] \(float\) need 4 values in float_data, the "
               r"initializer has 3", "Fail"),
    ("small initializer with short raw data",
     one_node("Add", ["X", "W"], ["Y"], [vi("X", shape=[4])], [vi("Y")],
              [raw_initializer("W", [4], 8)]),
     ort.Fail, r"Initializer 'W': dims \[4\] \(float\) need 16 bytes of raw_data, the "
               r"initializer has 8", "Fail"),
    ("weight (over 1024 elements) with short raw data",
     one_node("Add", ["X", "W"], ["Y"], [vi("X", shape=[2000])], [vi("Y")],
              [raw_initializer("W", [2000], 8)]),
     ort.Fail, r"Initializer 'W': dims \[2000\] \(float\) need 8000 bytes of raw_data, the "
               r"initializer has 8", "Fail"),
    ("no opset imported", without_opsets(
        one_node("LayerNormalization", ["X", "S"], ["Y"], [vi("X", shape=[2, 3]),
                                                           vi("S", shape=[3])],
                 [vi("Y", shape=[2, 3])], opset=17)),
     ort.Fail, r"Missing opset in the model", "Fail"),
    ("a cycle",
     models.make([helper.make_node("Relu", ["b"], ["a"], name="r1"),
                  helper.make_node("Relu", ["a"], ["b"], name="r2"),
                  helper.make_node("Relu", ["X"], ["Y"], name="r3")],
                 [vi("X", shape=[2])], [vi("Y", shape=[2])]),
     ort.Fail, r"not acyclic: Relu 'r1', Relu 'r2'", "Fail"),
]


@pytest.mark.parametrize("model,cls,pattern,ort_cls",
                         [pytest.param(*case[1:], id=case[0]) for case in INVALID])
def test_invalid_model_refused_like_onnxruntime(model, cls, pattern, ort_cls):
    with pytest.raises(cls, match=pattern) as info:
        ort.InferenceSession(model.SerializeToString(), providers=CPU)
    assert type(info.value) is cls  # the class itself, not a subclass
    ort_refuses(model, ort_cls)


def test_a_node_in_a_domain_the_model_does_not_import_is_refused():
    """(onnxruntime assumes an opset for the default domain; tritort refuses, as the
    checker does.)"""
    m = one_node("LayerNormalization", ["X", "S"], ["Y"], [vi("X", shape=[2, 3]),
                                                           vi("S", shape=[3])],
                 [vi("Y", shape=[2, 3])])
    m.opset_import[0].domain = "ai.onnx.ml"
    m.opset_import[0].version = 3
    with pytest.raises(ort.InvalidGraph, match=r"In Node 'LayerNormalization_0' "
                                               r"\(LayerNormalization\): No opset import for "
                                               r"domain 'ai.onnx'"):
        ort.InferenceSession(m.SerializeToString(), providers=CPU)


@pytest.mark.parametrize("inputs,pattern", [
    (["A", ""], r"In Node 'Max_0' \(Max\): input 1 \('data_0'\) is empty.*variadic"),
    (["", "A"], r"In Node 'Max_0' \(Max\): input 0 \('data_0'\) is empty"),
], ids=["variadic", "first"])
@pytest.mark.parametrize("providers", [CPU, ["TritonExecutionProvider", "CPUExecutionProvider"]],
                         ids=["cpu", "triton"])
def test_an_empty_input_name_where_the_op_requires_one_is_refused(inputs, pattern, providers):
    """Found by the fuzzer: Max(x, "") ran on the CPU, crashed the Triton provider's code
    generator, and crashes onnxruntime (SIGSEGV; not run here)."""
    m = one_node("Max", inputs, ["Y"], [vi("A", TP.INT32, [3])], [vi("Y", TP.INT32, [3])])
    with pytest.raises(ort.InvalidGraph, match=pattern):
        ort.InferenceSession(m.SerializeToString(), providers=providers)


@pytest.mark.parametrize("num_outputs", [2, 3, 5])
def test_split_num_outputs_other_than_its_outputs_is_refused_before_inference(num_outputs):
    """onnx's Split inference aborts the process (a C++ assertion) when num_outputs is below
    the node's output count; the fuzzer found it. Such a node never reaches it."""
    m = one_node("Split", ["X"], ["a", "b", "c", "d"], [vi("X", shape=[2, 8])],
                 [vi(o) for o in "abcd"], opset=18, axis=1, num_outputs=num_outputs)
    with pytest.raises(ort.Fail, match=rf"Node \(Split_0\) Op \(Split\).*num_outputs is "
                                       rf"{num_outputs}, but the node has 4 outputs"):
        ort.InferenceSession(m.SerializeToString(), providers=CPU)


def test_a_kernel_attribute_table_entry_names_real_attributes():
    """Every attribute the choice table checks exists in its op's schema."""
    import onnx

    from tritort.validate import ATTRIBUTE_CHOICES

    for (domain, op), attrs in ATTRIBUTE_CHOICES.items():
        schema = onnx.defs.get_schema(op, 30, domain)
        assert set(attrs) <= set(schema.attributes), (op, set(attrs) - set(schema.attributes))


# ------------------------------------------------------------- valid models strict mode gets wrong


def _same_as_onnxruntime(model, feeds):
    got = ort.InferenceSession(model.SerializeToString(), providers=CPU).run(None, feeds)
    want = onnxruntime.InferenceSession(model.SerializeToString(), providers=CPU).run(None,
                                                                                       feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_declared_output_shape_contradicting_inference_loads_as_in_onnxruntime():
    """Strict inference refuses a declared shape that differs from the inferred one; ORT
    warns and merges leniently, so tritort drops the declared shapes and validates again."""
    m = one_node("Relu", ["X"], ["Y"], [vi("X", shape=[2])], [vi("Y", shape=[3])])
    _same_as_onnxruntime(m, {"X": np.array([-1, 1], np.float32)})


@pytest.mark.skipif("TRITON_INTERPRET" not in __import__("os").environ,
                    reason="Triton runs in its interpreter here")
def test_declared_shapes_contradicting_inference_do_not_reach_triton_kernels():
    """The runtime types the graph from inference then (kernels specialize on rank): the
    Triton-first session runs it as onnxruntime does. get_outputs() reports the inferred
    shape, where onnxruntime repeats the declared one."""
    m = models.make([helper.make_node("Abs", ["X"], ["T"]), helper.make_node("Neg", ["T"],
                                                                             ["Y"])],
                    [vi("X", shape=[3, 4])], [vi("Y", shape=[1])])
    m.graph.value_info.append(vi("T", shape=[7]))
    x = -np.arange(12, dtype=np.float32).reshape(3, 4)
    sess = ort.InferenceSession(m.SerializeToString(),
                                providers=["TritonExecutionProvider", "CPUExecutionProvider"])
    assert set(sess.placement().values()) == {"TritonExecutionProvider"}
    np.testing.assert_array_equal(sess.run(None, {"X": x})[0], -np.abs(x))
    assert sess.get_outputs()[0].shape == [3, 4]


def test_function_op_with_default_attribute_loads():
    """MeanVarianceNormalization without ``axes``: onnx's strict inference of its function
    body does not apply the default (test_mvn); the validation spells it out."""
    m = one_node("MeanVarianceNormalization", ["X"], ["Y"], [vi("X", shape=[2, 3, 2, 2])],
                 [vi("Y", shape=[2, 3, 2, 2])], opset=13)
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    _same_as_onnxruntime(m, {"X": x})


def test_nodes_out_of_order_are_sorted_as_in_onnxruntime():
    m = models.make([helper.make_node("Relu", ["a"], ["Y"], name="second"),
                     helper.make_node("Neg", ["X"], ["a"], name="first")],
                    [vi("X", shape=[2])], [vi("Y", shape=[2])])
    _same_as_onnxruntime(m, {"X": np.array([-1, 1], np.float32)})


def test_a_body_out_of_order_is_refused_as_in_onnxruntime():
    body = helper.make_graph(
        [helper.make_node("Add", ["t", "x_in"], ["x_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Neg", ["x_in"], ["t"])], "body",
        [vi("i", TP.INT64, []), vi("cond_in", TP.BOOL, []), vi("x_in", shape=[1])],
        [vi("cond_out", TP.BOOL, []), vi("x_out", shape=[1])])
    m = models.make([helper.make_node("Loop", ["M", "", "x"], ["y"], body=body)],
                    [vi("M", TP.INT64, []), vi("x", shape=[1])], [vi("y", shape=[1])])
    with pytest.raises(ort.InvalidGraph, match="topologically sorted.*'t'"):
        ort.InferenceSession(m.SerializeToString(), providers=CPU)
    ort_refuses(m, "InvalidGraph")


def sparse_add(values, indices, dims):
    sp = helper.make_sparse_tensor(numpy_helper.from_array(np.array(values, np.float32), "W"),
                                   numpy_helper.from_array(np.array(indices, np.int64), "i"),
                                   dims)
    m = one_node("Add", ["X", "W"], ["Y"], [vi("X", shape=dims)], [vi("Y")])
    m.graph.sparse_initializer.append(sp)
    return m


@pytest.mark.parametrize("values,indices,dims", [([5.0, 7.0], [1, 3], [4]),
                                                 ([5.0, 7.0], [[0, 1], [1, 0]], [2, 2])],
                         ids=["linear-indices", "coordinates"])
def test_sparse_initializers_are_densified_as_in_onnxruntime(values, indices, dims):
    _same_as_onnxruntime(sparse_add(values, indices, dims), {"X": np.ones(dims, np.float32)})


def test_sparse_initializer_indices_outside_its_dims_are_refused():
    with pytest.raises(ort.Fail, match=r"Sparse initializer 'W'.*dims \[4\]"):
        ort.InferenceSession(sparse_add([5.0], [9], [4]).SerializeToString(), providers=CPU)


def test_unnamed_nodes_are_named_as_the_runtime_names_them():
    m = one_node("Relu", ["X"], ["Y"], [vi("X", shape=[2])], [vi("Y", shape=[2])])
    sess = ort.InferenceSession(m.SerializeToString(), providers=CPU)
    assert list(sess.placement()) == ["Relu_0"]


@pytest.mark.parametrize("keepdims", [0, 1, 2, -1])
def test_reduction_flags_read_as_onnx_inference_reads_them(keepdims):
    """keepdims is on only when 1 (onnx's inference and onnxruntime): outputs agree with
    the inferred type whatever the value."""
    m = one_node("ReduceSum", ["X", "axes"], ["Y"], [vi("X", shape=[3, 4])], [vi("Y")],
                 [numpy_helper.from_array(np.array([1], np.int64), "axes")], keepdims=keepdims)
    _same_as_onnxruntime(m, {"X": np.ones((3, 4), np.float32)})


# ------------------------------------------------------------------------ run-time checks


def pool(op, kernel, outputs=("Y",), **attrs):
    outs = [vi(o, TP.INT64 if o == "I" else TP.FLOAT) for o in outputs]
    return one_node(op, ["X"], list(outputs), [vi("X", shape=["N", "C", "H", "W"])], outs,
                    kernel_shape=kernel, **attrs)


X44 = np.ones((1, 1, 4, 4), np.float32)


@pytest.mark.parametrize("op,outputs", [("MaxPool", ("Y",)), ("MaxPool", ("Y", "I")),
                                        ("AveragePool", ("Y",)), ("LpPool", ("Y",))])
def test_pool_window_larger_than_the_padded_input_is_invalid_argument(op, outputs):
    sess = ort.InferenceSession(pool(op, [10**9, 10**9], outputs).SerializeToString(),
                                providers=CPU)
    t0 = time.monotonic()
    with pytest.raises(ort.InvalidArgument, match=r"window does not fit the padded input.*"
                                                  r"kernel 1000000000.*input has 4 plus pads 0"):
        sess.run(None, {"X": X44})
    assert time.monotonic() - t0 < 1.0  # no tap is ever built
    with pytest.raises(ort.InvalidArgument):  # the session stays usable and says it again
        sess.run(None, {"X": X44})


@pytest.mark.parametrize("op,outputs", [("MaxPool", ("Y", "I")), ("AveragePool", ("Y",)),
                                        ("LpPool", ("Y",))])
def test_pool_output_without_positions_is_empty_as_in_onnxruntime(op, outputs):
    m = pool(op, [5, 5], outputs)
    got = ort.InferenceSession(m.SerializeToString(), providers=CPU).run(None, {"X": X44})
    assert [g.shape for g in got] == [(1, 1, 0, 0)] * len(outputs)
    want = onnxruntime.InferenceSession(m.SerializeToString(), providers=CPU).run(None,
                                                                                  {"X": X44})
    assert [w.shape for w in want] == [g.shape for g in got]


def test_pool_input_of_the_wrong_rank_is_invalid_argument():
    sess = ort.InferenceSession(
        one_node("MaxPool", ["X"], ["Y"], [vi("X")], [vi("Y")], kernel_shape=[2, 2])
        .SerializeToString(), providers=CPU)
    with pytest.raises(ort.InvalidArgument, match=r"shape \[16\] \(rank 1\); kernel_shape "
                                                  r"\[2, 2\] needs rank 4"):
        sess.run(None, {"X": np.ones(16, np.float32)})


@pytest.mark.parametrize("w_shape,attrs,cls,pattern", [
    ((1, 1, 6, 6), {}, "InvalidArgument",
     r"window does not fit the padded input on spatial axis 0: kernel 6"),
    ((1, 1, 3, 3), {"dilations": [10**9, 1]}, "InvalidArgument",
     r"kernel 3 with dilation 1000000000"),
    ((1, 2, 3, 3), {}, "Fail", r"the input has 1 channels, the weights \[1, 2, 3, 3\]"),
], ids=["kernel", "dilation", "channels"])
def test_conv_input_that_does_not_fit_the_weights(w_shape, attrs, cls, pattern):
    """Refused before anything is allocated, with onnxruntime's class."""
    m = one_node("Conv", ["X", "W"], ["Y"], [vi("X", shape=["N", "C", "H", "W"]),
                                             vi("W", shape=["M", "K", "h", "w"])], [vi("Y")],
                 **attrs)
    feeds = {"X": X44, "W": np.ones(w_shape, np.float32)}
    with pytest.raises(getattr(ort, cls), match=pattern) as info:
        ort.InferenceSession(m.SerializeToString(), providers=CPU).run(None, feeds)
    assert type(info.value) is getattr(ort, cls)
    with pytest.raises(getattr(ORT_CLASSES, cls)):
        onnxruntime.InferenceSession(m.SerializeToString(), providers=CPU).run(None, feeds)


def test_a_kernel_out_of_memory_is_fail_naming_the_node_and_the_session_runs_on():
    m = one_node("ConstantOfShape", ["S"], ["Y"], [vi("S", TP.INT64, [2])], [vi("Y")])
    sess = ort.InferenceSession(m.SerializeToString(), providers=CPU)
    with pytest.raises(ort.Fail, match=r"ConstantOfShape node.*MemoryError"):
        sess.run(None, {"S": np.array([2**40, 2**20])})
    assert sess.run(None, {"S": np.array([2, 3])})[0].shape == (2, 3)


def test_an_axis_outside_the_rank_is_an_error_not_wrapped_around():
    """LayerNormalization's axis 3 on a rank-3 input normalized over every axis (3 % 3 = 0);
    onnxruntime refuses it (at load: its own inference), tritort when the rank is known."""
    m = one_node("LayerNormalization", ["X", "S"], ["Y"], [vi("X", shape=["a", "b", "c"]),
                                                           vi("S", shape=["c"])], [vi("Y")],
                 axis=3)
    feeds = {"X": np.ones((1, 2, 3), np.float32), "S": np.ones(3, np.float32)}
    with pytest.raises(ort.Fail, match=r"LayerNormalization.*axis 3 out of range for rank 3"):
        ort.InferenceSession(m.SerializeToString(), providers=CPU).run(None, feeds)


def test_slice_parameters_of_different_lengths_are_invalid_argument():
    m = one_node("Slice", ["X", "s", "e"], ["Y"], [vi("X", shape=[4, 4]),
                                                   vi("s", TP.INT64, ["k"]),
                                                   vi("e", TP.INT64, ["j"])], [vi("Y")])
    sess = ort.InferenceSession(m.SerializeToString(), providers=CPU)
    with pytest.raises(ort.InvalidArgument, match=r"starts \[0, 0\], ends \[2\].*same length"):
        sess.run(None, {"X": np.ones((4, 4), np.float32), "s": np.array([0, 0]),
                        "e": np.array([2])})


def test_gather_index_out_of_range_is_invalid_argument_as_in_onnxruntime():
    m = one_node("Gather", ["X", "I"], ["Y"], [vi("X", shape=[2, 3]), vi("I", TP.INT64, [1])],
                 [vi("Y")])
    feeds = {"X": np.ones((2, 3), np.float32), "I": np.array([5])}
    with pytest.raises(ort.InvalidArgument, match=r"idx=5 must be within the inclusive range "
                                                  r"\[-2,1\]"):
        ort.InferenceSession(m.SerializeToString(), providers=CPU).run(None, feeds)
    with pytest.raises(ORT_CLASSES.InvalidArgument):
        onnxruntime.InferenceSession(m.SerializeToString(), providers=CPU).run(None, feeds)


def tree_regressor(true_ids, opset_ml=3):
    node = helper.make_node(
        "TreeEnsembleRegressor", ["X"], ["Y"], domain="ai.onnx.ml", nodes_treeids=[0, 0, 0],
        nodes_nodeids=[0, 1, 2], nodes_modes=["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"],
        nodes_featureids=[0, 0, 0], nodes_values=[0.5, 0.5, 0.0], nodes_truenodeids=true_ids,
        nodes_falsenodeids=[2, 2, 0], target_treeids=[0], target_nodeids=[2], target_ids=[0],
        target_weights=[1.0], n_targets=1)
    m = models.make([node], [vi("X", shape=[2, 1])], [vi("Y", shape=[2, 1])], opset=17)
    m.opset_import.append(helper.make_opsetid("ai.onnx.ml", opset_ml))
    return m


def tree_ensemble_v5(true_id, true_leaf):
    node = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml", nodes_featureids=[0, 0],
        nodes_splits=numpy_helper.from_array(np.array([0.5, 0.2], np.float32)),
        nodes_modes=numpy_helper.from_array(np.array([0, 0], np.uint8)),
        nodes_truenodeids=[1, true_id], nodes_trueleafs=[0, true_leaf],
        nodes_falsenodeids=[0, 1], nodes_falseleafs=[1, 1], leaf_targetids=[0, 0],
        leaf_weights=numpy_helper.from_array(np.array([1.0, 2.0], np.float32)),
        tree_roots=[0], n_targets=1)
    m = models.make([node], [vi("X", shape=[2, 1])], [vi("Y", shape=[2, 1])], opset=21)
    m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 5))
    return m


@pytest.mark.parametrize("model,pattern", [
    (tree_regressor([1, 0, 0]), r"TreeEnsembleRegressor node.*cycle through node 0"),
    (tree_regressor([1, 7, 0]), r"links to node id 7, which tree 0 does not have"),
    (tree_ensemble_v5(0, 0), r"TreeEnsemble node.*cycle through node 0"),
    (tree_ensemble_v5(9, 1), r"links to leaf 9, outside the 2 leaves"),
], ids=["regressor-cycle", "regressor-missing-node", "v5-cycle", "v5-missing-leaf"])
def test_tree_links_that_loop_or_dangle_are_refused_at_creation(model, pattern):
    """A tree whose links come back to a node would be walked for ever."""
    with pytest.raises(ort.Fail, match=pattern):
        ort.InferenceSession(model.SerializeToString(), providers=CPU)


def test_valid_trees_still_run():
    x = np.array([[0.1], [0.9]], np.float32)
    got = ort.InferenceSession(tree_regressor([1, 2, 0]).SerializeToString(),
                               providers=CPU).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, [[1.0], [1.0]])
    got = ort.InferenceSession(tree_ensemble_v5(1, 1).SerializeToString(),
                               providers=CPU).run(None, {"X": x})[0]
    assert got.shape == (2, 1)


def test_an_absurd_lrn_size_costs_nothing_beyond_the_data():
    """LRN's window slots beyond the channels add zeros: a size of 10**9 is not a loop of
    10**9 numpy calls."""
    lrn = one_node("LRN", ["X"], ["Y"], [vi("X", shape=[1, 4, 2, 2])], [vi("Y")], opset=13,
                   size=10**9 + 1)
    x = np.random.default_rng(0).standard_normal((1, 4, 2, 2)).astype(np.float32)
    t0 = time.monotonic()
    got = ort.InferenceSession(lrn.SerializeToString(), providers=CPU).run(None, {"X": x})[0]
    assert time.monotonic() - t0 < 5
    window = (x * x).sum(axis=1, keepdims=True)  # every channel is in every window
    np.testing.assert_allclose(got, x / (1 + 1e-4 / (10**9 + 1) * window) ** 0.75, rtol=1e-5)


# -------------------------------------------------------------- run() inputs, as a property

def io_model():
    """Y = X * 2 (float [2, N]), Z2 = Z + 1 (int64 [M]), W2 = Not(W) (bool, unknown rank)."""
    two = numpy_helper.from_array(np.array(2, np.float32), "two")
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    return models.make(
        [helper.make_node("Mul", ["X", "two"], ["Y"]), helper.make_node("Add", ["Z", "one"],
                                                                        ["Z2"]),
         helper.make_node("Not", ["W"], ["W2"])],
        [vi("X", TP.FLOAT, [2, "N"]), vi("Z", TP.INT64, ["M"]), vi("W", TP.BOOL)],
        [vi("Y", TP.FLOAT, [2, "N"]), vi("Z2", TP.INT64, ["M"]), vi("W2", TP.BOOL)],
        [two, one])


REFERENCE = {"X": lambda x: x * np.float32(2), "Z": lambda z: z + 1, "W": np.logical_not}
DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_]
_SESSIONS: dict = {}


def session(providers):
    key = tuple(providers)
    if key not in _SESSIONS:
        _SESSIONS[key] = ort.InferenceSession(io_model().SerializeToString(),
                                              providers=providers)
    return _SESSIONS[key]


def _acceptable(arg, value) -> bool:
    """Does ``value`` fit the declared input ``arg`` (NodeArg: type text, shape)?"""
    want = {"tensor(float)": np.float32, "tensor(int64)": np.int64,
            "tensor(bool)": np.bool_}[arg.type]
    if value.dtype != np.dtype(want):
        return False
    if not arg.shape and arg.name == "W":  # unknown rank
        return True
    if value.ndim != len(arg.shape):
        return False
    return all(not isinstance(d, int) or d == s for d, s in zip(arg.shape, value.shape))


def check_feeds(providers, values):
    sess = session(providers)
    args = {a.name: a for a in sess.get_inputs()}
    feeds = dict(zip(["X", "Z", "W"], values))
    valid = all(_acceptable(args[k], v) for k, v in feeds.items())
    snapshot = {k: v.copy() for k, v in feeds.items()}
    if valid:
        outs = sess.run(None, feeds)
        for (name, value), out in zip(feeds.items(), outs):
            np.testing.assert_array_equal(out, REFERENCE[name](value))
            assert out.shape == value.shape and out.flags.writeable
    else:
        with pytest.raises(ort.InvalidArgument) as info:
            sess.run(None, feeds)
        assert type(info.value) is ort.InvalidArgument
        bad = [k for k, v in feeds.items() if not _acceptable(args[k], v)]
        assert any(f"'{k}'" in str(info.value) or f": {k} " in str(info.value) for k in bad), \
            str(info.value)
    for k, v in feeds.items():  # inputs are never written
        np.testing.assert_array_equal(v, snapshot[k])
    good = sess.run(None, {"X": np.ones((2, 3), np.float32), "Z": np.arange(3),
                           "W": np.array([True])})  # usable after anything
    np.testing.assert_array_equal(good[1], [1, 2, 3])


if HAVE_HYPOTHESIS:
    @st.composite
    def array(draw):
        """An array of some dtype, rank and layout: contiguous, Fortran, transposed, strided,
        reversed, 0-size; floats may hold NaN and infinities."""
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
        layout = draw(st.sampled_from(["c", "f", "transposed", "strided", "reversed"]))
        full = list(shape)
        if layout == "strided" and full:
            full[-1] *= 2
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        base = (rng.standard_normal(full) * 10).astype(dtype) if dtype.kind != "b" \
            else rng.random(full) < 0.5
        if dtype.kind == "f" and base.size and draw(st.booleans()):
            base.reshape(-1)[rng.integers(0, base.size)] = draw(st.sampled_from(
                [np.nan, np.inf, -np.inf]))
        if layout == "f":
            return np.asfortranarray(base)
        if layout == "transposed":
            return np.ascontiguousarray(base.T).T if base.ndim > 1 else base
        if layout == "strided" and base.ndim:
            return base[..., ::2]
        if layout == "reversed" and base.ndim:
            return base[::-1]
        return base

    def _near_valid(draw_array):
        """Mostly arrays that fit, so both branches of the property get exercised."""
        return st.one_of(
            draw_array,
            st.builds(lambda n, s: np.random.default_rng(s).standard_normal((2, n))
                      .astype(np.float32), st.integers(0, 4), st.integers(0, 99)),
            st.builds(lambda n: np.arange(n, dtype=np.int64)[::-1], st.integers(0, 5)))

    FEEDS = st.tuples(_near_valid(array()), _near_valid(array()), _near_valid(array()))

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(FEEDS)
    def test_run_inputs_against_declared_inputs_cpu(values):
        check_feeds(CPU, values)

    @pytest.mark.skipif("TRITON_INTERPRET" not in __import__("os").environ,
                        reason="Triton runs in its interpreter here")
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(FEEDS)
    def test_run_inputs_against_declared_inputs_triton_first(values):
        check_feeds(["TritonExecutionProvider", "CPUExecutionProvider"], values)
else:
    @pytest.mark.skip(reason="needs hypothesis (the dev extra installs it)")
    def test_run_inputs_against_declared_inputs_cpu():
        pass
