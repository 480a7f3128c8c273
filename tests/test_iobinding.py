"""IOBinding, run() and run_with_ort_values over DLPack: torch tensors bind without copies.

CPU tensors here; the Triton provider runs in Triton's interpreter (TRITON_INTERPRET=1, set by
conftest.py without a GPU). The ``gpu`` tests repeat the device paths on CUDA, streams included.
Expected values come from onnxruntime or plain numpy/torch math.
"""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
from onnx import TensorProto
from onnx import TensorProto as TP
from onnx import helper

import tritort as ort
import tritort.session as session_module
from tests import models
from tritort import dlpack, dtypes, replay
from tritort.planner import Plans

CPU = ["CPUExecutionProvider"]
TRITON = ["TritonExecutionProvider", "CPUExecutionProvider"]
PROVIDERS = pytest.mark.parametrize("providers", [CPU, TRITON], ids=["cpu", "triton"])


def cast_model(src: int, dst: int, shape=("N",)):
    return models.make([helper.make_node("Cast", ["X"], ["Y"], to=dst, name="cast")],
                       [models.vi("X", src, list(shape))], [models.vi("Y", dst, list(shape))])


def add_relu():
    """Y = Relu(A + B): the Triton provider takes both nodes."""
    return models.make([helper.make_node("Add", ["A", "B"], ["S"], name="add"),
                        helper.make_node("Relu", ["S"], ["Y"], name="relu")],
                       [models.vi("A", shape=["N", 3]), models.vi("B", shape=["N", 3])],
                       [models.vi("Y", shape=["N", 3])])


def session(model, providers):
    sess = ort.InferenceSession(model.SerializeToString(), providers=providers)
    if providers == TRITON:
        assert sess.get_providers()[0] == "TritonExecutionProvider"
    return sess


def ptr(value) -> int:
    if isinstance(value, np.ndarray):
        return value.ctypes.data
    if isinstance(value, ort.OrtValue):
        return value.data_ptr()
    return value.data_ptr()


@pytest.fixture
def seen_feeds(monkeypatch):
    """The feeds as they reach the executor (after conversion and validation)."""
    calls = []
    real = session_module.execute

    def spy(plan, feeds, *args):
        calls.append(dict(feeds))
        return real(plan, feeds, *args)

    # the first run of an input signature records its launches for later runs
    monkeypatch.setattr(replay, "execute", spy)
    monkeypatch.setattr(session_module, "execute", spy)
    return calls


def relu_sum(a, b):
    return np.maximum(np.asarray(a, np.float32) + np.asarray(b, np.float32), 0)


# -- the seed's example -------------------------------------------------------------------------
@PROVIDERS
def test_seed_example_float8_in_bfloat16_out(providers):
    session = ort.InferenceSession(
        cast_model(TensorProto.FLOAT8E5M2, TensorProto.BFLOAT16, [3]).SerializeToString(),
        providers=providers)
    # verbatim from the ORT API summary, with device 'cpu' for 'cuda'
    x = torch.ones([3], dtype=torch.float8_e5m2, device='cpu')
    y = torch.empty([3], dtype=torch.bfloat16, device='cpu')
    binding = session.io_binding()
    binding.bind_input(
        name='X',
        device_type='cpu',
        device_id=0,
        element_type=TensorProto.FLOAT8E5M2,
        shape=tuple(x.shape),
        buffer_ptr=x.data_ptr(),
        )
    binding.bind_output(
        name='Y',
        device_type='cpu',
        device_id=0,
        element_type=TensorProto.BFLOAT16,
        shape=tuple(y.shape),
        buffer_ptr=y.data_ptr(),
        )
    session.run_with_iobinding(binding)
    assert torch.equal(y, torch.ones([3], dtype=torch.bfloat16))
    assert binding.get_outputs()[0].data_ptr() == y.data_ptr()


