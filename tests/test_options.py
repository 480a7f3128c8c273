"""SessionOptions and RunOptions: defaults, types and effects, against onnxruntime."""
from __future__ import annotations

import threading
import time

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort as ort
from tests import models

PROPS = ["graph_optimization_level", "execution_mode", "execution_order", "intra_op_num_threads",
         "inter_op_num_threads", "enable_profiling", "profile_file_prefix",
         "optimized_model_filepath", "enable_mem_pattern", "enable_mem_reuse",
         "enable_cpu_mem_arena", "logid", "log_severity_level", "log_verbosity_level",
         "use_deterministic_compute"]


def test_session_option_defaults_match_onnxruntime():
    ours, ref = ort.SessionOptions(), onnxruntime.SessionOptions()
    for p in PROPS:
        a, b = getattr(ours, p), getattr(ref, p)
        if hasattr(b, "name"):  # pybind enums compare by name
            assert a.name == b.name, p
        else:
            assert a == b, p


def test_run_option_defaults_match_onnxruntime():
    ours, ref = ort.RunOptions(), onnxruntime.RunOptions()
    for p in ("log_severity_level", "log_verbosity_level", "logid", "terminate",
              "only_execute_path_to_fetches"):
        assert getattr(ours, p) == getattr(ref, p), p


def test_enum_values_match_onnxruntime():
    for enum in ("GraphOptimizationLevel", "ExecutionMode", "ExecutionOrder"):
        for member in getattr(ort, enum):
            assert int(getattr(getattr(onnxruntime, enum), member.name)) == int(member)


def test_options_refuse_wrong_types_and_read_back():
    so = ort.SessionOptions()
    with pytest.raises(TypeError):
        so.intra_op_num_threads = "four"
    with pytest.raises(TypeError):
        so.enable_profiling = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.intra_op_num_threads = 2
    assert (so.graph_optimization_level, so.execution_mode, so.intra_op_num_threads) == \
        (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, ort.ExecutionMode.ORT_PARALLEL, 2)
    so.add_session_config_entry("a.b", "1")
    assert so.get_session_config_entry("a.b") == "1"
    with pytest.raises(ort.InvalidArgument, match="missing.key"):
        so.get_session_config_entry("missing.key")
    with pytest.raises(ort.NotImplemented, match="custom"):
        so.register_custom_ops_library("libcustom.so")
    sess = ort.InferenceSession(models.add_relu().SerializeToString(), so)
    assert sess.get_session_options() is so


def _foldable_model():
    """Y = X + (Shape(C) cast to float) with C a constant: everything but the Add folds."""
    c = numpy_helper.from_array(np.zeros((2, 3), np.float32), "C")
    nodes = [helper.make_node("Shape", ["C"], ["s"], name="shape"),
             helper.make_node("Cast", ["s"], ["sf"], name="cast", to=TP.FLOAT),
             helper.make_node("Identity", ["sf"], ["sfi"], name="ident"),
             helper.make_node("Add", ["X", "sfi"], ["Y"], name="add"),
             helper.make_node("Neg", ["X"], ["unused"], name="dead")]
    return models.make(nodes, [models.vi("X", shape=[2])], [models.vi("Y", shape=[2])], [c])


@pytest.mark.parametrize("level", list(ort.GraphOptimizationLevel))
def test_optimization_levels_agree_with_onnxruntime(level, tmp_path):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    out = tmp_path / "opt.onnx"
    so.optimized_model_filepath = str(out)
    model = _foldable_model()
    x = np.array([1, 2], np.float32)
    got = ort.InferenceSession(model.SerializeToString(), so).run(None, {"X": x})[0]
    ref = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, ref)
    saved = onnx.load(str(out))
    onnx.checker.check_model(saved)
    ops = [n.op_type for n in saved.graph.node]
    if level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL:
        assert ops == ["Shape", "Cast", "Identity", "Add", "Neg"]
    else:
        assert ops == ["Add"]
    # the saved model loads and gives the same answer
    again = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(again.run(None, {"X": x})[0], ref)


def test_free_dimension_overrides():
    model = models.add_relu(("batch", 3))
    model.graph.input[0].type.tensor_type.shape.dim[0].denotation = "DATA_BATCH"
    so = ort.SessionOptions()
    so.add_free_dimension_override_by_name("batch", 2)
    sess = ort.InferenceSession(model.SerializeToString(), so)
    assert sess.get_inputs()[0].shape == [2, 3]
    with pytest.raises(ort.InvalidArgument, match="index: 0 Got: 5 Expected: 2"):
        sess.run(None, {"A": np.ones((5, 3), np.float32), "B": np.ones((5, 3), np.float32)})
    so = ort.SessionOptions()
    so.add_free_dimension_override_by_denotation("DATA_BATCH", 4)
    sess = ort.InferenceSession(model.SerializeToString(), so)
    assert sess.get_inputs()[0].shape == [4, 3]
    with pytest.raises(ort.InvalidArgument):
        so.add_free_dimension_override_by_name("batch", -1)


def test_add_initializer_shares_memory_and_overrides():
    w = np.full(2, 10, np.float32)
    so = ort.SessionOptions()
    so.add_initializer("W", ort.OrtValue.ortvalue_from_numpy(w))
    sess = ort.InferenceSession(models.with_overridable_initializer().SerializeToString(), so)
    np.testing.assert_array_equal(sess.run(None, {"X": np.zeros(2, np.float32)})[0], [10, 10])
    so = ort.SessionOptions()
    so.add_initializer("W", ort.OrtValue.ortvalue_from_numpy(np.ones(3, np.float32)))
    with pytest.raises(ort.InvalidArgument, match=r"'W'.*float32\[2\].*float32\[3\]"):
        ort.InferenceSession(models.with_overridable_initializer().SerializeToString(), so)
    so = ort.SessionOptions()
    so.add_initializer("nope", ort.OrtValue.ortvalue_from_numpy(np.ones(3, np.float32)))
    with pytest.raises(ort.InvalidArgument, match="'nope'"):
        ort.InferenceSession(models.with_overridable_initializer().SerializeToString(), so)
    with pytest.raises(TypeError):
        ort.SessionOptions().add_initializer("W", np.ones(2))


def test_terminate_from_another_thread_then_session_still_runs():
    sess = ort.InferenceSession(models.slow_chain().SerializeToString())
    x = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    ro = ort.RunOptions()
    errors = []

    def worker():
        try:
            sess.run(None, {"X": x}, ro)
        except ort.Fail as e:
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    time.sleep(0.02)
    ro.terminate = True
    t.join(30)
    assert errors and "terminate" in str(errors[0])
    with pytest.raises(ort.Fail, match="terminate"):  # still set: refused at the next node
        sess.run(None, {"X": x}, ro)
    ro.terminate = False
    full = sess.run(None, {"X": x}, ro)[0]
    ref = onnxruntime.InferenceSession(models.slow_chain().SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    np.testing.assert_allclose(full, ref, rtol=1e-4, atol=1e-5)


def test_eight_threads_one_session_agree():
    from concurrent.futures import ThreadPoolExecutor

    model = models.slow_chain(n=20, size=64)
    sess = ort.InferenceSession(model.SerializeToString())
    ref = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((64, 64)).astype(np.float32) for _ in range(32)]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda x: sess.run(None, {"X": x})[0], inputs))
    for x, y in zip(inputs, outs):
        np.testing.assert_allclose(y, ref.run(None, {"X": x})[0], rtol=1e-4, atol=1e-5)
