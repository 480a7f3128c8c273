"""Quantized graphs on Triton (interpreter) against onnxruntime: QuantizeLinear and
DequantizeLinear as pointwise lowerings (per-tensor and per-axis, int8/uint8/int16, with and
without zero points, fused with their neighbours), what stays on the CPU and why, and QDQ
models' placement."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from tests import models
from tests.triton_env import requires_triton, triton_session

pytestmark = requires_triton
T = "TritonExecutionProvider"
_rng = np.random.default_rng(13)
_NP = {TP.INT8: np.int8, TP.UINT8: np.uint8, TP.INT16: np.int16, TP.UINT16: np.uint16,
       TP.FLOAT: np.float32, TP.FLOAT16: np.float16, TP.INT32: np.int32}


def kernels(sess) -> list[dict]:
    """The Triton provider's kernel report: one entry per unit it compiled."""
    return next(ep for ep in sess._program.providers if ep.name == T).kernels


def oracle(model, feeds):
    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(model.SerializeToString(), so,
                                        providers=["CPUExecutionProvider"]).run(None, feeds)


def _params(shape, axis, per_axis, q_type, scale_type=TP.FLOAT, with_zero=True):
    n = shape[axis] if per_axis else None
    size = (n,) if per_axis else ()
    scale = (_rng.uniform(0.02, 0.2, size)).astype(_NP[scale_type])
    lo, hi = {TP.INT8: (-20, 20), TP.UINT8: (100, 150), TP.INT16: (-300, 300),
              TP.UINT16: (1000, 2000), TP.INT32: (0, 1)}[q_type]
    inits = [numpy_helper.from_array(scale, "s")]
    if with_zero:
        zero = _rng.integers(lo, hi, size).astype(_NP[q_type])
        inits.append(numpy_helper.from_array(zero, "z"))
    return inits


def _q_model(shape, axis, per_axis, q_type, x_type=TP.FLOAT, with_zero=True, opset=21):
    inits = _params(shape, axis, per_axis, q_type, x_type, with_zero)
    ins = ["X", "s", "z"] if with_zero else ["X", "s"]
    node = helper.make_node("QuantizeLinear", ins, ["Y"], name="q", axis=axis)
    return models.make([node], [models.vi("X", x_type, list(shape))],
                       [models.vi("Y", q_type, None)], inits, opset=opset)


@pytest.mark.parametrize("shape,axis,per_axis", [
    ((2, 3, 4, 5), 1, False), ((2, 3, 4, 5), 1, True), ((2, 3, 4, 5), -1, True),
    ((6, 7), 0, True), ((5,), 0, True), ((), 1, False)])
@pytest.mark.parametrize("q_type", [TP.INT8, TP.UINT8, TP.INT16])
def test_quantize_linear_is_exact(shape, axis, per_axis, q_type):
    model = _q_model(shape, axis, per_axis, q_type)
    x = np.asarray(_rng.standard_normal(shape) * 6, np.float32)
    # ties: multiples of half a step round to the even neighbour, and values far out clamp
    scale = numpy_helper.to_array(model.graph.initializer[0])
    x.reshape(-1)[:3] = np.array([0.5, 1.5, -2.5], np.float32)[:x.size] * scale.reshape(-1)[0]
    x.reshape(-1)[-1:] = 1e6
    sess = triton_session(model)
    got = sess.run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, oracle(model, {"X": x})[0])
    assert got.dtype == _NP[q_type]


@pytest.mark.parametrize("x_type", [TP.FLOAT16])
def test_quantize_half_precision_input(x_type):
    model = _q_model((3, 4), 1, True, TP.UINT8, x_type)
    x = (_rng.standard_normal((3, 4)) * 4).astype(np.float16)
    got = triton_session(model).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, oracle(model, {"X": x})[0])


def test_quantize_without_zero_point_is_uint8():
    model = _q_model((4, 5), 1, False, TP.UINT8, with_zero=False)
    x = (_rng.standard_normal((4, 5)) * 8).astype(np.float32)
    got = triton_session(model).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, oracle(model, {"X": x})[0])


