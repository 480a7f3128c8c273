"""Where values live: weights on the device once per session, shapes read in place, and the
placement report naming what a run reads back from the device."""
from __future__ import annotations

import numpy as np
import onnxruntime
import torch
from onnx import helper, numpy_helper

import tritort as ort
from tests import models
from tests.triton_env import requires_triton, triton_session

pytestmark = requires_triton


def _two_output_model():
    """Y = X @ W + B, Z = Relu(Y) * S: three initializers read on the device."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B"),
             numpy_helper.from_array(np.array(0.5, np.float32), "S")]
    nodes = [helper.make_node("MatMul", ["X", "W"], ["P"], name="mm"),
             helper.make_node("Add", ["P", "B"], ["Y"], name="bias"),
             helper.make_node("Relu", ["Y"], ["R"], name="relu"),
             helper.make_node("Mul", ["R", "S"], ["Z"], name="scale")]
    return models.make(nodes, [models.vi("X", shape=["N", 8])],
                       [models.vi("Y", shape=["N", 4]), models.vi("Z", shape=["N", 4])], inits)


def test_each_weight_is_uploaded_once_for_every_plan(monkeypatch):
    model = _two_output_model()
    sess = triton_session(model)
    ep = sess._providers[0]
    weights = {id(v): k for k, v in sess._program.graph.initializers.items()}
    uploads = []
    real = ep.to_device
    monkeypatch.setattr(ep, "to_device",
                        lambda v: (uploads.append(weights[id(v)]) if id(v) in weights else None)
                        or real(v))
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    reference = onnxruntime.InferenceSession(model.SerializeToString(),
                                             providers=["CPUExecutionProvider"])
    y, z = reference.run(None, {"X": x})
    # four fetch sets, host and device plans, IOBinding: seven plans in all
    np.testing.assert_allclose(sess.run(["Y"], {"X": x})[0], y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sess.run(["Z"], {"X": x})[0], z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sess.run(None, {"X": x})[1], z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sess.run(["Z", "Y"], {"X": x})[1], y, rtol=1e-5, atol=1e-6)
    values = sess.run_with_ort_values(["Z"], {"X": ort.OrtValue.from_dlpack(torch.from_numpy(x))})
    np.testing.assert_allclose(values[0].numpy(), z, rtol=1e-5, atol=1e-6)
    binding = sess.io_binding()
    binding.bind_input("X", torch.from_numpy(x))
    binding.bind_output("Y")
    sess.run_with_iobinding(binding)
    np.testing.assert_allclose(binding.copy_outputs_to_cpu()[0], y, rtol=1e-5, atol=1e-6)
    assert sorted(uploads) == sorted(set(uploads)) and set(uploads) <= {"W", "B", "S"}, uploads
    assert len(uploads) == len(sess._plans.device_constants) >= 2


def _shape_model():
    """Y = Reshape(Relu(X), Concat(Shape(X)[0:1], [-1])): Shape reads X where it lives."""
    nodes = [helper.make_node("Relu", ["X"], ["R"], name="relu"),
             helper.make_node("Shape", ["X"], ["S"], name="shape", end=1),
             helper.make_node("Concat", ["S", "minus_one"], ["T"], name="target", axis=0),
             helper.make_node("Reshape", ["R", "T"], ["Y"], name="flatten")]
    return models.make(nodes, [models.vi("X", shape=["N", 3, 4])], [models.vi("Y", shape=None)],
                       [numpy_helper.from_array(np.array([-1], np.int64), "minus_one")])


def test_shape_reads_a_device_value_in_place():
    sess = triton_session(_shape_model(), on_triton=["relu", "flatten"])
    plan = sess._plans.get(["Y"], keep_on_device=True)
    copies = [s.label for s in plan.steps if s.op_type == "Copy"]
    assert copies == ["copy X from anywhere to triton-interpreter"], copies
    assert plan.host_reads == ()
    assert sess.placement() == {"relu": "TritonExecutionProvider",
                                "shape": "CPUExecutionProvider",
                                "target": "CPUExecutionProvider",
                                "flatten": "TritonExecutionProvider"}
    assert sess.placement_report().endswith(
        "host synchronizations during a run (device values read on the host): none")
    x = torch.randn(2, 3, 4)
    (y,) = sess.run_with_ort_values(["Y"], {"X": ort.OrtValue.from_dlpack(x)})
    np.testing.assert_array_equal(y.numpy(), np.maximum(x.numpy(), 0).reshape(2, 12))


def test_the_report_names_what_a_run_reads_back_from_the_device():
    # NonZero runs on the CPU: the device's Relu result must come back to the host for it
    model = models.relu_nonzero()
    sess = triton_session(model, on_triton=["relu"])
    assert sess._plans.get(["Y"], keep_on_device=True).host_reads == ("R",)
    assert sess.placement_report().endswith(
        "host synchronizations during a run (device values read on the host): R")
    x = np.array([-1, 2, 0, 3], np.float32)
    np.testing.assert_array_equal(sess.run(None, {"X": x})[0], [[1, 3]])
