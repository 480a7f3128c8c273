"""IOBinding on CUDA (``gpu``: skipped without a device): the seed example verbatim, zero-copy
binding, and run ordering against the caller's streams. The same paths on CPU tensors and in
Triton's interpreter are in test_iobinding.py, whose builders these share."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto

import tritort as ort
from tests.test_iobinding import CPU, TRITON, add_relu, cast_model, session

@pytest.mark.gpu
def test_cuda_seed_example_verbatim():
    session = ort.InferenceSession(
        cast_model(TensorProto.FLOAT8E5M2, TensorProto.BFLOAT16, [3]).SerializeToString(),
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    x = torch.ones([3], dtype=torch.float8_e5m2, device='cuda:0')
    y = torch.empty([3], dtype=torch.bfloat16, device='cuda:0')
    binding = session.io_binding()
    binding.bind_input(
        name='X',
        device_type='cuda',
        device_id=0,
        element_type=TensorProto.FLOAT8E5M2,
        shape=tuple(x.shape),
        buffer_ptr=x.data_ptr(),
        )
    binding.bind_output(
        name='Y',
        device_type='cuda',
        device_id=0,
        element_type=TensorProto.BFLOAT16,
        shape=tuple(y.shape),
        buffer_ptr=y.data_ptr(),
        )
    session.run_with_iobinding(binding)
    assert torch.equal(y.cpu(), torch.ones([3], dtype=torch.bfloat16))


@pytest.mark.gpu
def test_cuda_binding_is_zero_copy(monkeypatch):
    sess = session(add_relu(), TRITON)
    ep = sess._providers[0]
    arrived = []
    real = ep.to_device
    monkeypatch.setattr(ep, "to_device", lambda v: arrived.append(real(v)) or arrived[-1])
    a = torch.randn(64, 3, device="cuda")
    bb = torch.randn(64, 3, device="cuda")
    b = sess.io_binding()
    b.bind_input("A", "cuda", 0, np.float32, tuple(a.shape), a.data_ptr())
    b.bind_input("B", bb)
    b.bind_output("Y", "cuda")
    sess.run_with_iobinding(b)
    assert {t.data_ptr() for t in arrived} == {a.data_ptr(), bb.data_ptr()}
    (out,) = b.get_outputs()
    assert out.device_name() == "cuda"
    t = torch.from_dlpack(out)
    assert t.is_cuda and t.data_ptr() == out.data_ptr()
    torch.testing.assert_close(t, torch.relu(a + bb))
    np.testing.assert_allclose(b.copy_outputs_to_cpu()[0], torch.relu(a + bb).cpu().numpy(),
                               rtol=1e-6)
    # run() uses a CUDA tensor in place and still returns numpy
    arrived.clear()
    (y,) = sess.run(None, {"A": a, "B": bb})
    assert isinstance(y, np.ndarray) and arrived[0] is a
    # chaining: device values feed a second session without a host copy
    (y1,) = sess.run_with_ort_values(None, {"A": ort.OrtValue.from_dlpack(a),
                                            "B": ort.OrtValue.from_dlpack(bb)})
    assert y1.device_name() == "cuda"
    arrived.clear()
    (y2,) = sess.run_with_ort_values(None, {"A": y1, "B": y1})
    assert arrived[0].data_ptr() == y1.data_ptr() and y2.device_name() == "cuda"


@pytest.mark.gpu
def test_cuda_tensor_on_a_cpu_only_session_is_refused():
    sess = session(add_relu(), CPU)
    with pytest.raises(ort.InvalidArgument, match="cuda:0 tensor, but no provider"):
        sess.run(None, {"A": torch.zeros(2, 3, device="cuda"), "B": torch.zeros(2, 3)})


@pytest.mark.gpu
def test_cuda_run_is_ordered_after_a_producer_on_a_side_stream():
    sess = session(add_relu(), TRITON)
    n = 1 << 20
    a = torch.zeros(n, 3, device="cuda")
    bb = torch.ones(n, 3, device="cuda")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    b = sess.io_binding()
    b.bind_input("A", a)
    b.bind_input("B", bb)
    b.bind_output("Y", "cuda")
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # the producer is slow ...
        a.fill_(3.0)  # ... and writes on the side stream
        sess.run_with_iobinding(b)  # the run queues on the caller's current stream
        out = torch.from_dlpack(b.get_outputs()[0])
    side.synchronize()  # outputs are ready on that stream: no device-wide sync needed
    assert torch.all(out == 4.0)


@pytest.mark.gpu
def test_cuda_user_compute_stream_is_ordered_by_events():
    compute = torch.cuda.Stream()
    sess = ort.InferenceSession(add_relu().SerializeToString(), providers=[
        ("TritonExecutionProvider", {"user_compute_stream": str(compute.cuda_stream)}),
        "CPUExecutionProvider"])
    n = 1 << 20
    a = torch.zeros(n, 3, device="cuda")
    bb = torch.ones(n, 3, device="cuda")
    torch.cuda.synchronize()
    b = sess.io_binding()
    b.bind_input("A", a)
    b.bind_input("B", bb)
    b.bind_output("Y", "cuda")
    torch.cuda._sleep(200_000_000)  # producer on the caller's current stream
    a.fill_(3.0)
    sess.run_with_iobinding(b)  # runs on `compute`, after an event on the current stream
    out = torch.from_dlpack(b.get_outputs()[0])
    torch.cuda.current_stream().synchronize()  # the current stream waits for `compute`
    assert torch.all(out == 4.0)
    with pytest.raises(ort.InvalidArgument, match="user_compute_stream"):
        ort.InferenceSession(add_relu().SerializeToString(), providers=[
            ("TritonExecutionProvider", {"user_compute_stream": "stream"})])


@pytest.mark.gpu
def test_cuda_host_inputs_upload_without_blocking_the_host(monkeypatch):
    # numpy inputs reach the device through pinned staging on the run's stream
    sess = session(add_relu(), TRITON)
    staged = []
    real = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory",
                        lambda self, *a: staged.append(tuple(self.shape)) or real(self, *a))
    a = np.random.default_rng(0).standard_normal((4096, 3)).astype(np.float32)
    bb = np.random.default_rng(1).standard_normal((4096, 3)).astype(np.float32)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # the stream is busy: a blocking copy would wait here
        y, _ = sess.run_with_ort_values(None, {"A": ort.OrtValue.ortvalue_from_numpy(a),
                                              "B": ort.OrtValue.ortvalue_from_numpy(bb)})
    side.synchronize()
    assert (4096, 3) in staged
    np.testing.assert_allclose(torch.from_dlpack(y).cpu().numpy(), np.maximum(a + bb, 0),
                               rtol=1e-6)
