"""Focused checks of the shape/index/string/signal/ml/random/training kernels.

Each test builds a one-node model with onnx.helper, runs it through the registry's
hand-written kernel and compares with onnx.reference or onnxruntime (oracles only).
"""
from __future__ import annotations

import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritort.fallback_cpu import REGISTRY, NodeContext  # noqa: E402
from tritort.fallback_cpu.delegated import _reference_factory  # noqa: E402
from tritort.graph import Node  # noqa: E402

BF16 = ml_dtypes.bfloat16


def _model(node, inputs, opset, domain="", n_out=None):
    n_out = n_out or len(node.output)
    vis = [helper.make_tensor_value_info(n, TP.UNDEFINED, None) for n, _ in zip(node.input, inputs)
           if n]
    outs = [helper.make_tensor_value_info(n, TP.UNDEFINED, None) for n in node.output[:n_out]]
    opsets = [helper.make_opsetid("", opset if domain == "" else 18)]
    if domain:
        opsets.append(helper.make_opsetid(domain, opset))
    graph = helper.make_graph([node], "g", vis, outs)
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def run_kernel(node, inputs, opset, domain=""):
    """Our kernel's outputs for ``node`` (a NodeProto) at ``opset``."""
    n = Node.from_proto(node, 0)
    since, factory = REGISTRY.lookup(domain, node.op_type, opset)
    assert factory is not _reference_factory, f"{node.op_type} is still delegated"
    ctx = NodeContext(n.op_type, n.domain, n.name, n.attrs, opset, since, n.inputs, n.outputs,
                      [None] * len(n.inputs), [None] * len(n.outputs), node,
                      {domain: opset})
    return list(factory(ctx)(*inputs))


def reference(node, inputs, opset, domain=""):
    model = _model(node, inputs, opset, domain)
    feeds = {n: v for n, v in zip(node.input, inputs) if n}
    return ReferenceEvaluator(model).run(None, feeds)


def ort(node, inputs, opset, domain=""):
    import onnxruntime as ort_rt

    model = _model(node, inputs, opset, domain)
    feeds = {n: v for n, v in zip(node.input, inputs) if n}
    # ORT wants typed graph inputs: infer them from the feeds.
    for vi in model.graph.input:
        arr = feeds[vi.name]
        elem = helper.np_dtype_to_tensor_dtype(arr.dtype) if arr.dtype != object else TP.STRING
        vi.type.CopyFrom(helper.make_tensor_type_proto(elem, arr.shape))
    model = onnx.shape_inference.infer_shapes(model)
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")
    sess = ort_rt.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check(node, inputs, opset=18, oracle=reference, domain="", rtol=1e-6, atol=1e-6):
    got = run_kernel(node, inputs, opset, domain)
    want = oracle(node, inputs, opset, domain)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert isinstance(g, np.ndarray)
        assert g.shape == w.shape, (g.shape, w.shape)
        if w.dtype.kind in "OUS":
            assert g.tolist() == w.tolist()
            continue
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol,
                                   atol=atol)
    return got


mk = helper.make_node
rng = np.random.default_rng(0)
x234 = rng.standard_normal((2, 3, 4)).astype(np.float32)


# ------------------------------------------------------------------ shape ops


def test_reshape_v1_attribute_and_allowzero():
    # onnx.reference has no Reshape-1: the expected value is spelled out.
    got = run_kernel(mk("Reshape", ["x"], ["y"], shape=[0, -1]), [x234], 1)[0]
    np.testing.assert_array_equal(got, x234.reshape(2, 12))
    empty = np.zeros((0, 3), np.float32)
    check(mk("Reshape", ["x", "s"], ["y"], allowzero=1), [empty, np.array([3, 0], np.int64)],
          opset=14, oracle=ort)


def test_squeeze_unsqueeze_old_and_new_forms():
    x = np.zeros((1, 3, 1), np.float32)
    check(mk("Squeeze", ["x"], ["y"], axes=[-1]), [x], opset=11)
    check(mk("Squeeze", ["x"], ["y"]), [x], opset=13, oracle=ort)
    check(mk("Unsqueeze", ["x"], ["y"], axes=[0, -1]), [x234], opset=11, oracle=ort)
    check(mk("Unsqueeze", ["x", "a"], ["y"]), [x234, np.array([-1, 1], np.int64)], opset=13,
          oracle=ort)


def test_split_uneven_num_outputs_and_old_attribute():
    x = np.arange(7, dtype=np.float32)
    check(mk("Split", ["x"], ["a", "b", "c"], num_outputs=3), [x], opset=18, oracle=ort)
    check(mk("Split", ["x"], ["a", "b"], split=[3, 4]), [x], opset=2)


