"""onnxruntime's QOperator set on Triton (interpreter) against onnxruntime: the pointwise
com.microsoft QLinearAdd, QLinearMul, QLinearSigmoid and QLinearLeakyRelu (single-node models
over the input and attribute combinations, placement, QLinear chains fused into one kernel),
QLinearGlobalAveragePool, QLinearAveragePool, QLinearSoftmax and QLinearConcat, and a
QOperator-quantized CNN. QGemm and QLinearMatMul: tests/test_triton_qgemm.py.

Outputs are 8-bit codes. Both sides dequantize, compute in float32 and round half to even;
onnxruntime's kernels reach some float32 values by another order of operations (the unary
ops through a 256-entry table computed with its own exp, the binary ones through MLAS's
vectorised arithmetic), so a value that lies within an ulp of a half code may round the other
way: at most one code apart, and at least 95 % of the codes equal. Where a test compares
exactly, the inputs put no value near a tie.

The graphs declare every value's type and shape: the load-time type rules for the QOperator
outputs are not assumed here.
"""
from __future__ import annotations

import zlib

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.triton_env import requires_triton, triton_session

pytestmark = requires_triton
T = "TritonExecutionProvider"
MS = "com.microsoft"
_rng = np.random.default_rng(1313)


@pytest.fixture(autouse=True)
def _seeded(request):
    """Each test's draws depend on its name only, not on which tests ran before it."""
    global _rng
    _rng = np.random.default_rng(zlib.crc32(request.node.name.encode()))


def rng() -> np.random.Generator:
    """This test's generator (seeded by its name)."""
    return _rng


def q8(dtype, *shape):
    info = np.iinfo(dtype)
    return _rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def qparams(name, dtype, scale, zero):
    return {f"{name}_s": np.array(scale, np.float32), f"{name}_z": np.array(zero, dtype)}


def _vi(name, array_or_spec):
    dtype, shape = array_or_spec
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                         list(shape))


