"""LoRA adapters: onnxruntime's .onnx_adapter files read and written by tritort (and the
reverse), and RunOptions.add_active_adapter giving onnxruntime's outputs."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnxruntime
import pytest
from onnx import helper, numpy_helper

import tritort as ort
from tritort import adapters

from . import models

CPU = ["CPUExecutionProvider"]
rng = np.random.default_rng(18)
W = rng.standard_normal((8, 8)).astype(np.float32)
A1, B1 = rng.standard_normal((8, 2)).astype(np.float32), rng.standard_normal((2, 8)).astype(
    np.float32)
A2, B2 = rng.standard_normal((8, 2)).astype(np.float32), rng.standard_normal((2, 8)).astype(
    np.float32)
X = rng.standard_normal((2, 8)).astype(np.float32)


def _lora_model(params_as="overridable") -> bytes:
    """y = x W + (x A) B; A and B are zero initializers also listed as inputs (overridable,
    as LoRA exports make them), or plain required inputs."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"], name="base"),
             helper.make_node("MatMul", ["x", "lora_A"], ["xa"], name="down"),
             helper.make_node("MatMul", ["xa", "lora_B"], ["xab"], name="up"),
             helper.make_node("Add", ["xw", "xab"], ["y"], name="add")]
    inits = [numpy_helper.from_array(W, "W")]
    if params_as == "overridable":
        inits += [numpy_helper.from_array(np.zeros((8, 2), np.float32), "lora_A"),
                  numpy_helper.from_array(np.zeros((2, 8), np.float32), "lora_B")]
    inputs = [models.vi("x", shape=[2, 8]), models.vi("lora_A", shape=[8, "r"]),
              models.vi("lora_B", shape=["r", 8])]
    return models.make(nodes, inputs, [models.vi("y", shape=[2, 8])], inits).SerializeToString()


