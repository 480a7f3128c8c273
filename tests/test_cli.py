"""The command line: the demo, `run MODEL.onnx` on valid random or given inputs (checked here
against onnxruntime), `inspect`, and clean errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from tests import models
from tests.test_tools import HIDDEN, bert_like, bert_like_reference

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tritort", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120)


def test_demo_runs_and_reports_placement_timings_and_check():
    r = _cli("demo", "--repeat", "3")
    assert r.returncode == 0, r.stderr
    assert "CPUExecutionProvider:" in r.stdout and "layer_norm(LayerNormalization)" in r.stdout
    assert "run median" in r.stdout and "session creation" in r.stdout
    assert "MISMATCH" not in r.stdout and r.stdout.count("-> OK") == 2


def test_run_any_model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(models.add_relu(), path)
    r = _cli("run", str(path), "--shape", "A=5,3", "--shape", "B=5,3", "--repeat", "2")
    assert r.returncode == 0, r.stderr
    assert "output Y: float32[5, 3]" in r.stdout
    assert r.stdout.count("-> OK") == 2


def test_help_lists_what_works_from_a_wheel():
    r = _cli("--help")
    assert r.returncode == 0, r.stderr
    assert "{demo,run,inspect,autotune,serve}" in r.stdout and "bench" not in r.stdout


def test_run_bert_like_model_on_valid_random_inputs(tmp_path):
    """token_type_ids indexes a 2-row table: 0..3 would be out of bounds."""
    path = tmp_path / "bert.onnx"
    onnx.save(bert_like(), path)
    r = _cli("run", str(path), "--repeat", "1")
    assert r.returncode == 0, r.stderr
    assert f"output hidden: float32[1, 1, {HIDDEN}]" in r.stdout
    # one given shape fixes the symbolic dims the other inputs share
    r = _cli("run", str(path), "--shape", "input_ids=2,5", "--repeat", "1",
             "--save-outputs", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "input token_type_ids: int64[2, 5] (random)" in r.stdout
    assert "input attention_mask: int64[2, 5] (random)" in r.stdout
    assert np.load(tmp_path / "out" / "hidden.npy").shape == (2, 5, HIDDEN)


def test_run_with_input_files_matches_onnxruntime_on_those_inputs(tmp_path):
    model = bert_like()
    path = tmp_path / "bert.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(3)
    feeds = {"input_ids": rng.integers(0, 30, (2, 6)), "token_type_ids": rng.integers(0, 2, (2, 6)),
             "attention_mask": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])}
    args = []
    for name, value in feeds.items():
        np.save(tmp_path / f"{name}.npy", value)
        args += ["--input", f"{name}={tmp_path / f'{name}.npy'}"]
    r = _cli("run", str(path), *args, "--repeat", "1", "--save-outputs", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "input attention_mask: int64[2, 6] (from file)" in r.stdout
    ref = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = ref.run(None, feeds)[0]
    np.testing.assert_allclose(expected, bert_like_reference(model, feeds), rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "hidden.npy"), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make_arg, message", [
    (lambda d: "nope=x.npy", "InvalidArgument: --input nope: the model has no input 'nope'"),
    (lambda d: "input_ids", "InvalidArgument: --input takes NAME=FILE.npy, got 'input_ids'"),
    (lambda d: f"input_ids={d / 'missing.npy'}", "NoSuchFile: --input input_ids: "),
    (lambda d: f"input_ids={d / 'garbage.npy'}",
     "InvalidArgument: --input input_ids: cannot read "),
    (lambda d: f"input_ids={d / 'rank3.npy'}",
     "InvalidArgument: input 'input_ids': expected rank 2 ['batch', 'seq'], got 3 dims"),
])
def test_run_bad_input_files_fail_cleanly(tmp_path, make_arg, message):
    path = tmp_path / "bert.onnx"
    onnx.save(bert_like(), path)
    (tmp_path / "garbage.npy").write_bytes(b"not an array")
    np.save(tmp_path / "rank3.npy", np.zeros((1, 2, 3), np.int64))
    r = _cli("run", str(path), "--input", make_arg(tmp_path), "--repeat", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert message in r.stderr, r.stderr


def test_run_reports_errors_cleanly(tmp_path):
    r = _cli("run", str(tmp_path / "missing.onnx"))
    assert r.returncode == 1 and "NoSuchFile" in r.stderr and "Traceback" not in r.stderr


def test_inspect_reports_kernels_cache_files_and_fallback_reasons(tmp_path):
    import os

    from onnx import TensorProto as TP
    from onnx import helper

    k = helper.make_tensor("k", TP.INT64, [1], [1])
    nodes = [helper.make_node("Exp", ["X"], ["e"], name="exp"),
             helper.make_node("Sigmoid", ["e"], ["g"], name="sig"),
             helper.make_node("TopK", ["g", "k"], ["s", "i"], name="top", axis=1)]
    model = models.make(nodes, [models.vi("X", shape=[2, 5])], [models.vi("s", shape=[2, 1])],
                        [k])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    env = dict(os.environ, TRITON_INTERPRET="1", TRITORT_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "tritort", "inspect", str(path)], cwd=ROOT,
                       text=True, capture_output=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "kernel fused_0_exp_sigmoid: exp(Exp), sig(Sigmoid)" in r.stdout
    assert f"compiled: {tmp_path / 'cache'}" in r.stdout
    assert "top(TopK)  <- TritonExecutionProvider: no Triton lowering for TopK" in r.stdout