def test_slice_negative_steps_and_clamping():
    x = np.arange(60, dtype=np.int32).reshape(3, 4, 5)
    big = np.iinfo(np.int64).max
    node = mk("Slice", ["x", "s", "e", "a", "t"], ["y"])
    ins = [x, np.array([-1, big, 1], np.int64), np.array([-big, 0, 100], np.int64),
           np.array([0, 1, -1], np.int64), np.array([-1, -2, 2], np.int64)]
    check(node, ins, opset=13, oracle=ort)
    check(mk("Slice", ["x"], ["y"], starts=[1], ends=[1000], axes=[2]), [x], opset=1)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes_axes_and_negative_pads(mode):
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    node = mk("Pad", ["x", "p", "", "a"], ["y"], mode=mode)
    check(node, [x, np.array([2, -1, 1, 2], np.int64), None, np.array([1, 0], np.int64)],
          opset=19, oracle=ort)


def test_pad_v2_attribute_bf16_value():
    x = np.arange(6, dtype=np.float32).reshape(2, 3).astype(BF16)
    got = run_kernel(mk("Pad", ["x"], ["y"], pads=[1, 0, 0, 1], value=1.5), [x], 2)[0]
    assert got.dtype == BF16 and got.shape == (3, 4)
    assert float(got[0, 0]) == 1.5 and float(got[1, 0]) == 0.0


def test_constant_forms():
    check(mk("Constant", [], ["y"], value_strings=["a", "bc"]), [], opset=13)
    check(mk("Constant", [], ["y"], value_floats=[1.0, 2.5]), [], opset=13)
    check(mk("Constant", [], ["y"], value_int=7), [], opset=13)
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([5.0, 6.0], np.float32), "v"),
        numpy_helper.from_array(np.array([1, 4], np.int64), "i"), [2, 3])
    got = run_kernel(mk("Constant", [], ["y"], sparse_value=sparse), [], 13)[0]
    np.testing.assert_array_equal(got, [[0, 5, 0], [0, 6, 0]])


def test_expand_tile_concat_with_empty_tensors():
    check(mk("Expand", ["x", "s"], ["y"]), [np.ones((3, 1), np.float32),
                                            np.array([2, 1, 0], np.int64)], oracle=ort)
    check(mk("Tile", ["x", "r"], ["y"]), [x234, np.array([0, 2, 1], np.int64)], oracle=ort)
    check(mk("Concat", ["a", "b"], ["y"], axis=-1),
          [np.zeros((2, 0), np.float32), np.ones((2, 3), np.float32)], oracle=ort)


def test_range_trilu_depth_to_space():
    check(mk("Range", ["a", "b", "c"], ["y"]), [np.array(10, np.int32), np.array(-3, np.int32),
                                                np.array(-4, np.int32)], opset=11, oracle=ort)
    check(mk("Range", ["a", "b", "c"], ["y"]), [np.array(1.0, np.float16),
                                                np.array(5.0, np.float16),
                                                np.array(0.3, np.float16)], opset=11,
          atol=1e-3)
    check(mk("Trilu", ["x", "k"], ["y"], upper=0), [x234, np.array(-1, np.int64)], oracle=ort)
    x = np.arange(2 * 8 * 2 * 3, dtype=np.float32).reshape(2, 8, 2, 3)
    check(mk("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD"), [x], oracle=ort)


# ------------------------------------------------------------------ index ops


def test_gather_bf16_negative_indices():
    x = x234.astype(BF16)
    got = run_kernel(mk("Gather", ["x", "i"], ["y"], axis=1), [x, np.array([[-1, 0]])], 13)[0]
    want = reference(mk("Gather", ["x", "i"], ["y"], axis=1), [x, np.array([[-1, 0]])], 13)[0]
    assert got.dtype == BF16
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))


def test_gather_elements_nd():
    check(mk("GatherElements", ["x", "i"], ["y"], axis=-1),
          [x234, np.array([[[3, -1]], [[0, 1]]], np.int64)], oracle=ort)
    check(mk("GatherND", ["x", "i"], ["y"], batch_dims=1),
          [x234, np.array([[[1, -1]], [[0, 2]]], np.int64)], oracle=ort)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatters_with_reductions(reduction):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    idx = np.array([[1, 1], [0, -1]], np.int64)
    upd = np.array([[5.0, 7.0], [-2.0, 9.0]], np.float32)
    node = mk("ScatterElements", ["x", "i", "u"], ["y"], axis=1, reduction=reduction)
    if reduction == "none":
        idx = np.array([[1, 2], [0, -1]], np.int64)  # unique targets: defined result
    check(node, [data, idx, upd], opset=18, oracle=ort)
    nd_idx = np.array([[2], [0], [2]], np.int64)
    nd_upd = np.arange(12, dtype=np.float32).reshape(3, 4)
    if reduction == "none":
        nd_idx = np.array([[2], [0], [1]], np.int64)
    check(mk("ScatterND", ["x", "i", "u"], ["y"], reduction=reduction),
          [data, nd_idx, nd_upd], opset=18, oracle=ort)


