"""Pointwise epilogues fused into MatMul / Gemm kernels (interpreter mode), against
onnxruntime: bias, activations, residual adds, casts, several outputs, dtypes."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from tests import models
from tests.test_triton_fusion import _check, _randn, _session
from tests.triton_env import requires_triton

pytestmark = requires_triton
T = "TritonExecutionProvider"


def _mm_model(epilogue, elem=TP.FLOAT, np_dtype=np.float32, gemm=False, out_elem=None,
              extra_outputs=()):
    """Y = epilogue(A @ W + bias); A [B, M, K] (2-D for Gemm), W constant."""
    k, n = 24, 20
    w = numpy_helper.from_array(_randn((k, n), np_dtype, 1), "W")
    bias = numpy_helper.from_array(_randn((n,), np_dtype, 2), "bias")
    if gemm:
        nodes = [helper.make_node("Gemm", ["A", "W", "bias"], ["mm"], name="mm", alpha=0.5)]
        a_shape = ["M", k]
    else:
        nodes = [helper.make_node("MatMul", ["A", "W"], ["mm0"], name="mm"),
                 helper.make_node("Add", ["mm0", "bias"], ["mm"], name="bias_add")]
        a_shape = ["B", "M", k]
    value = "mm"
    for i, (op, ins, attrs) in enumerate(epilogue):
        out = f"e{i}"
        nodes.append(helper.make_node(op, [value if x == "$" else x for x in ins], [out],
                                      name=f"ep{i}_{op.lower()}", **attrs))
        value = out
    nodes.append(helper.make_node("Identity", [value], ["Y"], name="out"))
    inputs = [models.vi("A", elem, a_shape)]
    if any("R" in ins for _, ins, _ in epilogue):
        inputs.append(models.vi("R", elem, a_shape[:-1] + [n]))
    outputs = [models.vi("Y", out_elem or elem, None)] + \
        [models.vi(v, elem, None) for v in extra_outputs]
    return models.make(nodes, inputs, outputs, [w, bias], opset=21)


def _feeds(model, np_dtype=np.float32, shape=(2, 7)):
    names = [i.name for i in model.graph.input]
    k = 24
    feeds = {"A": _randn(shape + (k,), np_dtype, 3)}
    if "R" in names:
        feeds["R"] = _randn(shape + (20,), np_dtype, 4)
    return feeds


def _kernels(groups):
    return [names for ep, names in groups if ep == T]


EPILOGUES = {
    "relu": [("Relu", ["$"], {})],
    "gelu_erf": [("Div", ["$", "sqrt2"], {}), ("Erf", ["e0"], {}), ("Add", ["e1", "one"], {}),
                 ("Mul", ["$", "e2"], {}), ("Mul", ["e3", "half"], {})],
    "gelu_tanh": [("Gelu", ["$"], {"approximate": "tanh"})],
    "sigmoid": [("Sigmoid", ["$"], {})],
    "silu": [("Sigmoid", ["$"], {}), ("Mul", ["$", "e0"], {})],
    "tanh": [("Tanh", ["$"], {})],
    "clip": [("Clip", ["$", "lo", "hi"], {})],
    "leaky": [("LeakyRelu", ["$"], {"alpha": 0.1})],
    "residual": [("Add", ["$", "R"], {})],
    "scale": [("Mul", ["$", "half"], {})],
}


def _with_constants(model, np_dtype=np.float32):
    consts = {"sqrt2": 2 ** 0.5, "one": 1.0, "half": 0.5, "lo": -0.5, "hi": 0.5}
    used = {x for n in model.graph.node for x in n.input}
    for name, v in consts.items():
        if name in used:
            model.graph.initializer.append(numpy_helper.from_array(np.array(v, np_dtype), name))
    return model


@pytest.mark.parametrize("kind", sorted(EPILOGUES))
def test_matmul_epilogue(kind):
    model = _with_constants(_mm_model(EPILOGUES[kind]))
    sess, groups = _session(model)
    kernels = _kernels(groups)
    assert kernels[0][0] == "mm" and "bias_add" in kernels[0], groups
    assert all(f"ep{i}_" in " ".join(kernels[0]) for i in range(len(EPILOGUES[kind])))
    for shape in ((2, 7), (1, 33)):
        _check(model, sess, _feeds(model, shape=shape), tol=1e-4)


@pytest.mark.parametrize("kind", ["relu", "residual"])
def test_gemm_epilogue(kind):
    model = _with_constants(_mm_model(EPILOGUES[kind], gemm=True))
    sess, groups = _session(model)
    assert _kernels(groups)[0][:2] == ["mm", "ep0_" + EPILOGUES[kind][0][0].lower()], groups
    _check(model, sess, _feeds(model, shape=(9,)), tol=1e-4)


def test_cast_epilogue_changes_the_stored_type():
    model = _mm_model([("Relu", ["$"], {}), ("Cast", ["e0"], {"to": TP.FLOAT16})],
                      out_elem=TP.FLOAT16)
    sess, groups = _session(model)
    assert _kernels(groups) == [["mm", "bias_add", "ep0_relu", "ep1_cast", "out"]], groups
    _check(model, sess, _feeds(model), tol=1e-3)


def test_intermediate_read_elsewhere_is_stored_too():
    """The pre-activation and the activation are both graph outputs: one kernel, two stores."""
    model = _mm_model([("Relu", ["$"], {}), ("Neg", ["e0"], {})], extra_outputs=["mm"])
    sess, groups = _session(model)
    assert _kernels(groups) == [["mm", "bias_add", "ep0_relu", "ep1_neg", "out"]], groups
    _check(model, sess, _feeds(model))


@pytest.mark.parametrize("dtype,elem,tol", [(np.float16, TP.FLOAT16, 1e-2),
                                            (ml_dtypes.bfloat16, TP.BFLOAT16, 4e-2)])
def test_low_precision_epilogue(dtype, elem, tol):
    chain = EPILOGUES["gelu_erf"] + [("Add", ["e4", "R"], {})]
    model = _with_constants(_mm_model(chain, elem=elem, np_dtype=dtype), dtype)
    sess, groups = _session(model)
    assert "ep5_add" in _kernels(groups)[0], groups
    feeds = _feeds(model, dtype)
    if dtype is np.float16:
        _check(model, sess, feeds, tol=tol)
        return
    # onnxruntime has no bfloat16 MatMul: the float32 model on the same (rounded) values
    ref = _with_constants(_mm_model(chain))
    for init in ref.graph.initializer:
        rounded = numpy_helper.to_array(init).astype(dtype).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    got = sess.run(None, feeds)[0].astype(np.float32)
    want = onnxruntime.InferenceSession(ref.SerializeToString(), providers=[
        "CPUExecutionProvider"]).run(None, {k: v.astype(np.float32) for k, v in feeds.items()})
    np.testing.assert_allclose(got, want[0], rtol=tol, atol=tol)


def test_epilogue_ir_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_DUMP_DIR", str(tmp_path))
    model = _with_constants(_mm_model(EPILOGUES["residual"]))
    sess, groups = _session(model)
    name = next(p.stem for p in tmp_path.glob("matmul_*.py"))
    source = (tmp_path / f"{name}.py").read_text()
    ir_text = (tmp_path / f"{name}.tileir.txt").read_text()
    assert "fused epilogue" in source and "nodes=[bias_add, ep0_add, out]" in source
    assert "tl.load(e1 + (out_idx_0 * e1_s0 + out_idx_1 * e1_s1 + out_idx_2 * e1_s2)" in source
    assert "bias_add" in ir_text
    _check(model, sess, _feeds(model))


# ------------------------------------------------------------------ operand prologues


def _prologue_model(a_node, b_node, a_elem=TP.FLOAT, b_elem=TP.FLOAT, op="MatMul"):
    """Y = op(prologue(A), prologue(B)) with A [M, 24] and B [24, 20] runtime inputs."""
    nodes, a, b = [], "A", "B"
    for name, spec in (("A", a_node), ("B", b_node)):
        if spec is None:
            continue
        kind, attrs, const = spec
        ins = [name] + ([f"{name}_c"] if const is not None else [])
        nodes.append(helper.make_node(kind, ins, [f"{name}_p"], name=f"pro_{name}", **attrs))
        if name == "A":
            a = f"{name}_p"
        else:
            b = f"{name}_p"
    nodes.append(helper.make_node(op, [a, b], ["Y"], name="mm"))
    out_elem = TP.FLOAT16 if a_node and a_node[1].get("to") == TP.FLOAT16 else \
        TP.BFLOAT16 if a_node and a_node[1].get("to") == TP.BFLOAT16 else TP.FLOAT
    inits = [numpy_helper.from_array(np.array(c, np.float32), f"{n}_c")
             for n, spec in (("A", a_node), ("B", b_node)) if spec and spec[2] is not None
             for c in [spec[2]]]
    inputs = [models.vi("A", a_elem, ["M", 24]), models.vi("B", b_elem, [24, 20])]
    return models.make(nodes, inputs, [models.vi("Y", out_elem, None)], inits, opset=21)


@pytest.mark.parametrize("a_node,b_node,op", [
    (("Mul", {}, 0.3), None, "MatMul"),
    (None, ("Div", {}, 3.0), "MatMul"),
    (("Mul", {}, 0.3), ("Mul", {}, -2.0), "Gemm"),
])
def test_scale_prologue_is_applied_to_loaded_tiles(a_node, b_node, op):
    model = _prologue_model(a_node, b_node, op=op)
    sess, groups = _session(model)
    kernels = _kernels(groups)
    assert len(kernels) == 1 and kernels[0][-1] == "mm", groups
    feeds = {"A": _randn((9, 24)), "B": _randn((24, 20), seed=5)}
    _check(model, sess, feeds, tol=1e-5)


@pytest.mark.parametrize("to,tol", [(TP.FLOAT16, 2e-3), (TP.BFLOAT16, 2e-2)])
def test_cast_prologue_reads_the_wide_source(to, tol, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_DUMP_DIR", str(tmp_path))
    model = _prologue_model(("Cast", {"to": to}, None), ("Cast", {"to": to}, None))
    sess, groups = _session(model)
    assert _kernels(groups) == [["pro_A", "pro_B", "mm"]], groups
    source = next(tmp_path.glob("matmul_*.py")).read_text()
    assert "prologue on operand A: pro_A (cast float ->" in source
    feeds = {"A": _randn((9, 24)), "B": _randn((24, 20), seed=5)}
    got = sess.run(None, feeds)[0].astype(np.float32)
    # onnxruntime in float32 on the values rounded as the graph's Cast rounds them
    low = np.float16 if to == TP.FLOAT16 else ml_dtypes.bfloat16
    ref = onnxruntime.InferenceSession(_prologue_model(None, None).SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(
        None, {k: v.astype(low).astype(np.float32) for k, v in feeds.items()})[0]
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


def test_operand_read_elsewhere_is_not_a_prologue():
    model = _prologue_model(("Mul", {}, 0.3), None)
    model.graph.output.append(helper.make_value_info("A_p", helper.make_tensor_type_proto(
        TP.FLOAT, None)))
    sess, groups = _session(model)
    assert not any("pro_A" in k and "mm" in k for k in _kernels(groups)), groups
    _check(model, sess, {"A": _randn((9, 24)), "B": _randn((24, 20), seed=5)})
