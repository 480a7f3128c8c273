"""QGemm (com.microsoft) and QLinearMatMul (ai.onnx) on the int8 GEMM template (Triton
interpreter) against onnxruntime: int8 / uint8 operands, transposes, per-tensor and per-column
B parameters, C, float and requantized outputs, QLinear ops fused into the GEMM's epilogue.
Codes compare as in tests/test_triton_qlinear.py: equal, or one apart on ties."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.test_triton_qlinear import (  # noqa: F401  (_seeded: the autouse seeding fixture)
    MS, T, _seeded, _vi, assert_codes, assert_requantized, deq, kernels, model, ms, oracle,
    q8, qparams, rng,
)
from tests.triton_env import requires_triton, triton_session

pytestmark = requires_triton


# ------------------------------------------------------------------ QGemm


@pytest.mark.parametrize("quantized_out", [False, True])
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1)])
@pytest.mark.parametrize("per_column,with_c", [(False, False), (True, True)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qgemm(quantized_out, trans_a, trans_b, per_column, with_c, dtype):
    """One int8 GEMM launch: int32 products, C, the scales and the requantization in its
    epilogue."""
    m, k, n = 5, 24, 7
    feeds = {"A": q8(dtype, *((k, m) if trans_a else (m, k)))}
    inits = {"a_scale": np.array(0.02, np.float32), "a_zp": np.array(3, dtype),
             "B": q8(np.int8, *((n, k) if trans_b else (k, n))),
             "b_scale": rng().uniform(0.01, 0.06, n if per_column else 1).astype(np.float32),
             "b_zp": (rng().integers(-5, 5, n if per_column else 1)).astype(np.int8)}
    inputs = ["A", "a_scale", "a_zp", "B", "b_scale", "b_zp", "", "", ""]
    if with_c:
        inits["C"] = rng().integers(-500, 500, n).astype(np.int32)
        inputs[6] = "C"
    out = np.float32
    if quantized_out:
        inits["y_scale"], inits["y_zp"] = np.array(0.05, np.float32), np.array(5, dtype)
        inputs[7:9] = ["y_scale", "y_zp"]
        out = dtype
    while inputs[-1] == "":
        inputs.pop()
    node = ms("QGemm", inputs, ["Y"], transA=trans_a, transB=trans_b, alpha=0.5)
    mdl = model([node], feeds, inits, {"Y": (out, (m, n))}, ["Y"])
    sess = triton_session(mdl)
    assert [u["kind"] for u in kernels(sess)] == ["tiled"]
    got = sess.run(None, feeds)[0]
    (want,) = oracle(mdl, feeds)
    if not quantized_out:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        return
    wa = feeds["A"].T if trans_a else feeds["A"]
    wb = inits["B"].T if trans_b else inits["B"]
    acc = (wa.astype(np.float64) - 3) @ (wb.astype(np.float64) - inits["b_zp"].astype(np.float64))
    acc = acc + (inits["C"] if with_c else 0)
    exact = acc * 0.5 * float(inits["a_scale"]) * inits["b_scale"].astype(np.float64) / \
        float(inits["y_scale"])
    assert_codes(got, want, exact)


@pytest.mark.parametrize("b_dtype", [np.uint8, np.int8])
def test_qgemm_uint8_weights_omitted_zero_points_and_long_k(b_dtype):
    """B uint8 (shifted into int8 as it loads), zero points omitted, K over several tiles."""
    m, k, n = 33, 200, 20
    feeds = {"A": q8(np.uint8, m, k)}
    inits = {"a_scale": np.array(0.01, np.float32), "B": q8(b_dtype, n, k),
             "b_scale": rng().uniform(0.001, 0.004, n).astype(np.float32)}
    node = ms("QGemm", ["A", "a_scale", "", "B", "b_scale", ""], ["Y"], transB=1)
    mdl = model([node], feeds, inits, {"Y": (np.float32, (m, n))}, ["Y"])
    got = triton_session(mdl).run(None, feeds)[0]
    exact = feeds["A"].astype(np.float64) @ inits["B"].T.astype(np.float64) * 0.01 * \
        inits["b_scale"].astype(np.float64)
    # onnxruntime's schema requires the zero points: it runs explicit zeros
    zeros = {"a_zp": np.array(0, np.uint8), "b_zp": np.zeros(n, b_dtype)}
    explicit = model([ms("QGemm", ["A", "a_scale", "a_zp", "B", "b_scale", "b_zp"], ["Y"],
                         transB=1)], feeds, {**inits, **zeros},
                     {"Y": (np.float32, (m, n))}, ["Y"])
    (want,) = oracle(explicit, feeds)
    np.testing.assert_allclose(want, exact, rtol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_qgemm_mixed_per_column_parameters_stay_on_the_cpu():
    feeds = {"A": q8(np.int8, 3, 8)}
    inits = {"a_scale": np.array(0.02, np.float32), "B": q8(np.int8, 8, 4),
             "b_scale": np.array([0.1], np.float32), "b_zp": np.zeros(4, np.int8),
             "a_zp": np.array(0, np.int8)}
    node = ms("QGemm", ["A", "a_scale", "a_zp", "B", "b_scale", "b_zp"], ["Y"])
    mdl = model([node], feeds, inits, {"Y": (np.float32, (3, 4))}, ["Y"])
    import tritort as ort
    sess = ort.InferenceSession(mdl.SerializeToString(), providers=[T, "CPUExecutionProvider"])
    placed = sess._program.partition.assignments["qgemm"]
    assert placed.provider.name == "CPUExecutionProvider"
    assert "per column" in placed.declined[T]
    # onnxruntime refuses this form ("zero point and scale of input b should have same shape")
    exact = feeds["A"].astype(np.float64) @ inits["B"].astype(np.float64) * 0.02 * 0.1
    np.testing.assert_allclose(sess.run(None, feeds)[0], exact, rtol=1e-5)


# ------------------------------------------------------------------ QLinearMatMul


def _qmatmul_model(a_shape, b_shape, a_dtype, b_dtype, per_column):
    feeds = {"A": q8(a_dtype, *a_shape)}
    n = b_shape[-1]
    inits = {"a_scale": np.array(0.03, np.float32), "B": q8(b_dtype, *b_shape),
             "b_scale": rng().uniform(0.01, 0.05, n if per_column else ()).astype(np.float32),
             "y_scale": np.array(0.4, np.float32)}
    inits["a_zp"] = np.array(5 if a_dtype == np.int8 else 128, a_dtype)
    inits["b_zp"] = rng().integers(-3, 3, n if per_column else ()).astype(b_dtype) \
        if b_dtype == np.int8 else np.full(n if per_column else (), 120, b_dtype)
    inits["y_zp"] = np.array(-10 if a_dtype == np.int8 else 100, a_dtype)
    node = helper.make_node("QLinearMatMul", ["A", "a_scale", "a_zp", "B", "b_scale", "b_zp",
                                              "y_scale", "y_zp"], ["Y"], name="qmm")
    out = np.broadcast_shapes(a_shape[:-2], b_shape[:-2]) + (a_shape[-2], n)
    m = model([node], feeds, inits, {"Y": (a_dtype, out)}, ["Y"])
    m.opset_import[0].version = 21
    a = deq(feeds["A"], inits["a_scale"], inits["a_zp"])
    b = (inits["B"].astype(np.float64) - inits["b_zp"].astype(np.float64)) * \
        inits["b_scale"].astype(np.float64)
    return m, feeds, np.matmul(a, b) / 0.4


@pytest.mark.parametrize("a_shape,b_shape,per_column", [
    ((5, 24), (24, 7), False), ((5, 24), (24, 7), True), ((2, 3, 24), (24, 9), False),
    ((2, 3, 24), (24, 9), True), ((2, 3, 16), (2, 16, 6), False)])
@pytest.mark.parametrize("a_dtype,b_dtype", [(np.uint8, np.int8), (np.int8, np.int8),
                                             (np.uint8, np.uint8)])
def test_qlinear_matmul(a_shape, b_shape, a_dtype, b_dtype, per_column):
    """The ai.onnx op (zero points required by its schema); batched A, broadcast or batched
    B, per-column B parameters on a 2-D B."""
    m, feeds, exact = _qmatmul_model(a_shape, b_shape, a_dtype, b_dtype, per_column)
    sess = triton_session(m)
    assert [u["kind"] for u in kernels(sess)] == ["tiled"]
    assert_codes(sess.run(None, feeds)[0], oracle(m, feeds)[0], exact)



def test_untyped_qoperator_graph_runs_on_triton():
    """No value_info, the output's element type only: the load-time type rules type the
    QOperator outputs, so QGemm -> QLinearAdd -> QLinearSigmoid all reach Triton."""
    dtype = np.uint8
    feeds = {"A": q8(dtype, 4, 16), "r": q8(dtype, 4, 6)}
    inits = {"a_scale": np.array(0.02, np.float32), "a_zp": np.array(128, dtype),
             "B": q8(np.int8, 16, 6), "b_scale": np.array(0.01, np.float32),
             "b_zp": np.array(0, np.int8), **qparams("g", dtype, 0.05, 120),
             **qparams("r", dtype, 0.03, 100), **qparams("c", dtype, 0.06, 110),
             **qparams("y", dtype, 0.02, 0)}  # the sigmoid's slope keeps codes apart by <= 1
    nodes = [ms("QGemm", ["A", "a_scale", "a_zp", "B", "b_scale", "b_zp", "", "g_s", "g_z"],
                ["g"]),
             ms("QLinearAdd", ["g", "g_s", "g_z", "r", "r_s", "r_z", "c_s", "c_z"], ["c"]),
             ms("QLinearSigmoid", ["c", "c_s", "c_z", "y_s", "y_z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [_vi(k, (v.dtype, v.shape)) for k, v in feeds.items()],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid(MS, 1)])
    sess = triton_session(m)
    assert [u["kind"] for u in kernels(sess)] == ["tiled"]  # the QLinear ops in its epilogue
    assert_codes(sess.run(None, feeds)[0], oracle(m, feeds)[0], chained=True)


@pytest.mark.parametrize("op", ["QGemm", "QLinearMatMul"])
def test_qlinear_ops_fuse_into_the_int8_gemm_epilogue(op):
    """QGemm / QLinearMatMul -> QLinearAdd (a residual) -> QLinearLeakyRelu: one tiled launch,
    the QLinear ops on the output codes in its epilogue. The GEMM's codes match onnxruntime;
    each later step is the spec's result on the codes Triton gave it."""
    dtype = np.uint8
    feeds = {"A": q8(dtype, 6, 32), "r": q8(dtype, 6, 10)}
    inits = {"a_scale": np.array(0.02, np.float32), "a_zp": np.array(128, dtype),
             "B": q8(np.int8, 32, 10), "b_scale": rng().uniform(0.005, 0.01, 10).astype(
                 np.float32), "b_zp": np.zeros(10, np.int8), **qparams("g", dtype, 0.05, 120),
             **qparams("r", dtype, 0.03, 100), **qparams("c", dtype, 0.06, 110),
             **qparams("y", dtype, 0.04, 30)}
    gemm = ["A", "a_scale", "a_zp", "B", "b_scale", "b_zp"] + \
        (["", "g_s", "g_z"] if op == "QGemm" else ["g_s", "g_z"])
    first = ms(op, gemm, ["g"]) if op == "QGemm" else \
        helper.make_node(op, gemm, ["g"], name="qlinearmatmul")
    nodes = [first,
             ms("QLinearAdd", ["g", "g_s", "g_z", "r", "r_s", "r_z", "c_s", "c_z"], ["c"]),
             ms("QLinearLeakyRelu", ["c", "c_s", "c_z", "y_s", "y_z"], ["y"], alpha=0.1)]
    m = model(nodes, feeds, inits, {v: (dtype, (6, 10)) for v in "gcy"}, ["g", "c", "y"])
    sess = triton_session(m)
    units = kernels(sess)
    assert len(units) == 1 and units[0]["kind"] == "tiled", units
    assert sorted(units[0]["nodes"]) == sorted(n.name for n in nodes)
    g, c, y = sess.run(None, feeds)
    exact = (feeds["A"].astype(np.float64) - 128) @ inits["B"].astype(np.float64) * 0.02 * \
        inits["b_scale"].astype(np.float64) / 0.05
    assert_codes(g, oracle(m, feeds)[0], exact)
    v = (deq(g, inits["g_s"], inits["g_z"]) + deq(feeds["r"], inits["r_s"], inits["r_z"]))
    assert_requantized(c, v / float(inits["c_s"]), inits["c_z"], dtype)
    x = deq(c, inits["c_s"], inits["c_z"])
    assert_requantized(y, np.where(x >= 0, x, 0.1 * x) / float(inits["y_s"]), inits["y_z"],
                       dtype)
