"""Autotuning: the tuning database, ORT's get/set_tuning_results, the lookup at launch, and
perf/autotune.py end to end (interpreter mode: timings mean nothing, the paths are real)."""
from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper

import tritort as ort
from tritort.codegen import gemm, tuner, tuning
from tritort.codegen.gemm import GemmConfig
from tests import models
from tests.triton_env import requires_triton

pytestmark = requires_triton
TRITON = "TritonExecutionProvider"
INTERP = tuning.DeviceInfo(tuning.INTERPRETER, True, 1 << 30)
KERNEL = "matmul:tf32:batch0"  # float32 with use_tf32 on, the default
# A [20, 40] @ B [40, 24]: the heuristic's interpreter config is 32x32x32, group 4
SHAPE = "b1_m24_n24_k48_nn"
STORED = GemmConfig(16, 16, 16, 1, 4, 1)


@pytest.fixture(autouse=True)
def tuning_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_TUNING_DB", str(tmp_path / "tuning.json"))
    tuning.forget_tables()
    yield tmp_path / "tuning.json"
    tuning.forget_tables()


def matmul_gemm_model():
    """Y = Gemm(MatMul(A, B), W, transB=1, alpha=0.5): two launches of the matmul kernel."""
    nodes = [helper.make_node("MatMul", ["A", "B"], ["H"], name="mm"),
             helper.make_node("Gemm", ["H", "W"], ["Y"], name="gemm", transB=1, alpha=0.5)]
    return models.make(nodes, [models.vi("A", TP.FLOAT, ["m", "k"]),
                               models.vi("B", TP.FLOAT, ["k", "n"]),
                               models.vi("W", TP.FLOAT, ["p", "n"])],
                       [models.vi("Y", TP.FLOAT, None)])


def feeds(m=20, k=40, n=24, p=16):
    rng = np.random.default_rng(0)
    return {"A": rng.standard_normal((m, k)).astype(np.float32),
            "B": rng.standard_normal((k, n)).astype(np.float32),
            "W": rng.standard_normal((p, n)).astype(np.float32)}


def session(model, providers=(TRITON, "CPUExecutionProvider")):
    return ort.InferenceSession(model.SerializeToString(), providers=list(providers))


def reference(model, inputs):
    sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


def spy_launches(monkeypatch, module) -> list:
    """Configs ``module``'s tunable kernel launches with (through its ``_run``); any timing
    fails the test (a normal run never tunes)."""
    from tritort.codegen import tuner

    used = []
    real_run = module._run

    def run(fn, cfg, *args, **kwargs):
        used.append(cfg)
        return real_run(fn, cfg, *args, **kwargs)

    def no_timing(*_a, **_k):
        raise AssertionError("a normal run must not time configs")

    monkeypatch.setattr(module, "_run", run)
    monkeypatch.setattr(tuner, "measure", no_timing)
    return used


def item(results, **validators):
    table = tuning.active_table(torch.device("cpu"))
    return {"ep": TRITON, "results": results, "validators": {**table.validators(), **validators}}


# ------------------------------------------------------------------ keys and pruning


def test_buckets_and_shape_key():
    assert [tuning.bucket(n) for n in (1, 2, 3, 5, 7, 17, 600, 768, 769)] == \
        [1, 2, 3, 6, 8, 24, 768, 768, 1024]
    problem = {"batch": 3, "M": 1000, "N": 768, "K": 5, "itemsize": 2, "layout": "nt"}
    assert gemm.TUNING.shape_key(problem) == "b3_m1024_n768_k16_nt"


def test_pruning_rules_on_a_gpu_problem():
    gpu = tuning.DeviceInfo("some GPU", False, 48 * 1024)
    problem = {"batch": 1, "M": 20, "N": 4096, "K": 4096, "itemsize": 2, "layout": "nn"}
    default = gemm.pick_config(20, 4096, 4096, 1, 2, False)
    kept, dropped = gemm.TUNING.pruned(problem, gpu, default)
    assert kept[0] == default and len(set(kept)) == len(kept)
    assert all(c.block_m <= 32 for c in kept[1:])  # M = 20: no 64-row tiles
    assert all((c.block_m + c.block_n) * c.block_k * 2 * c.num_stages <= 48 * 1024
               for c in kept[1:])
    reasons = " ".join(r for _, r in dropped)
    assert "block_m=128 > M=20" in reasons and "shared memory" in reasons
    limited, over = gemm.TUNING.pruned(problem, gpu, default, limit=2)
    assert len(limited) == 2 and any("limit of 2" in r for _, r in over)
    # the interpreter tries a few small tiles only
    small, _ = gemm.TUNING.pruned(problem, INTERP, gemm.pick_config(20, 4096, 4096, 1, 2, True))
    assert 1 < len(small) <= 5 and all(c.block_m <= 32 and c.num_stages == 1 for c in small)


# ------------------------------------------------------------------ the database file


