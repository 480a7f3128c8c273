"""The command line: the demo and `run MODEL.onnx` (cross-checked with onnxruntime)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx

from tests import models

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