@PROVIDERS
def test_every_float8_e5m2_value_to_bfloat16(providers):
    sess = session(cast_model(TP.FLOAT8E5M2, TP.BFLOAT16), providers)
    x = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e5m2)
    y = torch.empty(256, dtype=torch.bfloat16)
    b = sess.io_binding()
    b.bind_input("X", "cpu", 0, TP.FLOAT8E5M2, x.shape, x.data_ptr())
    b.bind_output("Y", "cpu", 0, TP.BFLOAT16, y.shape, y.data_ptr())
    sess.run_with_iobinding(b)
    np.testing.assert_array_equal(y.float().numpy(), x.to(torch.bfloat16).float().numpy())


# -- casts bound both ways, bit-exact against torch -------------------------------------------
CASTS = [(TP.FLOAT, TP.BFLOAT16), (TP.BFLOAT16, TP.FLOAT), (TP.FLOAT8E4M3FN, TP.FLOAT),
         (TP.FLOAT8E5M2, TP.FLOAT), (TP.FLOAT, TP.FLOAT8E4M3FN), (TP.FLOAT, TP.FLOAT8E5M2),
         (TP.FLOAT8E4M3FN, TP.BFLOAT16), (TP.FLOAT16, TP.BFLOAT16)]
TORCH_OF = {TP.FLOAT: torch.float32, TP.BFLOAT16: torch.bfloat16, TP.FLOAT16: torch.float16,
            TP.FLOAT8E4M3FN: torch.float8_e4m3fn, TP.FLOAT8E5M2: torch.float8_e5m2}


def cast_input(src: int) -> torch.Tensor:
    dt = TORCH_OF[src]
    if dt.itemsize == 1:  # every bit pattern
        return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dt)
    g = torch.Generator().manual_seed(0)
    # values every target holds without saturating, plus exact halfway cases for rounding
    x = torch.randn(512, generator=g) * 50
    return torch.cat([x, torch.tensor([0.0, -0.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8])]).to(dt)


@PROVIDERS
@pytest.mark.parametrize("src,dst", CASTS, ids=lambda t: TP.DataType.Name(t))
def test_cast_bound_both_ways_is_bit_exact(providers, src, dst):
    sess = session(cast_model(src, dst), providers)
    x = cast_input(src)
    expected = x.to(TORCH_OF[dst])
    y = torch.empty_like(expected)
    b = sess.io_binding()
    b.bind_input("X", x)
    b.bind_output("Y", y)
    sess.run_with_iobinding(b)
    assert b.get_outputs()[0].data_ptr() == y.data_ptr()
    assert torch.equal(y.view(torch.uint8), expected.view(torch.uint8)) or \
        np.array_equal(y.float().numpy(), expected.float().numpy(), equal_nan=True)
    # run() takes the same tensor and returns numpy (ml_dtypes for bf16/fp8)
    (got,) = sess.run(None, {"X": x})
    assert isinstance(got, np.ndarray) and got.dtype == dtypes.from_onnx(dst).numpy
    np.testing.assert_array_equal(got.astype(np.float32), expected.float().numpy())


# -- inputs without copies --------------------------------------------------------------------
@PROVIDERS
@pytest.mark.parametrize("form", ["tensor", "ortvalue", "pointer", "cpu_input", "capsule"])
def test_inputs_bind_without_copies(providers, form, seen_feeds):
    sess = session(add_relu(), providers)
    a = torch.randn(4, 3)
    bnp = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    b = sess.io_binding()
    if form == "tensor":
        b.bind_input("A", a)
    elif form == "ortvalue":
        b.bind_ortvalue_input("A", ort.OrtValue.from_dlpack(a))
    elif form == "pointer":
        b.bind_input("A", "cpu", 0, np.float32, tuple(a.shape), a.data_ptr())
    elif form == "cpu_input":
        b.bind_cpu_input("A", a)
    else:
        b.bind_input("A", ort.OrtValue.from_dlpack(torch.utils.dlpack.to_dlpack(a)))
    b.bind_cpu_input("B", bnp)
    b.bind_output("Y")
    sess.run_with_iobinding(b)
    feeds = seen_feeds[-1]
    assert ptr(feeds["A"]) == a.data_ptr() and ptr(feeds["B"]) == bnp.ctypes.data
    np.testing.assert_allclose(b.copy_outputs_to_cpu()[0], relu_sum(a, bnp), rtol=1e-6)
    a.fill_(1.0)  # the binding refers to the memory: a later run reads the new values
    sess.run_with_iobinding(b)
    np.testing.assert_allclose(b.copy_outputs_to_cpu()[0], relu_sum(a, bnp), rtol=1e-6)