def _dq_model(shape, axis, per_axis, q_type, out_type=TP.FLOAT, with_zero=True, opset=21):
    inits = _params(shape, axis, per_axis, q_type, out_type, with_zero)
    ins = ["X", "s", "z"] if with_zero else ["X", "s"]
    node = helper.make_node("DequantizeLinear", ins, ["Y"], name="dq", axis=axis)
    return models.make([node], [models.vi("X", q_type, list(shape))],
                       [models.vi("Y", out_type, None)], inits, opset=opset)


@pytest.mark.parametrize("shape,axis,per_axis", [
    ((2, 3, 4, 5), 1, False), ((2, 3, 4, 5), 1, True), ((2, 3, 4, 5), 2, True),
    ((6, 7), 0, True), ((), 1, False)])
@pytest.mark.parametrize("q_type", [TP.INT8, TP.UINT8, TP.UINT16])
def test_dequantize_linear(shape, axis, per_axis, q_type):
    model = _dq_model(shape, axis, per_axis, q_type)
    info = np.iinfo(_NP[q_type])
    x = np.asarray(_rng.integers(info.min, info.max, shape, endpoint=True), _NP[q_type])
    got = triton_session(model).run(None, {"X": x})[0]
    np.testing.assert_allclose(got, oracle(model, {"X": x})[0], rtol=1e-6, atol=0)


def test_dequantize_int32_and_half_outputs():
    model = _dq_model((4, 6), 1, True, TP.INT32, with_zero=False)
    x = _rng.integers(-2**30, 2**30, (4, 6)).astype(np.int32)
    got = triton_session(model).run(None, {"X": x})[0]
    np.testing.assert_allclose(got, oracle(model, {"X": x})[0], rtol=1e-6)
    model = _dq_model((4, 6), 0, True, TP.INT8, TP.FLOAT16)
    x = _rng.integers(-128, 128, (4, 6)).astype(np.int8)
    got = triton_session(model).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, oracle(model, {"X": x})[0])


def test_qdq_chain_fuses_into_one_pointwise_kernel():
    """x -> Q -> DQ -> Relu -> Q -> DQ: one pointwise kernel, per-axis and per-tensor mixed."""
    c = 3
    inits = [numpy_helper.from_array(np.array([0.05, 0.1, 0.2], np.float32), "sc"),
             numpy_helper.from_array(np.array([1, -2, 3], np.int8), "zc"),
             numpy_helper.from_array(np.array(0.07, np.float32), "st"),
             numpy_helper.from_array(np.array(128, np.uint8), "zt")]
    nodes = [helper.make_node("QuantizeLinear", ["X", "sc", "zc"], ["q1"], name="q1", axis=1),
             helper.make_node("DequantizeLinear", ["q1", "sc", "zc"], ["d1"], name="d1", axis=1),
             helper.make_node("Relu", ["d1"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "st", "zt"], ["q2"], name="q2"),
             helper.make_node("DequantizeLinear", ["q2", "st", "zt"], ["Y"], name="d2")]
    model = models.make(nodes, [models.vi("X", shape=["N", c, 4, 4])],
                        [models.vi("Y", shape=None)], inits)
    sess = triton_session(model)
    x = (_rng.standard_normal((2, c, 4, 4)) * 3).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"X": x})[0], oracle(model, {"X": x})[0],
                               rtol=1e-6, atol=1e-7)
    assert [k["nodes"] for k in kernels(sess)] == [["q1", "d1", "relu", "q2", "d2"]]


@pytest.mark.parametrize("node,reason", [
    (helper.make_node("DequantizeLinear", ["X", "s"], ["Y"], name="dq", axis=1, block_size=2),
     "block-wise"),
])
def test_block_wise_stays_on_the_cpu_with_a_reason(node, reason):
    inits = [numpy_helper.from_array(np.full((2, 2), 0.1, np.float32), "s")]
    model = models.make([node], [models.vi("X", TP.INT8, [2, 4])],
                        [models.vi("Y", shape=None)], inits)
    sess = triton_session(model, on_triton=[])
    assert sess.placement()["dq"] == "CPUExecutionProvider"
    assert reason in sess.placement_report()
    x = _rng.integers(-128, 128, (2, 4)).astype(np.int8)
    np.testing.assert_allclose(sess.run(None, {"X": x})[0], oracle(model, {"X": x})[0])


