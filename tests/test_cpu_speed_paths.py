"""The NumPy provider's fast paths against onnxruntime: each Conv algorithm (1x1, depthwise,
groups, tap products, im2col by taps and by window view, strides, dilations, pads), separable
pooling, the fused BatchNormalization / LayerNormalization forms, the float32 erf, and the
executor's in-place reuse of dead buffers (never of an input, initializer, output or alias)."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper

import tritort as ort
from tritort import executor

RNG = np.random.default_rng(7)


def _model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = oh.make_graph(
        nodes, "g", [oh.make_tensor_value_info(n, TP.FLOAT, s) for n, s in inputs],
        [oh.make_tensor_value_info(n, TP.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(v, k) for k, v in initializers])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 9
    return model.SerializeToString()


def _session(model):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the nodes
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _compare(model, feeds, rtol=1e-4, atol=1e-4, runs=2):
    """tritort (run twice: constants and reused buffers must not drift) vs onnxruntime."""
    ref = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)
    sess = _session(model)
    for _ in range(runs):
        got = sess.run(None, {k: v.copy() for k, v in feeds.items()})
        for g, r in zip(got, ref):
            assert g.shape == r.shape
            np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)
    return got


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------- Conv

CONV_CASES = {
    # name: (x shape, w shape, attrs)
    "1x1": ((2, 8, 5, 6), (4, 8, 1, 1), {}),
    "1x1_strided": ((2, 8, 7, 6), (4, 8, 1, 1), dict(strides=[2, 3])),
    "1x1_padded": ((1, 8, 5, 6), (4, 8, 1, 1), dict(pads=[1, 0, 0, 2])),
    "tap_products": ((2, 16, 9, 11), (4, 16, 3, 3), dict(pads=[1, 1, 1, 1])),
    "tap_products_dilated": ((1, 16, 9, 11), (4, 16, 3, 3),
                             dict(dilations=[2, 1], pads=[2, 0, 1, 3])),
    "tap_products_unpadded_2x3": ((2, 16, 7, 9), (8, 16, 2, 3), {}),
    "im2col_more_outputs": ((2, 4, 9, 8), (12, 4, 3, 3), dict(pads=[1, 1, 1, 1])),
    "im2col_strided": ((2, 16, 9, 11), (8, 16, 3, 3), dict(strides=[2, 1], pads=[1, 1, 1, 1])),
    "im2col_strided_dilated": ((1, 6, 12, 11), (5, 6, 3, 2),
                               dict(strides=[2, 3], dilations=[2, 2], pads=[0, 1, 2, 0])),
    "window_view_5x5": ((1, 3, 12, 12), (6, 3, 5, 5), dict(strides=[2, 2], pads=[2, 2, 2, 2])),
    "patchify_6x6": ((1, 3, 12, 18), (8, 3, 6, 6), dict(strides=[6, 6])),
    "groups": ((2, 8, 9, 7), (12, 4, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "depthwise": ((2, 8, 9, 7), (8, 1, 3, 3), dict(group=8, pads=[1, 1, 1, 1], strides=[2, 1])),
    "depthwise_multiplier": ((1, 4, 6, 7), (8, 1, 3, 3), dict(group=4)),
    "same_upper": ((1, 16, 9, 11), (4, 16, 3, 3), dict(auto_pad="SAME_UPPER")),
    "same_lower_strided": ((1, 6, 9, 10), (4, 6, 4, 3), dict(auto_pad="SAME_LOWER",
                                                            strides=[2, 2])),
    "conv1d": ((2, 4, 20), (3, 4, 5), dict(pads=[2, 1])),
    "conv3d": ((1, 4, 5, 6, 4), (3, 4, 3, 3, 3), dict(pads=[1, 1, 1, 1, 1, 1])),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_paths_match_onnxruntime(case, bias):
    x_shape, w_shape, attrs = CONV_CASES[case]
    inits = [("w", _rand(*w_shape))]
    if bias:
        inits.append(("b", _rand(w_shape[0])))
    node = oh.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], **attrs)
    _compare(_model([node], [("x", x_shape)], ["y"], inits), {"x": _rand(*x_shape)})


def test_conv_empty_batch():
    node = oh.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    model = _model([node], [("x", (0, 16, 5, 5))], ["y"], [("w", _rand(4, 16, 3, 3))])
    assert _session(model).run(None, {"x": _rand(0, 16, 5, 5)})[0].shape == (0, 4, 5, 5)


# ------------------------------------------------------------------------------- pooling

POOL_CASES = {
    "max_3x3_s2": ("MaxPool", (2, 3, 11, 12), dict(kernel_shape=[3, 3], strides=[2, 2],
                                                   pads=[1, 1, 1, 1])),
    "max_ceil_dilated": ("MaxPool", (1, 2, 10, 9), dict(kernel_shape=[2, 3], strides=[2, 2],
                                                        dilations=[2, 1], ceil_mode=1)),
    "max_s1_asym": ("MaxPool", (1, 3, 7, 8), dict(kernel_shape=[3, 2], pads=[0, 1, 2, 0])),
    "avg_exclude_pad": ("AveragePool", (2, 3, 9, 10), dict(kernel_shape=[3, 3],
                                                          pads=[1, 1, 1, 1])),
    "avg_include_pad_s2": ("AveragePool", (1, 4, 9, 10),
                           dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                count_include_pad=1)),
    "avg_ceil": ("AveragePool", (1, 2, 8, 7), dict(kernel_shape=[3, 3], strides=[2, 2],
                                                   ceil_mode=1)),
    "avg_ceil_include_pad": ("AveragePool", (1, 2, 8, 7),
                             dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                  ceil_mode=1, count_include_pad=1)),
    "avg_global_kernel": ("AveragePool", (1, 5, 7, 7), dict(kernel_shape=[7, 7])),
    "max_1d": ("MaxPool", (2, 3, 15), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    "avg_3d": ("AveragePool", (1, 2, 5, 6, 4), dict(kernel_shape=[2, 3, 2],
                                                    pads=[0, 1, 0, 1, 1, 1])),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pooling_matches_onnxruntime(case):
    op, shape, attrs = POOL_CASES[case]
    node = oh.make_node(op, ["x"], ["y"], **attrs)
    _compare(_model([node], [("x", shape)], ["y"], opset=19), {"x": _rand(*shape)}, atol=1e-5)


# ------------------------------------------------------------------------- normalization

def test_batch_normalization_affine_and_in_place():
    c = 6
    inits = [("s", _rand(c)), ("bi", _rand(c)), ("m", _rand(c)),
             ("v", RNG.uniform(0.5, 1.5, c).astype(np.float32))]
    nodes = [oh.make_node("Concat", ["x", "x2"], ["cat"], axis=1),  # a fresh buffer, read once
             oh.make_node("BatchNormalization", ["cat", "s", "bi", "m", "v"], ["bn"]),
             oh.make_node("BatchNormalization", ["x", "s3", "b3", "m3", "v3"], ["bx"])]
    inits += [("s3", _rand(3)), ("b3", _rand(3)), ("m3", _rand(3)),
              ("v3", RNG.uniform(0.5, 1.5, 3).astype(np.float32))]
    model = _model(nodes, [("x", (2, 3, 4, 5)), ("x2", (2, 3, 4, 5))], ["bn", "bx"], inits)
    x = _rand(2, 3, 4, 5)
    kept = x.copy()
    _compare(model, {"x": x, "x2": _rand(2, 3, 4, 5)}, runs=3)
    np.testing.assert_array_equal(x, kept)


@pytest.mark.parametrize("axis,shape,bias", [(-1, (2, 5, 16), True), (1, (2, 3, 4, 5), True),
                                             (-1, (4, 8), False)])
def test_layer_normalization_rows(axis, shape, bias):
    norm_shape = shape[axis % len(shape):]
    inits = [("s", _rand(*norm_shape))] + ([("b", _rand(*norm_shape))] if bias else [])
    node = oh.make_node("LayerNormalization", ["x", "s"] + (["b"] if bias else []), ["y"],
                        axis=axis, epsilon=1e-3)
    x = _rand(*shape) * 3 + 1
    _compare(_model([node], [("x", shape)], ["y"], inits, opset=17), {"x": x}, atol=1e-5)


def test_layer_normalization_statistics_outputs():
    x = _rand(3, 7, 10)
    node = oh.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"], axis=-1)
    model = _model([node], [("x", x.shape)], ["y", "mean", "inv"],
                   [("s", _rand(10)), ("b", _rand(10))], opset=17)
    y, mean, inv = _session(model).run(None, {"x": x})
    np.testing.assert_allclose(mean, x.mean(axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inv, 1 / np.sqrt(x.var(axis=-1, keepdims=True) + 1e-5),
                               rtol=1e-5)


# -------------------------------------------------------------------------- erf and GELU

def test_erf32_accuracy_over_float32_range():
    from scipy import special

    from tritort.fallback_cpu.fastmath import erf32

    x = np.concatenate([np.linspace(-6, 6, 200_001), np.geomspace(1e-30, 6, 20_001),
                        -np.geomspace(1e-30, 6, 20_001)]).astype(np.float32)
    exact = special.erf(x.astype(np.float64))
    got = erf32(x).astype(np.float64)
    assert np.max(np.abs(got - exact) / np.maximum(np.abs(exact), 1e-37)) < 5e-7
    assert np.all(np.abs(got) <= 1)
    special_values = erf32(np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32))
    np.testing.assert_array_equal(special_values[[0, 1, 3]], [1, -1, 0])
    assert np.isnan(special_values[2]) and np.signbit(special_values[4])
    scalar = np.array(0.7, np.float32)  # 0-d, also written in place
    assert erf32(scalar).shape == () and abs(float(erf32(scalar)) - special.erf(0.7)) < 1e-7
    assert erf32(scalar, out=scalar) is scalar and abs(float(scalar) - special.erf(0.7)) < 1e-7


def test_gelu_chain_in_place_matches_onnxruntime():
    # BERT's exact GELU: every intermediate dies at its only reader and is reused
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"]),
             oh.make_node("Add", ["h", "bias"], ["hb"]),
             oh.make_node("Div", ["hb", "sqrt2"], ["d"]),
             oh.make_node("Erf", ["d"], ["e"]),
             oh.make_node("Add", ["e", "one"], ["e1"]),
             oh.make_node("Mul", ["hb", "e1"], ["m"]),
             oh.make_node("Mul", ["half", "m"], ["y"])]
    inits = [("w", _rand(16, 32)), ("bias", _rand(32)), ("sqrt2", np.float32(math.sqrt(2))),
             ("one", np.float32(1)), ("half", np.float32(0.5))]
    _compare(_model(nodes, [("x", (3, 16))], ["y"], inits), {"x": _rand(3, 16) * 2},
             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [7, 40_000])  # small: maximum; large: clip
def test_relu_paths(size):
    node = oh.make_node("Relu", ["x"], ["y"])
    x = _rand(size)
    x[:3] = [np.nan, -0.0, np.inf]
    got = _compare(_model([node], [("x", (size,))], ["y"]), {"x": x})
    assert np.isnan(got[0][0])


# ---------------------------------------------------------------------- in-place reuse

def test_spare_sees_every_other_holder():
    fresh = [np.ones(4)]
    assert executor._spare(fresh, (0,)) == 0
    held = np.ones(4)
    assert executor._spare([held], (0,)) == -1  # a caller's reference
    base = np.ones(8)
    assert executor._spare([base[:4]], (0,)) == -1  # a view of a live array
    assert executor._spare([np.ones(8)[:4]], (0,)) == 0  # a view nothing else shares
    readonly = np.ones(4)
    readonly.flags.writeable = False
    assert executor._spare([readonly.copy()], (0,)) == 0
    frozen = [np.ones(4)]
    frozen[0].flags.writeable = False
    assert executor._spare(frozen, (0,)) == -1
    assert executor._spare([np.frombuffer(bytearray(16), np.float32)], (0,)) == -1
    assert executor._spare([None, np.ones(3)], (1,)) == 1


def test_in_place_never_touches_inputs_initializers_or_fetched_values():
    nodes = [oh.make_node("Relu", ["x"], ["r"]),             # x: a graph input, read once
             oh.make_node("Add", ["r", "c"], ["a"]),          # c: an initializer
             oh.make_node("Relu", ["a"], ["out1"]),           # a: fetched below as well
             oh.make_node("Neg", ["out1"], ["n"]),            # out1: a graph output
             oh.make_node("Mul", ["n", "a"], ["out2"])]
    c = _rand(5)
    model = _model(nodes, [("x", (4, 5))], ["out1", "out2", "a"], [("c", c)])
    x = _rand(4, 5)
    kept = x.copy()
    got = _compare(model, {"x": x}, runs=3)
    np.testing.assert_array_equal(x, kept)
    np.testing.assert_array_equal(got[2], np.maximum(kept, 0) + c)


def test_in_place_respects_aliases():
    # Dropout (inference) hands back its input object; Reshape/Transpose return views: the
    # dying alias must not be overwritten while the original is still to be read
    nodes = [oh.make_node("Add", ["x", "x"], ["a"]),
             oh.make_node("Dropout", ["a"], ["same"]),
             oh.make_node("Relu", ["same"], ["r1"]),          # 'same' dies here, 'a' does not
             oh.make_node("Reshape", ["a", "shape"], ["flat"]),
             oh.make_node("Sigmoid", ["flat"], ["s"]),        # a view of 'a'
             oh.make_node("Transpose", ["a"], ["t"], perm=[1, 0]),
             oh.make_node("Tanh", ["t"], ["th"]),
             oh.make_node("Reshape", ["s", "back"], ["s2"]),
             oh.make_node("Sum", ["r1", "s2", "a"], ["sum"]),  # a dies: Sum may reuse it
             oh.make_node("Transpose", ["th"], ["tht"], perm=[1, 0]),
             oh.make_node("Sub", ["sum", "tht"], ["y"])]
    inits = [("shape", np.array([-1], np.int64)), ("back", np.array([3, 4], np.int64))]
    graph = oh.make_graph(
        nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, (3, 4))],
        [oh.make_tensor_value_info("y", TP.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    model.ir_version = 9
    _compare(model.SerializeToString(), {"x": _rand(3, 4)}, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("donor", [0, 1, 2])
def test_sum_reuses_any_input_position(donor):
    # three fresh inputs; only the one at ``donor`` dies at Sum, the others are fetched
    names = ["p0", "p1", "p2"]
    nodes = [oh.make_node("Neg", ["x"], ["p0"]), oh.make_node("Exp", ["x"], ["p1"]),
             oh.make_node("Abs", ["x"], ["p2"]), oh.make_node("Sum", names, ["y"])]
    outputs = ["y"] + [n for i, n in enumerate(names) if i != donor]
    _compare(_model(nodes, [("x", (2, 6))], outputs), {"x": _rand(2, 6)}, rtol=1e-5)


def test_in_place_falls_back_when_the_dead_operand_cannot_hold_the_result():
    nodes = [oh.make_node("Neg", ["b"], ["small"]),      # (5,): dies at Add, too small
             oh.make_node("Add", ["x", "small"], ["y"]),
             oh.make_node("Neg", ["x"], ["wide"]),       # float32, dies at Mul with a double
             oh.make_node("Cast", ["wide"], ["w64"], to=TP.DOUBLE),
             oh.make_node("Mul", ["w64", "d"], ["z"])]
    graph = oh.make_graph(
        nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, (4, 5)),
                     oh.make_tensor_value_info("b", TP.FLOAT, (5,)),
                     oh.make_tensor_value_info("d", TP.DOUBLE, (4, 1))],
        [oh.make_tensor_value_info("y", TP.FLOAT, None),
         oh.make_tensor_value_info("z", TP.DOUBLE, None)])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    model.ir_version = 9
    _compare(model.SerializeToString(),
             {"x": _rand(4, 5), "b": _rand(5), "d": RNG.standard_normal((4, 1))}, rtol=1e-6)


def test_in_place_actually_happens(monkeypatch):
    calls = []
    original = executor._spare

    def spy(args, donors):
        pos = original(args, donors)
        calls.append(pos)
        return pos

    monkeypatch.setattr(executor, "_spare", spy)
    nodes = [oh.make_node("Neg", ["x"], ["n"]), oh.make_node("Relu", ["n"], ["r"]),
             oh.make_node("Add", ["r", "c"], ["y"])]
    model = _model(nodes, [("x", (8, 8))], ["y"], [("c", _rand(8))])
    x = _rand(8, 8)
    y = _session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, np.maximum(-x, 0) + model_const(model, "c"), rtol=1e-6)
    assert calls == [0, 0]  # Relu reused Neg's buffer, Add reused Relu's


def model_const(model_bytes, name):
    model = onnx.load_from_string(model_bytes)
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


# ------------------------------------------------------------------ layout and memory

def test_concat_of_a_transposed_view_is_c_ordered():
    nodes = [oh.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             oh.make_node("Concat", ["cls", "t"], ["y"], axis=1)]
    model = _model(nodes, [("x", (1, 6, 5)), ("cls", (1, 1, 6))], ["y"])
    got = _compare(model, {"x": _rand(1, 6, 5), "cls": _rand(1, 1, 6)})
    assert got[0].flags.c_contiguous


def test_keep_freed_memory_is_idempotent():
    from tritort.fallback_cpu.memory import keep_freed_memory

    first = keep_freed_memory()
    assert isinstance(first, bool) and keep_freed_memory() is first


def test_blas_threads_sets_and_restores_the_pool():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from tritort.fallback_cpu.threads import blas_libraries, blas_threads

    ours = {lib.filepath for lib in blas_libraries()}  # those loaded when first asked

    def sizes():
        return {i["filepath"]: i["num_threads"]
                for i in threadpoolctl.threadpool_info() if i["filepath"] in ours}

    before = sizes()
    if not before:
        pytest.skip("numpy has no BLAS threadpoolctl can control")
    with blas_threads(1):
        assert set(sizes().values()) == {1}
        a = RNG.standard_normal((64, 64))
        np.testing.assert_allclose(a @ np.eye(64), a)
    assert sizes() == before
    with blas_threads(0):  # 0: the pool as it is
        assert sizes() == before


def test_intra_op_num_threads_sizes_the_blas_pool_during_runs():
    from tritort.fallback_cpu.threads import blas_libraries

    libs = blas_libraries()
    if not libs:
        pytest.skip("threadpoolctl finds no BLAS library")
    before = libs[0].get_num_threads()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    model = oh.make_model(oh.make_graph(
        [oh.make_node("MatMul", ["A", "B"], ["Y"])], "g",
        [oh.make_tensor_value_info(n, TP.FLOAT, [4, 4]) for n in "AB"],
        [oh.make_tensor_value_info("Y", TP.FLOAT, [4, 4])]),
        opset_imports=[oh.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    [scope] = [ep.run_scope() for ep in sess._scoped]
    with scope:
        assert libs[0].get_num_threads() == 1
    assert libs[0].get_num_threads() == before
    a = np.eye(4, dtype=np.float32)
    np.testing.assert_array_equal(sess.run(None, {"A": a, "B": a})[0], a)
    assert libs[0].get_num_threads() == before
    default = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert default._scoped == []  # 0 threads: the pool is left alone