def test_triton_provider_receives_the_bound_tensor_itself(monkeypatch):
    sess = session(add_relu(), TRITON)
    ep = sess._providers[0]
    arrived = []
    real = ep.to_device
    monkeypatch.setattr(ep, "to_device", lambda v: arrived.append(real(v)) or arrived[-1])
    sess._plans = Plans(sess._program)  # plans made before the spy moved constants already
    a, bb = torch.randn(2, 3), torch.randn(2, 3)
    b = sess.io_binding()
    b.bind_input("A", a)
    b.bind_input("B", bb)
    b.bind_output("Y")
    sess.run_with_iobinding(b)
    assert {t.data_ptr() for t in arrived} == {a.data_ptr(), bb.data_ptr()}
    out = b.get_outputs()[0]
    assert isinstance(out._value, torch.Tensor)  # left where the Triton kernel wrote it
    np.testing.assert_allclose(out.numpy(), relu_sum(a, bb), rtol=1e-6)


# -- outputs ----------------------------------------------------------------------------------
@PROVIDERS
def test_outputs_written_into_caller_memory(providers):
    sess = session(add_relu(), providers)
    a, bb = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.full((5, 3), -1.0)
    b = sess.io_binding()
    b.bind_input("A", a)
    b.bind_input("B", bb)
    b.bind_output("Y", "cpu", 0, np.float32, tuple(y.shape), y.data_ptr())
    sess.run_with_iobinding(b)
    np.testing.assert_allclose(y.numpy(), relu_sum(a, bb), rtol=1e-6)
    assert b.get_outputs()[0].data_ptr() == y.data_ptr()
    strided = torch.zeros(3, 5).t()  # a non-contiguous buffer is written through its strides
    b.bind_output("Y", strided)
    sess.run_with_iobinding(b)
    np.testing.assert_allclose(strided.numpy(), relu_sum(a, bb), rtol=1e-6)
    ov = ort.OrtValue.ortvalue_from_shape_and_type([5, 3], np.float32)
    b.bind_ortvalue_output("Y", ov)
    sess.run_with_iobinding(b)
    assert b.get_outputs()[0] is ov
    np.testing.assert_allclose(ov.numpy(), relu_sum(a, bb), rtol=1e-6)


@PROVIDERS
def test_runtime_allocated_outputs_follow_dynamic_shapes(providers):
    sess = session(add_relu(), providers)
    b = sess.io_binding()
    b.bind_output("Y", "cpu")
    for n in (2, 7):
        a, bb = torch.randn(n, 3), torch.randn(n, 3)
        b.bind_input("A", a)
        b.bind_input("B", bb)
        sess.run_with_iobinding(b)
        (out,) = b.get_outputs()
        assert out.shape() == [n, 3] and out.device_name() == "cpu"
        t = torch.from_dlpack(out)  # a view of the runtime's memory, no copy
        assert t.data_ptr() == out.data_ptr()
        np.testing.assert_allclose(t.numpy(), relu_sum(a, bb), rtol=1e-6)
        assert b.get_outputs()[0] is out  # repeatable
        host = b.copy_outputs_to_cpu()[0]
        host[:] = 123  # a copy: the OrtValue keeps its values
        np.testing.assert_allclose(out.numpy(), relu_sum(a, bb), rtol=1e-6)


def test_bfloat16_ortvalues_bound_both_ways():
    sess = session(cast_model(TP.BFLOAT16, TP.FLOAT), CPU)
    x = torch.tensor([1.5, -2.25, 3e38, float("inf")], dtype=torch.bfloat16)
    b = sess.io_binding()
    b.bind_ortvalue_input("X", ort.OrtValue.from_dlpack(x))
    out = ort.OrtValue.ortvalue_from_shape_and_type([4], np.float32)
    b.bind_ortvalue_output("Y", out)
    sess.run_with_iobinding(b)
    np.testing.assert_array_equal(out.numpy(), x.float().numpy())


