"""Reductions, the Softmax family and normalizations on the Triton provider (interpreter mode),
against onnxruntime."""
from __future__ import annotations


import ml_dtypes
import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort as ort
from tests import models
from tests.triton_env import requires_triton

pytestmark = requires_triton

TRITON_FIRST = ["TritonExecutionProvider", "CPUExecutionProvider"]
ELEM = {np.dtype(np.float32): TP.FLOAT, np.dtype(np.float16): TP.FLOAT16,
        np.dtype(np.float64): TP.DOUBLE, np.dtype(ml_dtypes.bfloat16): TP.BFLOAT16,
        np.dtype(np.int32): TP.INT32, np.dtype(np.int64): TP.INT64,
        np.dtype(np.int8): TP.INT8, np.dtype(np.uint8): TP.UINT8, np.dtype(np.bool_): TP.BOOL}
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 2e-3, np.dtype(np.float64): 1e-12,
       np.dtype(ml_dtypes.bfloat16): 2e-2}
REDUCE = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


def _sym(prefix, rank):
    return [f"{prefix}{i}" for i in range(rank)]  # symbolic dims: one kernel, any size


def _model(node, feeds, opset=21, inits=(), out_elems=None):
    """One-node model; feeds' dtypes and ranks give the inputs, outputs are left to inference."""
    inputs = [models.vi(k, ELEM[v.dtype], _sym(k, v.ndim)) for k, v in feeds.items()]
    elems = out_elems or [ELEM[next(iter(feeds.values())).dtype]] * len(node.output)
    outputs = [models.vi(o, e, None) for o, e in zip(node.output, elems) if o]
    return models.make([node], inputs, outputs, inits, opset=opset)


def _on_triton(model, feeds, node_name="n"):
    sess = ort.InferenceSession(model.SerializeToString(), providers=TRITON_FIRST)
    placed = sess._program.partition.assignments[node_name]
    assert placed.provider.name == "TritonExecutionProvider", sess.placement_report()
    return sess, sess.run(None, feeds)


def _reference(model, feeds):
    """onnxruntime's outputs; bfloat16 models run in float32 (ORT lacks most bf16 kernels)."""
    if any(v.dtype == ml_dtypes.bfloat16 for v in feeds.values()):
        for vi in list(model.graph.input) + list(model.graph.output):
            if vi.type.tensor_type.elem_type == TP.BFLOAT16:
                vi.type.tensor_type.elem_type = TP.FLOAT
        feeds = {k: v.astype(np.float32) if v.dtype == ml_dtypes.bfloat16 else v
                 for k, v in feeds.items()}
    sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check(model, feeds, tol=None, node_name="n"):
    _, got = _on_triton(model, feeds, node_name)
    exp = _reference(model, feeds)
    x_dtype = next(iter(feeds.values())).dtype
    for g, e in zip(got, exp):
        assert g.shape == e.shape
        if e.dtype.kind in "biu":
            assert g.dtype == e.dtype
            np.testing.assert_array_equal(g, e)
        else:
            t = tol or TOL[x_dtype]
            np.testing.assert_allclose(g.astype(np.float64), e.astype(np.float64), rtol=t,
                                       atol=t, equal_nan=True)
    return got


def _randn(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _reduce_node(op, axes, keepdims=1, **attrs):
    inputs = ["X", "axes"] if axes is not None else ["X"]
    return helper.make_node(op, inputs, ["Y"], name="n", keepdims=keepdims, **attrs)


def _axes_init(axes):
    return [numpy_helper.from_array(np.array(axes, np.int64), "axes")] if axes is not None else []


# ------------------------------------------------------------------------------ Reduce*

@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize("axes", [[1], [0, 2], [-1], [-4, 1, 3], None], ids=str)
def test_reduce_any_axes(op, axes):
    x = _randn((2, 3, 4, 5))
    if op == "ReduceLogSum":
        x = np.abs(x) + 0.1
    for keepdims in (0, 1):
        _check(_model(_reduce_node(op, axes, keepdims), {"X": x}, 18, _axes_init(axes)), {"X": x})


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2"])
def test_reduce_axes_attribute_of_older_opsets(op):
    x = _randn((3, 4, 5))
    node = helper.make_node(op, ["X"], ["Y"], name="n", axes=[0, -1], keepdims=0)
    _check(_model(node, {"X": x}, opset=11), {"X": x})
    node = helper.make_node(op, ["X"], ["Y"], name="n")  # no axes: all of them
    _check(_model(node, {"X": x}, opset=11), {"X": x})


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceMax"])
def test_noop_with_empty_axes_keeps_the_elementwise_part(op):
    x = _randn((3, 4))
    node = _reduce_node(op, [], noop_with_empty_axes=1)
    _check(_model(node, {"X": x}, 18, _axes_init([])), {"X": x})


@pytest.mark.parametrize("dtype", [np.float16, np.float64, ml_dtypes.bfloat16])
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2",
                                "ReduceLogSumExp"])
