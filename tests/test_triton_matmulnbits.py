"""com.microsoft MatMulNBits on Triton (interpreter) against onnxruntime: 4- and 8-bit
blockwise weights, packed / float / default zero points, a K that is not a multiple of the
block, batched A, bias, float16; one GEMM launch reading B packed."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from tests.test_contrib_ops import _seeded, build, ms, randn, run_ort  # noqa: F401
from tests.test_contrib_ops_quant import nbits_inputs
from tests.triton_env import requires_triton, triton_session

pytestmark = requires_triton
T = "TritonExecutionProvider"


def _kernels(sess) -> list[dict]:
    return next(ep for ep in sess._program.providers if ep.name == T).kernels


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("zp", ["packed", "float", None])
@pytest.mark.parametrize("k,block,a_shape", [(64, 16, (3,)), (80, 32, (2, 3)),
                                             (40, 16, (5,))])
def test_matmul_nbits_is_one_launch(bits, zp, k, block, a_shape):
    if bits == 8 and zp == "float":
        pytest.skip("onnxruntime's CPU kernel refuses 8-bit weights with float zero points")
    n = 24
    inputs, inits = nbits_inputs(n, k, bits, block, zp, rng_bias=(bits == 4))
    node = ms("MatMulNBits", inputs, ["Y"], K=k, N=n, bits=bits, block_size=block,
              name="mmnb")
    feeds = {"A": randn(*a_shape, k)}
    model = build([node], feeds, ["Y"], inits, out_types={"Y": TensorProto.FLOAT})
    sess = triton_session(model)
    reports = _kernels(sess)
    assert [(r["kind"], r["nodes"]) for r in reports] == [("tiled", ["mmnb"])]
    got, expected = sess.run(None, feeds)[0], run_ort(model, feeds)[0]
    # float32 sums in another order: cancellation leaves errors relative to the largest term
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_matmul_nbits_float16_and_packed_bytes_on_the_device(monkeypatch):
    import torch

    from tritort.codegen import gemm

    seen = []
    real = gemm.launch
    monkeypatch.setattr(gemm, "launch", lambda fn, a, b, *rest: (seen.append(b.dtype),
                                                                 real(fn, a, b, *rest))[1])
    k, n = 64, 16
    inputs, inits = nbits_inputs(n, k, 4, 32, "packed")
    inits["scales"] = inits["scales"].astype(np.float16)
    node = ms("MatMulNBits", inputs, ["Y"], K=k, N=n, bits=4, block_size=32, name="mmnb")
    feeds = {"A": randn(4, k).astype(np.float16)}
    model = build([node], feeds, ["Y"], inits, out_types={"Y": TensorProto.FLOAT16})
    got = triton_session(model).run(None, feeds)[0]
    assert seen == [torch.uint8]
    np.testing.assert_allclose(got.astype(np.float32), run_ort(model, feeds)[0].astype(
        np.float32), rtol=2e-3, atol=2e-3)


def test_two_bit_weights_stay_on_the_cpu_with_a_reason():
    k, n = 32, 8
    inputs, inits = nbits_inputs(n, k, 2, 16, None)
    node = ms("MatMulNBits", inputs, ["Y"], K=k, N=n, bits=2, block_size=16, name="mmnb")
    feeds = {"A": randn(2, k)}
    model = build([node], feeds, ["Y"], inits, out_types={"Y": TensorProto.FLOAT})
    sess = triton_session(model, on_triton=[])
    assert sess.placement()["mmnb"] == "CPUExecutionProvider"
    assert "bits=2" in sess.placement_report()
