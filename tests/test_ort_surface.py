"""The rest of onnxruntime's Python surface (issue 18), onnxruntime as the oracle: old IR-3
models, session options stored in the model, the optimized model saved with external
initializers, allocators and devices, telemetry and build info, and ORT's error contract
(ValueError for missing inputs, unknown providers, strings from bytes and void arrays)."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort as ort

from . import models

CPU = ["CPUExecutionProvider"]


def _quiet(fn, *args, **kwargs):
    """onnxruntime prints its fallback notices; keep the test output clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


# -- item 1: IR-3 models whose initializers are not graph inputs --------------------------
def _ir3_model(extra_unused: bool = False, listed=()) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")]
    if extra_unused:  # a weight (more than the loader's skeleton keeps) no node reads
        inits.append(numpy_helper.from_array(np.ones((3, 2000), np.float32), "unused"))
    inputs = [models.vi("x", shape=[2, 4])] + [models.vi(n, shape=None) for n in listed]
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W", "B"], ["g"], name="gemm"),
                               helper.make_node("Relu", ["g"], ["y"], name="relu")],
                              "ir3", inputs, [models.vi("y", shape=[2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)


@pytest.mark.parametrize("listed", [(), ("W",)])
@pytest.mark.parametrize("form", ["path", "bytes"])
def test_ir3_initializers_not_inputs_load_and_run(tmp_path, listed, form):
    model = _ir3_model(listed=listed)
    path = tmp_path / "ir3.onnx"
    onnx.save(model, path)
    source = str(path) if form == "path" else model.SerializeToString()
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    ours = ort.InferenceSession(source, providers=CPU)
    ref = onnxruntime.InferenceSession(source, providers=CPU)
    np.testing.assert_allclose(ours.run(None, {"x": x})[0], ref.run(None, {"x": x})[0],
                               rtol=1e-6, atol=1e-6)
    # initializers are constants before IR 4: neither required nor overridable
    assert [i.name for i in ours.get_inputs()] == [i.name for i in ref.get_inputs()] == ["x"]
    assert ours.get_overridable_initializers() == []


def test_ir3_unused_weight_loads_where_onnxruntime_fails(tmp_path):
    """onnxruntime's graph constructor fails on an unused initializer of an IR-3 model (an
    internal check); tritort loads it."""
    model = _ir3_model(extra_unused=True)
    with pytest.raises(Exception, match="initializer_arg"):
        onnxruntime.InferenceSession(model.SerializeToString(), providers=CPU)
    x = np.ones((2, 4), np.float32)
    w = numpy_helper.to_array(model.graph.initializer[0])
    b = numpy_helper.to_array(model.graph.initializer[1])
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, np.maximum(x @ w + b, 0), rtol=1e-5)


def test_ir3_keeps_the_checkers_other_findings():
    model = _ir3_model()
    model.graph.node[1].input[0] = "ghost"
    with pytest.raises(ort.InvalidGraph, match="ghost"):
        ort.InferenceSession(model.SerializeToString())


# -- item 2: session options stored in the model -------------------------------------------
def _relu_with_config(config) -> bytes:
    model = models.make([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                        [models.vi("x", shape=[2])], [models.vi("y", shape=[2])])
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        helper.set_model_props(model, {"ort_config": text})
    return model.SerializeToString()


def _applied(module, config, **kwargs):
    """What a session of ``module`` runs with: the options it reports, or the error text."""
    so = module.SessionOptions()
    so.intra_op_num_threads = 5
    so.graph_optimization_level = module.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = _quiet(module.InferenceSession, _relu_with_config(config), so, providers=CPU,
                      **kwargs)
    except Exception as e:  # onnxruntime raises a plain RuntimeError here
        assert isinstance(e, RuntimeError)
        text = str(e).split("Error Message: ")[-1].split(" (in the model")[0].strip()
        return "error", text.split("Error message:")[0]  # JSON parsers word theirs apart
    o = sess.get_session_options()
    sess.end_profiling()
    return (o.intra_op_num_threads, o.inter_op_num_threads, int(o.execution_mode),
            int(o.graph_optimization_level), o.enable_profiling)


FULL_CONFIG = {"session_options": {"intra_op_num_threads": 3, "inter_op_num_threads": 2,
                                   "execution_mode": 1, "graph_optimization_level": 1,
                                   "enable_profiling": 1, "use_deterministic_compute": 1,
                                   "session.some_entry": "x"}}


@pytest.mark.parametrize("config", [
    FULL_CONFIG,
    {"session_options": {"graph_optimization_level": 3}},
    {"session_options": {"intra_op_num_threads": 0}},
    {"session_options": {}}, {"other": 1}, [1, 2], {"session_options": [1]}, None,
    {"session_options": {"graph_optimization_level": 5}},
    {"session_options": {"execution_mode": 2}},
    {"session_options": {"intra_op_num_threads": -1}},
    {"session_options": {"inter_op_num_threads": 1.5}},
    {"session_options": {"enable_profiling": 2}},
    {"session_options": {"enable_profiling": True}},
    "not json",
], ids=lambda c: json.dumps(c)[:40])
def test_ort_config_from_model_matches_onnxruntime(tmp_path, monkeypatch, config):
    monkeypatch.chdir(tmp_path)  # profiling from the model writes into the working folder
    monkeypatch.setenv("ORT_LOAD_CONFIG_FROM_MODEL", "1")
    ours, ref = _applied(ort, config), _applied(onnxruntime, config)
    assert ours == ref
    monkeypatch.setenv("ORT_LOAD_CONFIG_FROM_MODEL", "0")
    assert _applied(ort, config) == _applied(onnxruntime, config) == (5, 0, 0, 0, False)


def test_ort_config_full_run_uses_model_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORT_LOAD_CONFIG_FROM_MODEL", "1")
    so = ort.SessionOptions()
    so.enable_profiling = False
    sess = ort.InferenceSession(_relu_with_config(FULL_CONFIG), so)
    assert sess.get_session_options() is not so and so.intra_op_num_threads == 0
    assert sess.run(None, {"x": np.array([-1, 2], np.float32)})[0].tolist() == [0, 2]
    trace = sess.end_profiling()  # profiling switched on by the model, as onnxruntime does
    assert trace.startswith("onnxruntime_profile_") and (tmp_path / trace).is_file()


def test_ort_config_other_switches(monkeypatch):
    monkeypatch.delenv("ORT_LOAD_CONFIG_FROM_MODEL", raising=False)
    config = {"session_options": {"intra_op_num_threads": 3}}
    # the session config entry (tritort's) and InferenceSession's read_config_from_model=1
    so = ort.SessionOptions()
    so.add_session_config_entry("session.load_config_from_model", "1")
    assert ort.InferenceSession(_relu_with_config(config), so) \
        .get_session_options().intra_op_num_threads == 3
    assert ort.InferenceSession(_relu_with_config(config), read_config_from_model=1) \
        .get_session_options().intra_op_num_threads == 3
    # read_config_from_model=0 wins over the environment (onnxruntime fails internally there)
    monkeypatch.setenv("ORT_LOAD_CONFIG_FROM_MODEL", "1")
    assert ort.InferenceSession(_relu_with_config(config), read_config_from_model=0) \
        .get_session_options().intra_op_num_threads == 0
    with pytest.raises(RuntimeError, match="is_model_proto_parsed"):
        _quiet(onnxruntime.InferenceSession, _relu_with_config(config), providers=CPU,
               read_config_from_model=0)


def test_ort_config_env_value_checked_as_onnxruntime(monkeypatch):
    monkeypatch.setenv("ORT_LOAD_CONFIG_FROM_MODEL", "true")
    message = "only supported values for the environment variable ORT_LOAD_CONFIG_FROM_MODEL"
    with pytest.raises(RuntimeError, match=message):
        _quiet(onnxruntime.InferenceSession, _relu_with_config(None), providers=CPU)
    with pytest.raises(ort.Fail, match=message + ".*true"):
        ort.InferenceSession(_relu_with_config(None))


# -- item 3: the optimized model with external initializers --------------------------------
def _weighted_model() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.random((64, 64)).astype(np.float32), "W"),  # 16384 B
             numpy_helper.from_array(rng.random(64).astype(np.float32), "B"),  # 256 bytes
             numpy_helper.from_array(np.array([0.5], np.float32), "S")]  # 4 bytes
    return models.make([helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
                        helper.make_node("Add", ["m", "B"], ["a"], name="add"),
                        helper.make_node("Mul", ["a", "S"], ["y"], name="mul")],
                       [models.vi("x", shape=[1, 64])], [models.vi("y", shape=[1, 64])], inits)


