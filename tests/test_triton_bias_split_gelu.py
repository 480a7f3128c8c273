"""com.microsoft BiasSplitGelu on the Triton provider (interpreter mode). onnxruntime runs it
only on CUDA, so the oracle is a float64 NumPy reference of the formula, and the node must
agree with tritort's own CPU provider too."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto
from scipy.special import erf

import tritort as ort
from tests.test_contrib_ops import build, ms, randn
from tests.test_triton_contrib import _kernels, _session
from tests.triton_env import requires_triton

pytestmark = requires_triton
T = "TritonExecutionProvider"


def _reference(x, bias):
    s = x.astype(np.float64) + bias.astype(np.float64)
    half = s.shape[-1] // 2
    right = s[..., half:]
    return s[..., :half] * 0.5 * right * (1 + erf(right / np.sqrt(2)))


def _model(feeds, elem):
    return build([ms("BiasSplitGelu", ["x", "bias"], ["y"], name="bsg")], feeds, ["y"],
                 out_types={"y": elem})


@pytest.mark.parametrize("dtype,elem,tol", [(np.float32, TensorProto.FLOAT, 1e-5),
                                            (np.float16, TensorProto.FLOAT16, 2e-3)])
@pytest.mark.parametrize("shape", [(2, 3, 8), (1, 5, 64), (2, 2, 320)])
def test_bias_split_gelu_on_triton(shape, dtype, elem, tol):
    feeds = {"x": randn(*shape, dtype=dtype, scale=2.0),
             "bias": randn(shape[-1], dtype=dtype)}
    model = _model(feeds, elem)
    sess = _session(model)
    assert sess.placement()["bsg"] == T
    assert _kernels(sess) == [["bsg"]]  # one kernel
    (got,) = sess.run(None, feeds)
    assert got.dtype == dtype and got.shape == (*shape[:-1], shape[-1] // 2)
    np.testing.assert_allclose(got.astype(np.float64), _reference(feeds["x"], feeds["bias"]),
                               rtol=tol, atol=tol)
    cpu = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = cpu.run(None, feeds)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol,
                               atol=tol)


def test_bias_split_gelu_odd_width_stays_on_the_cpu():
    feeds = {"x": randn(2, 3, 7), "bias": randn(7)}
    sess = _session(_model(feeds, TensorProto.FLOAT))
    assignment = sess._program.partition.assignments["bsg"]
    assert assignment.provider.name == "CPUExecutionProvider"
    assert "odd last dimension 7" in str(assignment.declined)