def test_db_round_trip_keeps_other_devices(tuning_env):
    other = {"device": "NVIDIA Other", "triton": "9.9", "results": {KERNEL: {SHAPE: {
        "config": {"block_m": 64, "block_n": 64, "block_k": 64, "group_m": 8,
                   "num_warps": 4, "num_stages": 3}}}}}
    tuning_env.write_text(json.dumps({"format": tuning.FORMAT, "version": 1,
                                      "tables": [other]}))
    table = tuning.TuningTable(tuning_env, INTERP)
    assert not table.has(KERNEL)  # another device's entries are ignored
    table.store(KERNEL, SHAPE, {"config": {"block_m": 16, "block_n": 16, "block_k": 16,
                                           "group_m": 1, "num_warps": 4, "num_stages": 1},
                                "default_ms": 2.0, "tuned_ms": 1.0})
    table.save()
    doc = json.loads(tuning_env.read_text())
    assert doc["version"] == tuning.VERSION and other in doc["tables"]  # kept as it was
    fresh = tuning.TuningTable(tuning_env, INTERP)
    problem = {"batch": 1, "M": 20, "N": 24, "K": 40, "itemsize": 4, "layout": "nn"}
    assert fresh.lookup(gemm.TUNING, KERNEL, problem) == STORED
    assert fresh.entry(KERNEL, SHAPE)["tuned_ms"] == 1.0
    assert not list(tuning_env.parent.glob(".tmp_*"))  # atomic write left nothing behind


def test_corrupt_or_newer_db_warns_instead_of_crashing(tuning_env, caplog):
    tuning_env.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="tritort.tuning"):
        table = tuning.TuningTable(tuning_env, INTERP)
        x = feeds()
        model = matmul_gemm_model()
        got = session(model).run(None, x)[0]
    assert "not valid JSON" in caplog.text
    np.testing.assert_allclose(got, reference(model, x), rtol=1e-5, atol=1e-5)
    table.store(KERNEL, SHAPE, {"config": {"block_m": 16, "block_n": 16, "block_k": 16,
                                           "group_m": 1, "num_warps": 4, "num_stages": 1}})
    table.save()  # the broken file is moved aside, a valid one written
    assert (tuning_env.parent / "tuning.json.corrupt").read_text() == "{not json"
    assert json.loads(tuning_env.read_text())["tables"][0]["device"] == tuning.INTERPRETER
    tuning_env.write_text(json.dumps({"format": tuning.FORMAT, "version": 99, "tables": []}))
    with caplog.at_level(logging.WARNING, logger="tritort.tuning"):
        table.refresh()
    assert "format version 99" in caplog.text
    with pytest.raises(tuning.TuningDBError, match="not overwriting"):
        table.save()


# ------------------------------------------------------------------ ORT's API


def test_get_set_tuning_results_round_trip(monkeypatch):
    model, x = matmul_gemm_model(), feeds()
    sess = session(model)
    [empty] = sess.get_tuning_results()
    assert empty["ep"] == TRITON and empty["results"] == {}
    assert set(empty["validators"]) == {"DEVICE", "TRITON_VERSION", "TRITORT_VERSION"}
    results = {KERNEL: {SHAPE: dict(block_m=16, block_n=16, block_k=16, group_m=1,
                                    num_warps=4, num_stages=1)}}
    sess.set_tuning_results([item(results)])
    [got] = sess.get_tuning_results()
    assert got["results"] == results
    used = spy_launches(monkeypatch, gemm)
    np.testing.assert_allclose(sess.run(None, x)[0], reference(model, x), rtol=1e-5, atol=1e-5)
    assert used[0] == STORED  # the MatMul's launch (A [20, 40] @ B [40, 24])


def test_launchers_use_the_table_their_session_resolved(monkeypatch, tmp_path):
    """The provider resolves its table once and hands it to the launchers: moving
    TRITORT_TUNING_DB afterwards does not change what a session's launches use."""
    model, x = matmul_gemm_model(), feeds()
    sess = session(model)
    sess.set_tuning_results([item({KERNEL: {SHAPE: dataclasses.asdict(STORED)}})])
    monkeypatch.setenv("TRITORT_TUNING_DB", str(tmp_path / "elsewhere.json"))
    tuning.forget_tables()
    used = spy_launches(monkeypatch, gemm)
    sess.run(None, x)
    assert used[0] == STORED


def test_set_tuning_results_validators_and_configs(caplog):
    sess = session(matmul_gemm_model())
    good = {KERNEL: {SHAPE: dict(block_m=16, block_n=16, block_k=16, group_m=1, num_warps=4,
                                 num_stages=1)}}
    with caplog.at_level(logging.WARNING, logger="tritort"):
        sess.set_tuning_results([item(good, DEVICE="NVIDIA Imaginary")])
    assert "validator DEVICE mismatch" in caplog.text
    assert sess.get_tuning_results()[0]["results"] == {}  # skipped
    with pytest.raises(ort.InvalidArgument,
                       match="TRITON_VERSION mismatch: expected '.+', got '0.0'"):
        sess.set_tuning_results([item(good, TRITON_VERSION="0.0")], error_on_invalid=True)
    bad_config = {KERNEL: {SHAPE: dict(block_m=24, block_n=16, block_k=16, group_m=1,
                                       num_warps=4, num_stages=1)}}
    with pytest.raises(ort.InvalidArgument, match="block_m=24 is not a power of two"):
        sess.set_tuning_results([item(good), item(bad_config)], error_on_invalid=True)
    assert sess.get_tuning_results()[0]["results"] == {}  # nothing half-installed
    with pytest.raises(ort.InvalidArgument, match="no tunable template for kernel key"):
        sess.set_tuning_results([item({"warp:float": {}})], error_on_invalid=True)
    with pytest.raises(ort.InvalidArgument, match="must be a list"):
        sess.set_tuning_results({"ep": TRITON})


