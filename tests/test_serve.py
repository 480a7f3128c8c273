"""tritort.serve: batching rules and HTTP bodies without Ray, then one local Ray instance for
the handle, HTTP on 127.0.0.1, dynamic batching under load, bad input and a killed replica.

Everything that needs the Ray instance is one test, so pytest-xdist (``-n 2``) never starts a
second instance on another worker; its steps are separate functions with their own messages.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

import tritort as ort
from tritort import serve_batching as batching
from tritort.feeds import NodeArg

MLP_IN, MLP_HIDDEN, MLP_OUT = 8, 16, 4


def mul_model() -> onnx.ModelProto:
    """y = x * m, s = sum(y, axis 1): exact in any batch, two symbolic dims."""
    x = oh.make_tensor_value_info("x", TP.FLOAT, ["N", "S"])
    m = oh.make_tensor_value_info("m", TP.FLOAT, ["N", "S"])
    y = oh.make_tensor_value_info("y", TP.FLOAT, ["N", "S"])
    s = oh.make_tensor_value_info("s", TP.FLOAT, ["N"])
    axes = oh.make_tensor("axes", TP.INT64, [1], [1])
    graph = oh.make_graph([oh.make_node("Mul", ["x", "m"], ["y"]),
                           oh.make_node("ReduceSum", ["y", "axes"], ["s"], keepdims=0)],
                          "mul", [x, m], [y, s], [axes])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])


def mlp_model() -> onnx.ModelProto:
    """A two-layer MLP with a symbolic batch dim and seeded weights."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((MLP_IN, MLP_HIDDEN)).astype(np.float32)
    w2 = rng.standard_normal((MLP_HIDDEN, MLP_OUT)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2"),
             onnx.numpy_helper.from_array(np.full(MLP_HIDDEN, 0.1, np.float32), "b1")]
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["h0"]),
             oh.make_node("Add", ["h0", "b1"], ["h1"]),
             oh.make_node("Relu", ["h1"], ["h"]), oh.make_node("MatMul", ["h", "w2"], ["y"])]
    graph = oh.make_graph(nodes, "mlp",
                          [oh.make_tensor_value_info("x", TP.FLOAT, ["batch", MLP_IN])],
                          [oh.make_tensor_value_info("y", TP.FLOAT, ["batch", MLP_OUT])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])


def gather_model() -> onnx.ModelProto:
    """out = table[idx]: an index out of range fails only the request that sent it."""
    table = onnx.numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "table")
    graph = oh.make_graph([oh.make_node("Gather", ["table", "idx"], ["out"])], "gather",
                          [oh.make_tensor_value_info("idx", TP.INT64, ["N"])],
                          [oh.make_tensor_value_info("out", TP.FLOAT, ["N", 3])], [table])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])


def mul_request(rows: int, cols: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((rows, cols)).astype(np.float32),
            "m": rng.standard_normal((rows, cols)).astype(np.float32)}


def check_mul(request: dict, outputs: dict) -> None:
    """Exact: each request must get its own rows back."""
    y = request["x"] * request["m"]
    np.testing.assert_array_equal(outputs["y"], y)
    np.testing.assert_allclose(outputs["s"], y.astype(np.float64).sum(axis=1), rtol=1e-6,
                               atol=1e-6)


# -- batching rules and bodies (no Ray) ---------------------------------------------------------

def test_batch_dim_is_the_shared_leading_symbolic_dim():
    def arg(shape):
        return NodeArg("v", "tensor(float)", shape)

    assert batching.batch_dim([arg(["N", "S"]), arg(["N", "S"])], [arg(["N"])]) == "N"
    assert batching.batch_dim([arg(["N", 3])], [arg(["M", 3])]) is None  # outputs disagree
    assert batching.batch_dim([arg([2, 3])], [arg([2, 3])]) is None  # fixed dims
    assert batching.batch_dim([arg(["N"]), arg([])], [arg(["N"])]) is None  # a scalar input


def test_requests_group_by_every_dim_but_the_batch_dim():
    a, b, c = mul_request(1, 4, 0), mul_request(3, 4, 1), mul_request(2, 5, 2)
    d = {"x": a["x"], "m": b["m"]}  # rows disagree: runs alone
    sigs = [batching.signature(r, None) for r in (a, b, c, d)]
    assert sigs[0] == sigs[1] != sigs[2] and sigs[3] is None
    assert batching.signature(a, ["y"]) != sigs[0]  # other outputs asked for
    assert batching.group(sigs) == [[0, 1], [2], [3]]
    joined = batching.concat([a, b])
    assert joined["x"].shape == (4, 4)
    parts = batching.split([joined["x"] * 2], [1, 3])
    np.testing.assert_array_equal(parts[0][0], a["x"] * 2)
    np.testing.assert_array_equal(parts[1][0], b["x"] * 2)
    assert batching.split([np.zeros((3, 2))], [1, 3]) is None  # not led by the batch's rows


