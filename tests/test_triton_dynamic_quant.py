"""DynamicQuantizeLinear on Triton (interpreter) against onnxruntime: the node conformance
cases' inputs, an all-zero input (scale 1), one-signed ranges, an
input long enough that the range reduction loops over chunks, and placement (the node runs
on Triton as one unit; the scale never leaves the device)."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper

from tests import models
from tests.conformance import node_cases, to_value
from tests.triton_env import requires_triton, triton_session

pytestmark = requires_triton
T = "TritonExecutionProvider"
_rng = np.random.default_rng(1311)


def _model(shape):
    node = helper.make_node("DynamicQuantizeLinear", ["X"], ["Y", "S", "Z"], name="dql")
    return models.make([node], [models.vi("X", TP.FLOAT, list(shape))],
                       [models.vi("Y", TP.UINT8, None), models.vi("S", TP.FLOAT, None),
                        models.vi("Z", TP.UINT8, None)], opset=13)


def _check(x):
    m = _model(x.shape)
    sess = triton_session(m)
    got = sess.run(None, {"X": x})
    want = onnxruntime.InferenceSession(m.SerializeToString(), providers=[
        "CPUExecutionProvider"]).run(None, {"X": x})
    for g, w, dtype in zip(got, want, (np.uint8, np.float32, np.uint8)):
        assert g.dtype == dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    return sess, got


@pytest.mark.parametrize("case", ["test_dynamicquantizelinear",
                                  "test_dynamicquantizelinear_max_adjusted",
                                  "test_dynamicquantizelinear_min_adjusted"])
def test_conformance_inputs(case):
    x = to_value(node_cases()[case].data_sets[0][0][0])
    _, got = _check(np.asarray(x, np.float32))
    # and the case's own expected outputs
    for g, want in zip(got, node_cases()[case].data_sets[0][1]):
        np.testing.assert_array_equal(g, to_value(want))


def test_all_zero_input_has_scale_one():
    _, (y, scale, zero) = _check(np.zeros((3, 5), np.float32))
    assert scale == 1.0 and zero == 0 and not y.any()


@pytest.mark.parametrize("lo,hi", [(0.5, 4.0), (-7.0, -0.25), (-3.0, 1.0)])
def test_one_signed_and_mixed_ranges(lo, hi):
    _check(_rng.uniform(lo, hi, (4, 6, 7)).astype(np.float32))


def test_ties_round_half_to_even():
    # scale 1 (range 255) puts x = k + 0.5 exactly on ties
    x = np.concatenate([[-127.0, 128.0], np.arange(-20, 20) + 0.5]).astype(np.float32)
    _, (y, scale, zero) = _check(x)
    assert scale == 1.0 and zero == 127


def test_long_input_reduces_over_chunks():
    x = _rng.normal(0, 1, 1_100_003).astype(np.float32)
    x[777_777] = 9.5  # the range's ends lie in one chunk, not the first
    x[1_100_000] = -6.25
    sess, _ = _check(x)
    report = next(ep for ep in sess._program.providers if ep.name == T).kernels
    assert len(report) == 1