def _externals(path) -> dict:
    saved = onnx.load(str(path), load_external_data=False)
    return {t.name: {e.key: e.value for e in t.external_data} for t in saved.graph.initializer}


def _save_optimized(module, source, dest, name, min_size=None):
    so = module.SessionOptions()
    so.optimized_model_filepath = str(dest)
    so.graph_optimization_level = module.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if name is not None:
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                    name)
    if min_size is not None:
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", str(min_size))
    module.InferenceSession(source, so, providers=CPU)


@pytest.mark.parametrize("source_kind", ["bytes", "external data"])
@pytest.mark.parametrize("where", ["current folder", "other folder"])
@pytest.mark.parametrize("min_size", [None, 100, 256, 257])
def test_optimized_model_external_initializers(tmp_path, monkeypatch, source_kind, where,
                                               min_size):
    model = _weighted_model()
    if source_kind == "bytes":
        source = model.SerializeToString()
    else:
        (tmp_path / "src").mkdir()
        source = str(tmp_path / "src" / "model.onnx")
        onnx.save(copy.deepcopy(model), source, save_as_external_data=True,
                  all_tensors_to_one_file=True, location="model.bin", size_threshold=0)
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    results = {}
    for module, folder in ((ort, "ours"), (onnxruntime, "theirs")):
        if where == "current folder":
            monkeypatch.chdir(tmp_path / folder)
            dest = "opt.onnx"
        else:
            monkeypatch.chdir(tmp_path)
            dest = f"{folder}/opt.onnx"
        _save_optimized(module, source, dest, "weights.bin", min_size)
        results[folder] = _externals(dest)
        assert (tmp_path / folder / "weights.bin").is_file()
    monkeypatch.chdir(tmp_path)
    assert results["ours"] == results["theirs"]
    expected_external = {"W"} | ({"B"} if min_size is not None and min_size <= 256 else set())
    assert {n for n, e in results["ours"].items() if e} == expected_external
    # onnxruntime loads what tritort saved, and tritort loads it too
    x = np.random.default_rng(1).random((1, 64)).astype(np.float32)
    want = onnxruntime.InferenceSession(model.SerializeToString(), providers=CPU).run(
        None, {"x": x})[0]
    saved = str(tmp_path / "ours" / "opt.onnx")
    np.testing.assert_allclose(onnxruntime.InferenceSession(saved, providers=CPU).run(
        None, {"x": x})[0], want, rtol=1e-6)
    np.testing.assert_allclose(ort.InferenceSession(saved).run(None, {"x": x})[0], want,
                               rtol=1e-6)