def test_four_bit_types_stay_on_the_cpu_with_a_reason():
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             helper.make_tensor("z", TP.INT4, [], [1])]
    node = helper.make_node("QuantizeLinear", ["X", "s", "z"], ["Y"], name="q")
    model = models.make([node], [models.vi("X", shape=[2, 4])],
                        [models.vi("Y", TP.INT4, None)], inits)
    sess = triton_session(model, on_triton=[])
    assert sess.placement()["q"] == "CPUExecutionProvider"
    assert "packed two a byte" in sess.placement_report()


# ------------------------------------------------------------------ QDQ models' placement

def qdq_cnn(tmp_path, per_channel=True):
    """A small CNN (Conv, Relu, MaxPool, a 1x1 Conv branch, Add, GlobalAveragePool, Flatten,
    Gemm) quantized by onnxruntime's quantize_static into QDQ form."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32),
                                       name)

    mk = helper.make_node
    nodes = [mk("Conv", ["X", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             mk("Relu", ["c1"], ["r1"], name="relu1"),
             mk("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             mk("Conv", ["p1", "w4"], ["p1s"], name="conv_skip"),
             mk("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             mk("Relu", ["c2"], ["r2"], name="relu2"),
             mk("Add", ["r2", "p1s"], ["a"], name="add"),
             mk("GlobalAveragePool", ["a"], ["g"], name="gap"),
             mk("Flatten", ["g"], ["f"], name="flat"),
             mk("Gemm", ["f", "w3", "b3"], ["Y"], name="fc", transB=1)]
    inits = [w("w1", 8, 3, 3, 3), w("b1", 8), w("w2", 8, 8, 3, 3), w("b2", 8),
             w("w4", 8, 8, 1, 1), w("w3", 10, 8), w("b3", 10)]
    model = models.make(nodes, [models.vi("X", shape=[1, 3, 8, 8])],
                        [models.vi("Y", shape=[1, 10])], inits, opset=17)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"X": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
                               for _ in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    onnx.save(model, tmp_path / "float.onnx")
    quantize_static(tmp_path / "float.onnx", tmp_path / "qdq.onnx", Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=per_channel)
    return onnx.load(tmp_path / "qdq.onnx")


@pytest.mark.parametrize("level", ["ORT_DISABLE_ALL", "ORT_ENABLE_ALL"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_qdq_cnn_places_its_nodes_on_triton(tmp_path, level, per_channel):
    import tritort as ort

    model = qdq_cnn(tmp_path, per_channel)
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=[T, "CPUExecutionProvider"])
    placed = list(sess.placement().values())
    on_triton = placed.count(T) / len(placed)
    assert on_triton >= 0.9, sess.placement_report()
    x = _rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    expected = oracle(model, {"X": x})[0]
    # the last QuantizeLinear's step: a rounding tie may land one step apart
    step = float(next(numpy_helper.to_array(i) for i in model.graph.initializer
                      if i.name == "Y_scale"))
    np.testing.assert_allclose(sess.run(None, {"X": x})[0], expected, atol=1.01 * step,
                               rtol=0)


# ------------------------------------------------------------------ int8 GEMMs

def _level(name):
    import tritort as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, name)
    return so


def _qgemm_model(op, a_type, w_type, per_column, a_zero, w_zero, quantize_out, k=40, n=24):
    np_a, np_w = _NP[a_type], _NP[w_type]
    w_shape = (n, k) if op == "Gemm" else (k, n)
    info = np.iinfo(np_w)
    inits = [numpy_helper.from_array(_rng.integers(info.min, info.max, w_shape, endpoint=True)
                                     .astype(np_w), "W8"),
             numpy_helper.from_array(np.array(0.03, np.float32), "sa"),
             numpy_helper.from_array(_rng.uniform(0.01, 0.05, (n,) if per_column else ())
                                     .astype(np.float32), "sw")]
    a_in, w_in = ["A8", "sa"], ["W8", "sw"]
    if a_zero:
        inits.append(numpy_helper.from_array(np.array(7 if a_type == TP.INT8 else 131, np_a),
                                             "za"))
        a_in.append("za")
    if w_zero:
        lo, hi = (-5, 5) if w_type == TP.INT8 else (120, 136)
        inits.append(numpy_helper.from_array(
            _rng.integers(lo, hi, (n,) if per_column else ()).astype(np_w), "zw"))
        w_in.append("zw")
    axis = 0 if op == "Gemm" else 1
    nodes = [helper.make_node("DequantizeLinear", a_in, ["a"], name="dq_a"),
             helper.make_node("DequantizeLinear", w_in, ["w"], name="dq_w", axis=axis)]
    out = "mm" if quantize_out else "Y"
    if op == "Gemm":
        inits.append(numpy_helper.from_array(_rng.standard_normal(n).astype(np.float32), "bias"))
        nodes.append(helper.make_node("Gemm", ["a", "w", "bias"], [out], name="mm", transB=1,
                                      alpha=0.5))
    else:
        nodes.append(helper.make_node("MatMul", ["a", "w"], [out], name="mm"))
    if quantize_out:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "sy"),
                  numpy_helper.from_array(np.array(3, np.int8), "zy")]
        nodes.append(helper.make_node("QuantizeLinear", ["mm", "sy", "zy"], ["Y"], name="q"))
    a_shape = ["M", k] if op == "Gemm" else ["B", "M", k]
    return models.make(nodes, [models.vi("A8", a_type, a_shape)],
                       [models.vi("Y", TP.INT8 if quantize_out else TP.FLOAT, None)], inits)


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
@pytest.mark.parametrize("a_type,w_type,per_column,a_zero,w_zero", [
    (TP.UINT8, TP.INT8, True, True, False),  # quantize_static's usual form
    (TP.INT8, TP.INT8, False, True, True),
    (TP.UINT8, TP.UINT8, True, True, True),
    (TP.INT8, TP.INT8, True, False, False),
])
@pytest.mark.parametrize("quantize_out", [False, True])
def test_dequantized_gemm_is_one_int8_kernel(op, a_type, w_type, per_column, a_zero, w_zero,
                                             quantize_out):
    model = _qgemm_model(op, a_type, w_type, per_column, a_zero, w_zero, quantize_out)
    # at the default level too: the weight DequantizeLinear is kept for the int8 GEMM
    sess = triton_session(model, sess_options=_level("ORT_ENABLE_ALL"))
    reports = kernels(sess)
    assert len(reports) == 1 and reports[0]["kind"] == "tiled", reports
    assert sorted(reports[0]["nodes"]) == sorted(n.name for n in model.graph.node)
    info = np.iinfo(_NP[a_type])
    shape = (5, 40) if op == "Gemm" else (2, 5, 40)
    a = _rng.integers(info.min, info.max, shape, endpoint=True).astype(_NP[a_type])
    got, expected = sess.run(None, {"A8": a})[0], oracle(model, {"A8": a})[0]
    if quantize_out:  # a float rounding tie may land one step apart
        assert np.abs(got.astype(np.int32) - expected).max() <= 1
        assert (got == expected).mean() > 0.95
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("level", ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_ALL"])
def test_int8_weights_stay_int8_on_the_device(monkeypatch, level):
    from tritort.codegen import gemm

    seen = []
    real = gemm.launch
    monkeypatch.setattr(gemm, "launch", lambda fn, a, b, *rest: (seen.append(
        (a.dtype, b.dtype)), real(fn, a, b, *rest))[1])
    model = _qgemm_model("MatMul", TP.UINT8, TP.INT8, True, True, False, False)
    sess = triton_session(model, sess_options=_level(level))
    sess.run(None, {"A8": np.zeros((1, 3, 40), np.uint8)})
    import torch

    assert seen == [(torch.uint8, torch.int8)]


def test_cpu_sessions_fold_int8_weights_once():
    """Without a provider reading int8 weights as stored, constant folding dequantizes them
    at creation instead of every run."""
    import tritort as ort

    model = _qgemm_model("MatMul", TP.UINT8, TP.INT8, True, True, False, False)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert "dq_w" not in sess.placement() and "dq_a" in sess.placement()
    a = _rng.integers(0, 255, (2, 3, 40), endpoint=True).astype(np.uint8)
    np.testing.assert_allclose(sess.run(None, {"A8": a})[0], oracle(model, {"A8": a})[0],
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("a_type,b_type,a_zero,b_zero", [
    (TP.UINT8, TP.INT8, "scalar", None), (TP.UINT8, TP.UINT8, "scalar", "column"),
    (TP.INT8, TP.INT8, None, "scalar"), (TP.INT8, TP.UINT8, None, None)])
def test_matmul_integer_is_exact(a_type, b_type, a_zero, b_zero):
    k, n = 33, 20
    inputs, inits = ["A", "B"], []
    for name, kind, dt in (("za", a_zero, a_type), ("zb", b_zero, b_type)):
        if kind is None:
            inputs.append("")
            continue
        info = np.iinfo(_NP[dt])
        value = _rng.integers(info.min, info.max, (n,) if kind == "column" else ())
        inits.append(numpy_helper.from_array(value.astype(_NP[dt]), name))
        inputs.append(name)
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node("MatMulInteger", inputs, ["Y"], name="mmi")
    model = models.make([node], [models.vi("A", a_type, ["M", k]), models.vi("B", b_type, [k, n])],
                        [models.vi("Y", TP.INT32, None)], inits)
    sess = triton_session(model)
    feeds = {"A": _rng.integers(-128, 128, (6, k)).astype(_NP[a_type]) if a_type == TP.INT8
             else _rng.integers(0, 256, (6, k)).astype(np.uint8),
             "B": _rng.integers(-128, 128, (k, n)).astype(_NP[b_type]) if b_type == TP.INT8
             else _rng.integers(0, 256, (k, n)).astype(np.uint8)}
    np.testing.assert_array_equal(sess.run(None, feeds)[0], oracle(model, feeds)[0])


def test_matmul_integer_takes_the_dynamic_quantization_epilogue():
    """MatMulInteger -> Cast -> Mul(scale): one kernel."""
    nodes = [helper.make_node("MatMulInteger", ["A", "B"], ["i"], name="mmi"),
             helper.make_node("Cast", ["i"], ["f"], name="cast", to=TP.FLOAT),
             helper.make_node("Mul", ["f", "s"], ["Y"], name="scale")]
    inits = [numpy_helper.from_array(np.array(0.01, np.float32), "s")]
    model = models.make(nodes, [models.vi("A", TP.UINT8, [4, 16]),
                                models.vi("B", TP.INT8, [16, 8])],
                        [models.vi("Y", shape=None)], inits)
    sess = triton_session(model)
    assert [k["nodes"] for k in kernels(sess)] == [["mmi", "cast", "scale"]]
    feeds = {"A": _rng.integers(0, 256, (4, 16)).astype(np.uint8),
             "B": _rng.integers(-128, 128, (16, 8)).astype(np.int8)}
    np.testing.assert_allclose(sess.run(None, feeds)[0], oracle(model, feeds)[0], rtol=1e-6)


def test_weights_against_a_float_operand_are_dequantized_once():
    """A float activation times an int8 weight is a float product: the weight's
    DequantizeLinear is folded at creation, not run every time."""
    w = _rng.integers(-127, 127, (40, 24), endpoint=True).astype(np.int8)
    inits = [numpy_helper.from_array(w, "W8"),
             numpy_helper.from_array(np.array(0.03, np.float32), "sw")]
    nodes = [helper.make_node("DequantizeLinear", ["W8", "sw"], ["w"], name="dq_w"),
             helper.make_node("MatMul", ["A", "w"], ["Y"], name="mm")]
    model = models.make(nodes, [models.vi("A", TP.FLOAT, ["M", 40])],
                        [models.vi("Y", TP.FLOAT, None)], inits)
    sess = triton_session(model, ["mm"], sess_options=_level("ORT_ENABLE_ALL"))
    assert "dq_w" not in sess.placement()
    a = _rng.standard_normal((3, 40)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"A": a})[0], oracle(model, {"A": a})[0],
                               rtol=1e-5, atol=1e-4)