def model(nodes, feeds, inits, values, outputs):
    """``values``: name -> (dtype, shape) of every node output; ``outputs``: the graph's."""
    graph = helper.make_graph(
        nodes, "g", [_vi(k, (v.dtype, v.shape)) for k, v in feeds.items()],
        [_vi(o, values[o]) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
        value_info=[_vi(k, v) for k, v in values.items() if k not in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(MS, 1)])


def oracle(m, feeds):
    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(m.SerializeToString(), so,
                                        providers=["CPUExecutionProvider"]).run(None, feeds)


def kernels(sess) -> list[dict]:
    return next(ep for ep in sess._program.providers if ep.name == T).kernels


def assert_codes(got, want, exact_value=None, chained=False, share=0.05):
    """Equal codes, except one apart where ``exact_value`` (the float64 value before rounding,
    from the spec) lies within 1e-4 of a half code: float32 steps taken in another order
    round such a tie either way. ``chained``: a tie flipped in one op moves the next op's
    input by a code, so no value is given, only the bounds. ``share``: the most codes that
    may differ (None: as many as there are ties)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max(initial=0) <= 1, diff.max()
    if exact_value is None and not chained:
        np.testing.assert_array_equal(got, want)
        return
    if exact_value is not None:
        frac = np.abs(np.asarray(exact_value, np.float64) % 1.0 - 0.5)
        assert np.all(frac[diff > 0] < 1e-4), \
            np.asarray(exact_value)[(diff > 0) & (frac >= 1e-4)]
    # at least 95 % equal (one tie allowed in outputs too small for a percentage)
    if share is not None:
        assert (diff > 0).sum() <= max(1, share * diff.size), (diff == 0).mean()


def deq(x, s, z=None):
    return (x.astype(np.float64) - (0.0 if z is None else float(z))) * float(s)


def assert_requantized(got, exact_value, zero, dtype):
    """``got`` is the spec's quantization of ``exact_value`` (already divided by the scale),
    but where it lies within 1e-4 of a half code (either neighbour then)."""
    info = np.iinfo(dtype)
    want = np.clip(np.rint(exact_value) + float(zero), info.min, info.max)
    diff = np.abs(got.astype(np.float64) - want)
    tie = np.abs(exact_value % 1.0 - 0.5) < 1e-4
    assert np.all((diff == 0) | (tie & (diff <= 1))), exact_value[(diff > 0) & ~tie]


def ms(op_type, inputs, outputs, **attrs):
    return helper.make_node(op_type, inputs, outputs, name=op_type.lower(), domain=MS, **attrs)


# ------------------------------------------------------------------ binary


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shapes", [((4, 6, 8), (4, 6, 8)), ((4, 6, 8), (8,)),
                                    ((9, 1), (1, 11)), ((4, 6, 8), ())])
def test_qlinear_binary(op, dtype, shapes):
    feeds = {"a": q8(dtype, *shapes[0]), "b": q8(dtype, *shapes[1])}
    inits = {**qparams("a", dtype, 0.05, 10 if dtype == np.uint8 else -3),
             **qparams("b", dtype, 0.02, 130 if dtype == np.uint8 else 4),
             **qparams("c", dtype, 0.07 if op == "QLinearAdd" else 0.5,
                       100 if dtype == np.uint8 else 2)}
    out = np.broadcast_shapes(shapes[0], shapes[1])
    m = model([ms(op, ["a", "a_s", "a_z", "b", "b_s", "b_z", "c_s", "c_z"], ["c"])], feeds,
              inits, {"c": (dtype, out)}, ["c"])
    got = triton_session(m).run(None, feeds)[0]
    assert_codes(got, oracle(m, feeds)[0], binary_value(op, feeds, inits))


def binary_value(op, feeds, inits):
    a = deq(feeds["a"], inits["a_s"], inits.get("a_z"))
    b = deq(feeds["b"], inits["b_s"], inits.get("b_z"))
    return (a + b if op == "QLinearAdd" else a * b) / float(inits["c_s"])


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
def test_qlinear_binary_omitted_zero_points(op):
    """Omitted zero points are 0 and the output uint8 (onnxruntime runs explicit zeros: its
    type inference refuses the omitted ones)."""
    feeds = {"a": q8(np.uint8, 16, 16), "b": q8(np.uint8, 16, 16)}
    inits = {**qparams("a", np.uint8, 0.05, 0), **qparams("b", np.uint8, 0.02, 0),
             **qparams("c", np.uint8, 0.3, 0)}
    explicit = model([ms(op, ["a", "a_s", "a_z", "b", "b_s", "b_z", "c_s", "c_z"], ["c"])],
                     feeds, inits, {"c": (np.uint8, (16, 16))}, ["c"])
    (want,) = oracle(explicit, feeds)
    for k in ("a_z", "b_z", "c_z"):
        del inits[k]
    omitted = model([ms(op, ["a", "a_s", "", "b", "b_s", "", "c_s"], ["c"])], feeds, inits,
                    {"c": (np.uint8, (16, 16))}, ["c"])
    assert_codes(triton_session(omitted).run(None, feeds)[0], want,
                 binary_value(op, feeds, inits))


def test_qlinear_add_saturates():
    """Sums past the 8-bit range clamp to it."""
    feeds = {"a": np.array([250, 255, 0, 3], np.uint8), "b": np.array([250, 255, 0, 1], np.uint8)}
    inits = {**qparams("a", np.uint8, 1.0, 0), **qparams("b", np.uint8, 1.0, 0),
             **qparams("c", np.uint8, 1.0, 10)}
    m = model([ms("QLinearAdd", ["a", "a_s", "a_z", "b", "b_s", "b_z", "c_s", "c_z"], ["c"])],
              feeds, inits, {"c": (np.uint8, (4,))}, ["c"])
    got = triton_session(m).run(None, feeds)[0]
    np.testing.assert_array_equal(got, [255, 255, 10, 14])
    assert_codes(got, oracle(m, feeds)[0])


# ------------------------------------------------------------------ unary


@pytest.mark.parametrize("op,attrs", [("QLinearSigmoid", {}), ("QLinearLeakyRelu", {}),
                                      ("QLinearLeakyRelu", {"alpha": 0.3})])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_unary_every_code(op, attrs, dtype):
    codes = np.arange(256) - (128 if dtype == np.int8 else 0)
    feeds = {"x": np.concatenate([codes.astype(dtype), q8(dtype, 40)]).reshape(8, 37)}
    inits = {**qparams("x", dtype, 0.06, 120 if dtype == np.uint8 else -5),
             **qparams("y", dtype, 1 / 256 if op == "QLinearSigmoid" else 0.05,
                       0 if op == "QLinearSigmoid" and dtype == np.uint8 else 7)}
    m = model([ms(op, ["x", "x_s", "x_z", "y_s", "y_z"], ["y"], **attrs)], feeds, inits,
              {"y": (dtype, (8, 37))}, ["y"])
    got = triton_session(m).run(None, feeds)[0]
    assert_codes(got, oracle(m, feeds)[0], unary_value(op, attrs, feeds, inits))


def unary_value(op, attrs, feeds, inits):
    x = deq(feeds["x"], inits["x_s"], inits.get("x_z"))
    if op == "QLinearSigmoid":
        y = 1 / (1 + np.exp(-x))
    else:
        y = np.where(x >= 0, x, x * attrs.get("alpha", 0.01))
    return y / float(inits["y_s"])


@pytest.mark.parametrize("op", ["QLinearSigmoid", "QLinearLeakyRelu"])
def test_qlinear_unary_without_zero_points(op):
    """x's zero point omitted (0); y's omitted too: the output takes x's type."""
    feeds = {"x": q8(np.int8, 4, 9)}
    inits = {"x_s": np.array(0.04, np.float32), "y_s": np.array(0.01, np.float32)}
    m = model([ms(op, ["x", "x_s", "", "y_s"], ["y"])], feeds, inits,
              {"y": (np.int8, (4, 9))}, ["y"])
    explicit = model([ms(op, ["x", "x_s", "z", "y_s", "z"], ["y"])], feeds,
                     {**inits, "z": np.array(0, np.int8)}, {"y": (np.int8, (4, 9))}, ["y"])
    got = triton_session(m).run(None, feeds)[0]
    assert_codes(got, oracle(explicit, feeds)[0], unary_value(op, {}, feeds, inits))


# ------------------------------------------------------------------ placement and fusion


def test_qlinear_chain_fuses_into_one_pointwise_kernel():
    """QLinearAdd -> QLinearLeakyRelu -> QLinearSigmoid: one pointwise kernel on Triton. The
    first step matches onnxruntime; each later one is the spec's result on the codes Triton
    gave it (a tie rounded the other way upstream moves every later value, and the sigmoid's
    slope times r_s / y_s turns one code into three)."""
    dtype = np.uint8
    feeds = {"a": q8(dtype, 2, 3, 8), "b": q8(dtype, 8)}
    inits = {**qparams("a", dtype, 0.05, 10), **qparams("b", dtype, 0.02, 130),
             **qparams("c", dtype, 0.07, 100), **qparams("r", dtype, 0.05, 90),
             **qparams("y", dtype, 1 / 256, 0)}
    nodes = [ms("QLinearAdd", ["a", "a_s", "a_z", "b", "b_s", "b_z", "c_s", "c_z"], ["c"]),
             ms("QLinearLeakyRelu", ["c", "c_s", "c_z", "r_s", "r_z"], ["r"], alpha=0.2),
             ms("QLinearSigmoid", ["r", "r_s", "r_z", "y_s", "y_z"], ["y"])]
    shape = (2, 3, 8)
    m = model(nodes, feeds, inits, {v: (dtype, shape) for v in "cry"}, ["c", "r", "y"])
    sess = triton_session(m)
    units = kernels(sess)
    assert len(units) == 1, units
    assert units[0]["kind"] == "pointwise"
    assert sorted(units[0]["nodes"]) == sorted(n.name for n in nodes)
    c, r, y = sess.run(None, feeds)
    assert_codes(c, oracle(m, feeds)[0], binary_value("QLinearAdd", feeds, inits))
    x = deq(c, inits["c_s"], inits["c_z"])
    assert_requantized(r, np.where(x >= 0, x, 0.2 * x) / float(inits["r_s"]), inits["r_z"],
                       dtype)
    x = deq(r, inits["r_s"], inits["r_z"])
    assert_requantized(y, 1 / (1 + np.exp(-x)) / float(inits["y_s"]), inits["y_z"], dtype)


def test_per_channel_parameters_stay_on_the_cpu_with_a_reason():
    feeds = {"a": q8(np.uint8, 2, 3), "b": q8(np.uint8, 2, 3)}
    inits = {**qparams("a", np.uint8, 0.05, 0), **qparams("b", np.uint8, 0.02, 0),
             **qparams("c", np.uint8, 0.3, 0)}
    inits["a_s"] = np.array([0.05, 0.06, 0.07], np.float32)
    m = model([ms("QLinearAdd", ["a", "a_s", "a_z", "b", "b_s", "b_z", "c_s", "c_z"], ["c"])],
              feeds, inits, {"c": (np.uint8, (2, 3))}, ["c"])
    import tritort as ort
    sess = ort.InferenceSession(m.SerializeToString(), providers=[T, "CPUExecutionProvider"])
    placed = sess._program.partition.assignments["qlinearadd"]
    assert placed.provider.name == "CPUExecutionProvider"
    assert "per-tensor" in placed.declined[T]


# ------------------------------------------------------------------ a quantized model


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_qoperator_quantized_cnn_on_triton(tmp_path):
    """onnxruntime's QOperator quantizer on a small CNN: QLinearAdd, QLinearSigmoid,
    QLinearMul (fused with the sigmoid), QLinearAveragePool, QLinearGlobalAveragePool, QGemm
    and QLinearSoftmax run on Triton (QLinearConv too: tests/test_triton_qlinear_conv.py).
    Outputs as onnxruntime's, one 1/256 quantum apart at most (the softmax output's ties)."""
    pytest.importorskip("onnxruntime.quantization")
    pytest.importorskip("torch")
    import onnx

    import tritort as ort
    from tests.test_contrib_ops_models import qoperator_cnn

    path = qoperator_cnn(tmp_path)
    sess = ort.InferenceSession(path, providers=[T, "CPUExecutionProvider"])
    placed = sess._program.partition.assignments
    on_triton = {n.op_type for n in onnx.load(path).graph.node
                 if placed[n.name].provider.name == T}
    assert {"QLinearAdd", "QLinearSigmoid", "QLinearMul", "QLinearGlobalAveragePool",
            "QGemm", "QLinearSoftmax", "QLinearAveragePool"} <= on_triton, on_triton
    assert ["qlinearsigmoid" in u["name"] and "qlinearmul" in u["name"]
            for u in kernels(sess)].count(True) == 1
    reference = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for seed in range(3):
        x = np.random.default_rng(100 + seed).standard_normal((1, 3, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0],
                                   reference.run(None, {"x": x})[0], rtol=0,
                                   atol=1 / 256 + 1e-7)


# ------------------------------------------------------------------ QLinearGlobalAveragePool


@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (1, 4, 7), (2, 3, 1, 1)])
def test_qlinear_global_average_pool(channels_last, dtype, shape):
    """A row-wise kernel: exact int32 sums, one float32 scaling, as onnxruntime."""
    x = q8(dtype, *shape)
    inits = {**qparams("x", dtype, 0.1, 20 if dtype == np.uint8 else -10),
             **qparams("y", dtype, 0.03, 5)}
    out = (shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],) if channels_last else \
        shape[:2] + (1,) * (len(shape) - 2)
    node = ms("QLinearGlobalAveragePool", ["x", "x_s", "x_z", "y_s", "y_z"], ["y"],
              channels_last=channels_last)
    m = model([node], {"x": x}, inits, {"y": (dtype, out)}, ["y"])
    sess = triton_session(m)
    assert [u["kind"] for u in kernels(sess)] == ["rowwise"]
    axes = tuple(range(1, len(shape) - 1)) if channels_last else tuple(range(2, len(shape)))
    exact = (x.astype(np.float64).mean(axis=axes, keepdims=True) - float(inits["x_z"])) * \
        0.1 / 0.03
    assert_codes(sess.run(None, {"x": x})[0], oracle(m, {"x": x})[0],
                 np.asarray(exact, np.float64))