def test_scatter_add_bf16_rounds_once():
    data = np.zeros(3, BF16)
    got = run_kernel(mk("ScatterElements", ["x", "i", "u"], ["y"], reduction="add"),
                     [data, np.array([0, 0]), np.array([1.0, 2.0], BF16)], 18)[0]
    assert got.dtype == BF16 and float(got[0]) == 3.0


def test_topk_ties_and_integer_extremes():
    x = np.array([[3, 1, 3, 1, 2]], np.float32)
    for largest in (0, 1):
        check(mk("TopK", ["x", "k"], ["v", "i"], largest=largest), [x, np.array([3])],
              opset=11, oracle=ort)
    xi = np.array([np.iinfo(np.int64).min, 5, np.iinfo(np.int64).min, 0], np.int64)
    check(mk("TopK", ["x", "k"], ["v", "i"]), [xi, np.array([4])], opset=11, oracle=ort)
    xu = np.array([0, 255, 7, 255], np.uint8)
    check(mk("TopK", ["x", "k"], ["v", "i"], largest=0), [xu, np.array([3])], opset=11,
          oracle=reference)
    check(mk("TopK", ["x"], ["v", "i"], k=2, axis=0), [x234], opset=1)


@pytest.mark.parametrize("sorted_", [0, 1])
def test_unique_all_outputs(sorted_):
    x = np.array([[2, 1, 1], [3, 4, 3], [2, 1, 1]], np.int64)
    outs = ["y", "idx", "inv", "cnt"]
    check(mk("Unique", ["x"], outs, sorted=sorted_), [x], opset=11, oracle=ort)
    check(mk("Unique", ["x"], outs, sorted=sorted_, axis=0), [x], opset=11, oracle=ort)


def test_onehot_nonzero_compress():
    check(mk("OneHot", ["i", "d", "v"], ["y"], axis=0),
          [np.array([[1, -1], [5, 0]], np.int64), np.array(3, np.float32),
           np.array([2, 7], np.int32)], opset=11, oracle=ort)
    check(mk("NonZero", ["x"], ["y"]), [np.array([[0, 1], [2, 0]], np.float32)], oracle=ort)
    check(mk("Compress", ["x", "c"], ["y"]), [x234, np.array([0, 1, 1], bool)], oracle=ort)


@pytest.mark.parametrize("center", [0, 1])
def test_non_max_suppression(center):
    boxes = rng.uniform(0, 1, (2, 12, 4)).astype(np.float32)
    if center == 0:
        boxes[..., 2:] = boxes[..., :2] + boxes[..., 2:] * 0.5
    scores = rng.uniform(0, 1, (2, 3, 12)).astype(np.float32)
    node = mk("NonMaxSuppression", ["b", "s", "m", "t", "st"], ["y"], center_point_box=center)
    check(node, [boxes, scores, np.array([4], np.int64), np.array([0.3], np.float32),
                 np.array([0.2], np.float32)], opset=11, oracle=ort)


def test_tensor_scatter_circular():
    past = np.zeros((2, 2, 4, 3), np.float32)
    upd = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    check(mk("TensorScatter", ["p", "u", "w"], ["y"], mode="circular"),
          [past, upd, np.array([2, 0], np.int64)], opset=24)


# ------------------------------------------------------ strings, signal, ml


def test_strings():
    s = np.array([["a b  c", "", "x,y"]], dtype=object)
    check(mk("StringSplit", ["x"], ["y", "n"]), [s], opset=20, oracle=ort)
    check(mk("StringSplit", ["x"], ["y", "n"], delimiter=" ", maxsplit=1), [s], opset=20,
          oracle=ort)
    # onnxruntime's StringNormalizer needs system locales: onnx.reference is the oracle.
    words = np.array([["Monday", "tuesday", "x,Y"]], dtype=object)
    check(mk("StringNormalizer", ["x"], ["y"], case_change_action="UPPER",
             stopwords=["monday"]), [words], opset=10)
    check(mk("StringNormalizer", ["x"], ["y"], is_case_sensitive=1, stopwords=["monday"]),
          [words[0]], opset=10)
    check(mk("RegexFullMatch", ["x"], ["y"], pattern=r"\w,\w"), [s], opset=20, oracle=ort)


def test_dft_v17_attribute_axis_and_v20_onesided():
    sig = rng.standard_normal((2, 6, 5, 1)).astype(np.float32)
    check(mk("DFT", ["x"], ["y"], axis=2), [sig], opset=17, rtol=1e-4, atol=1e-4)
    check(mk("DFT", ["x", "n", "a"], ["y"], onesided=1),
          [sig, np.array(8, np.int64), np.array(1, np.int64)], opset=20, rtol=1e-4, atol=1e-4)


