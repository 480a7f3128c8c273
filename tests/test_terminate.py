"""RunOptions.terminate stops long Loops and Scans within milliseconds, bodies included;
the session stays usable, and a flag stops only its own run."""
from __future__ import annotations

import statistics
import threading
import time

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper

import tritort as ort
from tests import models
from tests.triton_env import requires_triton

LATENCY_S = 0.005  # after the flag is set, the run raises within this
CPU = ["CPUExecutionProvider"]
TRITON = ["TritonExecutionProvider", "CPUExecutionProvider"]


def counting_body(name="body", inner=None, p=""):
    """(i, cond, x) -> (cond, x + 1); with ``inner``, x goes through that Loop node first.
    ``p`` prefixes the body's value names (a nested body needs names of its own)."""
    one = helper.make_tensor(p + "one", TP.FLOAT, [], [1.0])
    nodes = [helper.make_node("Identity", [p + "cond_in"], [p + "cond_out"])]
    source = p + "x_in"
    if inner is not None:
        nodes.append(inner)
        source = inner.output[0]
    nodes.append(helper.make_node("Add", [source, p + "one"], [p + "x_out"]))
    return helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(p + "i", TP.INT64, []),
         helper.make_tensor_value_info(p + "cond_in", TP.BOOL, []),
         helper.make_tensor_value_info(p + "x_in", TP.FLOAT, [1])],
        [helper.make_tensor_value_info(p + "cond_out", TP.BOOL, []),
         helper.make_tensor_value_info(p + "x_out", TP.FLOAT, [1])], [one])


def loop_model(nested=False):
    """y = x + M (one Loop of M trips), or with ``nested`` M * m (a Loop in the body)."""
    inner = None
    if nested:
        inner = helper.make_node("Loop", ["m", "", "x_in"], ["x_inner"], name="inner",
                                 body=counting_body("inner_body", p="inner_"))
    loop = helper.make_node("Loop", ["M", "", "x"], ["y"], name="loop",
                            body=counting_body(inner=inner))
    inputs = [models.vi("M", TP.INT64, []), models.vi("x", TP.FLOAT, [1])]
    if nested:
        inputs.append(models.vi("m", TP.INT64, []))
    return models.make([loop], inputs, [models.vi("y", TP.FLOAT, [1])])


