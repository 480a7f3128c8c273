"""com.microsoft quantized operators on tritort's NumPy provider against onnxruntime:
MatMulNBits, DynamicQuantizeMatMul, MatMulIntegerToFloat, QGemm and the QLinear* set.

Float results at rtol 1e-5 (MatMulNBits: the dequantized weight times A in float32, as
onnxruntime computes it at accuracy_level 0); quantized results exactly, except where a test
says onnxruntime rounds through a lookup table or a fixed-point step (at most one unit apart).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import tritort as ort
from tests.test_contrib_ops import (  # noqa: F401  (_seeded: the autouse seeding fixture)
    _seeded, build, check, ms, randint, randn, run_ort, run_tritort,
)


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``bits``-wide values along the last axis into uint8, lowest bits first."""
    per = 8 // bits
    v = values.astype(np.uint8)
    pad = (-v.shape[-1]) % per
    v = np.concatenate([v, np.zeros(v.shape[:-1] + (pad,), np.uint8)], -1)
    v = v.reshape(v.shape[:-1] + (-1, per))
    out = np.zeros(v.shape[:-1], np.uint8)
    for i in range(per):
        out |= (v[..., i] << (i * bits)).astype(np.uint8)
    return out


def nbits_inputs(n, k, bits, block, zp="packed", rng_bias=False):
    blocks = -(-k // block)
    q = randint(0, 1 << bits, n, blocks * block, dtype=np.uint8)
    b = pack(q.reshape(n, blocks, block), bits)  # (N, blocks, blob)
    inits = {"B": b, "scales": randn(n, blocks, scale=0.1)}
    inputs = ["A", "B", "scales", "", "", ""]
    if zp == "packed":
        inits["zp"] = pack(randint(0, 1 << bits, n, blocks, dtype=np.uint8), bits)
        inputs[3] = "zp"
    elif zp == "float":
        inits["zp"] = randn(n, blocks, scale=float(1 << (bits - 1)))
        inputs[3] = "zp"
    if rng_bias:
        inits["bias"] = randn(n)
        inputs[5] = "bias"
    while inputs[-1] == "":
        inputs.pop()
    return inputs, inits


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("zp", ["packed", "float", None])
@pytest.mark.parametrize("k,block", [(64, 16), (80, 32), (128, 128)])
def test_matmul_nbits(bits, zp, k, block):
    n = 24
    inputs, inits = nbits_inputs(n, k, bits, block, zp)
    node = ms("MatMulNBits", inputs, ["Y"], K=k, N=n, bits=bits, block_size=block)
    a = randn(3, k)
    if bits == 8 and zp == "float":  # onnxruntime's CPU kernel refuses this one: float64
        model = build([node], {"A": a}, ["Y"], inits, out_types={"Y": TensorProto.FLOAT})
        (got,) = run_tritort(model, {"A": a})
        np.testing.assert_allclose(got, a.astype(np.float64) @ dequantize(inits, n, k, bits,
                                                                          block).T,
                                   rtol=1e-5, atol=1e-5)
        return
    check(node, {"A": a}, ["Y"], inits=inits, rtol=1e-5, atol=1e-5)


def dequantize(inits, n, k, bits, block, g_idx=None):
    """float64 (N, K) weight of packed MatMulNBits inputs, straight from the spec."""
    blocks = -(-k // block)
    b = inits["B"].reshape(n, blocks, -1)
    per = 8 // bits
    q = np.stack([(b >> (i * bits)) & ((1 << bits) - 1) for i in range(per)], -1)
    q = q.reshape(n, blocks * block)[:, :k].astype(np.float64)
    zp = inits.get("zp")
    if zp is None:
        zp = np.full((n, blocks), 1 << (bits - 1), np.float64)
    elif zp.dtype == np.uint8:
        zp = np.stack([(zp >> (i * bits)) & ((1 << bits) - 1) for i in range(per)], -1)
        zp = zp.reshape(n, -1)[:, :blocks].astype(np.float64)
    group = np.arange(k) // block if g_idx is None else g_idx
    return (q - zp.astype(np.float64)[:, group]) * inits["scales"].astype(np.float64)[:, group]


@pytest.mark.parametrize("shape", [(2, 3, 64), (64,), (1, 1, 64)])
def test_matmul_nbits_ranks_and_bias(shape):
    inputs, inits = nbits_inputs(10, 64, 4, 32, "packed", rng_bias=True)
    node = ms("MatMulNBits", inputs, ["Y"], K=64, N=10, bits=4, block_size=32)
    check(node, {"A": randn(*shape)}, ["Y"], inits=inits, rtol=1e-5, atol=1e-5)


def test_matmul_nbits_flat_scales_and_float16():
    inputs, inits = nbits_inputs(8, 64, 4, 16, "packed")
    inits["scales"] = inits["scales"].reshape(-1).astype(np.float16)
    node = ms("MatMulNBits", inputs, ["Y"], K=64, N=8, bits=4, block_size=16)
    check(node, {"A": randn(4, 64, dtype=np.float16)}, ["Y"], inits=inits, rtol=2e-3,
          atol=2e-3)


def test_matmul_nbits_accuracy_level_4():
    """Level 4 lets onnxruntime quantize A to int8 per block; tritort stays exact: the two
    agree within that quantization's error (about 1 % of the output's norm), and tritort
    agrees with the float64 product."""
    inputs, inits = nbits_inputs(16, 128, 4, 32, "packed")
    node = ms("MatMulNBits", inputs, ["Y"], K=128, N=16, bits=4, block_size=32,
              accuracy_level=4)
    a = randn(5, 128)
    model = build([node], {"A": a}, ["Y"], inits, out_types={"Y": TensorProto.FLOAT})
    (want,) = run_ort(model, {"A": a})
    (got,) = run_tritort(model, {"A": a})
    assert np.linalg.norm(got - want) < 2e-2 * np.linalg.norm(want)
    exact = a.astype(np.float64) @ dequantize(inits, 16, 128, 4, 32).T
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5)


def test_matmul_nbits_empty_weight_gives_the_bias():
    inits = {"B": np.zeros((6, 0, 8), np.uint8), "scales": np.zeros((6, 0), np.float32),
             "bias": randn(6)}
    node = ms("MatMulNBits", ["A", "B", "scales", "", "", "bias"], ["Y"], K=16, N=6, bits=4,
              block_size=16)
    check(node, {"A": randn(2, 16)}, ["Y"], inits=inits)


def test_matmul_nbits_weights_dequantized_once():
    """The dequantized weight is kept between runs (the same initializer arrays)."""
    inputs, inits = nbits_inputs(8, 32, 4, 16, "packed")
    node = ms("MatMulNBits", inputs, ["Y"], K=32, N=8, bits=4, block_size=16)
    model = build([node], {"A": randn(2, 32)}, ["Y"], inits,
                  out_types={"Y": TensorProto.FLOAT})
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a1, a2 = randn(2, 32), randn(2, 32)
    y1 = sess.run(None, {"A": a1})[0]
    y2 = sess.run(None, {"A": a2})[0]
    want = run_ort(model, {"A": a2})[0]
    np.testing.assert_allclose(y2, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(y1, y2)


@pytest.mark.parametrize("zp", [None, "float", "packed"])
def test_matmul_nbits_g_idx(zp):
    """The deprecated g_idx (act order): column k takes the scale and zero point of block
    g_idx[k]. With packed zero points onnxruntime 1.32 computes something else (neither
    that nor the block order), so that case is checked against the float64 reference only."""
    n, k, block = 8, 64, 16
    inputs, inits = nbits_inputs(n, k, 4, block, zp)
    g_idx = np.random.default_rng(k).permutation(k) // block
    inits["g_idx"] = g_idx.astype(np.int32)
    inputs = (inputs + [""] * 5)[:5]
    inputs[4] = "g_idx"
    node = ms("MatMulNBits", inputs, ["Y"], K=k, N=n, bits=4, block_size=block)
    a = randn(3, k)
    model = build([node], {"A": a}, ["Y"], inits, out_types={"Y": TensorProto.FLOAT})
    (got,) = run_tritort(model, {"A": a})
    np.testing.assert_allclose(got, a.astype(np.float64) @ dequantize(inits, n, k, 4, block,
                                                                      g_idx).T,
                               rtol=1e-5, atol=1e-5)
    if zp != "packed":
        np.testing.assert_allclose(got, run_ort(model, {"A": a})[0], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ integer matmuls


def _ints(dtype, *shape):
    lo, hi = (-128, 128) if dtype == np.int8 else (0, 256)
    return randint(lo, hi, *shape, dtype=dtype)


def matmul_integer_to_float_case(a_dtype, b_dtype, per_column, with_zp, bias):
    """(node inputs, feeds, initializers) of a MatMulIntegerToFloat over A [2, 3, 12]."""
    k, n = 12, 5
    feeds = {"A": _ints(a_dtype, 2, 3, k)}
    inits = {"B": _ints(b_dtype, k, n), "a_scale": np.array(0.03, np.float32),
             "b_scale": np.abs(randn(n if per_column else 1, scale=0.05)) + 0.01}
    inputs = ["A", "B", "a_scale", "b_scale", "", "", ""]
    if with_zp:
        inits["a_zp"] = _ints(a_dtype, 1).reshape(())
        inits["b_zp"] = _ints(b_dtype, n if per_column else 1)
        inputs[4:6] = ["a_zp", "b_zp"]
    if bias:
        inits["bias"] = randn(n)
        inputs[6] = "bias"
    while inputs[-1] == "":
        inputs.pop()
    return inputs, feeds, inits


def dynamic_quantize_matmul_case(b_dtype, per_column, zero_point, bias):
    """(node inputs, feeds, initializers) of a DynamicQuantizeMatMul over A [2, 3, 16]."""
    k, n = 16, 6
    lo, hi = (-128, 128) if b_dtype == np.int8 else (0, 256)
    inits = {"B": randint(lo, hi, k, n, dtype=b_dtype),
             "b_scale": np.abs(randn(n if per_column else 1, scale=0.05)) + 0.01}
    inputs = ["A", "B", "b_scale", "", ""]
    if zero_point:
        inits["b_zp"] = randint(lo // 4, hi // 4, n if per_column else 1, dtype=b_dtype)
        inputs[3] = "b_zp"
    if bias:
        inits["bias"] = randn(n)
        inputs[4] = "bias"
    while inputs[-1] == "":
        inputs.pop()
    return inputs, {"A": randn(2, 3, k)}, inits


@pytest.mark.parametrize("b_dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_dynamic_quantize_matmul(b_dtype, per_column, zero_point, bias):
    inputs, feeds, inits = dynamic_quantize_matmul_case(b_dtype, per_column, zero_point, bias)
    check(ms("DynamicQuantizeMatMul", inputs, ["Y"]), feeds, ["Y"], inits=inits,
          rtol=1e-5, atol=1e-5)


def test_dynamic_quantize_matmul_positive_input():
    """All-positive A: the quantization range still includes 0 (zero point 0)."""
    inits = {"B": randint(-128, 128, 8, 4, dtype=np.int8), "b_scale": np.array([0.02], np.float32)}
    check(ms("DynamicQuantizeMatMul", ["A", "B", "b_scale"], ["Y"]),
          {"A": np.abs(randn(3, 8)) + 1}, ["Y"], inits=inits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("a_dtype,b_dtype", [(np.uint8, np.int8), (np.int8, np.int8),
                                             (np.uint8, np.uint8)])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("with_zp,bias", [(True, True), (False, False)])
def test_matmul_integer_to_float(a_dtype, b_dtype, per_column, with_zp, bias):
    inputs, feeds, inits = matmul_integer_to_float_case(a_dtype, b_dtype, per_column, with_zp,
                                                        bias)
    check(ms("MatMulIntegerToFloat", inputs, ["Y"]), feeds, ["Y"], inits=inits, rtol=1e-5,
          atol=1e-5)


@pytest.mark.parametrize("quantized_out", [False, True])
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1)])
@pytest.mark.parametrize("per_column,with_c", [(False, False), (True, True)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qgemm(quantized_out, trans_a, trans_b, per_column, with_c, dtype):
    m, k, n = 3, 8, 5
    lo, hi = (-128, 128) if dtype == np.int8 else (0, 256)
    feeds = {"A": randint(lo, hi, *((k, m) if trans_a else (m, k)), dtype=dtype)}
    inits = {"a_scale": np.array(0.02, np.float32), "a_zp": np.array(3, dtype),
             "B": randint(-128, 128, *((n, k) if trans_b else (k, n)), dtype=np.int8),
             "b_scale": np.abs(randn(n if per_column else 1, scale=0.05)) + 0.01,
             "b_zp": np.zeros(n if per_column else 1, np.int8)}
    inputs = ["A", "a_scale", "a_zp", "B", "b_scale", "b_zp", "", "", ""]
    if with_c:
        inits["C"] = randint(-500, 500, n, dtype=np.int32)
        inputs[6] = "C"
    if quantized_out:
        inits["y_scale"], inits["y_zp"] = np.array(0.05, np.float32), np.array(5, dtype)
        inputs[7:9] = ["y_scale", "y_zp"]
    while inputs[-1] == "":
        inputs.pop()
    check(ms("QGemm", inputs, ["Y"], transA=trans_a, transB=trans_b, alpha=0.5), feeds, ["Y"],
          inits=inits, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ QOperator set


def q8(dtype, *shape):
    lo, hi = (-128, 128) if dtype == np.int8 else (0, 256)
    return randint(lo, hi, *shape, dtype=dtype)


def qparams(name, dtype, scale, zero):
    return {f"{name}_s": np.array(scale, np.float32), f"{name}_z": np.array(zero, dtype)}


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shapes", [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 5))])
def test_qlinear_binary(op, dtype, shapes):
    feeds = {"a": q8(dtype, *shapes[0]), "b": q8(dtype, *shapes[1])}
    inits = {**qparams("a", dtype, 0.05, 10 if dtype == np.uint8 else -3),
             **qparams("b", dtype, 0.02, 130 if dtype == np.uint8 else 4),
             **qparams("c", dtype, 0.07 if op == "QLinearAdd" else 0.5,
                       100 if dtype == np.uint8 else 2)}
    check(ms(op, ["a", "a_s", "a_z", "b", "b_s", "b_z", "c_s", "c_z"], ["c"]), feeds, ["c"],
          inits=inits)


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
def test_qlinear_binary_omitted_zero_points_are_zero(op):
    """onnxruntime's type inference refuses omitted zero points: it runs explicit zeros."""
    feeds = {"a": q8(np.uint8, 3, 4), "b": q8(np.uint8, 3, 4)}
    inits = {**qparams("a", np.uint8, 0.05, 0), **qparams("b", np.uint8, 0.02, 0),
             **qparams("c", np.uint8, 0.3, 0)}
    explicit = build([ms(op, ["a", "a_s", "a_z", "b", "b_s", "b_z", "c_s", "c_z"], ["c"])],
                     feeds, ["c"], inits, out_types={"c": TensorProto.UINT8})
    (want,) = run_ort(explicit, feeds)
    del inits["a_z"], inits["b_z"], inits["c_z"]
    omitted = build([ms(op, ["a", "a_s", "", "b", "b_s", "", "c_s"], ["c"])], feeds, ["c"],
                    inits, out_types={"c": TensorProto.UINT8})
    (got,) = run_tritort(omitted, feeds)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op,attrs", [("QLinearSigmoid", {}), ("QLinearLeakyRelu", {}),
                                      ("QLinearLeakyRelu", {"alpha": 0.3})])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_unary(op, attrs, dtype):
    """Every 8-bit value once, plus a random tensor."""
    codes = np.arange(256).astype(np.int64) - (128 if dtype == np.int8 else 0)
    feeds = {"x": np.concatenate([codes.astype(dtype), q8(dtype, 40)])}
    inits = {**qparams("x", dtype, 0.06, 120 if dtype == np.uint8 else -5),
             **qparams("y", dtype, 1 / 256 if op == "QLinearSigmoid" else 0.05,
                       0 if op == "QLinearSigmoid" and dtype == np.uint8 else 7)}
    check(ms(op, ["x", "x_s", "x_z", "y_s", "y_z"], ["y"], **attrs), feeds, ["y"], inits=inits)


@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (1, 4, 7)])
def test_qlinear_global_average_pool(channels_last, dtype, shape):
    x = q8(dtype, *shape)
    inits = {**qparams("x", dtype, 0.1, 20 if dtype == np.uint8 else -10),
             **qparams("y", dtype, 0.03, 5)}
    check(ms("QLinearGlobalAveragePool", ["x", "x_s", "x_z", "y_s", "y_z"], ["y"],
             channels_last=channels_last), {"x": x}, ["y"], inits=inits)


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 2], "auto_pad": "SAME_UPPER"},
    {"kernel_shape": [3, 3], "channels_last": 1, "pads": [1, 0, 1, 0]},
])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_average_pool(attrs, dtype):
    x = q8(dtype, 2, 3, 7, 6)
    if attrs.get("channels_last"):
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    inits = {**qparams("x", dtype, 0.1, 20 if dtype == np.uint8 else -10),
             **qparams("y", dtype, 0.08, 7)}
    node = ms("QLinearAveragePool", ["x", "x_s", "x_z", "y_s", "y_z"], ["y"], **attrs)
    model = build([node], {"x": x}, ["y"], inits,
                  out_types={"y": TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8})
    (want,) = run_ort(model, {"x": x})
    (got,) = run_tritort(model, {"x": x})
    assert got.dtype == want.dtype and got.shape == want.shape
    # these scales put some window means exactly half way between two codes (in exact
    # arithmetic); onnxruntime's float32 steps then round either way: one unit, rarely
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.05


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("axis", [1, -1])
def test_qlinear_concat(dtype, axis):
    a, b, c = q8(dtype, 2, 3, 4), q8(dtype, 2, 3, 4), q8(dtype, 2, 3, 4)
    inits = {**qparams("y", dtype, 0.05, 3), **qparams("a", dtype, 0.05, 3),
             **qparams("b", dtype, 0.11, -7 if dtype == np.int8 else 40),
             **qparams("c", dtype, 0.02, 0)}
    check(ms("QLinearConcat", ["y_s", "y_z", "a", "a_s", "a_z", "b", "b_s", "b_z", "c", "c_s",
                               "c_z"], ["y"], axis=axis), {"a": a, "b": b, "c": c}, ["y"],
          inits=inits)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("opset,axis", [(13, -1), (13, 1), (12, 1), (12, 2), (11, -1)])
