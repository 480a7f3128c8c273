"""Bad input gives ORT's exception classes with clear messages; sessions stay usable."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort as ort
from tests import models


def good_feeds():
    return {"A": np.ones((2, 3), np.float32), "B": np.ones((2, 3), np.float32)}


@pytest.fixture()
def sess():
    return ort.InferenceSession(models.add_relu().SerializeToString())


def still_works(sess):
    y, z = sess.run(None, good_feeds())
    np.testing.assert_array_equal(y, np.full((2, 3), 2, np.float32))
    np.testing.assert_array_equal(z, np.full((2, 3), 2, np.float32))


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ort.NoSuchFile, match="nope.onnx"):
        ort.InferenceSession(str(missing))


@pytest.mark.parametrize("data", [b"\x08\x01\x12garbage\xff\xff\xff", b"not a model at all"])
def test_bytes_that_do_not_parse(data):
    with pytest.raises(ort.InvalidProtobuf):
        ort.InferenceSession(data)


def test_model_of_wrong_type():
    with pytest.raises(ort.InvalidArgument, match="path, bytes or onnx.ModelProto"):
        ort.InferenceSession(12)


def test_unknown_op_in_standard_and_custom_domains():
    m = models.make([helper.make_node("Frobnicate", ["X"], ["Y"], name="frob")],
                    [models.vi("X", shape=[2])], [models.vi("Y", shape=[2])])
    with pytest.raises(ort.InvalidGraph, match="Frobnicate"):
        ort.InferenceSession(m)
    m = models.make([helper.make_node("Frobnicate", ["X"], ["Y"], name="frob", domain="my.ops")],
                    [models.vi("X", shape=[2])], [models.vi("Y", shape=[2])])
    m.opset_import.append(helper.make_opsetid("my.ops", 1))
    with pytest.raises(ort.NotImplemented, match=r"Frobnicate.*'frob'"):
        ort.InferenceSession(m)


def test_output_of_unknown_rank_loads_as_in_onnxruntime():
    m = models.make([helper.make_node("Relu", ["X"], ["Y"])], [models.vi("X", shape=[2])],
                    [models.vi("Y")])
    x = np.array([-1, 1], np.float32)
    ref = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(ort.InferenceSession(m).run(None, {"X": x})[0],
                                  ref.run(None, {"X": x})[0])


def test_unknown_attribute():
    m = models.make([helper.make_node("Relu", ["X"], ["Y"], name="r", colour=3)],
                    [models.vi("X", shape=[2])], [models.vi("Y", shape=[2])])
    with pytest.raises(ort.InvalidGraph, match="colour"):
        ort.InferenceSession(m)


def test_input_nothing_produces():
    m = models.make([helper.make_node("Add", ["X", "ghost"], ["Y"], name="adder")],
                    [models.vi("X", shape=[2])], [models.vi("Y", shape=[2])])
    with pytest.raises(ort.InvalidGraph, match=r"'adder'.*'ghost'"):
        ort.InferenceSession(m)


def test_opset_newer_than_supported():
    m = models.make([helper.make_node("Relu", ["X"], ["Y"])], [models.vi("X", shape=[2])],
                    [models.vi("Y", shape=[2])], opset=99)
    with pytest.raises(ort.InvalidGraph, match=r"opset 99.*newest supported \(\d+\)"):
        ort.InferenceSession(m)


def test_unknown_input_and_output_names(sess):
    with pytest.raises(ort.InvalidArgument, match=r"Invalid input name: C.*\['A', 'B'\]"):
        sess.run(None, {**good_feeds(), "C": np.ones(1)})
    still_works(sess)
    with pytest.raises(ort.InvalidArgument, match=r"Invalid Output Name:W.*\['Y', 'Z'\]"):
        sess.run(["W"], good_feeds())
    still_works(sess)


def test_missing_required_input(sess):
    with pytest.raises(ort.InvalidArgument, match=r"Required inputs \(\['B'\]\) are missing"):
        sess.run(None, {"A": np.ones((2, 3), np.float32)})
    still_works(sess)


def test_wrong_dtype_rank_and_dims(sess):
    with pytest.raises(ort.InvalidArgument,
                       match=r"'A'.*Actual: \(tensor\(double\)\) , expected: \(tensor\(float\)\)"):
        sess.run(None, {"A": np.ones((2, 3)), "B": np.ones((2, 3), np.float32)})
    with pytest.raises(ort.InvalidArgument,
                       match=r"Invalid rank for input: B Got: 1 Expected: 2.*\['N', 3\]"):
        sess.run(None, {"A": np.ones((2, 3), np.float32), "B": np.ones(3, np.float32)})
    with pytest.raises(ort.InvalidArgument,
                       match=r"input: B .*index: 1 Got: 4 Expected: 3.*\['N', 3\]"):
        sess.run(None, {"A": np.ones((2, 3), np.float32), "B": np.ones((2, 4), np.float32)})
    still_works(sess)


def test_node_failing_at_run_time_names_node_and_op(sess):
    # both inputs pass validation (N is free) but do not broadcast against each other
    with pytest.raises(ort.Fail, match=r"Add node\. Name:'add'"):
        sess.run(None, {"A": np.ones((2, 3), np.float32), "B": np.ones((4, 3), np.float32)})
    still_works(sess)


def test_runtime_error_matches_onnxruntime_class():
    data = models.add_relu().SerializeToString()
    bad = {"A": np.ones((2, 3), np.float32), "B": np.ones((4, 3), np.float32)}
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.Fail):
        onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, bad)
    with pytest.raises(ort.Fail):
        ort.InferenceSession(data).run(None, bad)


def _external_model(tmp_path, location: str) -> str:
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "W")
    w.data_location = TP.EXTERNAL
    w.ClearField("raw_data")
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    m = models.make([helper.make_node("Add", ["X", "W"], ["Y"])], [models.vi("X", shape=[4])],
                    [models.vi("Y", shape=[4])], [w])
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(m.SerializeToString())
    return str(path)


def test_external_data_inside_folder_loads(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (tmp_path / "model" / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    y = ort.InferenceSession(path).run(None, {"X": np.ones(4, np.float32)})[0]
    np.testing.assert_array_equal(y, [1, 2, 3, 4])


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    path = _external_model(tmp_path, location)
    with pytest.raises(ort.InvalidGraph, match="outside the model folder"):
        ort.InferenceSession(path)


def test_external_data_from_bytes_needs_a_folder(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (tmp_path / "model" / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    data = open(path, "rb").read()
    with pytest.raises(ort.InvalidGraph, match="not loaded from a file"):
        ort.InferenceSession(data)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                str(tmp_path / "model"))
    y = ort.InferenceSession(data, so).run(None, {"X": np.zeros(4, np.float32)})[0]
    np.testing.assert_array_equal(y, [0, 1, 2, 3])
    so = ort.SessionOptions()
    so.add_external_initializers(["W"], [ort.OrtValue.ortvalue_from_numpy(np.ones(4, np.float32))])
    y = ort.InferenceSession(data, so).run(None, {"X": np.zeros(4, np.float32)})[0]
    np.testing.assert_array_equal(y, [1, 1, 1, 1])


def test_bad_argument_types(sess):
    with pytest.raises(ort.InvalidArgument, match="dict"):
        sess.run(None, [np.ones((2, 3), np.float32)])
    with pytest.raises(ort.InvalidArgument, match="RunOptions"):
        sess.run(None, good_feeds(), run_options="fast")
    with pytest.raises(ort.InvalidArgument, match="input 'A'"):
        sess.run(None, {"A": object(), "B": np.ones((2, 3), np.float32)})
    still_works(sess)


def test_kernel_that_refuses_its_attributes_fails_at_creation():
    m = models.make([helper.make_node("Transpose", ["X"], ["Y"], name="tr", perm=[0, 0])],
                    [models.vi("X", shape=[2, 3])], [models.vi("Y")])
    with pytest.raises((ort.Fail, ort.InvalidGraph)):
        ort.InferenceSession(m).run(None, {"X": np.ones((2, 3), np.float32)})