def scan_model():
    """y = sum of the scanned rows (a Scan over xs of shape (T, 1))."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "row"], ["s_out"])], "scan_body",
        [helper.make_tensor_value_info("s_in", TP.FLOAT, [1]),
         helper.make_tensor_value_info("row", TP.FLOAT, [1])],
        [helper.make_tensor_value_info("s_out", TP.FLOAT, [1])])
    scan = helper.make_node("Scan", ["s0", "xs"], ["y"], name="scan", num_scan_inputs=1,
                            body=body)
    return models.make([scan], [models.vi("s0", TP.FLOAT, [1]), models.vi("xs", TP.FLOAT,
                                                                           ["T", 1])],
                       [models.vi("y", TP.FLOAT, [1])])


FOREVER = np.array(2**62, np.int64)


def stop_after(sess, feeds, delay=0.15):
    """Run on a thread, set its terminate flag after ``delay``; (error, latency in s)."""
    ro = ort.RunOptions()
    caught: dict = {}

    def work():
        try:
            sess.run(None, feeds, ro)
        except ort.OrtError as e:
            caught["t"] = time.perf_counter()
            caught["error"] = e

    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(delay)
    t_set = time.perf_counter()
    ro.terminate = True
    thread.join(10)
    assert not thread.is_alive(), "the run did not stop within 10 s of its terminate flag"
    return caught.get("error"), caught["t"] - t_set


def measure(sess, feeds, tries=5):
    latencies = []
    for _ in range(tries):
        error, latency = stop_after(sess, feeds)
        assert isinstance(error, ort.Fail) and "terminate" in str(error), error
        latencies.append(latency)
    return latencies


def assert_prompt(latencies):
    # the median: one try may lose the core to another process on a busy machine
    assert statistics.median(latencies) <= LATENCY_S, \
        f"terminate latencies (ms): {[round(t * 1e3, 2) for t in latencies]}"


def test_loop_stops_promptly_and_the_session_runs_again():
    sess = ort.InferenceSession(loop_model().SerializeToString(), providers=CPU)
    x = np.zeros(1, np.float32)
    assert_prompt(measure(sess, {"M": FOREVER, "x": x}))
    (y,) = sess.run(None, {"M": np.array(7, np.int64), "x": x})
    np.testing.assert_array_equal(y, [7.0])


def test_a_loop_inside_a_loop_body_stops_promptly():
    sess = ort.InferenceSession(loop_model(nested=True).SerializeToString(), providers=CPU)
    x = np.zeros(1, np.float32)
    assert_prompt(measure(sess, {"M": np.array(3, np.int64), "x": x, "m": FOREVER}))
    (y,) = sess.run(None, {"M": np.array(3, np.int64), "x": x, "m": np.array(4, np.int64)})
    np.testing.assert_array_equal(y, [15.0])  # 3 * (4 + 1)


def test_scan_stops_promptly_and_the_session_runs_again():
    sess = ort.InferenceSession(scan_model().SerializeToString(), providers=CPU)
    s0 = np.zeros(1, np.float32)
    xs = np.ones((2_000_000, 1), np.float32)
    assert_prompt(measure(sess, {"s0": s0, "xs": xs}))
    (y,) = sess.run(None, {"s0": s0, "xs": np.ones((5, 1), np.float32)})
    np.testing.assert_array_equal(y, [5.0])


@requires_triton
def test_loop_with_a_triton_body_stops_promptly():
    sess = ort.InferenceSession(loop_model().SerializeToString(), providers=TRITON)
    assert "TritonExecutionProvider" in sess.get_providers()
    x = np.zeros(1, np.float32)
    sess.run(None, {"M": np.array(1, np.int64), "x": x})  # the first launch prepares the kernel
    assert_prompt(measure(sess, {"M": FOREVER, "x": x}, tries=3))
    (y,) = sess.run(None, {"M": np.array(4, np.int64), "x": x})
    np.testing.assert_array_equal(y, [4.0])


def test_a_flag_stops_only_its_own_run():
    """Two runs of one session on two threads: terminating one leaves the other alone."""
    sess = ort.InferenceSession(loop_model().SerializeToString(), providers=CPU)
    x = np.zeros(1, np.float32)
    finite: dict = {}

    def other():
        finite["y"] = sess.run(None, {"M": np.array(20_000, np.int64), "x": x})[0]

    thread = threading.Thread(target=other)
    thread.start()
    error, _ = stop_after(sess, {"M": FOREVER, "x": x}, delay=0.05)
    thread.join(60)
    assert isinstance(error, ort.Fail)
    np.testing.assert_array_equal(finite["y"], [20_000.0])


def test_a_flag_set_before_the_run_stops_it_at_once():
    sess = ort.InferenceSession(loop_model().SerializeToString(), providers=CPU)
    ro = ort.RunOptions()
    ro.terminate = True
    with pytest.raises(ort.Fail, match="terminate"):
        sess.run(None, {"M": FOREVER, "x": np.zeros(1, np.float32)}, ro)
    ro.terminate = False
    (y,) = sess.run(None, {"M": np.array(2, np.int64), "x": np.zeros(1, np.float32)}, ro)
    np.testing.assert_array_equal(y, [2.0])


def test_a_run_without_run_options_leaves_no_flag_behind():
    """The flag is the run's: after a terminated run, the thread's next run has none."""
    sess = ort.InferenceSession(loop_model().SerializeToString(), providers=CPU)
    ro = ort.RunOptions()
    ro.terminate = True
    with pytest.raises(ort.Fail):
        sess.run(None, {"M": FOREVER, "x": np.zeros(1, np.float32)}, ro)
    (y,) = sess.run(None, {"M": np.array(3, np.int64), "x": np.zeros(1, np.float32)})
    np.testing.assert_array_equal(y, [3.0])