# ------------------------------------------------------------------ QLinearSoftmax


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("opset,axis", [(13, -1), (13, 1), (12, 1), (12, 2), (11, -1)])
def test_qlinear_softmax(dtype, opset, axis):
    """A row-wise kernel; onnxruntime exponentiates through a float table: one code apart at
    most, on values next to a rounding boundary."""
    x = q8(dtype, 2, 3, 5)
    inits = {**qparams("x", dtype, 0.08, 10 if dtype == np.uint8 else -20),
             **qparams("y", dtype, 1 / 256, 0 if dtype == np.uint8 else -128)}
    node = ms("QLinearSoftmax", ["x", "x_s", "x_z", "y_s", "y_z"], ["y"], opset=opset,
              axis=axis)
    m = model([node], {"x": x}, inits, {"y": (dtype, x.shape)}, ["y"])
    sess = triton_session(m)
    assert [u["kind"] for u in kernels(sess)] == ["rowwise"]
    got, (want,) = sess.run(None, {"x": x})[0], oracle(m, {"x": x})
    a = axis % 3
    xf = x.astype(np.float64)
    if opset >= 13:
        e = np.exp((xf - xf.max(axis=a, keepdims=True)) * 0.08)
        exact = e / e.sum(axis=a, keepdims=True) * 256
    else:
        rows = xf.reshape(int(np.prod(x.shape[:a])), -1)
        e = np.exp((rows - rows.max(axis=1, keepdims=True)) * 0.08)
        exact = (e / e.sum(axis=1, keepdims=True) * 256).reshape(x.shape)
    # the spec's codes but on ties (float32 steps); onnxruntime's table: one code apart at most
    assert_requantized(got, exact, inits["y_z"], dtype)
    assert np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= 1


