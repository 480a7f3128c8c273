"""float8 GEMM: DequantizeLinear -> MatMul with per-tensor scales becomes one Float8MatMul
(tritort/patterns.py), run on Triton (interpreter) and on the CPU provider, against
onnxruntime running the original graph (float32 or the output type)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort as ort
from tests import models
from tests.triton_env import requires_triton, triton_runs
from tritort import loader, optimizer
from tritort.contracts import INTERNAL_DOMAIN
from tritort.options import GraphOptimizationLevel

T = "TritonExecutionProvider"
_rng = np.random.default_rng(8)
_F8 = {TP.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn, TP.FLOAT8E5M2: ml_dtypes.float8_e5m2}


def fp8_model(a_type=TP.FLOAT8E4M3FN, b_type=TP.FLOAT8E4M3FN, scale_type=TP.FLOAT,
              a_shape=("B", "M", 32), n=24, relu=False, quantize_a=False):
    """Y = [Relu](DQ(A8, sa) @ DQ(W8, sw)); A8 a graph input (or Q(A) when quantize_a)."""
    k = a_shape[-1]
    scale_np = {TP.FLOAT: np.float32, TP.FLOAT16: np.float16,
                TP.BFLOAT16: ml_dtypes.bfloat16}[scale_type]
    w8 = (_rng.standard_normal((k, n)) * 4).astype(_F8[b_type])
    inits = [numpy_helper.from_array(w8, "W8"),
             numpy_helper.from_array(np.array(0.05, scale_np), "sw"),
             numpy_helper.from_array(np.array(0.125, scale_np), "sa")]
    nodes = []
    a_in = "A8" if quantize_a else "A"
    if quantize_a:
        inits.append(numpy_helper.from_array(np.array(0, _F8[a_type]), "zp"))
        nodes.append(helper.make_node("QuantizeLinear", ["A", "sa", "zp"], ["A8"], name="q"))
    nodes += [helper.make_node("DequantizeLinear", [a_in, "sa"], ["a"], name="dq_a"),
              helper.make_node("DequantizeLinear", ["W8", "sw"], ["w"], name="dq_w"),
              helper.make_node("MatMul", ["a", "w"], ["mm"] if relu else ["Y"], name="mm")]
    if relu:
        nodes.append(helper.make_node("Relu", ["mm"], ["Y"], name="relu"))
    inputs = [models.vi("A", scale_type if quantize_a else a_type, list(a_shape))]
    return models.make(nodes, inputs, [models.vi("Y", scale_type, None)], inits, opset=21)


def feeds_for(model, a_type=TP.FLOAT8E4M3FN, shape=(2, 5, 32), quantize_a=False,
              scale_np=np.float32):
    a = _rng.standard_normal(shape) * (0.5 if quantize_a else 8)
    return {"A": a.astype(scale_np) if quantize_a else a.astype(_F8[a_type])}


def reference(model, feeds):
    """onnxruntime on the unfused graph; onnx.reference where onnxruntime's Python binding
    cannot take the float8 feeds."""
    if any(v.dtype in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2) for v in feeds.values()):
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model).run(None, feeds)[0]
    so = onnxruntime.SessionOptions()  # its own QDQ fusion rejects float8 operands
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(model.SerializeToString(), so,
                                        providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_pattern_becomes_one_node_and_weights_stay_float8():
    graph = optimizer.optimize(loader.load(fp8_model().SerializeToString()).graph,
                               GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert [(n.domain, n.op_type) for n in graph.nodes] == [(INTERNAL_DOMAIN, "Float8MatMul")]
    assert graph.initializers["W8"].dtype == ml_dtypes.float8_e4m3fn


@pytest.mark.parametrize("providers", [["CPUExecutionProvider"], [T, "CPUExecutionProvider"]])
@pytest.mark.parametrize("a_type,b_type", [(TP.FLOAT8E4M3FN, TP.FLOAT8E4M3FN),
                                           (TP.FLOAT8E5M2, TP.FLOAT8E5M2),
                                           (TP.FLOAT8E4M3FN, TP.FLOAT8E5M2)])
def test_float8_matmul_matches_onnxruntime(providers, a_type, b_type):
    if T in providers and not triton_runs():
        pytest.skip("needs Triton")
    model = fp8_model(a_type, b_type)
    sess = ort.InferenceSession(model.SerializeToString(), providers=providers)
    placed = sess._program.partition.assignments
    assert placed["mm"].provider.name == providers[0]
    for shape in ((2, 5, 32), (1, 17, 32)):
        feeds = feeds_for(model, a_type, shape)
        # products of float8 values are exact in fp32: only the summation order differs
        np.testing.assert_allclose(sess.run(None, feeds)[0], reference(model, feeds),
                                   rtol=1e-5, atol=1e-4)


@requires_triton
@pytest.mark.parametrize("scale_type,tol", [(TP.FLOAT16, 2e-3), (TP.BFLOAT16, 1e-2)])
def test_low_precision_output_and_fused_relu(scale_type, tol):
    model = fp8_model(scale_type=scale_type, relu=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=[T, "CPUExecutionProvider"])
    assert sess._program.partition.assignments["relu"].provider.name == T
    feeds = feeds_for(model)
    got = sess.run(None, feeds)[0].astype(np.float32)
    # the reference in float32 (onnxruntime's MatMul lacks bfloat16): same weights, the
    # scales widened from their type; float8 values are exact in every type here
    ref_model = type(model)()
    ref_model.CopyFrom(model)
    for init in ref_model.graph.initializer:
        if init.name in ("sa", "sw"):
            v = numpy_helper.to_array(init).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(v, init.name))
    ref_model.graph.output[0].type.tensor_type.elem_type = TP.FLOAT
    want = reference(ref_model, feeds)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@requires_triton
def test_quantize_dequantize_matmul():
    model = fp8_model(quantize_a=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=[T, "CPUExecutionProvider"])
    assert sess._program.partition.assignments["mm"].provider.name == T
    feeds = feeds_for(model, quantize_a=True)
    np.testing.assert_allclose(sess.run(None, feeds)[0], reference(model, feeds),
                               rtol=1e-5, atol=1e-4)