def test_qlinear_softmax(dtype, opset, axis):
    """onnxruntime exponentiates through a float table and divides once: one unit apart at
    most where a value sits on a rounding boundary."""
    x = q8(dtype, 2, 3, 5)
    inits = {**qparams("x", dtype, 0.08, 10 if dtype == np.uint8 else -20),
             **qparams("y", dtype, 1 / 256, 0 if dtype == np.uint8 else -128)}
    node = ms("QLinearSoftmax", ["x", "x_s", "x_z", "y_s", "y_z"], ["y"], opset=opset,
              axis=axis)
    model = build([node], {"x": x}, ["y"], inits,
                  out_types={"y": TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8})
    (want,) = run_ort(model, {"x": x})
    (got,) = run_tritort(model, {"x": x})
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= 1


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_qlinear_average_pool_exact_away_from_ties(count_include_pad):
    """Scales whose ratio puts no window mean on a half code: the results are identical."""
    x = q8(np.uint8, 2, 3, 9, 8)
    inits = {**qparams("x", np.uint8, 0.0731, 17), **qparams("y", np.uint8, 0.0517, 9)}
    check(ms("QLinearAveragePool", ["x", "x_s", "x_z", "y_s", "y_z"], ["y"],
             kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
             count_include_pad=count_include_pad), {"x": x}, ["y"], inits=inits)