def test_reduce_float_types(op, dtype):
    x = _randn((4, 6, 5), dtype)
    _check(_model(_reduce_node(op, [0, 2]), {"X": x}, 18, _axes_init([0, 2])), {"X": x})


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"])
def test_reduce_integers(op, dtype):
    x = np.random.default_rng(1).integers(-4, 5, (3, 4, 5)).astype(dtype)
    _check(_model(_reduce_node(op, [0, 2], 0), {"X": x}, 18, _axes_init([0, 2])), {"X": x})


def test_reduce_max_of_small_ints_and_bools():
    x = np.random.default_rng(2).integers(-100, 100, (4, 7)).astype(np.int8)
    _check(_model(_reduce_node("ReduceMax", [1]), {"X": x}, 18, _axes_init([1])), {"X": x})
    b = np.random.default_rng(2).integers(0, 2, (4, 7)).astype(np.bool_)
    for op in ("ReduceMax", "ReduceMin"):
        _check(_model(_reduce_node(op, [0]), {"X": b}, 20, _axes_init([0])), {"X": b})


# (ReduceMean of nothing is 0/0 = NaN here as on the CPU provider; onnxruntime says 0)
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceProd", "ReduceMax", "ReduceMin", "ReduceL1",
                                "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"])
def test_empty_reduction_gives_the_identity(op):
    x = np.zeros((3, 0, 2), np.float32)
    _check(_model(_reduce_node(op, [1]), {"X": x}, 18, _axes_init([1])), {"X": x})


def test_zero_size_outputs_and_rank_0():
    x = np.zeros((0, 4), np.float32)
    got = _check(_model(_reduce_node("ReduceSum", [1], 0), {"X": x}, 18, _axes_init([1])),
                 {"X": x})
    assert got[0].shape == (0,)
    s = np.array(2.5, np.float32)
    _check(_model(_reduce_node("ReduceSumSquare", None), {"X": s}, 18), {"X": s})


def test_long_rows_are_walked_in_chunks():
    # longer than one interpreter block (16384 columns)
    x = _randn((2, 40000))
    for op in ("ReduceSum", "ReduceMax", "ReduceLogSumExp"):
        _check(_model(_reduce_node(op, [1]), {"X": x}, 18, _axes_init([1])), {"X": x},
               tol=1e-4)
    node = helper.make_node("Softmax", ["X"], ["Y"], name="n", axis=1)
    _check(_model(node, {"X": x}, 13), {"X": x})
    node = helper.make_node("ArgMin", ["X"], ["Y"], name="n", axis=1)
    _check(_model(node, {"X": x}, 13, out_elems=[TP.INT64]), {"X": x})


@pytest.mark.parametrize("op", ["ReduceProd", "ReduceLogSumExp", "ArgMax", "ArgMin", "Softmax",
                                "Hardmax", "LayerNormalization"])
def test_tiny_tiles_merge_chunks_and_row_blocks(op, monkeypatch):
    """2x4 tiles: every row spans chunks and every program several rows."""
    import tritort.codegen.rowwise_launch

    monkeypatch.setattr(tritort.codegen.rowwise_launch, "block_sizes", lambda *args: (2, 4, 1))
    x = np.round(_randn((5, 3, 7)) * 2) / 2  # ties across chunks
    feeds, inits, elems = {"X": x}, [], None
    if op.startswith("Reduce"):
        node, inits = _reduce_node(op, [0, 2]), _axes_init([0, 2])
    elif op.startswith("Arg"):
        node, elems = helper.make_node(op, ["X"], ["Y"], name="n", axis=2,
                                       select_last_index=int(op == "ArgMin")), [TP.INT64]
    elif op == "LayerNormalization":
        feeds["S"] = _randn((3, 7), seed=5)
        node = helper.make_node(op, ["X", "S"], ["Y", "M", "I"], name="n", axis=1)
    else:
        node = helper.make_node(op, ["X"], ["Y"], name="n", axis=2)
    _check(_model(node, feeds, 18, inits, elems), feeds)