def test_http_bodies_npz_and_json():
    inputs = [NodeArg("x", "tensor(float)", ["N", "S"]), NodeArg("k", "tensor(int64)", ["N"])]
    buf = io.BytesIO()
    np.savez(buf, x=np.ones((2, 3), np.float32), __outputs__=np.array(["y"]))
    parsed = batching.decode_body("application/octet-stream", buf.getvalue(), inputs)
    assert parsed.output_names == ["y"] and not parsed.as_json
    assert parsed.feeds["x"].dtype == np.float32 and parsed.feeds["x"].shape == (2, 3)
    parsed = batching.decode_body("application/json; charset=utf-8",
                                  json.dumps({"inputs": {"x": [[1, 2]], "k": [3]}}).encode(),
                                  inputs)
    assert parsed.as_json and parsed.feeds["x"].dtype == np.float32  # the model's type
    assert parsed.feeds["k"].dtype == np.int64
    parsed = batching.decode_body("application/json", json.dumps(
        {"inputs": {"x": [[1, 2]]}, "dtype": "float64"}).encode(), inputs)
    assert parsed.feeds["x"].dtype == np.float64  # as asked: the session refuses it
    with pytest.raises(ort.InvalidArgument, match="'x'"):
        batching.decode_body("application/json",
                             json.dumps({"inputs": {"x": [[1, "a"]]}}).encode(), inputs)
    with pytest.raises(ort.InvalidArgument, match="npz"):
        batching.decode_body("application/x-npz", b"not a zip", inputs)
    with pytest.raises(ort.InvalidArgument, match="Content-Type"):
        batching.decode_body("text/plain", b"x", inputs)
    outputs = {"y": np.arange(3, dtype=np.float32)}
    assert dict(np.load(io.BytesIO(batching.encode_npz(outputs))))["y"].tolist() == [0, 1, 2]
    assert json.loads(batching.encode_json(outputs))["dtypes"] == {"y": "float32"}
    assert batching.http_status(ort.InvalidArgument("x")) == 400
    assert batching.http_status(ort.Fail("x")) == 500