def test_optimized_model_without_external_name_is_self_contained(tmp_path):
    """onnxruntime keeps the source model's external data references in the optimized model,
    so a model saved into another folder does not load; tritort writes the weights into it."""
    model = _weighted_model()
    (tmp_path / "src").mkdir()
    (tmp_path / "out").mkdir()
    source = str(tmp_path / "src" / "model.onnx")
    onnx.save(copy.deepcopy(model), source, save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.bin", size_threshold=0)
    _save_optimized(onnxruntime, source, tmp_path / "out" / "theirs.onnx", None)
    with pytest.raises(Exception, match="does not exist"):
        onnxruntime.InferenceSession(str(tmp_path / "out" / "theirs.onnx"), providers=CPU)
    _save_optimized(ort, source, tmp_path / "out" / "ours.onnx", None)
    assert not any(_externals(tmp_path / "out" / "ours.onnx").values())
    x = np.ones((1, 64), np.float32)
    want = onnxruntime.InferenceSession(source, providers=CPU).run(None, {"x": x})[0]
    got = onnxruntime.InferenceSession(str(tmp_path / "out" / "ours.onnx"),
                                       providers=CPU).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_optimized_external_file_is_replaced_not_appended(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"x" * 100000)
    _save_optimized(ort, _weighted_model().SerializeToString(), tmp_path / "o.onnx", "w.bin",
                    100)
    assert (tmp_path / "w.bin").stat().st_size == 16384 + 256


@pytest.mark.parametrize("name, error, match", [
    ("../w.bin", ort.InvalidArgument, "inside the optimized model's folder"),
    ("/tmp/elsewhere/w.bin", ort.InvalidArgument, "inside the optimized model's folder"),
    ("missing/w.bin", ort.NoSuchFile, "does not exist"),
])
def test_optimized_external_name_checked_before_writing(tmp_path, name, error, match):
    """onnxruntime writes a '../' location it then refuses to load, and fails deep inside
    for an absolute name or a missing folder; tritort refuses before writing anything."""
    dest = tmp_path / "out" / "opt.onnx"
    dest.parent.mkdir()
    with pytest.raises(error, match=match):
        _save_optimized(ort, _weighted_model().SerializeToString(), dest, name, 100)
    assert not dest.exists()


def test_optimized_external_min_size_checked(tmp_path):
    with pytest.raises(ort.InvalidArgument, match="min_size_in_bytes.*'abc'"):
        _save_optimized(ort, _weighted_model().SerializeToString(), tmp_path / "o.onnx",
                        "w.bin", "abc")
    with pytest.raises(Exception, match="Failed to parse value"):  # onnxruntime's
        _save_optimized(onnxruntime, _weighted_model().SerializeToString(),
                        tmp_path / "o.onnx", "w.bin", "abc")


# -- item 4: devices, allocators, telemetry, build info ------------------------------------
@pytest.mark.parametrize("name, device_id", [("cpu", 0), ("cuda", 1), ("gpu", 0), ("npu", 0),
                                             ("dml", 0), ("cann", 0)])
def test_ort_device_make_matches_onnxruntime(name, device_id):
    ours, ref = ort.OrtDevice.make(name, device_id), onnxruntime.OrtDevice.make(name, device_id)
    assert (ours.device_type(), ours.device_id(), ours.device_vendor_id(),
            ours.device_mem_type()) == (ref.device_type(), ref.device_id(),
                                        ref.device_vendor_id(), ref.device_mem_type())


def test_ort_device_unknown_name():
    with pytest.raises(ort.InvalidArgument, match="Unsupported device type: tpu"):
        ort.OrtDevice.make("tpu", 0)


def test_memory_info_and_enums_match_onnxruntime():
    for enum_name, members in [
        ("OrtAllocatorType", ["INVALID", "ORT_DEVICE_ALLOCATOR", "ORT_ARENA_ALLOCATOR"]),
        ("OrtMemType", ["CPU_INPUT", "CPU_OUTPUT", "CPU", "DEFAULT"]),
        ("OrtMemoryInfoDeviceType", ["CPU", "GPU", "NPU", "FPGA"]),
        ("OrtDeviceMemoryType", ["DEFAULT", "HOST_ACCESSIBLE"]),
    ]:
        for member in members:
            ours = getattr(getattr(ort, enum_name), member)
            ref = getattr(getattr(onnxruntime, enum_name), member)
            assert (int(ours), ours.name) == (int(ref), ref.name), (enum_name, member)
    for module in (ort, onnxruntime):
        info = module.OrtMemoryInfo("Cpu", module.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                    module.OrtMemType.DEFAULT)
        assert (info.name, info.device_id, info.mem_type.name, info.allocator_type.name,
                info.device_mem_type.name, info.device_vendor_id) == \
            ("Cpu", 0, "DEFAULT", "ORT_ARENA_ALLOCATOR", "DEFAULT", 0)
        v2 = module.OrtMemoryInfo.create_v2("Foo", module.OrtMemoryInfoDeviceType.GPU, 0x10DE,
                                            1, module.OrtDeviceMemoryType.DEFAULT, 0,
                                            module.OrtAllocatorType.ORT_DEVICE_ALLOCATOR)
        assert (v2.name, v2.device_id, v2.device_vendor_id, v2.allocator_type.name) == \
            ("Foo", 1, 0x10DE, "ORT_DEVICE_ALLOCATOR")
        with pytest.raises(RuntimeError, match="Specified device is not supported"):
            module.OrtMemoryInfo("Bogus", module.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                 module.OrtMemType.DEFAULT)


def test_arena_cfg_matches_onnxruntime():
    keys = ["max_mem", "arena_extend_strategy", "initial_chunk_size_bytes",
            "max_dead_bytes_per_chunk", "initial_growth_chunk_size_bytes",
            "max_power_of_two_extend_bytes"]
    options = dict(zip(keys, [1024, 1, 256, 16, 512, 4096]))
    for args in [(0, -1, -1, -1), (1 << 20, 0, 4096, 128), (options,)]:
        ours, ref = ort.OrtArenaCfg(*args), onnxruntime.OrtArenaCfg(*args)
        assert [getattr(ours, k) for k in keys] == [getattr(ref, k) for k in keys]
    cfg = ort.OrtArenaCfg(0, -1, -1, -1)
    cfg.max_mem = 5
    assert cfg.max_mem == 5
    for module in (ort, onnxruntime):
        with pytest.raises(RuntimeError, match="Invalid OrtArenaCfg option: bogus"):
            module.OrtArenaCfg({"bogus": 1})


def test_create_and_register_allocator_and_session_option():
    sessions = []
    for module in (ort, onnxruntime):
        cpu = module.OrtMemoryInfo("Cpu", module.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                   module.OrtMemType.DEFAULT)
        assert module.create_and_register_allocator(cpu, module.OrtArenaCfg(0, -1, -1, -1)) \
            is None
        cuda = module.OrtMemoryInfo("Cuda", module.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                    module.OrtMemType.DEFAULT)
        with pytest.raises(RuntimeError, match="Only CPU devices are supported"):
            module.create_and_register_allocator(cuda, module.OrtArenaCfg(0, -1, -1, -1))
        so = module.SessionOptions()
        so.add_session_config_entry("session.use_env_allocators", "1")
        sess = module.InferenceSession(models.add_relu().SerializeToString(), so,
                                       providers=CPU)
        feeds = {"A": np.ones((2, 3), np.float32), "B": -np.ones((2, 3), np.float32)}
        assert sess.run(["Y"], feeds)[0].tolist() == [[0, 0, 0]] * 2
        sessions.append(sess)
    assert [a.memory_info.name for a in sessions[0]._shared_allocators] == ["Cpu"]
    cuda = ort.OrtMemoryInfo("Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                             ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator_v2("CUDAExecutionProvider", cuda, {"k": 1}, None)
    assert any(a.provider_type == "CUDAExecutionProvider" and a.options == {"k": "1"}
               for a in ort.allocators.shared_allocators())


def test_telemetry_calls_are_documented_no_ops():
    for fn in (ort.enable_telemetry_events, ort.disable_telemetry_events):
        assert fn() is None and "no-op" in fn.__doc__


def test_build_info_has_onnxruntimes_layout():
    ours, ref = ort.get_build_info(), onnxruntime.get_build_info()
    assert "Build Info: " in ref and "Build Info: " in ours
    for text in (ours, ref):
        head, _, body = text.partition(" Build Info: ")
        assert head and all("=" in item for item in body.split(", ")), text
    assert "build type=Release" in ours and f"version={ort.__version__}" in ours


# -- item 5: the error contract --------------------------------------------------------------
def _three_inputs() -> bytes:
    c = numpy_helper.from_array(np.ones(2, np.float32), "c")
    return models.make(
        [helper.make_node("Add", ["x", "z"], ["t"], name="add"),
         helper.make_node("Add", ["t", "c"], ["y"], name="add_c"),
         helper.make_node("Identity", ["s"], ["so"], name="id")],
        [models.vi("x", shape=[2]), models.vi("z", shape=[2]), models.vi("s", TP.STRING, [2])],
        [models.vi("y", shape=[2]), models.vi("so", TP.STRING, [2])], [c]).SerializeToString()


@pytest.fixture(scope="module")
def both():
    data = _three_inputs()
    return ort.InferenceSession(data), onnxruntime.InferenceSession(data, providers=CPU)


X = np.ones(2, np.float32)
S = np.array(["a", "b"])


@pytest.mark.parametrize("call", ["run", "run_with_ort_values", "run_async"])
@pytest.mark.parametrize("feed", [{"x": X, "s": S}, {}, {"x": X, "s": S, "zz": X}],
                         ids=["one missing", "empty", "missing and unknown"])
def test_missing_inputs_are_value_error_as_in_onnxruntime(both, call, feed):
    messages = []
    for module, sess in zip((ort, onnxruntime), both):
        if call == "run_with_ort_values":
            args = (None, {k: module.OrtValue.ortvalue_from_numpy(v)
                           for k, v in feed.items() if v.dtype != S.dtype})
        elif call == "run_async":
            args = (None, feed, lambda *a: None, None)
        else:
            args = (None, feed)
        with pytest.raises(ValueError) as info:
            getattr(sess, call)(*args)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert isinstance(info.value, ValueError)  # code catching ValueError catches ours too
    with pytest.raises(ort.InvalidArgument):  # and it is still ORT's argument error
        both[0].run(None, {})


def test_unknown_input_is_invalid_argument_not_value_error(both):
    feed = {"x": X, "z": X, "s": S, "extra": X}
    for sess in both:
        with pytest.raises(Exception, match="Invalid input name: extra") as info:
            sess.run(None, feed)
        assert type(info.value).__name__ == "InvalidArgument"
        assert not isinstance(info.value, ValueError)


@pytest.mark.parametrize("providers", [["FooExecutionProvider"],
                                       ["CPUExecutionProvider", "FooExecutionProvider"]])
def test_set_providers_unknown_name(both, providers):
    messages = []
    for sess in both:
        with pytest.raises(RuntimeError) as info:
            sess.set_providers(providers)
        messages.append(str(info.value))
    assert messages[1] == "Unknown Provider Type: FooExecutionProvider"
    assert messages[0].startswith(messages[1]) and "known providers" in messages[0]
    # the session is as it was (onnxruntime's has lost its providers: get_providers() None)
    assert both[0].get_providers() == CPU
    assert both[0].run(["y"], {"x": X, "z": X, "s": S})[0].tolist() == [3, 3]
    both[1].set_providers(CPU)


def test_known_but_unbuilt_provider_is_skipped_with_a_warning(both):
    """Lists written for several builds (TensorRT, CUDA, CPU) work, as in onnxruntime."""
    for sess in both:
        with pytest.warns(UserWarning, match="TensorrtExecutionProvider"):
            sess.set_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"])
        assert sess.get_providers() == CPU
        with pytest.warns(UserWarning, match="Duplicate provider 'CPUExecutionProvider'"):
            sess.set_providers(["CPUExecutionProvider", "CPUExecutionProvider"])
        assert sess.get_providers() == CPU


def test_provider_argument_shapes_are_value_error():
    data = models.add_relu().SerializeToString()
    with pytest.raises(ValueError, match="same length"):
        ort.InferenceSession(data, providers=CPU, provider_options=[{}, {}])
    with pytest.raises(ValueError, match="same length"):  # onnxruntime: from set_providers
        onnxruntime.InferenceSession(data, providers=CPU).set_providers(CPU, [{}, {}])
    with pytest.raises(ValueError, match=r"strings or \(string, dict\) tuples"):
        ort.InferenceSession(data, providers=[("CPUExecutionProvider",)])
    with pytest.raises(ValueError, match="not a string"):
        ort.InferenceSession(data, providers="CPUExecutionProvider")


@pytest.mark.parametrize("value", [
    np.array([b"ab\x00c", b"bc"], dtype="V4"),
    np.array([b"a", b"bc"]).astype(np.void),
    np.array(["é", "日本"]),
], ids=["void4", "void from bytes", "unicode"])
def test_void_and_str_arrays_fed_to_string_inputs(both, value):
    results = [sess.run(["so"], {"x": X, "z": X, "s": value})[0] for sess in both]
    assert results[0].dtype == results[1].dtype == object
    assert results[0].tolist() == results[1].tolist()


def test_bytes_arrays_fed_to_string_inputs(both):
    """onnxruntime misreads numpy bytes ('S') arrays; tritort decodes UTF-8 text to str,
    as onnxruntime returns strings, and keeps other bytes as they are."""
    ours = both[0]
    got = ours.run(["so"], {"x": X, "z": X, "s": np.array([b"a", b"bc"])})[0]
    assert got.tolist() == ["a", "bc"] and all(type(v) is str for v in got)
    assert ours.run(["so"], {"x": X, "z": X, "s": np.array([b"\xff", b"a"])})[0].tolist() == \
        [b"\xff", b"a"]
    assert ours.run(["so"], {"x": X, "z": X, "s": [b"u", b"v"]})[0].tolist() == ["u", "v"]
    with pytest.raises(ort.InvalidArgument, match="Actual: \\(tensor\\(double\\)\\)"):
        ours.run(["so"], {"x": X, "z": X, "s": np.array([1.5, 2.0])})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert both[0].run(["y"], {"x": X, "z": X, "s": S})[0].tolist() == [3, 3]
