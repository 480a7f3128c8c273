"""GatherND on Triton (interpreter) against onnxruntime: index tuples of any length, batch
dims, negative indices, views of the data."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper

from tests import models
from tests.triton_env import requires_triton, triton_session

pytestmark = requires_triton
_rng = np.random.default_rng(3)


def _model(data_shape, index_shape, batch_dims=0):
    node = helper.make_node("GatherND", ["D", "I"], ["Y"], name="gather_nd",
                            batch_dims=batch_dims)
    return models.make([node], [models.vi("D", shape=list(data_shape)),
                                models.vi("I", TensorProto.INT64, list(index_shape))],
                       [models.vi("Y", shape=None)], opset=13)


def _indices(data_shape, index_shape, batch_dims):
    depth = index_shape[-1]
    dims = data_shape[batch_dims:batch_dims + depth]
    columns = [_rng.integers(-d, d, size=index_shape[:-1]) for d in dims]  # negatives too
    return np.stack(columns, axis=-1).astype(np.int64)


@pytest.mark.parametrize("data_shape, index_shape, batch_dims", [
    ((5, 4, 3), (2, 2), 0),  # pairs: rows of the last dim
    ((5, 4, 3), (3, 1), 0),  # single indices: whole slices
    ((5, 4, 3), (2, 3), 0),  # full tuples: scalars
    ((6,), (1,), 0),  # a rank-0 result
    ((2, 4, 3), (2, 5, 1), 1),  # per-batch lookups
    ((2, 3, 4, 5), (2, 3, 2, 1), 2),  # two batch dims
    ((4, 6), (3, 7, 2), 0),  # several tuples per row
])
def test_against_onnxruntime(data_shape, index_shape, batch_dims):
    model = _model(data_shape, index_shape, batch_dims)
    sess = triton_session(model)
    data = _rng.standard_normal(data_shape).astype(np.float32)
    feeds = {"D": data, "I": _indices(data_shape, index_shape, batch_dims)}
    expected = onnxruntime.InferenceSession(model.SerializeToString(),
                                            providers=["CPUExecutionProvider"]
                                            ).run(None, feeds)[0]
    got = sess.run(None, feeds)[0]
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_bert_mask_path_stays_on_the_device():
    # exporters gather the attention mask's rows with GatherND after a Cast: no host round trip
    nodes = [helper.make_node("Cast", ["M"], ["B"], name="cast", to=TensorProto.BOOL),
             helper.make_node("GatherND", ["B", "I"], ["G"], name="gather_nd"),
             helper.make_node("Not", ["G"], ["Y"], name="not")]
    model = models.make(nodes, [models.vi("M", TensorProto.INT64, ["S", 8]),
                                models.vi("I", TensorProto.INT64, ["K", 1])],
                        [models.vi("Y", TensorProto.BOOL, None)], opset=13)
    sess = triton_session(model)
    mask = (_rng.random((3, 8)) > 0.5).astype(np.int64)
    index = np.array([[2], [0]], np.int64)
    np.testing.assert_array_equal(sess.run(None, {"M": mask, "I": index})[0],
                                  ~mask.astype(bool)[[2, 0]])
    assert sess.placement_report().endswith("(device values read on the host): none")