# ------------------------------------------------------------------ QLinearConcat


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_qlinear_concat(dtype, axis):
    """a shares y's quantization (copied), b and c are requantized (with a zero point of 0,
    c's scale finer than y's)."""
    a, b, c = q8(dtype, 2, 3, 4), q8(dtype, 2, 3, 4), q8(dtype, 2, 3, 4)
    inits = {**qparams("y", dtype, 0.05, 3), **qparams("a", dtype, 0.05, 3),
             **qparams("b", dtype, 0.11, -7 if dtype == np.int8 else 40),
             **qparams("c", dtype, 0.02, 0)}
    feeds = {"a": a, "b": b, "c": c}
    node = ms("QLinearConcat", ["y_s", "y_z", "a", "a_s", "a_z", "b", "b_s", "b_z", "c", "c_s",
                                "c_z"], ["y"], axis=axis)
    shape = list(a.shape)
    shape[axis] *= 3
    m = model([node], feeds, inits, {"y": (dtype, shape)}, ["y"])
    sess = triton_session(m)
    assert [u["kind"] for u in kernels(sess)] == ["movement"]
    exact = np.concatenate([deq(feeds[k], inits[f"{k}_s"], inits[f"{k}_z"]) / 0.05
                            for k in "abc"], axis=axis)
    assert_codes(sess.run(None, feeds)[0], oracle(m, feeds)[0], exact)