def test_matches_onnxruntime_iobinding_forms():
    model = models.add_relu().SerializeToString()  # Y = Relu(A + B), Z = A * 2
    rng = np.random.default_rng(3)
    A = rng.standard_normal((3, 3)).astype(np.float32)
    B = rng.standard_normal((3, 3)).astype(np.float32)
    results = []
    for rt in (ort, onnxruntime):
        sess = rt.InferenceSession(model, providers=["CPUExecutionProvider"])
        a_ov = rt.OrtValue.ortvalue_from_numpy(A, "cpu", 0)
        y_ov = rt.OrtValue.ortvalue_from_shape_and_type([3, 3], np.float32, "cpu", 0)
        io = sess.io_binding()
        io.bind_input(name="A", device_type=a_ov.device_name(), device_id=0,
                      element_type=np.float32, shape=a_ov.shape(), buffer_ptr=a_ov.data_ptr())
        io.bind_cpu_input("B", B)
        io.bind_ortvalue_output("Y", y_ov)
        io.bind_output("Z")
        sess.run_with_iobinding(io)
        outs = io.copy_outputs_to_cpu()
        results.append((y_ov.numpy().copy(), outs[0], outs[1], io.get_outputs()[1].shape()))
    for ours, ref in zip(*results):
        np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_clear_and_synchronize():
    sess = session(add_relu(), CPU)
    b = sess.io_binding()
    b.bind_input("A", torch.ones(1, 3))
    b.bind_input("B", torch.ones(1, 3))
    b.bind_output("Y")
    b.synchronize_inputs()
    sess.run_with_iobinding(b)
    b.synchronize_outputs()
    assert b.get_outputs()[0].numpy().tolist() == [[2, 2, 2]]
    b.clear_binding_inputs()
    with pytest.raises(ort.InvalidArgument, match="Required inputs"):
        sess.run_with_iobinding(b)
    b.clear_binding_outputs()
    assert b.get_outputs() == []
    b.bind_cpu_input("A", np.ones((1, 3), np.float32))
    b.bind_cpu_input("B", [[1.0, 2.0, 3.0]])  # lists convert to the declared type
    with pytest.raises(ort.InvalidArgument, match="no outputs are bound"):
        sess.run_with_iobinding(b)


# -- errors -----------------------------------------------------------------------------------
def test_buffer_arguments_go_together():
    sess = session(add_relu(), CPU)
    x = np.zeros((4, 3), np.float32)
    b = sess.io_binding()
    with pytest.raises(ort.InvalidArgument, match=r"missing \['element_type'\]"):
        b.bind_input("A", "cpu", 0, None, x.shape, x.ctypes.data)
    with pytest.raises(ort.InvalidArgument, match=r"missing \['shape'\]"):
        b.bind_input("A", "cpu", 0, np.float32, None, x.ctypes.data)
    with pytest.raises(ort.InvalidArgument, match=r"missing \['buffer_ptr'\]"):
        b.bind_input("A", "cpu", 0, np.float32, x.shape)
    with pytest.raises(ort.InvalidArgument, match=r"missing \['shape'\]"):
        b.bind_output("Y", "cpu", 0, np.float32, None, x.ctypes.data)
    with pytest.raises(ort.InvalidArgument, match=r"missing \['buffer_ptr'\]"):
        b.bind_output("Y", "cpu", 0, np.float32, x.shape)
    with pytest.raises(ort.InvalidArgument, match="NULL"):
        b.bind_input("A", "cpu", 0, np.float32, x.shape, 0)
    with pytest.raises(ort.InvalidArgument, match="string tensors"):
        b.bind_input("A", "cpu", 0, TP.STRING, x.shape, x.ctypes.data)
    with pytest.raises(ort.InvalidArgument, match="unknown element_type"):
        b.bind_input("A", "cpu", 0, "nope", x.shape, x.ctypes.data)


