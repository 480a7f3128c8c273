"""com.microsoft FusedMatMul, FusedConv, MatMulIntegerToFloat and DynamicQuantizeMatMul
rewritten into ai.onnx ops (tritort/contrib_decompose_linear.py), against onnxruntime on the
CPU provider and on Triton (interpreter), where no node may stay on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import tritort as ort
from tests.test_contrib_ops import (  # noqa: F401  (_seeded: the autouse seeding fixture)
    _seeded, assert_close, build, ms, randn, run_ort,
)
from tests.test_contrib_ops_quant import dynamic_quantize_matmul_case, \
    matmul_integer_to_float_case
from tests.triton_env import requires_triton

TRITON = "TritonExecutionProvider"
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "triton": [TRITON, "CPUExecutionProvider"]}
providers = pytest.mark.parametrize("provider", [
    "cpu", pytest.param("triton", marks=requires_triton)])
CONTRIB = {"FusedMatMul", "FusedConv", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}


def _check(node, feeds, inits, provider, rtol=1e-5, atol=1e-5):
    want = run_ort(build([node], feeds, ["y"], inits), feeds)
    model = build([node], feeds, ["y"], inits, out_types={"y": TensorProto.FLOAT})
    sess = ort.InferenceSession(model.SerializeToString(), providers=PROVIDERS[provider])
    got = sess.run(None, feeds)
    assert_close(got[0], want[0], rtol, atol, "y")
    ops = {a.node.op_type for a in sess._program.partition.assignments.values()}
    assert not ops & CONTRIB, ops
    if provider == "triton":
        placed = sess.placement()
        assert set(placed.values()) == {TRITON}, placed
    return sess


@providers
@pytest.mark.parametrize("sa,sb,attrs", [
    ((3, 4), (4, 5), {}),
    ((3, 4), (5, 4), {"transB": 1, "alpha": 0.125}),
    ((4, 3), (4, 5), {"transA": 1}),
    ((2, 4, 3), (2, 5, 4), {"transA": 1, "transB": 1, "alpha": -2.0}),
    ((2, 3, 4), (4, 5), {}),
    ((4, 2, 3, 5), (2, 3, 4, 6), {"transBatchA": 1, "transA": 1}),
    ((2, 3, 4, 5), (6, 2, 3, 5), {"transBatchB": 1, "transB": 1}),
    ((4, 3, 5), (5, 3, 6), {"transBatchA": 1, "transBatchB": 1, "alpha": 0.5}),
])
def test_fused_matmul(provider, sa, sb, attrs):
    _check(ms("FusedMatMul", ["a", "b"], ["y"], **attrs), {"a": randn(*sa), "b": randn(*sb)},
           None, provider)


@providers
@pytest.mark.parametrize("activation,params,with_z", [
    (None, None, True), ("Relu", None, False), ("Tanh", None, True), ("Sigmoid", None, False),
    ("LeakyRelu", [0.2], True), ("Clip", [-0.5, 0.75], False), ("HardSigmoid", [0.3, 0.4], True)])
def test_fused_conv(provider, activation, params, with_z):
    feeds = {"x": randn(1, 3, 6, 6)}
    inits = {"w": randn(4, 3, 3, 3), "b": randn(4)}
    inputs = ["x", "w", "b"]
    if with_z:
        feeds["z"] = randn(1, 4, 3, 3)
        inputs.append("z")
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    if activation:
        attrs["activation"] = activation
    if params:
        attrs["activation_params"] = params
    _check(ms("FusedConv", inputs, ["y"], **attrs), feeds, inits, provider)


@providers
def test_fused_conv_grouped_same_padding(provider):
    _check(ms("FusedConv", ["x", "w"], ["y"], group=3, auto_pad="SAME_UPPER",
              activation="Relu"), {"x": randn(1, 6, 5, 4)}, {"w": randn(6, 2, 3, 3)}, provider)


@providers
@pytest.mark.parametrize("a_dtype,b_dtype", [(np.uint8, np.int8), (np.int8, np.int8),
                                             (np.uint8, np.uint8)])
@pytest.mark.parametrize("per_column,with_zp,bias", [(False, True, True), (True, False, False),
                                                     (True, True, True)])
def test_matmul_integer_to_float(provider, a_dtype, b_dtype, per_column, with_zp, bias):
    inputs, feeds, inits = matmul_integer_to_float_case(a_dtype, b_dtype, per_column, with_zp,
                                                        bias)
    _check(ms("MatMulIntegerToFloat", inputs, ["y"]), feeds, inits, provider)


@providers
@pytest.mark.parametrize("b_dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("per_column,zero_point,bias", [(False, False, False),
                                                        (True, True, True), (False, True, True)])
def test_dynamic_quantize_matmul(provider, b_dtype, per_column, zero_point, bias):
    inputs, feeds, inits = dynamic_quantize_matmul_case(b_dtype, per_column, zero_point, bias)
    _check(ms("DynamicQuantizeMatMul", inputs, ["y"]), feeds, inits, provider)


def test_refused_forms_keep_the_node_and_still_match():
    """Below opset 13 the rewrite refuses; the contrib kernel still runs."""
    feeds = {"a": randn(3, 4), "b": randn(4, 5)}
    node = ms("FusedMatMul", ["a", "b"], ["y"], alpha=2.0)
    want = run_ort(build([node], feeds, ["y"], opset=12), feeds)
    model = build([node], feeds, ["y"], opset=12, out_types={"y": TensorProto.FLOAT})
    sess = ort.InferenceSession(model.SerializeToString(), providers=PROVIDERS["cpu"])
    assert_close(sess.run(None, feeds)[0], want[0], 1e-5, 1e-5)
    ops = {a.node.op_type for a in sess._program.partition.assignments.values()}
    assert "FusedMatMul" in ops