def _write(module, path, params, adapter_version=0, model_version=0):
    fmt = module.AdapterFormat()
    fmt.set_adapter_version(adapter_version)
    fmt.set_model_version(model_version)
    fmt.set_parameters({k: module.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
    fmt.export_adapter(str(path))


def _load(module, path):
    adapter = module.LoraAdapter()
    adapter.Load(str(path))
    return adapter


PARAMS = {"f32": np.arange(6, dtype=np.float32).reshape(2, 3), "f16": np.ones((2, 2), np.float16),
          "i64": np.arange(5, dtype=np.int64), "u8": np.arange(3, dtype=np.uint8),
          "f64": np.linspace(0, 1, 4), "empty": np.zeros((0, 3), np.float32),
          "scalar": np.array(2.5, np.float32), "i8": np.array([-1, 2], np.int8)}
LOW = {"bf16": (np.array([1, 2.5, -3], ml_dtypes.bfloat16), 16),
       "f8": (np.array([1, 0.5, -2], ml_dtypes.float8_e4m3fn), 17)}


def test_read_what_onnxruntime_writes(tmp_path):
    fmt = onnxruntime.AdapterFormat()
    fmt.set_adapter_version(3)
    fmt.set_model_version(7)
    values = {k: onnxruntime.OrtValue.ortvalue_from_numpy(v) for k, v in PARAMS.items()}
    for name, (arr, code) in LOW.items():
        values[name] = onnxruntime.OrtValue.ortvalue_from_numpy_with_onnx_type(
            arr.view(np.uint8 if arr.itemsize == 1 else np.uint16), code)
    fmt.set_parameters(values)
    fmt.export_adapter(str(tmp_path / "ort.onnx_adapter"))
    ours = ort.AdapterFormat.read_adapter(tmp_path / "ort.onnx_adapter")
    assert (ours.get_format_version(), ours.get_adapter_version(), ours.get_model_version()) \
        == (1, 3, 7)
    got = ours.get_parameters()
    expected = {**PARAMS, **{k: v for k, (v, _) in LOW.items()}}
    assert sorted(got) == sorted(expected)
    for name, arr in expected.items():
        value = got[name].numpy()
        assert value.dtype == arr.dtype and value.shape == arr.shape, name
        np.testing.assert_array_equal(value, arr)


def test_onnxruntime_reads_what_tritort_writes(tmp_path):
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(4)
    fmt.set_model_version(9)
    # onnxruntime writes 0-d parameters but refuses them when reading ("dims is missing or
    # empty"); tritort reads them (test_read_what_onnxruntime_writes)
    params = {**{k: v for k, v in PARAMS.items() if v.ndim},
              **{k: v for k, (v, _) in LOW.items()}}
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
    fmt.export_adapter(tmp_path / "ours.onnx_adapter")
    ref = onnxruntime.AdapterFormat.read_adapter(str(tmp_path / "ours.onnx_adapter"))
    assert (ref.get_format_version(), ref.get_adapter_version(), ref.get_model_version()) == \
        (1, 4, 9)
    got = ref.get_parameters()
    assert sorted(got) == sorted(params)
    for name, arr in params.items():
        if name in LOW:
            continue
        np.testing.assert_array_equal(got[name].numpy(), arr)
        assert got[name].numpy().dtype == arr.dtype
    for name, (arr, code) in LOW.items():
        assert got[name].element_type() == code and got[name].shape() == list(arr.shape)
    onnxruntime.LoraAdapter().Load(str(tmp_path / "ours.onnx_adapter"))  # loads, no error
    # a round trip through tritort alone keeps everything too
    again = ort.AdapterFormat.read_adapter(tmp_path / "ours.onnx_adapter").get_parameters()
    for name, arr in params.items():
        np.testing.assert_array_equal(again[name].numpy(), arr)


def test_empty_adapter_both_ways(tmp_path):
    _write(onnxruntime, tmp_path / "a", {})
    _write(ort, tmp_path / "b", {})
    assert ort.AdapterFormat.read_adapter(tmp_path / "a").get_parameters() == {}
    assert onnxruntime.AdapterFormat.read_adapter(str(tmp_path / "b")).get_parameters() == {}
    fresh = ort.AdapterFormat()
    assert (fresh.get_format_version(), fresh.get_adapter_version(),
            fresh.get_model_version()) == (1, 0, 0)


@pytest.mark.parametrize("writer", [ort, onnxruntime], ids=["tritort file", "onnxruntime file"])
def test_lora_runs_give_onnxruntimes_outputs(tmp_path, writer):
    _write(writer, tmp_path / "one.onnx_adapter", {"lora_A": A1, "lora_B": B1})
    _write(writer, tmp_path / "two.onnx_adapter", {"lora_A": A2, "lora_B": B2})
    outputs = {}
    for module in (ort, onnxruntime):
        sess = module.InferenceSession(_lora_model(), providers=CPU)
        one, two = _load(module, tmp_path / "one.onnx_adapter"), \
            _load(module, tmp_path / "two.onnx_adapter")
        runs = {}
        for label, active in [("base", []), ("one", [one]), ("two", [two]),
                              ("one then two", [one, two]), ("two then one", [two, one])]:
            ro = module.RunOptions()
            for adapter in active:
                ro.add_active_adapter(adapter)
            runs[label] = sess.run(None, {"x": X}, ro)[0]
        ro = module.RunOptions()
        ro.add_active_adapter(one)
        runs["feed too"] = sess.run(None, {"x": X, "lora_A": A2}, ro)[0]
        runs["ort values"] = sess.run_with_ort_values(
            None, {"x": module.OrtValue.ortvalue_from_numpy(X)}, ro)[0].numpy()
        outputs[module.__name__] = runs
    for label, want in outputs["onnxruntime"].items():
        np.testing.assert_allclose(outputs["tritort"][label], want, rtol=1e-5, atol=1e-5,
                                   err_msg=label)
    ours = outputs["tritort"]
    np.testing.assert_allclose(ours["base"], X @ W, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours["one"], X @ W + X @ A1 @ B1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours["two"], X @ W + X @ A2 @ B2, rtol=1e-5, atol=1e-5)
    # as in onnxruntime, the first active adapter wins, over later ones and the feed
    np.testing.assert_allclose(ours["one then two"], ours["one"], rtol=1e-6)
    np.testing.assert_allclose(ours["feed too"], ours["one"], rtol=1e-6)


def test_adapter_feeding_required_inputs(tmp_path):
    """onnxruntime's Python layer checks required inputs before adding the adapter's, so an
    adapter cannot feed a required input there (ValueError); tritort counts them."""
    _write(ort, tmp_path / "a.onnx_adapter", {"lora_A": A1, "lora_B": B1})
    data = _lora_model(params_as="inputs")
    ro = ort.RunOptions()
    ro.add_active_adapter(_load(ort, tmp_path / "a.onnx_adapter"))
    got = ort.InferenceSession(data).run(None, {"x": X}, ro)[0]
    np.testing.assert_allclose(got, X @ W + X @ A1 @ B1, rtol=1e-5, atol=1e-5)
    ref_adapter = _load(onnxruntime, tmp_path / "a.onnx_adapter")
    ref_ro = onnxruntime.RunOptions()
    ref_ro.add_active_adapter(ref_adapter)
    ref = onnxruntime.InferenceSession(data, providers=CPU)
    with pytest.raises(ValueError, match="Required inputs"):
        ref.run(None, {"x": X}, ref_ro)
    with pytest.raises(ValueError, match=r"Required inputs \(\['lora_A', 'lora_B'\]\)"):
        ort.InferenceSession(data).run(None, {"x": X})


@pytest.mark.parametrize("params, match", [
    ({"nope": A1}, "Invalid input name: nope"),
    ({"lora_A": A1.astype(np.float64)}, r"Actual: \(tensor\(double\)\) , expected: "
                                        r"\(tensor\(float\)\)"),
], ids=["unknown name", "wrong type"])
def test_adapter_parameter_errors_match_onnxruntime(tmp_path, params, match):
    _write(ort, tmp_path / "bad.onnx_adapter", params)
    for module in (ort, onnxruntime):
        # onnxruntime's RunOptions holds the adapter by a raw pointer: keep it alive here
        adapter = _load(module, tmp_path / "bad.onnx_adapter")
        ro = module.RunOptions()
        ro.add_active_adapter(adapter)
        sess = module.InferenceSession(_lora_model(), providers=CPU)
        error = ort.InvalidArgument if module is ort else \
            onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument
        with pytest.raises(error, match=match):
            sess.run(None, {"x": X}, ro)


def test_run_options_keep_their_adapters_alive(tmp_path):
    """onnxruntime's RunOptions keeps a raw pointer: an adapter only it references is freed
    and the run reads freed memory. tritort's holds the adapter."""
    import gc

    _write(ort, tmp_path / "a.onnx_adapter", {"lora_A": A1, "lora_B": B1})
    ro = ort.RunOptions()
    ro.add_active_adapter(_load(ort, tmp_path / "a.onnx_adapter"))
    gc.collect()
    got = ort.InferenceSession(_lora_model()).run(None, {"x": X}, ro)[0]
    np.testing.assert_allclose(got, X @ W + X @ A1 @ B1, rtol=1e-5, atol=1e-5)


def test_file_errors(tmp_path):
    with pytest.raises(ort.NoSuchFile, match="does not exist"):
        ort.LoraAdapter().Load(tmp_path / "missing.onnx_adapter")
    garbage = tmp_path / "garbage.onnx_adapter"
    garbage.write_bytes(b"garbage" * 10)
    for reader in (lambda p: ort.LoraAdapter().Load(p), ort.AdapterFormat.read_adapter):
        with pytest.raises(ort.InvalidArgument, match="valid lora parameter format"):
            reader(garbage)
    for module in (ort, onnxruntime):  # onnxruntime's words, as a RuntimeError
        with pytest.raises(RuntimeError, match="valid lora parameter format"):
            module.AdapterFormat.read_adapter(str(garbage))
    _write(ort, tmp_path / "good.onnx_adapter", {"lora_A": A1})
    data = (tmp_path / "good.onnx_adapter").read_bytes()
    for cut in (12, 40, len(data) - 20):
        truncated = tmp_path / f"cut{cut}.onnx_adapter"
        truncated.write_bytes(data[:cut])
        with pytest.raises(ort.InvalidArgument, match=str(truncated.name)):
            ort.AdapterFormat.read_adapter(truncated)


def test_parameter_types_onnxruntime_refuses_are_refused():
    fmt = ort.AdapterFormat()
    for bad in (np.array([True, False]), np.array([1 + 2j], np.complex64)):
        with pytest.raises(ort.InvalidArgument, match="not a supported LoRA parameter type"):
            fmt.set_parameters({"p": bad})
    with pytest.raises(ort.InvalidArgument, match="not a supported LoRA parameter type"):
        adapters.decode(adapters.encode(1, 0, 0, {"p": np.array([True])}))


def test_add_active_adapter_checks_its_argument():
    for module in (ort, onnxruntime):
        with pytest.raises(TypeError):
            module.RunOptions().add_active_adapter("not an adapter")
    with pytest.raises(ort.InvalidArgument, match="Load"):
        ort.RunOptions().add_active_adapter(ort.LoraAdapter())


def test_lora_on_the_triton_provider(tmp_path):
    """Adapters swap per run on a session whose nodes run as Triton kernels (bound plans
    replay the same launches with the adapter's tensors)."""
    if "TritonExecutionProvider" not in ort.get_available_providers():
        pytest.skip("the Triton provider is not available here")
    _write(ort, tmp_path / "one.onnx_adapter", {"lora_A": A1, "lora_B": B1})
    one = _load(ort, tmp_path / "one.onnx_adapter")
    sess = ort.InferenceSession(_lora_model(), providers=["TritonExecutionProvider",
                                                          "CPUExecutionProvider"])
    assert set(sess.placement().values()) == {"TritonExecutionProvider"}
    ro = ort.RunOptions()
    ro.add_active_adapter(one)
    for _ in range(2):
        np.testing.assert_allclose(sess.run(None, {"x": X}, ro)[0], X @ W + X @ A1 @ B1,
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(sess.run(None, {"x": X})[0], X @ W, rtol=1e-4, atol=1e-4)