@PROVIDERS
def test_dtype_and_shape_are_checked_before_running(providers, seen_feeds):
    sess = session(add_relu(), providers)
    b = sess.io_binding()
    x64 = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ort.InvalidArgument, match=r"Unexpected input data type for 'A'. Actual: "
                                                  r"\(tensor\(double\)\) , expected: "
                                                  r"\(tensor\(float\)\)"):
        b.bind_input("A", x64)
    with pytest.raises(ort.InvalidArgument, match=r"'A'.*tensor\(bfloat16\)"):
        b.bind_input("A", "cpu", 0, TP.BFLOAT16, (4, 3), x64.data_ptr())
    with pytest.raises(ort.InvalidArgument, match=r"dimensions for input: A .*index: 1 Got: 2 "
                                                  r"Expected: 3"):
        b.bind_input("A", torch.zeros(4, 2))
    with pytest.raises(ort.InvalidArgument, match="Invalid rank for input: B"):
        b.bind_ortvalue_input("B", ort.OrtValue.from_dlpack(torch.zeros(3)))
    # run() checks torch tensors the same way, before any node runs
    with pytest.raises(ort.InvalidArgument, match=r"'B'.*tensor\(float16\)"):
        sess.run(None, {"A": torch.zeros(4, 3), "B": torch.zeros(4, 3, dtype=torch.float16)})
    with pytest.raises(ort.InvalidArgument, match="dimensions for input: B"):
        sess.run(None, {"A": torch.zeros(4, 3), "B": torch.zeros(4, 4)})
    with pytest.raises(ort.InvalidArgument, match="bound buffer holds tensor\\(float16\\), the "
                                                  "model produces tensor\\(float\\)"):
        b.bind_output("Y", torch.zeros(4, 3, dtype=torch.float16))
    assert seen_feeds == []
    # a bound output whose size the run disagrees with: refused, nothing written
    y = torch.full((4, 3), 5.0)
    b.bind_input("A", torch.ones(2, 3))
    b.bind_input("B", torch.ones(2, 3))
    b.bind_output("Y", y)
    with pytest.raises(ort.InvalidArgument, match=r"bound buffer is tensor\(float\)\[4, 3\], "
                                                  r"the result is tensor\(float\)\[2, 3\]"):
        sess.run_with_iobinding(b)
    assert (y == 5).all()
    # the session stays usable
    assert sess.run(None, {"A": np.ones((1, 3), np.float32),
                           "B": np.ones((1, 3), np.float32)})[0].tolist() == [[2, 2, 2]]


def test_static_output_shape_checked_at_bind():
    sess = session(cast_model(TP.FLOAT, TP.BFLOAT16, [3]), CPU)
    with pytest.raises(ort.InvalidArgument, match=r"shape \[4\], the model declares \[3\]"):
        sess.io_binding().bind_output("Y", torch.empty(4, dtype=torch.bfloat16))


def test_names_devices_and_sources_are_checked():
    sess = session(add_relu(), CPU)
    b = sess.io_binding()
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ort.InvalidArgument, match="Invalid input name: nope"):
        b.bind_input("nope", torch.zeros(4, 3))
    with pytest.raises(ort.InvalidArgument, match="Invalid Output Name:nope"):
        b.bind_output("nope")
    with pytest.raises(ort.InvalidArgument, match="unknown device_type 'npu'"):
        b.bind_input("A", "npu", 0, np.float32, x.shape, x.ctypes.data)
    with pytest.raises(ort.InvalidArgument, match="unknown device_type"):
        b.bind_output("Y", "npu")
    with pytest.raises(ort.InvalidArgument, match="DLPack producer"):
        b.bind_input("A", object())
    with pytest.raises(ort.InvalidArgument, match="DLPack producer"):
        b.bind_output("Y", object())
    with pytest.raises(ort.InvalidArgument, match="another session"):
        session(add_relu(), CPU).run_with_iobinding(b)
    with pytest.raises(ort.InvalidArgument, match="bind_cpu_input.*meta"):
        b.bind_cpu_input("A", torch.zeros(4, 3, device="meta"))
    if not torch.cuda.is_available():
        with pytest.raises(ort.EPFail, match="cuda:0.*not available"):
            b.bind_input("A", "cuda", 0, np.float32, x.shape, x.ctypes.data)
        with pytest.raises(ort.EPFail, match="not available"):
            b.bind_output("Y", "cuda", 0)