def test_symbolic_shapes_one_session_two_sizes():
    model = _model(_reduce_node("ReduceMean", [0, 2]), {"X": _randn((2, 3, 4))}, 18,
                   _axes_init([0, 2]))
    sess = ort.InferenceSession(model.SerializeToString(), providers=TRITON_FIRST)
    ref = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 4), (5, 1, 7)]:
        x = _randn(shape, seed=len(shape))
        np.testing.assert_allclose(sess.run(None, {"X": x})[0], ref.run(None, {"X": x})[0],
                                   rtol=1e-5, atol=1e-6)
    assert len(sess._program.providers[0].kernels) == 1


def test_nan_propagates_like_numpy():
    # onnxruntime's own NaN handling differs between ops; the CPU provider's is numpy's
    from onnx.reference import ReferenceEvaluator

    x = np.array([[1, np.nan, 3, np.nan], [np.nan, 5, -1, 2], [0, 1, 2, 3]], np.float32)
    for op, elem in [("ReduceMax", TP.FLOAT), ("ReduceMin", TP.FLOAT), ("ArgMax", TP.INT64),
                     ("ArgMin", TP.INT64)]:
        node = helper.make_node(op, ["X"], ["Y"], name="n", **(
            {"axes": [1]} if op.startswith("Reduce") else {"axis": 1}))
        model = _model(node, {"X": x}, 13, out_elems=[elem])
        _, got = _on_triton(model, {"X": x})
        np.testing.assert_array_equal(got[0], ReferenceEvaluator(model).run(None, {"X": x})[0])


# ----------------------------------------------------------------------- ArgMax / ArgMin

@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.int64])
def test_arg_reductions(op, dtype):
    # few distinct values: many ties, so first/last index matters
    x = np.random.default_rng(3).integers(-3, 3, (3, 4, 5)).astype(dtype)
    for axis, keepdims, last in [(0, 1, 0), (1, 0, 1), (-1, 1, 1), (-2, 0, 0)]:
        node = helper.make_node(op, ["X"], ["Y"], name="n", axis=axis, keepdims=keepdims,
                                select_last_index=last)
        _check(_model(node, {"X": x}, 13, out_elems=[TP.INT64]), {"X": x})


# ------------------------------------------------------------------- Softmax and friends

@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_family_axes(op, opset):
    x = _randn((2, 3, 4))
    if op == "Hardmax":
        x = np.round(x)  # ties: the first maximum wins
    for axis in (0, 1, -1):
        node = helper.make_node(op, ["X"], ["Y"], name="n", axis=axis)
        _check(_model(node, {"X": x}, opset), {"X": x})


@pytest.mark.parametrize("dtype", [np.float16, np.float64, ml_dtypes.bfloat16])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_float_types(op, dtype):
    x = _randn((3, 7), dtype) * 4
    _check(_model(helper.make_node(op, ["X"], ["Y"], name="n", axis=0), {"X": x}, 13),
           {"X": x})


def test_softmax_of_infinities_and_empty_rows():
    x = np.array([[-np.inf, 0, 1], [-np.inf, -np.inf, -np.inf]], np.float32)
    _check(_model(helper.make_node("Softmax", ["X"], ["Y"], name="n"), {"X": x}, 13),
           {"X": x})
    e = np.zeros((3, 0), np.float32)
    _check(_model(helper.make_node("LogSoftmax", ["X"], ["Y"], name="n"), {"X": e}, 13),
           {"X": e})


# ----------------------------------------------------------------------- normalizations