def test_qlinear_concat_of_a_transposed_view():
    """An input that reaches the kernel as a strided view is requantized from a copy."""
    dtype = np.uint8
    a, b = q8(dtype, 3, 4), q8(dtype, 4, 2)
    inits = {**qparams("y", dtype, 0.05, 100), **qparams("a", dtype, 0.07, 90),
             **qparams("b", dtype, 0.03, 110)}
    nodes = [helper.make_node("Transpose", ["b"], ["bt"], name="t", perm=[1, 0]),
             ms("QLinearConcat", ["y_s", "y_z", "a", "a_s", "a_z", "bt", "b_s", "b_z"], ["y"],
                axis=0)]
    m = model(nodes, {"a": a, "b": b}, inits, {"bt": (dtype, (2, 4)), "y": (dtype, (5, 4))},
              ["y"])
    sess = triton_session(m)
    exact = np.concatenate([deq(a, 0.07, 90), deq(b.T, 0.03, 110)]) / 0.05
    assert_codes(sess.run(None, {"a": a, "b": b})[0], oracle(m, {"a": a, "b": b})[0], exact)


# ------------------------------------------------------------------ QLinearAveragePool


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [2, 2], "strides": [2, 2], "count_include_pad": 1},  # no pads to count
    {"kernel_shape": [3, 2], "auto_pad": "SAME_UPPER"},
    {"kernel_shape": [3, 3], "channels_last": 1, "pads": [1, 0, 1, 0]},
])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_average_pool(attrs, dtype):
    """The window means' ties (a mean half way between two codes, in exact arithmetic) go
    either way in float32 steps, onnxruntime's included: one code apart there."""
    x = q8(dtype, 2, 3, 7, 6)
    if attrs.get("channels_last"):
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    inits = {**qparams("x", dtype, 0.1, 20 if dtype == np.uint8 else -10),
             **qparams("y", dtype, 0.07, 7)}
    node = ms("QLinearAveragePool", ["x", "x_s", "x_z", "y_s", "y_z"], ["y"], **attrs)
    untyped = helper.make_model(helper.make_graph(
        [node], "g", [_vi("x", (x.dtype, x.shape))],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                       None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    (want,) = oracle(untyped, {"x": x})
    m = model([node], {"x": x}, inits, {"y": (dtype, want.shape)}, ["y"])
    sess = triton_session(m)
    assert [u["kind"] for u in kernels(sess)] == ["window"]
    # the exact means: onnx.reference's AveragePool on the centred values in float64
    from onnx.reference import ReferenceEvaluator

    pool_attrs = {k: v for k, v in attrs.items() if k != "channels_last"}
    centred = x.astype(np.float64) - float(inits["x_z"])
    if attrs.get("channels_last"):
        centred = np.ascontiguousarray(centred.transpose(0, 3, 1, 2))
    pool = helper.make_model(helper.make_graph(
        [helper.make_node("AveragePool", ["c"], ["m"], **pool_attrs)], "p",
        [helper.make_tensor_value_info("c", TensorProto.DOUBLE, None)],
        [helper.make_tensor_value_info("m", TensorProto.DOUBLE, None)]),
        opset_imports=[helper.make_opsetid("", 19)])
    (means,) = ReferenceEvaluator(pool).run(None, {"c": centred})
    if attrs.get("channels_last"):
        means = means.transpose(0, 2, 3, 1)
    exact = means * float(inits["x_s"]) / float(inits["y_s"])
    # means of 1, 2 or 4 integers put many values next to half codes: every differing code
    # must be such a tie, however many there are
    assert_codes(sess.run(None, {"x": x})[0], want, exact, share=None)


def test_qlinear_average_pool_exact_away_from_ties():
    """Scales whose ratio puts no window mean on a half code: identical codes."""
    x = q8(np.uint8, 2, 3, 9, 8)
    inits = {**qparams("x", np.uint8, 0.0731, 17), **qparams("y", np.uint8, 0.0517, 9)}
    node = ms("QLinearAveragePool", ["x", "x_s", "x_z", "y_s", "y_z"], ["y"],
              kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    m = model([node], {"x": x}, inits, {"y": (np.uint8, (2, 3, 5, 4))}, ["y"])
    assert_codes(triton_session(m).run(None, {"x": x})[0], oracle(m, {"x": x})[0])


def test_qlinear_average_pool_counting_pads_stays_on_the_cpu():
    x = q8(np.uint8, 1, 2, 5, 5)
    inits = {**qparams("x", np.uint8, 0.1, 20), **qparams("y", np.uint8, 0.08, 7)}
    node = ms("QLinearAveragePool", ["x", "x_s", "x_z", "y_s", "y_z"], ["y"],
              kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    m = model([node], {"x": x}, inits, {"y": (np.uint8, (1, 2, 5, 5))}, ["y"])
    import tritort as ort
    sess = ort.InferenceSession(m.SerializeToString(), providers=[T, "CPUExecutionProvider"])
    placed = sess._program.partition.assignments["qlinearaveragepool"]
    assert placed.provider.name == "CPUExecutionProvider"
    assert "count_include_pad" in placed.declined[T]