@PROVIDERS
def test_a_tensor_on_a_device_no_provider_runs_on_is_refused(providers):
    sess = session(add_relu(), providers)
    meta = torch.zeros(2, 3, device="meta")
    with pytest.raises(ort.InvalidArgument, match="input 'A' is a meta tensor, but no provider "
                                                  "of this session runs on meta"):
        sess.run(None, {"A": meta, "B": torch.zeros(2, 3)})
    b = sess.io_binding()
    b.bind_input("A", meta)
    b.bind_input("B", torch.zeros(2, 3))
    b.bind_output("Y")
    with pytest.raises(ort.InvalidArgument, match="meta tensor"):
        sess.run_with_iobinding(b)


# -- non-contiguous tensors -------------------------------------------------------------------
@PROVIDERS
def test_non_contiguous_tensors_are_read_through_their_strides(providers):
    sess = session(add_relu(), providers)
    a = torch.randn(3, 4).t()  # (4, 3), strides (1, 4)
    bb = torch.randn(4, 6)[:, ::2]  # (4, 3), strides (6, 2)
    assert not a.is_contiguous() and not bb.is_contiguous()
    expected = relu_sum(a.contiguous(), bb.contiguous())
    np.testing.assert_allclose(sess.run(None, {"A": a, "B": bb})[0], expected, rtol=1e-6)
    b = sess.io_binding()
    b.bind_input("A", a)
    b.bind_ortvalue_input("B", ort.OrtValue.from_dlpack(bb))
    b.bind_output("Y")
    sess.run_with_iobinding(b)
    np.testing.assert_allclose(b.get_outputs()[0].numpy(), expected, rtol=1e-6)
    assert a.stride() == (1, 4)  # the caller's tensor is untouched
    # broadcast (zero strides) and offset views; a strided bfloat16 view through a Cast
    a, bb = torch.arange(3.0).expand(4, 3), torch.arange(20.0)[5:17].reshape(4, 3)
    np.testing.assert_allclose(sess.run(None, {"A": a, "B": bb})[0],
                               relu_sum(a.contiguous(), bb.contiguous()), rtol=1e-6)
    cast = session(cast_model(TP.BFLOAT16, TP.FLOAT), providers)
    x = torch.arange(8.0).to(torch.bfloat16)[1::2]
    np.testing.assert_array_equal(cast.run(None, {"X": x})[0], [1, 3, 5, 7])


# -- run() and run_with_ort_values --------------------------------------------------------------
RUN_DTYPES = [torch.float32, torch.float16, torch.float64, torch.bfloat16, torch.float8_e4m3fn,
              torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.int8,
              torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool]


