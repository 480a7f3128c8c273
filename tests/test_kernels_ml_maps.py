"""ZipMap, CategoryMapper and CastMap against onnxruntime, and the delegated ML ops run."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper

import tritort as ort


def ml_model(node, inputs, outputs):
    g = helper.make_graph([node], "g", inputs, outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = 10
    return m.SerializeToString()


def both(data, feed):
    ref = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(data).run(None, feed), ref.run(None, feed)


@pytest.mark.parametrize("labels", [{"classlabels_int64s": [10, 20, 30]},
                                    {"classlabels_strings": ["a", "b", "c"]}])
def test_zipmap(labels):
    key = TP.INT64 if "classlabels_int64s" in labels else TP.STRING
    out = helper.make_value_info("Z", helper.make_sequence_type_proto(helper.make_map_type_proto(
        key, helper.make_tensor_type_proto(TP.FLOAT, []))))
    data = ml_model(helper.make_node("ZipMap", ["X"], ["Z"], domain="ai.onnx.ml", **labels),
                    [helper.make_tensor_value_info("X", TP.FLOAT, [2, 3])], [out])
    x = np.array([[.1, .2, .7], [.3, .3, .4]], np.float32)
    got, ref = both(data, {"X": x})
    assert got[0] == ref[0]


def test_category_mapper_both_directions():
    node = helper.make_node("CategoryMapper", ["X"], ["Y"], domain="ai.onnx.ml",
                            cats_strings=["a", "b"], cats_int64s=[1, 2], default_int64=-7,
                            default_string="zz")
    data = ml_model(node, [helper.make_tensor_value_info("X", TP.STRING, [3])],
                    [helper.make_tensor_value_info("Y", TP.INT64, [3])])
    got, ref = both(data, {"X": np.array(["a", "c", "b"], dtype=object)})
    np.testing.assert_array_equal(got[0], ref[0])
    data = ml_model(node, [helper.make_tensor_value_info("X", TP.INT64, [3])],
                    [helper.make_tensor_value_info("Y", TP.STRING, [3])])
    got, ref = both(data, {"X": np.array([2, 5, 1], dtype=np.int64)})
    assert got[0].tolist() == ref[0].tolist()


def test_delegated_linear_regressor_matches_onnxruntime():
    node = helper.make_node("LinearRegressor", ["X"], ["Y"], domain="ai.onnx.ml",
                            coefficients=[1.0, -2.0, 0.5], intercepts=[0.25])
    data = ml_model(node, [helper.make_tensor_value_info("X", TP.FLOAT, [2, 3])],
                    [helper.make_tensor_value_info("Y", TP.FLOAT, [2, 1])])
    got, ref = both(data, {"X": np.arange(6, dtype=np.float32).reshape(2, 3)})
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
