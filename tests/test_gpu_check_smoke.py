"""perf/gpu_check.py --smoke: the prepared GPU check's whole path on the CPU, in Triton's
interpreter, in a subprocess as the device tool would run it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

pytest.importorskip("torch")
pytest.importorskip("triton")
pytest.importorskip("onnxruntime")

STEPS = ["env", "correctness", "latency", "kernels", "autotune", "host"]
MEANINGLESS = "interpreter, meaningless"


def _run(out: Path, work: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "perf/gpu_check.py", "--smoke", "--out", str(out),
                           "--work", str(work), *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    return proc, time.perf_counter() - t0


def test_smoke_run_on_the_cpu(tmp_path):
    """One run (a module fixture would run once per xdist worker), checked part by part."""
    out = tmp_path / "out"
    proc, seconds = _run(out, tmp_path / "work")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert seconds < 170  # the smoke budget, which the driver must keep
    assert "## latency: ok" in proc.stdout  # the summary is printed at the end too
    _check_files_and_statuses(out)
    _check_conformance_and_model(out)
    _check_latency_table(out)
    _check_no_gpu_claims(out)


def _record(out: Path, step: str) -> dict:
    return json.loads((out / f"{step}.json").read_text())


def _check_files_and_statuses(out: Path) -> None:
    """At most 8 files; every step and part ok, or skipped with a reason."""
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["log.txt", "summary.md", *(f"{s}.json" for s in STEPS)])
    for step in STEPS:
        rec = _record(out, step)
        assert rec["status"] == "ok", (step, rec["status"])
        for name, part in rec["parts"].items():
            status = part["status"]
            assert status == "ok" or (status.startswith("skipped: ") and len(status) > 15), \
                (step, name, status)
    env = _record(out, "env")
    assert env["parts"]["nvidia-smi"]["status"].startswith("skipped: nvidia-smi not found")
    assert env["tritort_import"]["mode"] != "failed"


def _check_conformance_and_model(out: Path) -> None:
    parts = _record(out, "correctness")["parts"]
    conformance = parts["conformance (Triton first)"]
    # the node cases' own expected outputs; no failure, and the subset really ran
    assert conformance["status"] == "ok"
    assert conformance["counts"].get("pass", 0) >= 8 and not conformance["counts"].get("fail")
    assert conformance["on_triton"] >= 1
    # BERT (quick) on the Triton provider against onnxruntime's CPU provider, fp32
    bert = parts["model bert"]["result"]
    assert bert["check"] == "ok" and bert["max_rel_err"] < 1e-3 and bert["triton_units"] > 0


def _check_latency_table(out: Path) -> None:
    """tritort and torch eager rows, both checked against onnxruntime before timing."""
    latency = _record(out, "latency")
    table = "\n".join(latency["lines"])
    for dtype in ("float16", "bfloat16"):
        for runtime in ("tritort", "torch eager"):
            row = next(ln for ln in latency["lines"]
                       if ln.startswith(f"| bert | {dtype} | 1 | {runtime} |"))
            assert f"| ok | {MEANINGLESS} |" in row, row
    assert "torch.compile: skipped:" in table
    for result in latency["results"]:
        tritort, eager = result["runners"]["tritort"], result["runners"]["torch_eager"]
        assert tritort["median_ms"] > 0 and eager["median_ms"] > 0
        assert len(tritort["samples_ms"]) == 2
        # both compared with onnxruntime on the fp32 graph; tritort no worse than torch's own
        # rounding in the same dtype allows
        assert tritort["max_rel_err"] <= max(3 * eager["max_rel_err"], 1e-3)


def _check_no_gpu_claims(out: Path) -> None:
    summary = (out / "summary.md").read_text()
    assert "GPU:" not in summary and "CUDA events" not in _record(out, "env")["lines"][-1]
    for step in ("latency", "host", "kernels", "autotune"):
        rec = _record(out, step)
        runners = [r for res in rec.get("results", []) for r in res["runners"].values()]
        runners += list(rec["parts"].get("host time", {}).get("result", {}).get("runners", {})
                        .values())
        assert all(r["timing"] == MEANINGLESS for r in runners), step
        assert all(p.get("timing", MEANINGLESS) == MEANINGLESS for p in rec["parts"].values())
    host = _record(out, "host")["parts"]["host time"]["result"]["runners"]["tritort"]
    assert host["gpu_ms"] is None and host["launches"].startswith("skipped:")
    assert _record(out, "env")["copy_bandwidth_gbs"] is None


def test_the_budget_holds_and_cut_off_steps_leave_no_process_behind(tmp_path):
    proc, seconds = _run(tmp_path / "out", tmp_path / "work", "--budget-s", "12",
                         "--steps", "env,correctness,latency")
    assert seconds < 12 + 4, seconds  # interpreter start-up and the final summary
    statuses = {s: _record(tmp_path / "out", s)["status"] for s in ("env", "correctness",
                                                                    "latency")}
    # every step ended one way or the other, in its record
    assert all(s == "ok" or s.startswith(("failed: ", "skipped: ")) for s in statuses.values())
    assert "done in" in (tmp_path / "out" / "log.txt").read_text()
    time.sleep(1.0)
    left = []  # the steps, workers and background build all name the results folder
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(tmp_path).encode() in cmdline.read_bytes():
                left.append(cmdline.read_bytes().replace(b"\0", b" ")[:300])
        except OSError:
            continue
    assert not left, left


def test_a_hanging_child_is_killed_with_its_descendants_at_its_timeout(tmp_path):
    from perf.gpu_check_steps import run_child

    pid_file = tmp_path / "grandchild.pid"
    hang = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
            f"'import time; time.sleep(600)']); open({str(pid_file)!r}, 'w').write(str(p.pid));"
            f" print('started', flush=True); time.sleep(600)")
    t0 = time.perf_counter()
    rc, out, _ = run_child([sys.executable, "-c", hang], 3.0, tmp_path / "log.txt")
    assert rc is None and time.perf_counter() - t0 < 10
    assert out.strip() == "started"  # what it printed before the kill is kept
    grandchild = int(pid_file.read_text())
    time.sleep(0.5)
    stat = Path(f"/proc/{grandchild}/stat")
    # gone, or a zombie waiting for init to reap it
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_symlinked_layout_imports_the_checkouts_tritort_without_installing(tmp_path):
    from perf.gpu_check_steps import TRITORT_PATH_ENV, build_overlay, python_cmd

    overlay = build_overlay(tmp_path / "overlay")
    probe = tmp_path / "probe.py"
    # the perf scripts put the checkout first, where tritort/ has no codegen/
    probe.write_text(f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
                     "import tritort.codegen, tritort.fallback_cpu\n"
                     "print(tritort.codegen.__file__); print(tritort.fallback_cpu.__file__)\n")
    env = dict(os.environ, **{TRITORT_PATH_ENV: str(overlay)})
    cmd = python_cmd([str(probe)], env)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    codegen, fallback = proc.stdout.split()
    assert codegen == str(overlay / "tritort" / "codegen" / "__init__.py")
    assert fallback == str(overlay / "tritort" / "fallback_cpu" / "__init__.py")
    assert Path(codegen).resolve() == ROOT / "codegen" / "__init__.py"