@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64])
def test_layer_normalization(dtype):
    x = _randn((2, 3, 4), dtype)
    for axis, with_bias, outputs in [(-1, True, ["Y", "M", "I"]), (1, False, ["Y"]),
                                     (0, True, ["Y", "", "I"])]:
        shape = x.shape[axis:]
        feeds = {"X": x, "S": _randn(shape, dtype, 1)}
        if with_bias:
            feeds["B"] = _randn(shape, dtype, 2)
        node = helper.make_node("LayerNormalization", list(feeds), outputs, name="n", axis=axis,
                                epsilon=1e-3)
        elems = [ELEM[np.dtype(dtype)], TP.FLOAT, TP.FLOAT][:len(outputs)]
        _check(_model(node, feeds, 17, out_elems=elems), feeds)


def test_rms_normalization():
    x = _randn((2, 3, 8))
    for axis in (-1, 1):
        feeds = {"X": x, "S": _randn(x.shape[axis:], seed=1)}
        node = helper.make_node("RMSNormalization", ["X", "S"], ["Y"], name="n", axis=axis)
        _check(_model(node, feeds, 23), feeds)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_batch_and_instance_normalization(dtype):
    x = _randn((2, 3, 4, 5), dtype)
    c = [_randn((3,), dtype, s) for s in (1, 2, 3)]
    feeds = {"X": x, "S": c[0], "B": c[1], "mean": c[2], "var": np.abs(c[0]) + dtype(0.5)}
    node = helper.make_node("BatchNormalization", list(feeds), ["Y"], name="n", epsilon=1e-3)
    _check(_model(node, feeds, 15), feeds)
    feeds = {"X": x, "S": c[0], "B": c[1]}
    node = helper.make_node("InstanceNormalization", list(feeds), ["Y"], name="n")
    _check(_model(node, feeds, 6), feeds)


def test_training_batch_norm_declines():
    x = _randn((2, 3, 4))
    c = _randn((3,))
    feeds = {"X": x, "S": c, "B": c, "mean": c, "var": np.abs(c)}
    node = helper.make_node("BatchNormalization", list(feeds), ["Y", "rm", "rv"], name="n",
                            training_mode=1)
    sess = ort.InferenceSession(_model(node, feeds, 15).SerializeToString(),
                                providers=TRITON_FIRST)
    placed = sess._program.partition.assignments["n"]
    assert placed.provider.name == "CPUExecutionProvider"
    assert "training" in placed.declined["TritonExecutionProvider"]


# ----------------------------------------------------------------- launcher on views

@pytest.mark.parametrize("op", ["ReduceSum", "Softmax", "LayerNormalization", "ArgMax"])
def test_non_contiguous_input(op):
    """A strided view (as a movement kernel may hand over) goes in without a copy."""
    import torch

    from tritort.codegen.templates import TEMPLATES, TemplateContext

    x = _randn((5, 4, 6))
    view = torch.from_numpy(x.transpose(2, 0, 1).copy()).permute(1, 2, 0)  # x's values
    assert not view.is_contiguous() and np.array_equal(view.numpy(), x)
    feeds = {"X": x}
    if op == "ReduceSum":
        node, inits, elems = _reduce_node(op, [0, 2]), _axes_init([0, 2]), None
    elif op == "LayerNormalization":
        feeds["S"] = _randn((6,), seed=4)
        node, inits, elems = helper.make_node(op, ["X", "S"], ["Y"], name="n", axis=-1), [], None
    else:
        elems = [TP.INT64] if op == "ArgMax" else None
        node, inits = helper.make_node(op, ["X"], ["Y"], name="n", axis=1), []
    model = _model(node, feeds, 18, inits, elems)
    graph_node = ort.InferenceSession(model.SerializeToString())._program.graph.nodes[0]
    constants = {i.name: numpy_helper.to_array(i) for i in inits}
    ctx = TemplateContext(lambda v: "float", lambda v: feeds[v].shape, constants.get,
                          "triton-interpreter", torch.device("cpu"), True, 18)
    assert TEMPLATES[op].claim(graph_node, ctx) is None
    compiled = TEMPLATES[op].build(graph_node, ctx, f"{op.lower()}_view")
    args = [view] + [torch.from_numpy(feeds[v]) for v in compiled.inputs[1:]]
    got = compiled.fn(*args)[0].numpy()
    np.testing.assert_allclose(got, _reference(model, feeds)[0], rtol=1e-5, atol=1e-6)
