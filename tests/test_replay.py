"""Bound plans: a signature's launches recorded once and replayed (Triton's interpreter here;
the CUDA-graph capture of the same walk is a ``gpu`` test). Expected values come from numpy
or onnxruntime."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from onnx import helper, numpy_helper
from torch.utils._python_dispatch import TorchDispatchMode

import tritort as ort
from tests import models
from tests.triton_env import requires_triton, triton_session
from tritort.codegen.launch import in_kernel

pytestmark = requires_triton
ROOT = Path(__file__).resolve().parents[1]
_rng = np.random.default_rng(7)


def _block():
    """Z = Softmax(Transpose(Relu(A @ W + B))) * 2: a GEMM with an epilogue, a view, a row
    kernel with an epilogue."""
    w = numpy_helper.from_array(_rng.standard_normal((6, 5)).astype(np.float32), "W")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("MatMul", ["A", "W"], ["P"], name="mm"),
             helper.make_node("Add", ["P", "B"], ["S"], name="bias"),
             helper.make_node("Relu", ["S"], ["R"], name="relu"),
             helper.make_node("Transpose", ["R"], ["T"], name="t", perm=[1, 0]),
             helper.make_node("Softmax", ["T"], ["M"], name="softmax", axis=-1),
             helper.make_node("Mul", ["M", "two"], ["Z"], name="scale")]
    return models.make(nodes, [models.vi("A", shape=["N", 6]), models.vi("B", shape=[5])],
                       [models.vi("Z", shape=[5, "N"])], [w, two])


def _feeds(n: int) -> dict:
    return {"A": _rng.standard_normal((n, 6)).astype(np.float32),
            "B": _rng.standard_normal(5).astype(np.float32)}


def _reference(model):
    sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, feeds)[0]


def _bound(sess) -> list:
    return [b for table in sess._bound_plans._bound.values() for b in table.values()]


class _Ops(TorchDispatchMode):
    """Torch operations outside kernels (the interpreter's own tensor work excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not in_kernel():
            self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_later_runs_replay_the_recorded_launches():
    model = _block()
    sess, reference = triton_session(model), _reference(model)
    for _ in range(3):
        feeds = _feeds(4)
        np.testing.assert_allclose(sess.run(None, feeds)[0], reference(feeds), rtol=1e-5,
                                   atol=1e-6)
    [bound] = _bound(sess)
    assert len(bound.launches) == 2 and set(bound.inputs) == {"A", "B"}
    assert sess._bound_plans.refusals == {}


def test_a_bound_run_allocates_nothing_and_reads_nothing_on_the_host():
    model = _block()
    sess, reference = triton_session(model), _reference(model)
    feeds = _feeds(3)
    a, b = torch.from_numpy(feeds["A"]), torch.from_numpy(feeds["B"])
    z = torch.empty(5, 3)
    binding = sess.io_binding()
    binding.bind_input("A", a)
    binding.bind_input("B", b)
    binding.bind_output("Z", device_type="cpu", device_id=0, element_type=np.float32,
                        shape=(5, 3), buffer_ptr=z.data_ptr())
    sess.run_with_iobinding(binding)  # records
    a.copy_(torch.randn(3, 6))  # new values, same signature
    with _Ops() as ops:
        sess.run_with_iobinding(binding)
    assert len(_bound(sess)) == 1
    np.testing.assert_allclose(z.numpy(), reference({"A": a.numpy(), "B": b.numpy()}),
                               rtol=1e-5, atol=1e-6)
    # the bound tensors are read in place (views of them swapped into the recorded launches)
    # and the result written into the bound buffer: no allocation, no copy, no host read
    assert set(ops.names) <= {"as_strided", "detach"}, ops.names


def test_kernels_write_a_bound_output_tensor_in_place():
    """An output bound to the caller's tensor is written there by the kernel that produces
    it (no copy out of the plan's buffer); runs without the binding still use the buffer
    and leave the caller's tensor alone."""
    model = _block()
    sess, reference = triton_session(model), _reference(model)
    feeds = _feeds(3)
    a, b = torch.from_numpy(feeds["A"]), torch.from_numpy(feeds["B"])
    z = torch.empty(5, 3)
    binding = sess.io_binding()
    binding.bind_input("A", a)
    binding.bind_input("B", b)
    binding.bind_ortvalue_output("Z", ort.OrtValue.from_dlpack(z))
    sess.run_with_iobinding(binding)  # records
    [bound] = _bound(sess)
    assert any(bound.writes), "the output's producing launch is patched"
    for _ in range(2):
        a.copy_(torch.randn(3, 6))
        with _Ops() as ops:
            sess.run_with_iobinding(binding)
        want = reference({"A": a.numpy(), "B": b.numpy()})
        np.testing.assert_allclose(z.numpy(), want, rtol=1e-5, atol=1e-6)
        assert "copy_" not in ops.names, ops.names
        assert binding.get_outputs()[0]._tensor() is z
    kept = z.clone()
    unbound = sess.io_binding()  # the same plan, its output left to the session
    unbound.bind_input("A", a)
    unbound.bind_input("B", b)
    unbound.bind_output("Z", "cpu")
    a.copy_(torch.randn(3, 6))
    sess.run_with_iobinding(unbound)
    np.testing.assert_allclose(unbound.copy_outputs_to_cpu()[0],
                               reference({"A": a.numpy(), "B": b.numpy()}), rtol=1e-5, atol=1e-6)
    assert torch.equal(z, kept)  # that run wrote the plan's own buffer, not z
    assert len(_bound(sess)) == 1


def test_inputs_read_in_place_or_copied_into_the_plans_buffers():
    # contiguous tensors are swapped into the launches; transposed ones copied into a buffer
    model = _block()
    sess, reference = triton_session(model), _reference(model)
    values = [torch.randn(4, 6), torch.randn(6, 4).T, torch.randn(4, 6), torch.randn(6, 4).T]
    for a in values:
        b = torch.randn(5)
        got = sess.run_with_ort_values(None, {"A": ort.OrtValue.from_dlpack(a),
                                             "B": ort.OrtValue.from_dlpack(b)})[0]
        np.testing.assert_allclose(got.numpy(), reference({"A": a.numpy(), "B": b.numpy()}),
                                   rtol=1e-5, atol=1e-6)
    [bound] = _bound(sess)
    assert set(bound.buffers) == {"A"}  # made when a transposed A first came


def test_each_signature_binds_its_own_plan_and_old_ones_are_dropped(monkeypatch):
    from tritort import replay

    monkeypatch.setattr(replay, "MAX_SIGNATURES", 2)
    model = _block()
    sess, reference = triton_session(model), _reference(model)
    for n in (2, 3, 4, 3, 2):
        feeds = _feeds(n)
        np.testing.assert_allclose(sess.run(None, feeds)[0], reference(feeds), rtol=1e-5,
                                   atol=1e-6)
    [table] = sess._bound_plans._bound.values()
    assert [key[0][1] for key in table] == [(3, 6), (2, 6)]  # most recent last


def test_outputs_handed_out_are_not_rewritten_by_the_next_run():
    model = _block()
    sess, reference = triton_session(model), _reference(model)
    first, second = _feeds(4), _feeds(4)
    kept = sess.run_with_ort_values(None, {k: ort.OrtValue.ortvalue_from_numpy(v)
                                           for k, v in first.items()})[0]
    host = sess.run(None, first)[0]
    sess.run(None, second)
    np.testing.assert_allclose(kept.numpy(), reference(first), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(host, reference(first), rtol=1e-5, atol=1e-6)


def test_a_plan_reading_device_values_on_the_host_runs_unbound():
    model = models.relu_nonzero()
    sess = triton_session(model, on_triton=["relu"])
    for x in ([-1, 2, 0, 3], [5, -2, 1, 0]):
        got = sess.run(None, {"X": np.array(x, np.float32)})[0]
        np.testing.assert_array_equal(got, np.array(np.nonzero(np.maximum(x, 0))))
    [reason] = sess._bound_plans.refusals.values()
    assert reason == "the run reads device values on the host: nonzero (NonZero) reads R"
    assert _bound(sess) == []


def test_bound_plans_can_be_switched_off():
    so = ort.SessionOptions()
    so.add_session_config_entry("tritort.bound_plans", "0")
    model = _block()
    sess, reference = triton_session(model, sess_options=so), _reference(model)
    feeds = _feeds(2)
    for _ in range(2):
        np.testing.assert_allclose(sess.run(None, feeds)[0], reference(feeds), rtol=1e-5,
                                   atol=1e-6)
    assert sess._bound_plans is None


def test_threads_share_one_session():
    model = _block()
    sess, reference = triton_session(model), _reference(model)
    sets = [_feeds(4) for _ in range(4)]
    expected = [reference(f) for f in sets]
    errors = []

    def work(i: int) -> None:
        for _ in range(8):
            got = sess.run(None, sets[i])[0]
            if not np.allclose(got, expected[i], rtol=1e-5, atol=1e-6):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_terminate_stops_a_replay_and_the_session_stays_usable():
    model = _block()
    sess, reference = triton_session(model), _reference(model)
    feeds = _feeds(3)
    sess.run(None, feeds)
    options = ort.RunOptions()
    options.terminate = True
    with pytest.raises(ort.Fail, match="terminate"):
        sess.run(None, feeds, options)
    np.testing.assert_allclose(sess.run(None, feeds)[0], reference(feeds), rtol=1e-5, atol=1e-6)


def test_every_kernel_launch_goes_through_the_recorder():
    # a launch the recorder does not see would be missing from every replay
    direct = re.compile(r"\w\[[^\]]*grid[^\]]*\]\(|\w\[\(.*\)\]\(")
    offenders = [f"{p.name}:{i}" for p in sorted((ROOT / "codegen").glob("*.py"))
                 if p.name != "launch.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if direct.search(line) and not line.lstrip().startswith(("#", '"', "'", "f\""))]
    assert offenders == []


@pytest.mark.gpu
def test_cuda_graph_replays_the_recorded_launches():
    model = _block()
    sess = ort.InferenceSession(model.SerializeToString(), providers=[
        ("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"])
    reference = _reference(model)
    for _ in range(3):
        feeds = _feeds(8)
        np.testing.assert_allclose(sess.run(None, feeds)[0], reference(feeds), rtol=1e-4,
                                   atol=1e-5)
    [bound] = _bound(sess)
    assert bound.graph is not None


@pytest.mark.gpu
def test_a_bound_run_can_be_captured_by_the_caller():
    # after one warm-up run, an IOBinding run allocates nothing, syncs nothing, reads nothing
    # on the host: legal inside the caller's own torch.cuda.graph
    model = _block()
    sess = ort.InferenceSession(model.SerializeToString(),
                                providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    reference = _reference(model)
    a, b = torch.randn(8, 6, device="cuda"), torch.randn(5, device="cuda")
    z = torch.empty(5, 8, device="cuda")
    binding = sess.io_binding()
    binding.bind_input("A", a)
    binding.bind_input("B", b)
    binding.bind_output("Z", z)
    sess.run_with_iobinding(binding)  # warm-up: records the launches
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sess.run_with_iobinding(binding)
    a.copy_(torch.randn(8, 6, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    np.testing.assert_allclose(z.cpu().numpy(), reference({"A": a.cpu().numpy(),
                                                           "B": b.cpu().numpy()}),
                               rtol=1e-4, atol=1e-5)


def test_the_arena_holds_the_peak_of_live_intermediates_not_their_sum():
    # five MatMuls in a row: each result dies at the next, so two buffers' worth suffice
    weights = [numpy_helper.from_array(_rng.standard_normal((16, 16)).astype(np.float32),
                                       f"W{i}") for i in range(5)]
    names = ["X", "H0", "H1", "H2", "H3", "Y"]
    nodes = [helper.make_node("MatMul", [names[i], f"W{i}"], [names[i + 1]], name=f"mm{i}")
             for i in range(5)]
    model = models.make(nodes, [models.vi("X", shape=["N", 16])], [models.vi("Y", shape=None)],
                        weights)
    sess, reference = triton_session(model), _reference(model)
    for _ in range(3):
        x = _rng.standard_normal((32, 16)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"X": x})[0], reference({"X": x}), rtol=1e-4,
                                   atol=1e-4)
    [bound] = _bound(sess)
    per_value = 32 * 16 * 4
    assert bound.recorded_bytes == 5 * per_value
    assert bound.arena.numel() <= 2 * per_value


def test_blocks_share_memory_only_when_their_lifetimes_do_not_overlap():
    from tritort.arena import ALIGN, Block, place

    blocks = [Block(1, 1000, 0, 2), Block(2, 500, 1, 3), Block(3, 1000, 3, 5),
              Block(4, 300, 4, 4)]
    size = place(blocks)
    for a in blocks:
        for b in blocks:
            if a is not b and a.first <= b.last and b.first <= a.last:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset
        assert a.offset % ALIGN == 0
    assert blocks[2].offset == 0  # the first block is dead by then: its range is reused
    assert size < sum(b.nbytes for b in blocks)


def test_cuda_graph_refuses_a_run_it_could_not_capture_naming_the_node():
    model = models.relu_nonzero()
    sess = ort.InferenceSession(model.SerializeToString(), providers=[
        ("TritonExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"])
    x = np.array([-1, 2, 0, 3], np.float32)
    for _ in range(2):  # refused again from the kept reason
        with pytest.raises(ort.Fail, match=r"cannot be captured into a CUDA graph: the run "
                                           r"reads device values on the host: nonzero "
                                           r"\(NonZero\) reads R"):
            sess.run(None, {"X": x})
    with pytest.raises(ort.InvalidArgument, match="enable_cuda_graph is '0' or '1', got 'yes'"):
        ort.InferenceSession(model.SerializeToString(), providers=[
            ("TritonExecutionProvider", {"enable_cuda_graph": "yes"})])
