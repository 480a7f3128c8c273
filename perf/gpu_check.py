"""One prepared GPU check: everything worth knowing from a first GPU, within a time budget.

    python perf/gpu_check.py --out DIR [--budget-s 420] [--steps env,correctness,...]
                             [--models bert,gpt2,vit,resnet50] [--work DIR]
    python perf/gpu_check.py --smoke --out DIR   # the same path on the CPU (Triton's interpreter)

Steps, in order of importance, each in a process of its own with a share of what is left of
the budget (skipped, with the reason, when too little is left; a failing step records its
error and the run goes on; a step past its share is killed with its children):

1. env: nvidia-smi, package versions, tritort made importable without the internet (already
   installed, else ``pip install --no-deps --no-build-isolation -e .``, else ``--target``, else
   symlinks), CUDA device, device-to-device copy bandwidth;
2. correctness: ``pytest -m gpu``, tests/test_model_placement.py, the ONNX node cases with the
   Triton provider first (time-boxed, most op sets first, in parallel workers), the benchmark
   models in fp32 against onnxruntime CPU;
3. latency: tritort (and with CUDA graphs when the provider has ``enable_cuda_graph``) against
   torch eager and torch.compile on BERT, GPT-2, ViT and ResNet-50, fp16/bf16, batch 1/8;
4. kernels: perf/bench_compute.py (GEMM, attention, conv, fp8) and perf/bench_kernels.py;
5. autotune: perf/autotune.py on BERT fp16, and the tuning database it wrote;
6. host: host time per run (call return) against CUDA-event GPU time, kernels per run.

DIR receives at most 8 files, each rewritten as results arrive: log.txt, summary.md and
env/correctness/latency/kernels/autotune/host.json. Models, kernel caches and the tuning
database live in --work (default perf/.gpu_check, git-ignored, so a rerun on the same machine
starts warm). With --smoke nothing needs a GPU and every timing is labelled meaningless.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perf.gpu_check_steps import (MEANINGLESS, TRITORT_PATH_ENV, kill_tree,  # noqa: E402
                                  log_line, python_cmd, run_child, tail, write_json)

# (step, share of the budget, the least time worth starting it with on a GPU); every step
# needs env's outcome, so it may take more than its share (what it leaves goes to the rest)
STEPS = [("env", 0.06, 40.0), ("correctness", 0.30, 30.0), ("latency", 0.36, 45.0),
         ("kernels", 0.12, 20.0), ("autotune", 0.08, 20.0), ("host", 0.08, 15.0)]
NEEDS_MODELS = {"correctness", "latency", "autotune", "host"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="perf/gpu_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="results folder (at most 8 files)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="the whole run ends before this (default 420; 170 with --smoke)")
    p.add_argument("--steps", default=",".join(s for s, _, _ in STEPS),
                   help="comma-separated subset, run in the fixed order")
    p.add_argument("--models", default=None,
                   help="default bert,gpt2,vit,resnet50 (--smoke: bert at quick sizes)")
    p.add_argument("--work", default=None, help="models and caches (default perf/.gpu_check; "
                                                "--smoke: a temporary folder)")
    p.add_argument("--smoke", action="store_true",
                   help="on the CPU in Triton's interpreter, tiny shapes; timings meaningless")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    budget = args.budget_s or (170.0 if args.smoke else 420.0)
    end_by = t0 + budget - (3.0 if args.smoke else 8.0)  # the summary's last write
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in ["log.txt", "summary.md", *(f"{s}.json" for s, _, _ in STEPS)]:
        (out / name).unlink(missing_ok=True)
    models = args.models or ("bert" if args.smoke else "bert,gpt2,vit,resnet50")
    selected = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(selected) - {s for s, _, _ in STEPS})
    if unknown:
        print(f"unknown steps {unknown}; known: {[s for s, _, _ in STEPS]}", file=sys.stderr)
        return 2
    temp_work = args.smoke and not args.work
    work = Path(args.work or (tempfile.mkdtemp(prefix="gpu_check-") if args.smoke
                              else ROOT / "perf" / ".gpu_check")).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    if not (work / ".gitignore").exists():  # like perf/.models: the folder ignores itself
        (work / ".gitignore").write_text("# perf/gpu_check.py's models and caches\n*\n")
    setup_environment(args.smoke, work)

    def log(msg: str) -> None:
        log_line(out, t0, "gpu_check", msg)

    log(f"{'SMOKE (CPU, Triton interpreter; timings ' + MEANINGLESS + ')' if args.smoke else 'GPU'}"
        f" run, budget {budget:.0f} s, steps {','.join(selected)}, models {models}, work {work}")
    state = {"t0": t0, "budget": budget, "smoke": args.smoke, "models": models,
             "command": " ".join([Path(sys.argv[0]).name if argv is None else "gpu_check.py",
                                  *(sys.argv[1:] if argv is None else argv)]),
             "steps": {}}
    prebuild = None
    order = [(s, share, min_s / (5 if args.smoke else 1)) for s, share, min_s in STEPS
             if s in selected]
    stop_reason = ""
    for i, (step, share, min_s) in enumerate(order):
        left = end_by - time.time()
        allowance = min(left, max(min_s, left * share / sum(s for _, s, _ in order[i:])))
        if stop_reason or left < min_s:
            why = stop_reason or f"{left:.1f} s left of the budget, the step needs {min_s:.0f} s"
            finish_skipped(out, step, why)
            state["steps"][step] = {"status": f"skipped: {why}", "seconds": 0.0}
            log(f"{step}: skipped: {why}")
            write_summary(out, state)
            continue
        if step == "latency" and prebuild is not None:
            prebuild = settle_prebuild(prebuild, 0.25 * allowance, log)
            allowance = min(allowance, end_by - time.time())
        log(f"{step}: starting, {allowance:.0f} s allowed")
        started = time.time()
        cmd = python_cmd([str(ROOT / "perf" / "gpu_check_steps.py"), step, "--out", str(out),
                          "--work", str(work), "--deadline", str(started + allowance - 2),
                          "--t0", str(t0), "--models", models,
                          *(["--smoke"] if args.smoke else [])])
        rc, _, err = run_child(cmd, allowance, work / "logs" / f"step-{step}.txt")
        status = settle_record(out, step, rc, err, allowance, time.time() - started)
        state["steps"][step] = {"status": status, "seconds": time.time() - started,
                                "allowance_s": allowance}
        log(f"{step}: {status} ({time.time() - started:.0f} s)")
        if step == "env":
            stop_reason = after_env(out, args.smoke)
            if not stop_reason and NEEDS_MODELS & set(selected):
                prebuild = start_prebuild(out, work, end_by, t0, models, args.smoke)
        write_summary(out, state)
    if prebuild is not None and prebuild.poll() is None:
        kill_tree(prebuild.pid)
        prebuild.wait()
    log(f"done in {time.time() - t0:.0f} s of {budget:.0f}")
    write_summary(out, state)
    if temp_work:
        shutil.rmtree(work, ignore_errors=True)
    print((out / "summary.md").read_text())
    return 1 if any(s["status"].startswith("failed") for s in state["steps"].values()) else 0


def setup_environment(smoke: bool, work: Path) -> None:
    """Inherited by every child: where caches go, and in smoke mode no GPU at all."""
    env = os.environ
    if smoke:
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    caches = {"TRITORT_CACHE_DIR": work / "kernels", "TRITON_CACHE_DIR": work / "triton",
              "TORCHINDUCTOR_CACHE_DIR": work / "inductor",
              "TRITORT_TUNING_DB": work / "tuning.json"}
    for key, path in caches.items():
        if smoke:  # isolated from the user's caches
            env[key] = str(path)
        else:
            env.setdefault(key, str(path))
    env["PYTHONUNBUFFERED"] = "1"


def after_env(out: Path, smoke: bool) -> str:
    """Why the other steps cannot run ('' when they can); points later children at tritort."""
    try:
        data = json.loads((out / "env.json").read_text())
    except (OSError, ValueError):
        return "the env step left no env.json"
    found = data.get("tritort_import", {})
    if found.get("mode") == "failed":
        return "tritort cannot be imported (see env.json: tritort_import)"
    if found.get("path"):
        os.environ[TRITORT_PATH_ENV] = found["path"]
    if not smoke and data.get("cuda") is False:  # absent: env was cut off; let the steps try
        return "no CUDA device (run with --smoke to check the harness without one)"
    return ""


def start_prebuild(out: Path, work: Path, end_by: float, t0: float, models: str, smoke: bool):
    """Build and convert the models in the background while the first checks run."""
    cmd = python_cmd([str(ROOT / "perf" / "gpu_check_steps.py"), "prebuild", "--out",
                      str(out), "--work", str(work), "--deadline", str(end_by), "--t0",
                      str(t0), "--models", models, *(["--smoke"] if smoke else [])])
    log = open(work / "logs" / "prebuild.txt", "w")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def settle_prebuild(proc, wait_s: float, log):
    """Timing starts with the machine quiet: wait for the builds, else stop them (the latency
    workers build what is missing themselves)."""
    try:
        proc.wait(timeout=max(0.0, wait_s))
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait()
        log(f"prebuild: stopped after waiting {wait_s:.0f} s; the steps build what is missing")
    return None


def finish_skipped(out: Path, step: str, why: str) -> None:
    write_json(out / f"{step}.json", {"step": step, "status": f"skipped: {why}", "parts": {},
                                      "lines": []})


def settle_record(out: Path, step: str, rc: int | None, err: str, allowance: float,
                  seconds: float) -> str:
    """The step's final status in its record, also when it was killed or crashed."""
    path = out / f"{step}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {"step": step, "status": "running", "parts": {}, "lines": []}
    if rc is None:
        data["status"] = f"failed: timed out after {allowance:.0f} s (what it finished is kept)"
    elif data.get("status") == "running":
        data["status"] = f"failed: exit {rc}: {tail(err, 3)}"
    data.update(seconds=round(seconds, 1), allowance_s=round(allowance, 1))
    if rc != 0 and err.strip():
        data["stderr_tail"] = tail(err, 30)
    write_json(path, data)
    return data["status"]


def write_summary(out: Path, state: dict) -> None:
    lines = ["# tritort GPU check", "",
             f"`{state['command']}`; budget {state['budget']:.0f} s, "
             f"{time.time() - state['t0']:.0f} s so far; models {state['models']}"]
    if state["smoke"]:
        lines.append(f"SMOKE MODE: Triton's interpreter on the CPU, tiny shapes; every timing "
                     f"here is labelled '{MEANINGLESS}'")
    lines += ["", "| step | status | seconds | allowed s |", "|---|---|---|---|"]
    for step, s in state["steps"].items():
        lines.append(f"| {step} | {s['status'][:200]} | {s['seconds']:.0f} | "
                     f"{s.get('allowance_s', 0):.0f} |")
    for step in state["steps"]:
        try:
            data = json.loads((out / f"{step}.json").read_text())
        except (OSError, ValueError):
            continue
        lines += ["", f"## {step}: {data['status'][:300]}", ""]
        lines += [f"- {name}: {p['status'][:300]}" for name, p in data["parts"].items()]
        lines += ["", *data["lines"]]
    tmp = out / ".summary.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / "summary.md")


if __name__ == "__main__":
    raise SystemExit(main())