def test_session_without_triton_has_no_tuning_results(caplog):
    sess = session(matmul_gemm_model(), providers=["CPUExecutionProvider"])
    assert sess.get_tuning_results() == []
    with caplog.at_level(logging.WARNING, logger="tritort"):
        sess.set_tuning_results([item({})])
    assert "not a provider of this session" in caplog.text
    with pytest.raises(ort.InvalidArgument, match="TritonExecutionProvider' is not a provider"):
        sess.set_tuning_results([item({})], error_on_invalid=True)


# ------------------------------------------------------------------ tuning


def test_tune_skips_failing_and_differing_candidates():
    bad_compile, wrong = GemmConfig(16, 16, 16, 1, 4, 1), GemmConfig(32, 16, 16, 1, 4, 1)
    default = GemmConfig(32, 32, 32, 4, 4, 1)
    space = tuning.ConfigSpace("fake_matmul", GemmConfig,
                               lambda p, d: [bad_compile, wrong, GemmConfig(16, 32, 32, 4, 4, 1)])

    def run(cfg, x, y):
        if cfg == bad_compile:
            raise RuntimeError("out of resources: shared memory")
        y.copy_(x * (2.0 if cfg != wrong else 3.0))

    x = torch.arange(6, dtype=torch.float32)
    launch = tuning.RecordedLaunch(space, "fake_matmul:float32", "s", {}, default, INTERP,
                                   (x, torch.empty(6)), run)
    result = tuner.tune(launch, budget_s=60)
    skipped = {t.config: t.skipped for t in result.trials}
    assert skipped[bad_compile].startswith("failed: RuntimeError: out of resources")
    assert "differs from the default config's" in skipped[wrong]
    assert result.best in (default, GemmConfig(16, 32, 32, 4, 4, 1))
    assert result.entry()["config"] == dataclasses.asdict(result.best)
    over = tuner.tune(launch, budget_s=-1)  # no time left after the default
    assert all("budget" in t.skipped for t in over.trials[1:]) and over.best == default
    tuning.SPACES.pop("fake_matmul")


def test_autotune_end_to_end_then_a_new_session_uses_the_db(tmp_path, monkeypatch, capsys,
                                                            tuning_env):
    from perf import autotune

    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path / "kernels"))
    model, x = matmul_gemm_model(), feeds()
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    assert autotune.main([str(path)]) == 2
    assert "need --shapes" in capsys.readouterr().err
    db = tmp_path / "tuned.json"
    shapes = [f"{k}={','.join(map(str, v.shape))}" for k, v in x.items()]
    assert autotune.main([str(path), "--shapes", *shapes, "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "timings mean nothing" in out
    header = next(line for line in out.splitlines() if line.startswith("kernel"))
    assert header.split() == ["kernel", "shape", "chosen", "config", "default", "ms", "tuned",
                              "ms", "speedup", "tried"]
    assert f"{KERNEL}  {SHAPE}" in out and "b1_m24_n16_k24_nt" in out  # MatMul, then Gemm
    [table] = json.loads(db.read_text())["tables"]
    assert table["device"] == tuning.INTERPRETER
    entries = table["results"][KERNEL]
    assert set(entries) == {SHAPE, "b1_m24_n16_k24_nt"}
    for entry in entries.values():
        assert entry["default_ms"] > 0 and entry["tuned_ms"] <= entry["default_ms"]
    # make the MatMul's entry distinctive, then a fresh session must launch with it
    entries[SHAPE]["config"] = dict(block_m=16, block_n=16, block_k=16, group_m=1,
                                    num_warps=4, num_stages=1)
    db.write_text(json.dumps({"format": tuning.FORMAT, "version": 1, "tables": [table]}))
    monkeypatch.setenv("TRITORT_TUNING_DB", str(db))
    tuning.forget_tables()
    sess = session(model)
    used = spy_launches(monkeypatch, gemm)
    np.testing.assert_allclose(sess.run(None, x)[0], reference(model, x), rtol=1e-5, atol=1e-5)
    assert used[0] == STORED
    assert used[1] == tuning.SPACES["matmul"].parse(entries["b1_m24_n16_k24_nt"]["config"])
    assert sess.get_tuning_results()[0]["results"][KERNEL][SHAPE] == entries[SHAPE]["config"]