def test_import_tritort_does_not_import_ray():
    code = "import sys, tritort, tritort.cli; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_serve_refuses_a_missing_model(capsys):
    from tritort.cli import main

    assert main(["serve", "/nonexistent/model.onnx", "--port", "1"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_throughput_mode_environment():
    """--throughput: Serve's throughput mode, with HAProxy only where its binary is."""
    from tritort.cli import throughput_environment

    env, note = throughput_environment("/usr/sbin/haproxy")
    assert env == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    assert "HAProxy answers" in note
    env, note = throughput_environment(None)
    assert env == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"} and "slow path" in note


# -- one replica's logic, without a cluster ------------------------------------------------------

@pytest.fixture
def blas_pool_restored():
    """A replica sizes numpy's BLAS pool for its whole process; give this one's back."""
    from tritort.fallback_cpu.threads import blas_libraries

    before = [(lib, lib.get_num_threads()) for lib in blas_libraries()]
    yield
    for lib, n in before:
        lib.set_num_threads(n)


def test_a_failing_request_does_not_fail_its_batch(blas_pool_restored):
    pytest.importorskip("ray.serve")
    from tritort.serve import ModelServer

    model = gather_model()
    server = ModelServer(model.SerializeToString(), None, None, None, 1, 8, 0.01)
    assert server.batch_dim == "N" and server.max_batch_size == 8
    requests = [{"idx": np.array([0, 3])}, {"idx": np.array([9])}, {"idx": np.array([1])}]
    results = server._run_groups([(r, None, batching.signature(r, None)) for r in requests])
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert results[0][0] and results[2][0]
    np.testing.assert_array_equal(results[0][1]["out"], table[[0, 3]])
    np.testing.assert_array_equal(results[2][1]["out"], table[[1]])
    assert not results[1][0] and isinstance(results[1][1], ort.OrtError)
    assert server.stats()["batches"] == {1: 2}  # the batch ran request by request


def test_batches_closed_while_the_session_runs_then_run_as_one(blas_pool_restored):
    """Serve's batcher closes a batch every wait timeout, busy session or not: the batches
    that wait meanwhile run together, up to max_batch_size requests."""
    pytest.importorskip("ray.serve")
    import threading

    from tritort.serve import ModelServer

    server = ModelServer(gather_model().SerializeToString(), None, None, None, 1, 8, 0.01)
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    requests = [{"idx": np.array([i % 4, (i + 1) % 4])} for i in range(11)]

    async def send():
        gate = threading.Event()
        server._worker.submit(gate.wait)  # the session is busy
        # as Serve hands them over: one batch of one request, then ten more
        batches = [[(r, None, batching.signature(r, None))] for r in requests]
        first = asyncio.ensure_future(server._run_batch(batches[0]))
        await asyncio.sleep(0.05)  # the first batch waits for the session
        rest = [asyncio.ensure_future(server._run_batch(b)) for b in batches[1:]]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(send())
    for request, result in zip(requests, results):
        (ok, outputs), = result
        assert ok
        np.testing.assert_array_equal(outputs["out"], table[request["idx"]])
    assert server.stats()["batches"] == {1: 1, 2: 1, 8: 1}


def test_threads_follow_the_cpus_ray_gives(blas_pool_restored):
    pytest.importorskip("ray.serve")
    from tritort.serve import ModelServer, replica_threads, wants_gpu

    assert replica_threads(None) == 1 and replica_threads({"num_cpus": 4}) == 4
    assert replica_threads({"num_cpus": 0.5}) == 1
    assert wants_gpu(["CUDAExecutionProvider"]) and not wants_gpu(["CPUExecutionProvider"])
    from tritort.fallback_cpu.threads import blas_libraries

    server = ModelServer(mlp_model(), None, None, None, 2, 1, 0.0)
    assert server.session.get_session_options().intra_op_num_threads == 2
    assert all(lib.get_num_threads() == 2 for lib in blas_libraries())
    assert server.max_batch_size == 1
    x = np.ones((2, MLP_IN), np.float32)
    out = asyncio.run(server.run({"x": x}))
    ref = ort.InferenceSession(mlp_model().SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(out["y"], ref)


def test_only_a_replica_failure_is_retryable():
    exceptions = pytest.importorskip("ray.exceptions")
    from tritort.serve import is_retryable

    assert is_retryable(exceptions.ActorDiedError()) and is_retryable(exceptions.RayActorError())
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = exceptions.ActorDiedError()
    assert is_retryable(wrapped)
    assert not is_retryable(ort.InvalidArgument("input 'x'")) and not is_retryable(ValueError())


# -- a local Ray instance -----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _start_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for attempt in range(2):  # a slow CI machine may time out the first start
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False,
                     log_to_driver=False, object_store_memory=128 * 1024 ** 2)
            return ray
        except Exception:  # noqa: BLE001
            ray.shutdown()
            if attempt:
                raise
            time.sleep(2)


def test_serving_on_a_local_ray_instance():
    ray = _start_ray()
    from ray import serve

    import tritort.serve as tserve

    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        mul = serve.run(tserve.app(mul_model(), max_batch_size=8, batch_wait_timeout_s=0.05,
                                   ray_actor_options={"num_cpus": 0.5}, name="mul"),
                        name="mul", route_prefix="/mul")
        mlp = serve.run(tserve.app(mlp_model(), max_batch_size=4, batch_wait_timeout_s=0.02,
                                   ray_actor_options={"num_cpus": 0.5}, name="mlp"),
                        name="mlp", route_prefix="/mlp")
        _check_handle_results(mul, mlp)
        _check_batches_form_under_load(mul)
        _check_http(f"http://127.0.0.1:{port}")
        _check_bad_input(mul, f"http://127.0.0.1:{port}/mul")
        _check_killed_replica_is_replaced(ray, mlp, f"http://127.0.0.1:{port}/mlp")
    finally:
        serve.shutdown()
        ray.shutdown()


def _check_handle_results(mul, mlp):
    direct = ort.InferenceSession(mlp_model().SerializeToString())
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((rows, MLP_IN)).astype(np.float32) for rows in (1, 3, 2, 1)]
    responses = [mlp.run.remote({"x": x}) for x in xs]
    for x, response in zip(xs, responses):
        np.testing.assert_allclose(response.result()["y"], direct.run(None, {"x": x})[0],
                                   rtol=1e-5, atol=1e-5, err_msg="handle != direct session")
    torch = pytest.importorskip("torch")
    request = mul_request(2, 3, 5)
    out = mul.remote({k: torch.from_numpy(v) for k, v in request.items()}).result()
    check_mul(request, out)  # __call__ on the handle, torch CPU tensors in
    assert set(mul.run.remote(request, ["s"]).result()) == {"s"}


def _check_batches_form_under_load(mul):
    before = mul.stats.remote().result()["requests"]
    # 16 concurrent requests, two widths (two groups), 1-3 rows each
    requests = [mul_request(1 + i % 3, 4 if i % 4 else 6, 100 + i) for i in range(16)]
    responses = [mul.run.remote(r) for r in requests]
    for request, response in zip(requests, responses):
        check_mul(request, response.result())
    stats = mul.stats.remote().result()
    assert stats["requests"] - before == 16, stats
    assert stats["batch_dim"] == "N" and max(stats["batches"]) > 1, \
        f"no batch formed under 16 concurrent requests: {stats}"


def _check_http(base):
    request = mul_request(3, 5, 7)
    buf = io.BytesIO()
    np.savez(buf, **request)
    for content_type in ("application/octet-stream", "application/x-npz"):
        status, body = _post(f"{base}/mul", buf.getvalue(), content_type)
        assert status == 200, body
        check_mul(request, dict(np.load(io.BytesIO(body))))
    doc = {"inputs": {k: v.tolist() for k, v in request.items()}}
    status, body = _post(f"{base}/mul", json.dumps(doc).encode(), "application/json")
    assert status == 200, body
    answer = json.loads(body)
    check_mul(request, {k: np.asarray(v, np.float32) for k, v in answer["outputs"].items()})
    x = np.random.default_rng(3).standard_normal((2, MLP_IN)).astype(np.float32)
    status, body = _post(f"{base}/mlp", json.dumps({"inputs": {"x": x.tolist()},
                                                    "outputs": ["y"]}).encode(),
                         "application/json")
    assert status == 200, body
    direct = ort.InferenceSession(mlp_model().SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.asarray(json.loads(body)["outputs"]["y"]), direct,
                               rtol=1e-5, atol=1e-5)
    with urllib.request.urlopen(f"{base}/mlp", timeout=60) as response:  # GET describes it
        assert json.loads(response.read())["inputs"][0]["shape"] == ["batch", MLP_IN]


def _check_bad_input(mul, url):
    bad = {"x": np.ones((2, 3)), "m": np.ones((2, 3), np.float32)}  # x is float64
    with pytest.raises(ort.InvalidArgument, match="'x'"):
        mul.run.remote(bad).result()
    cases = [
        (json.dumps({"inputs": {"x": [[1.0, 2.0]]}}), "application/json", "'m'"),  # missing
        (json.dumps({"inputs": {"x": [[1.0]], "m": [[1.0]]}, "dtype": "float64"}),
         "application/json", "'x'"),
        (json.dumps({"inputs": {"x": [[1.0]], "m": [[[1.0]]]}}), "application/json",
         "input: m"),  # rank 3
        ("not json", "application/json", "JSON"),
        ("not npz", "application/x-npz", "npz"),
    ]
    for body, content_type, named in cases:
        status, answer = _post(url, body.encode(), content_type)
        assert status == 400, (body, status, answer)
        message = json.loads(answer)["message"]
        assert named in message, (body, message)
    good = mul_request(1, 2, 9)  # the replica still answers
    check_mul(good, mul.run.remote(good).result())


def _replica_actor(ray, app_name):
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(f"SERVE_REPLICA::{app_name}#"):
            return ray.get_actor(actor["name"], namespace=actor["namespace"])
    raise AssertionError(f"no replica of {app_name}")


def _check_killed_replica_is_replaced(ray, mlp, url):
    import tritort.serve as tserve

    direct = ort.InferenceSession(mlp_model().SerializeToString())
    first = mlp.stats.remote().result()["replica"]
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((1 + i % 2, MLP_IN)).astype(np.float32) for i in range(8)]
    in_flight = [mlp.run.remote({"x": x}) for x in xs]
    ray.kill(_replica_actor(ray, "mlp"), no_restart=True)
    answered = 0
    for x, response in zip(xs, in_flight):
        try:
            y = response.result(timeout_s=120)["y"]
        except Exception as e:  # noqa: BLE001 - only the replica's death may fail a request
            assert tserve.is_retryable(e), f"not a retryable error: {e!r}"
            continue
        np.testing.assert_allclose(y, direct.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5,
                                   err_msg="a request was answered with other data")
        answered += 1
    # Serve starts a new replica; later requests (with retry, over the handle and HTTP) succeed
    x = xs[0]
    y = asyncio.run(tserve.call(mlp, {"x": x}, attempts=5))["y"]
    np.testing.assert_allclose(y, direct.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    assert mlp.stats.remote().result()["replica"] != first
    status, body = _post(url, json.dumps({"inputs": {"x": x.tolist()}}).encode(),
                         "application/json")
    assert status == 200, body
