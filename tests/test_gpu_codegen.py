"""The Triton provider on a real CUDA device (skipped without one)."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper

import tritort as ort
from tests import models

pytestmark = pytest.mark.gpu
# full float32 products: the comparisons below are tighter than TF32 (use_tf32 defaults to 1)
TRITON_FIRST = [("TritonExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]


def _block():
    rng = np.random.default_rng(5)
    inits = [helper.make_tensor(n, TP.FLOAT, [64], rng.standard_normal(64).astype(np.float32))
             for n in ("gamma", "beta", "bias")]
    w = helper.make_tensor("w", TP.FLOAT, [64, 64],
                           (rng.standard_normal((64, 64)) / 8).astype(np.float32).ravel())
    nodes = [helper.make_node("LayerNormalization", ["X", "gamma", "beta"], ["ln"], axis=-1),
             helper.make_node("MatMul", ["ln", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "bias"], ["h"]),
             helper.make_node("Gelu", ["h"], ["g"]),
             helper.make_node("Add", ["g", "X"], ["res"]),
             helper.make_node("Softmax", ["res"], ["Y"], axis=-1)]
    return models.make(nodes, [models.vi("X", shape=["B", "S", 64])],
                       [models.vi("Y", shape=["B", "S", 64])], [w] + inits, opset=20)


def test_transformer_block_on_cuda_matches_onnxruntime():
    model = _block()
    sess = ort.InferenceSession(model.SerializeToString(), providers=TRITON_FIRST)
    assert all(a.provider.name == "TritonExecutionProvider"
               for a in sess._program.partition.assignments.values()), sess.placement_report()
    ref = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((4, 33, 64)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"X": x})[0], ref.run(None, {"X": x})[0],
                               rtol=1e-4, atol=1e-5)


def test_cuda_tensor_in_cuda_tensor_out_through_iobinding():
    import torch

    model = _block()
    sess = ort.InferenceSession(model.SerializeToString(), providers=TRITON_FIRST)
    x = torch.randn(2, 7, 64, device="cuda")
    binding = sess.io_binding()
    binding.bind_input("X", x)
    binding.bind_output("Y", "cuda")
    sess.run_with_iobinding(binding)
    y = torch.from_dlpack(binding.get_outputs()[0])
    assert y.device.type == "cuda"
    ref = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(y.cpu().numpy(), ref.run(None, {"X": x.cpu().numpy()})[0],
                               rtol=1e-4, atol=1e-5)
