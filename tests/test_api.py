"""API parity with onnxruntime on small models (onnxruntime is the oracle)."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper

import tritort as ort
from tests import models


def both(model, **kw):
    data = model.SerializeToString()
    return (ort.InferenceSession(data, **kw),
            onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]))


def feeds(n=4):
    rng = np.random.default_rng(1)
    return {"A": rng.standard_normal((n, 3)).astype(np.float32),
            "B": rng.standard_normal((n, 3)).astype(np.float32)}


def test_run_matches_onnxruntime_and_accepts_every_source_form(tmp_path):
    model = models.add_relu()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    ref = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = ref.run(None, feeds())
    for source in (str(path), path, path.read_bytes(), model):
        got = ort.InferenceSession(source).run(None, feeds())
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, rtol=1e-6)


def test_metadata_matches_onnxruntime():
    model = models.add_relu()
    model.producer_name, model.domain, model.model_version = "unit", "test.domain", 7
    model.doc_string, model.graph.doc_string = "a model", "a graph"
    onnx.helper.set_model_props(model, {"author": "me", "k": "v"})
    ours, ref = both(model)
    for a, b in ((ours.get_inputs(), ref.get_inputs()), (ours.get_outputs(), ref.get_outputs())):
        assert [(x.name, x.type, x.shape) for x in a] == [(x.name, x.type, x.shape) for x in b]
    m, r = ours.get_modelmeta(), ref.get_modelmeta()
    for field in ("producer_name", "graph_name", "domain", "description", "graph_description",
                  "version", "custom_metadata_map"):
        assert getattr(m, field) == getattr(r, field), field


def test_sequence_and_optional_type_strings():
    seq = helper.make_tensor_sequence_value_info("S", TP.INT64, None)
    model = models.make([helper.make_node("SequenceLength", ["S"], ["L"])], [seq],
                        [models.vi("L", TP.INT64, [])])
    ours, ref = both(model)
    assert ours.get_inputs()[0].type == ref.get_inputs()[0].type == "seq(tensor(int64))"
    s = [np.arange(3), np.arange(2)]
    assert ours.run(None, {"S": s})[0] == ref.run(None, {"S": s})[0] == 2
    opt = helper.make_value_info("O", helper.make_optional_type_proto(
        helper.make_tensor_type_proto(TP.FLOAT, [2])))
    model = models.make([helper.make_node("OptionalHasElement", ["O"], ["H"])], [opt],
                        [models.vi("H", TP.BOOL, [])], opset=18)
    ours, ref = both(model)
    assert ours.get_inputs()[0].type == ref.get_inputs()[0].type
    assert ours.run(None, {"O": np.ones(2, np.float32)})[0]
    assert not ours.run(None, {"O": None})[0]


def test_overridable_initializers():
    ours, ref = both(models.with_overridable_initializer())
    assert [i.name for i in ours.get_inputs()] == [i.name for i in ref.get_inputs()] == ["X"]
    assert [i.name for i in ours.get_overridable_initializers()] == \
        [i.name for i in ref.get_overridable_initializers()] == ["W"]
    x = np.arange(2, dtype=np.float32)
    np.testing.assert_array_equal(ours.run(None, {"X": x})[0], ref.run(None, {"X": x})[0])
    w = np.full(2, 5, np.float32)
    np.testing.assert_array_equal(ours.run(None, {"X": x, "W": w})[0],
                                  ref.run(None, {"X": x, "W": w})[0])


def test_initializers_listed_as_inputs_are_constants_before_ir4():
    model = models.with_overridable_initializer()
    model.ir_version = 3
    model.opset_import[0].version = 9
    ours, ref = both(model)
    assert [i.name for i in ours.get_inputs()] == [i.name for i in ref.get_inputs()] == ["X"]
    assert ours.get_overridable_initializers() == ref.get_overridable_initializers() == []
    x = np.arange(2, dtype=np.float32)
    np.testing.assert_array_equal(ours.run(None, {"X": x})[0], ref.run(None, {"X": x})[0])


def test_output_subset_order_and_none():
    ours, ref = both(models.add_relu())
    f = feeds()
    for names in (["Z"], ["Z", "Y"], None, []):
        got, exp = ours.run(names, f), ref.run(names, f)
        assert len(got) == len(exp)
        for g, e in zip(got, exp):
            np.testing.assert_allclose(g, e)


def test_inputs_in_many_forms():
    import ml_dtypes
    import torch

    sess = ort.InferenceSession(models.add_relu().SerializeToString())
    base = sess.run(None, feeds())
    f = feeds()
    fortran = {k: np.asfortranarray(v) for k, v in f.items()}
    strided = {k: np.repeat(v, 2, axis=1)[:, ::2] for k, v in f.items()}
    ortvalues = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in f.items()}
    tensors = {k: torch.from_numpy(v.copy()) for k, v in f.items()}
    lists = {k: v.tolist() for k, v in f.items()}
    for form in (fortran, strided, ortvalues, tensors, lists):
        for g, e in zip(sess.run(None, form), base):
            np.testing.assert_allclose(g, e, rtol=1e-6)
    # bf16 arrays, which onnxruntime's run() refuses, compute through float32
    bf = models.identity(TP.BFLOAT16, (3,))
    x = np.array([1.5, -2.25, 3e38], dtype=ml_dtypes.bfloat16)
    y = ort.InferenceSession(bf.SerializeToString()).run(None, {"X": x})[0]
    assert y.dtype == ml_dtypes.bfloat16 and np.array_equal(y, x)
    t = torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16)
    y = ort.InferenceSession(bf.SerializeToString()).run(None, {"X": t})[0]
    np.testing.assert_array_equal(y.astype(np.float32), [1.5, -2.25, 3.0])


def test_outputs_never_alias_inputs():
    sess = ort.InferenceSession(models.identity().SerializeToString())
    x = np.array([1, 2], dtype=np.float32)
    y = sess.run(None, {"X": x})[0]
    y[0] = 100
    assert x[0] == 1
    sess = ort.InferenceSession(models.with_overridable_initializer().SerializeToString())
    out = sess.run(None, {"X": np.zeros(2, np.float32)})[0]
    out[:] = 7
    np.testing.assert_array_equal(sess.run(None, {"X": np.zeros(2, np.float32)})[0], [1, 1])


def test_outputs_are_writeable_at_every_level():
    const = helper.make_node("Constant", [], ["C"], value=onnx.numpy_helper.from_array(
        np.arange(3, dtype=np.float32)))
    model = models.make([const, helper.make_node("Identity", ["C"], ["Y"])], [],
                        [models.vi("Y", shape=[3])])
    for level in ort.GraphOptimizationLevel:
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        sess = ort.InferenceSession(model.SerializeToString(), so)
        y = sess.run(None, {})[0]
        y += 1
        np.testing.assert_array_equal(sess.run(None, {})[0], [0, 1, 2])


def test_run_with_ort_values_and_run_async():
    import threading

    sess = ort.InferenceSession(models.add_relu().SerializeToString())
    f = feeds()
    res = sess.run_with_ort_values(["Y"], {k: ort.OrtValue.ortvalue_from_numpy(v)
                                           for k, v in f.items()})
    assert isinstance(res[0], ort.OrtValue) and res[0].data_type() == "tensor(float)"
    np.testing.assert_allclose(res[0].numpy(), np.maximum(f["A"] + f["B"], 0))
    done = threading.Event()
    box = {}

    def callback(results, user_data, err):
        box.update(results=results, user_data=user_data, err=err)
        done.set()

    sess.run_async(["Y"], f, callback, "token")
    assert done.wait(10)
    assert box["err"] == "" and box["user_data"] == "token"
    np.testing.assert_allclose(box["results"][0], np.maximum(f["A"] + f["B"], 0))
    done.clear()
    # batch sizes that pass validation but do not broadcast: the node's failure comes back
    sess.run_async(["Y"], {"A": f["A"], "B": f["B"][:2]}, callback, None)
    assert done.wait(10)
    assert box["results"] is None and "add" in box["err"] and "Add" in box["err"]
    with pytest.raises(ort.InvalidArgument, match="B"):  # bad feeds are refused at once
        sess.run_async(["Y"], {"A": f["A"], "B": f["B"][:, :2]}, callback, None)


def test_ortvalue_minimal():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    v = ort.OrtValue.ortvalue_from_numpy(x)
    ref = onnxruntime.OrtValue.ortvalue_from_numpy(x)
    assert v.shape() == ref.shape() and v.data_type() == ref.data_type()
    assert v.element_type() == ref.element_type() and v.device_name() == ref.device_name()
    assert v.data_ptr() == x.ctypes.data  # shares memory, as in ORT
    v.update_inplace(np.ones((2, 3), np.float32))
    assert x.sum() == 6
    with pytest.raises(ort.InvalidArgument, match="6 elements"):
        v.update_inplace(np.ones(5, np.float32))
    z = ort.OrtValue.ortvalue_from_shape_and_type([2, 2], TP.BFLOAT16)
    assert z.data_type() == "tensor(bfloat16)" and z.shape() == [2, 2]
    z = ort.OrtValue.ortvalue_from_shape_and_type([3], np.int64)
    assert z.element_type() == TP.INT64


def test_providers_api():
    sess = ort.InferenceSession(models.add_relu().SerializeToString(),
                                providers=["CPUExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert sess.get_provider_options() == {"CPUExecutionProvider": {}}
    sess.set_providers(["CPUExecutionProvider"])
    sess.disable_fallback()
    sess.enable_fallback()
    assert sess.run(["Y"], feeds())[0].shape == (4, 3)
    assert "CPUExecutionProvider" in ort.get_available_providers()
    assert set(ort.get_available_providers()) <= set(ort.get_all_providers())
    assert ort.get_device() in ("CPU", "GPU")
    assert ort.get_version_string() and ort.get_build_info()
    with pytest.raises(ort.InvalidArgument, match="unknown provider"):
        ort.InferenceSession(models.add_relu().SerializeToString(), providers=["NopeProvider"])
    with pytest.raises(ort.InvalidArgument, match="unknown provider option"):
        ort.InferenceSession(models.add_relu().SerializeToString(),
                             providers=[("CPUExecutionProvider", {"bogus": "1"})])


def test_graph_assignment_info_needs_config_entry():
    model = models.add_relu().SerializeToString()
    with pytest.raises(ort.Fail, match="record_ep_graph_assignment_info"):
        ort.InferenceSession(model).get_provider_graph_assignment_info()
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    info = ort.InferenceSession(model, so).get_provider_graph_assignment_info()
    assert [s.ep_name for s in info] == ["CPUExecutionProvider"]
    assert sorted((n.name, n.op_type) for n in info[0].get_nodes()) == \
        [("add", "Add"), ("relu", "Relu"), ("scale", "Mul")]


def test_profiling_writes_chrome_trace(tmp_path):
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    sess = ort.InferenceSession(models.add_relu().SerializeToString(), so)
    assert sess.get_profiling_start_time_ns() > 0
    sess.run(None, feeds())
    sess.run(None, feeds())
    path = sess.end_profiling()
    assert os.path.exists(path) and os.path.basename(path).startswith("prof")
    events = json.load(open(path))
    node_events = [e for e in events if e["cat"] == "Node"]
    assert len(node_events) == 6 and all(e["ph"] == "X" for e in node_events)
    assert {e["args"]["op_name"] for e in node_events} == {"Add", "Relu", "Mul"}
    assert ort.InferenceSession(models.add_relu().SerializeToString()).end_profiling() == ""


def test_only_execute_path_to_fetches_and_run_config():
    ro = ort.RunOptions()
    ro.only_execute_path_to_fetches = True
    ro.logid = "r1"
    ro.add_run_config_entry("k", "v")
    assert ro.get_run_config_entry("k") == "v"
    sess = ort.InferenceSession(models.add_relu().SerializeToString())
    out = sess.run(["Z"], {"A": np.ones((1, 3), np.float32), "B": np.ones((1, 3), np.float32)}, ro)
    np.testing.assert_array_equal(out[0], np.full((1, 3), 2, np.float32))


def test_backend_api():
    from tritort import backend

    model = models.add_relu()
    assert backend.supports_device("CPU") and backend.is_compatible(model)
    rep = backend.prepare(model, "CPU")
    f = feeds()
    out = rep.run([f["A"], f["B"]])
    np.testing.assert_allclose(out[0], np.maximum(f["A"] + f["B"], 0))
    np.testing.assert_allclose(backend.run(rep, f)[1], f["A"] * 2)


def test_capi_import_path():
    from tritort.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

    assert InvalidArgument is ort.InvalidArgument and Fail is ort.Fail


def test_iobinding_cpu():
    sess = ort.InferenceSession(models.add_relu().SerializeToString())
    f = feeds()
    b = sess.io_binding()
    b.bind_cpu_input("A", f["A"])
    b.bind_ortvalue_input("B", ort.OrtValue.ortvalue_from_numpy(f["B"]))
    out = np.empty((4, 3), np.float32)
    b.bind_output("Y", "cpu", 0, np.float32, out.shape, out.ctypes.data)
    b.bind_output("Z")
    sess.run_with_iobinding(b)
    np.testing.assert_allclose(out, np.maximum(f["A"] + f["B"], 0))
    y, z = b.copy_outputs_to_cpu()
    np.testing.assert_allclose(z, f["A"] * 2)
    assert [v.shape() for v in b.get_outputs()] == [[4, 3], [4, 3]]
    b.clear_binding_outputs()
    with pytest.raises(ort.InvalidArgument, match="no outputs are bound"):
        sess.run_with_iobinding(b)


def test_set_seed_makes_unseeded_random_ops_reproducible():
    model = models.make([helper.make_node("RandomUniform", [], ["Y"], shape=[4])], [],
                        [models.vi("Y", shape=[4])]).SerializeToString()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort.set_seed(7)
    a = ort.InferenceSession(model, so).run(None, {})[0]
    ort.set_seed(7)
    b = ort.InferenceSession(model, so).run(None, {})[0]
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() < 1 and len(set(a.tolist())) == 4
    with pytest.raises(ort.InvalidArgument):
        ort.set_seed("seven")