def test_label_encoder_and_tree_ensemble():
    node = mk("LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml", keys_floats=[1.0, np.nan],
              values_int64s=[5, 9], default_int64=-3)
    check(node, [np.array([1.0, np.nan, 2.0], np.float32)], opset=4, oracle=ort,
          domain="ai.onnx.ml")
    node = mk("TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", n_targets=2,
              nodes_featureids=[0, 1], nodes_splits=numpy_helper.from_array(
                  np.array([0.0, 0.5], np.float32)),
              nodes_modes=numpy_helper.from_array(np.array([0, 3], np.uint8)),
              nodes_truenodeids=[1, 1], nodes_trueleafs=[0, 1],
              nodes_falsenodeids=[0, 2], nodes_falseleafs=[1, 1],
              leaf_targetids=[0, 1, 0], leaf_weights=numpy_helper.from_array(
                  np.array([1.0, 2.0, 3.0], np.float32)),
              tree_roots=[0, 1], aggregate_function=0, post_transform=0)
    x = rng.standard_normal((6, 2)).astype(np.float32)
    check(node, [x], opset=5, oracle=ort, domain="ai.onnx.ml")


# --------------------------------------------------------- random, training


def test_random_ops_shapes_dtypes_and_seeds():
    node = mk("RandomNormal", [], ["y"], shape=[3, 4], dtype=TP.FLOAT16, seed=2.0)
    a, = run_kernel(node, [], 22)
    b, = run_kernel(node, [], 22)
    assert a.dtype == np.float16 and a.shape == (3, 4)
    np.testing.assert_array_equal(a, b)  # same seed, new session: same stream
    y, = run_kernel(mk("RandomUniformLike", ["x"], ["y"], low=2.0, high=3.0), [x234], 22)
    assert y.dtype == np.float32 and y.shape == x234.shape and (y >= 2).all() and (y < 3).all()
    y, = run_kernel(mk("Bernoulli", ["x"], ["y"], dtype=TP.INT32),
                    [np.array([0.0, 1.0], np.float32)], 22)
    np.testing.assert_array_equal(y, np.array([0, 1], np.int32))
    y, = run_kernel(mk("Multinomial", ["x"], ["y"], sample_size=5),
                    [np.log(np.array([[0.0, 1.0], [1.0, 0.0]], np.float32) + 1e-30)], 22)
    np.testing.assert_array_equal(y, np.array([[1] * 5, [0] * 5], np.int32))


@pytest.mark.parametrize("op", ["NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_losses_weights_ignore_index(op, reduction):
    x = rng.standard_normal((3, 4, 2)).astype(np.float32)
    target = np.array([[0, 3], [-1, 1], [2, -1]], np.int64)
    weight = np.array([0.5, 1.0, 2.0, 0.1], np.float32)
    outs = ["l", "p"] if op == "SoftmaxCrossEntropyLoss" else ["l"]
    check(mk(op, ["x", "t", "w"], outs, reduction=reduction, ignore_index=-1),
          [x, target, weight], opset=13, oracle=ort, rtol=1e-5, atol=1e-5)
    check(mk(op, ["x", "t"], outs[:1], reduction=reduction, ignore_index=-1),
          [x, target], opset=13, oracle=ort, rtol=1e-5, atol=1e-5)


def test_adam_multiple_tensors_order():
    node = mk("Adam", ["r", "t", "x1", "x2", "g1", "g2", "v1", "v2", "h1", "h2"],
              ["X1", "X2", "V1", "V2", "H1", "H2"], domain="ai.onnx.preview.training",
              norm_coefficient=0.01)
    ins = [np.array(0.1, np.float32), np.array(3, np.int64)] + \
        [rng.uniform(0.1, 1, (2, 2)).astype(np.float32) for _ in range(8)]
    check(node, ins, opset=1, domain="ai.onnx.preview.training", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("start,end,step", [(-10, -2**62, -1), (4, -100, -2), (10, 0, -1),
                                            (-1, -6, -1), (-100, 100, 2), (3, 3, -1)])
def test_slice_clamps_like_onnxruntime(start, end, step):
    import onnxruntime

    import tritort

    consts = [helper.make_tensor(n, TP.INT64, [1], [v])
              for n, v in (("s", start), ("e", end), ("a", 0), ("t", step))]
    graph = helper.make_graph([helper.make_node("Slice", ["X", "s", "e", "a", "t"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TP.FLOAT, [5])],
                              [helper.make_tensor_value_info("Y", TP.FLOAT, None)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = np.arange(5, dtype=np.float32)
    so = tritort.SessionOptions()
    so.graph_optimization_level = tritort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = tritort.InferenceSession(model, so).run(None, {"X": x})[0]
    ref = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, ref)
