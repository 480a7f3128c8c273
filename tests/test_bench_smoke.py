"""The end-to-end benchmark harness still runs (tiny shapes, 1-2 rounds; timings not checked)."""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-models")


def _run(capsys, *argv: str) -> str:
    from perf import bench

    rc = bench.main(list(argv))
    assert rc == 0
    return capsys.readouterr().out


def test_cpu_half_writes_table_csv_json_and_chart_and_outputs_agree(tmp_path, model_cache,
                                                                      capsys):
    out = _run(capsys, "--quick", "--models", "mlp,cnn", "--repeat", "2", "--warmup", "1",
               "--max-seconds", "5", "--threads", "1", "--out", str(tmp_path),
               "--cache", str(model_cache), "--tag", "smoke")
    # the table is printed at the end
    assert "| model | input | outputs agree | tritort ms | onnxruntime ms" in out
    assert "geometric mean" in out
    stem = next(tmp_path.glob("*-smoke.md")).with_suffix("")
    for ext in (".md", ".csv", ".json", ".png"):
        assert stem.with_suffix(ext).exists(), ext
    assert stem.with_suffix(".png").stat().st_size > 1000
    md = stem.with_suffix(".md").read_text()
    assert "Session creation and memory" in md and "What is measured" in md
    rows = list(csv.DictReader(open(stem.with_suffix(".csv"))))
    by = {(r["model"], r["runtime"]): r for r in rows}
    for model in ("mlp", "cnn"):
        ours, peer = by[(model, "tritort")], by[(model, "onnxruntime")]
        assert ours["status"] == "ok", ours["error"]
        assert ours["check"] == "ok", ours  # checked against onnxruntime before timing
        assert peer["check"] == "reference"
        assert float(ours["median_ms"]) > 0 and float(peer["median_ms"]) > 0
        assert float(peer["ratio_tritort_over_this"]) > 0
        assert float(ours["create_cold_s"]) > 0 and float(ours["create_warm_s"]) > 0
        assert int(ours["n_samples"]) >= 2
        assert f"| {model} |" in md and f"| {model} |" in out
    raw = json.loads(stem.with_suffix(".json").read_text())
    assert {r["model"] for r in raw["results"]} == {"mlp", "cnn"}


def test_a_failure_or_a_mismatch_is_recorded_and_the_run_goes_on(tmp_path, model_cache,
                                                                   capsys, monkeypatch):
    """tritort raising on one model and answering wrongly on another: both are reported, the
    peer is still timed, and the geometric mean leaves them out."""
    from perf import bench_runners

    real = bench_runners.make_runners

    def broken(built, half, threads):
        runners, notes = real(built, half, threads)
        ours = runners[0]
        good_run = ours.run
        if built.name == "mlp":
            def run(sess):
                raise RuntimeError("Non-zero status code returned while running Gemm node. "
                                   "Name:'node_linear' injected")
        else:
            def run(sess):
                return [o * 1.5 + 1.0 for o in good_run(sess)]
        ours.run = run
        return runners, notes

    monkeypatch.setattr(bench_runners, "make_runners", broken)
    out = _run(capsys, "--quick", "--models", "mlp,cnn", "--repeat", "1", "--warmup", "0",
               "--threads", "1", "--no-chart", "--no-tracemalloc", "--no-isolate",
               "--out", str(tmp_path), "--cache", str(model_cache))
    md = next(tmp_path.glob("*.md")).read_text()
    assert "### Failures" in md
    assert "phase 'first run tritort'" in md and "node_linear" in md
    assert "outputs differ from the reference" in md
    assert "**NO**" in out and "**failed**" in out
    rows = list(csv.DictReader(open(next(tmp_path.glob("*.csv")))))
    by = {(r["model"], r["runtime"]): r for r in rows}
    assert by[("mlp", "tritort")]["status"] == "failed"
    assert float(by[("mlp", "onnxruntime")]["median_ms"]) > 0  # the peer still ran
    assert by[("cnn", "tritort")]["check"] == "MISMATCH"
    gm = next(line for line in out.splitlines() if "geometric mean" in line)
    assert "model" not in gm.replace("geometric mean", "")  # nothing agreed: no mean


@pytest.mark.skipif(os.environ.get("TRITORT_SKIP_GPU_SMOKE") == "1", reason="asked to skip")
def test_gpu_smoke_runs_the_gpu_half_on_the_cpu(tmp_path, model_cache, capsys):
    out = _run(capsys, "--gpu-smoke", "--repeat", "1", "--warmup", "0", "--threads", "1",
               "--no-chart", "--out", str(tmp_path), "--cache", str(model_cache))
    assert "| tritort ms | torch eager ms |" in out
    rows = list(csv.DictReader(open(next(tmp_path.glob("*gpu-smoke.csv")))))
    ours = next(r for r in rows if r["runtime"] == "tritort")
    assert ours["status"] == "ok", ours["error"]
    assert ours["check"] == "ok"