@pytest.mark.parametrize("dtype", RUN_DTYPES, ids=str)
def test_run_accepts_torch_tensors_of_every_dtype(dtype):
    dt = dtypes.from_torch(dtype)
    sess = session(cast_model(dt.onnx, TP.DOUBLE, ["N"]), CPU)
    if dtype.is_floating_point:
        x = (torch.randn(16, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    elif dtype == torch.bool:
        x = torch.tensor([True, False, True])
    else:
        x = torch.arange(-5 if dtype.is_signed else 0, 11).to(dtype)
    (y,) = sess.run(None, {"X": x})
    assert isinstance(y, np.ndarray) and y.dtype == np.float64
    np.testing.assert_array_equal(y, x.double().numpy())


@PROVIDERS
def test_outputs_never_alias_inputs(providers):
    sess = session(models.identity(TP.FLOAT, ("N",)), providers)  # Identity is optimized away
    x = torch.arange(4.0)
    (y,) = sess.run_with_ort_values(None, {"X": ort.OrtValue.from_dlpack(x)})
    assert y.data_ptr() != x.data_ptr() and y.numpy().tolist() == [0, 1, 2, 3]
    (z,) = sess.run(None, {"X": x})
    z[:] = 9
    assert x.tolist() == [0, 1, 2, 3]


def test_chaining_sessions_on_triton_stays_on_the_device(monkeypatch):
    first, second = session(add_relu(), TRITON), session(add_relu(), TRITON)
    a, bb = torch.randn(4, 3), torch.randn(4, 3)
    (y1,) = first.run_with_ort_values(["Y"], {"A": ort.OrtValue.from_dlpack(a),
                                              "B": ort.OrtValue.from_dlpack(bb)})
    assert isinstance(y1._value, torch.Tensor)  # where the Triton kernel wrote it
    ep = second._providers[0]
    arrived, host_copies = [], []
    real = ep.to_device
    monkeypatch.setattr(ep, "to_device", lambda v: arrived.append(real(v)) or arrived[-1])
    real_host = dlpack.torch_to_numpy
    monkeypatch.setattr(dlpack, "torch_to_numpy",
                        lambda t: host_copies.append(t) or real_host(t))
    (y2,) = second.run_with_ort_values(["Y"], {"A": y1, "B": y1})
    assert [t.data_ptr() for t in arrived] == [y1.data_ptr(), y1.data_ptr()]
    assert host_copies == [] and isinstance(y2._value, torch.Tensor)
    monkeypatch.undo()
    expected = relu_sum(relu_sum(a, bb), relu_sum(a, bb))
    np.testing.assert_allclose(torch.from_dlpack(y2).numpy(), expected, rtol=1e-6)


def test_chaining_sessions_on_cpu_shares_memory(seen_feeds):
    first, second = session(add_relu(), CPU), session(add_relu(), CPU)
    a, bb = np.ones((2, 3), np.float32), np.full((2, 3), 2, np.float32)
    (y1,) = first.run_with_ort_values(None, {"A": ort.OrtValue.ortvalue_from_numpy(a),
                                             "B": ort.OrtValue.ortvalue_from_numpy(bb)})
    (y2,) = second.run_with_ort_values(None, {"A": y1, "B": y1})
    assert ptr(seen_feeds[-1]["A"]) == y1.data_ptr()
    assert y2.numpy().tolist() == [[6, 6, 6]] * 2


def test_mixed_placement_routes_each_input_through_its_consumer(seen_feeds):
    # Add and Sin run on Triton, CumSum on the CPU; all three read A
    model = models.make([helper.make_node("Add", ["A", "B"], ["S"], name="add"),
                         helper.make_node("Sin", ["A"], ["T"], name="sin"),
                         helper.make_node("CumSum", ["A", "axis"], ["C"], name="cumsum")],
                        [models.vi("A", shape=["N"]), models.vi("B", shape=["N"])],
                        [models.vi(n, shape=["N"]) for n in "STC"],
                        [helper.make_tensor("axis", TP.INT64, [], [0])])
    sess = session(model, TRITON)
    placement = {n: a.provider.name for n, a in sess._program.partition.assignments.items()}
    assert placement["cumsum"] == "CPUExecutionProvider", sess.placement_report()
    a = torch.tensor([0.5, 1.0, 2.0])
    expected = [np.array([1.0, 2.0, 4.0]), np.sin(a.numpy()), np.cumsum(a.numpy())]
    for got in (sess.run(None, {"A": a, "B": a}),
                sess.run(None, {"A": a.numpy(), "B": a.numpy()}),
                [v.numpy() for v in sess.run_with_ort_values(
                    None, {"A": ort.OrtValue.from_dlpack(a), "B": ort.OrtValue.from_dlpack(a)})]):
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-6)
    assert isinstance(seen_feeds[0]["A"], torch.Tensor)  # kept for Triton, moved for the CPU
    labels = [step.label for step in sess._plans.get(["S", "T", "C"]).steps]
    assert "copy A from anywhere to cpu" in labels
