"""The steps of perf/gpu_check.py, each run in a process of its own:

    python perf/gpu_check_steps.py STEP --out DIR --work DIR --deadline EPOCH [--smoke]

STEP is env, correctness, kernels or autotune (here), latency, host or prebuild
(perf/gpu_check_models.py). A step writes DIR/STEP.json as it goes: its status, its parts
and markdown lines for the summary, so a step cut off at its deadline still leaves what it
measured. Also here: the log, child processes with timeouts (killed with their descendants)
and the launcher that imports tritort from wherever the env step found it.
"""
from __future__ import annotations

import argparse
import collections
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MEANINGLESS = "interpreter, meaningless"
TRITORT_PATH_ENV = "GPU_CHECK_TRITORT_PATH"  # set when tritort is imported from outside site
PACKAGES = ["torch", "triton", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "ml_dtypes",
            "scipy", "threadpoolctl", "onnxscript", "pytest", "tqdm", "setuptools", "tritort"]

# Runs a script (or -m module) after importing tritort from $GPU_CHECK_TRITORT_PATH: the
# perf scripts put the checkout first on sys.path, whose tritort/ lacks codegen/.
_PREIMPORT = """\
import os, runpy, sys
sys.path.insert(0, os.environ['GPU_CHECK_TRITORT_PATH'])
import tritort.codegen, tritort.fallback_cpu
args = sys.argv[1:]
if args[0] == '-m':
    sys.argv = args[1:]
    runpy.run_module(args[1], run_name='__main__', alter_sys=True)
else:
    sys.argv = args
    sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))
    runpy.run_path(args[0], run_name='__main__')
"""


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.out, self.work = Path(args.out), Path(args.work)
        self.deadline, self.t0, self.smoke = args.deadline, args.t0, args.smoke
        self.models = [m for m in args.models.split(",") if m]
        self.args = args

    def left(self) -> float:
        return self.deadline - time.time()

    def log(self, step: str, msg: str) -> None:
        log_line(self.out, self.t0, step, msg)

    def timing_label(self) -> str:
        if self.smoke:
            return MEANINGLESS
        import torch

        return f"GPU: {torch.cuda.get_device_name()}"


def log_line(out: Path, t0: float, step: str, msg: str) -> None:
    line = f"[{time.time() - t0:7.1f} s] {step}: {msg}"
    print(line, file=sys.stderr, flush=True)
    with open(out / "log.txt", "a") as f:
        f.write(line + "\n")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


class Record:
    """DIR/STEP.json: status ("running", "ok", "failed: ...", "skipped: ..."), parts, lines."""

    def __init__(self, ctx: Context, step: str) -> None:
        self.ctx, self.path = ctx, ctx.out / f"{step}.json"
        self.data: dict[str, Any] = {"step": step, "status": "running", "parts": {},
                                     "lines": [], "smoke": ctx.smoke}
        self.save()

    def part(self, name: str, status: str, **fields: Any) -> None:
        self.data["parts"][name] = {"status": status, **fields}
        self.ctx.log(self.data["step"], f"{name}: {status}")
        self.save()

    def lines(self, lines: list[str]) -> None:
        self.data["lines"] += lines
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)

    def finish(self) -> None:
        failed = [k for k, p in self.data["parts"].items() if p["status"].startswith("failed")]
        self.data["status"] = f"failed: {', '.join(failed)}" if failed else "ok"
        self.save()


# ------------------------------------------------------------------------------------------
# child processes
# ------------------------------------------------------------------------------------------
def python_cmd(args: list[str], env: dict | None = None) -> list[str]:
    if (os.environ if env is None else env).get(TRITORT_PATH_ENV):
        return [sys.executable, "-c", _PREIMPORT, *args]
    return [sys.executable, *args]


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process descended from it (found through /proc)."""
    parent_of: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent_of[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    family = [pid]
    for p in family:  # grows while iterating: breadth-first over the descendants
        family += [c for c, pp in parent_of.items() if pp == p and c not in family]
    for p in family:  # the root first, so it spawns nothing more
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_child(cmd: list[str], timeout: float, log_path: Path, env: dict | None = None
              ) -> tuple[int | None, str, str]:
    """Run ``cmd`` in the checkout, its stdout in ``log_path`` and stderr beside it; (exit
    code, or None when it timed out and was killed; stdout; stderr)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    err_path = log_path.with_suffix(".err")
    with open(log_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        try:
            rc: int | None = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()
            rc = None
    return rc, log_path.read_text(errors="replace"), err_path.read_text(errors="replace")


def tail(text: str, n: int = 8) -> str:
    return "\n".join([ln for ln in text.strip().splitlines() if ln.strip()][-n:])


def step_cmd(ctx: Context, step: str, *extra: str) -> list[str]:
    a = ctx.args
    return python_cmd([str(ROOT / "perf" / "gpu_check_steps.py"), step, "--out", str(ctx.out),
                       "--work", str(ctx.work), "--deadline", str(a.deadline), "--t0",
                       str(a.t0), "--models", a.models, *(["--smoke"] if ctx.smoke else []),
                       *extra])


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------------------------------
# 1. environment
# ------------------------------------------------------------------------------------------
def step_env(ctx: Context, rec: Record) -> None:
    nvidia_smi(ctx, rec)
    rec.data["tritort_import"] = prepare_tritort(ctx, rec)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    rec.data["versions"] = versions
    r = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze"],
                       capture_output=True, text=True, timeout=60)
    rec.data["pip_list"] = r.stdout.split() if r.returncode == 0 else [f"pip: {tail(r.stderr, 2)}"]
    missing = [n for n in PACKAGES if versions[n] is None and n != "onnxruntime-gpu"]
    rec.lines([f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
               + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
               f"not installed: {', '.join(missing) or 'nothing'}",
               f"tritort imported: {rec.data['tritort_import']['mode']}"])
    rec.part("versions", "ok", missing=missing)
    cuda_device(ctx, rec)


def prepare_tritort(ctx: Context, rec: Record) -> dict[str, Any]:
    """Make ``import tritort.codegen`` work for this checkout without the internet: installed
    already, else pip -e, else pip --target, else a folder of symlinks laid out as installed."""
    attempts: list[str] = []

    def probe(extra: Path | None) -> str | None:
        code = "import tritort.codegen, tritort.fallback_cpu, tritort; print(tritort.__file__)"
        if extra:
            code = f"import sys; sys.path.insert(0, {str(extra)!r}); " + code
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", TRITORT_PATH_ENV)}
        r = subprocess.run([sys.executable, "-c", code], cwd=ctx.work, env=env,
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            attempts.append(f"import failed: {tail(r.stderr, 1)}")
            return None
        return r.stdout.strip()

    def pip(*args: str) -> bool:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
               "--no-index", "-q", *args]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ctx.work,
                               timeout=max(10.0, min(180.0, ctx.left() / 3)))
        except subprocess.TimeoutExpired:
            attempts.append(f"{' '.join(cmd[2:])}: timed out")
            return False
        attempts.append(f"{' '.join(cmd[2:])}: exit {r.returncode} {tail(r.stderr, 2)}")
        return r.returncode == 0

    found = probe(None)
    if found and Path(found).resolve().is_relative_to(ROOT):
        return {"mode": "already installed from this checkout", "path": None,
                "attempts": attempts}
    if found:
        attempts.append(f"an installed tritort elsewhere ({found}) would shadow this checkout")
    if pip("-e", str(ROOT)):
        found = probe(None)
        if found and Path(found).resolve().is_relative_to(ROOT):
            return {"mode": "pip install -e . (no deps, no network)", "path": None,
                    "attempts": attempts}
    target = ctx.work / "site"
    if pip("--upgrade", "--target", str(target), str(ROOT)) and probe(target):
        return {"mode": f"pip install --target {target}", "path": str(target),
                "attempts": attempts}
    overlay = build_overlay(ctx.work / "overlay")
    if probe(overlay):
        return {"mode": f"symlinks laid out as installed, {overlay}", "path": str(overlay),
                "attempts": attempts}
    rec.part("tritort import", "failed: " + "; ".join(attempts))
    return {"mode": "failed", "path": None, "attempts": attempts}


def build_overlay(folder: Path) -> Path:
    """folder/tritort: the checkout's tritort/ entries plus codegen/ and fallback_cpu/, as
    symlinks: the package-dir mapping of pyproject.toml without installing anything."""
    pkg = folder / "tritort"
    shutil.rmtree(folder, ignore_errors=True)
    pkg.mkdir(parents=True)
    for entry in (ROOT / "tritort").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for sub in ("codegen", "fallback_cpu"):
        (pkg / sub).symlink_to(ROOT / sub)
    return folder


def nvidia_smi(ctx: Context, rec: Record) -> None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        rec.part("nvidia-smi", "skipped: nvidia-smi not found (smoke mode: no GPU expected)"
                 if ctx.smoke else "failed: nvidia-smi not found")
        return
    query = "name,clocks.sm,clocks.mem,clocks.max.sm,memory.total"
    try:
        r = subprocess.run([exe, f"--query-gpu={query}", "--format=csv"], capture_output=True,
                           text=True, timeout=30)
    except subprocess.TimeoutExpired:
        rec.part("nvidia-smi", "failed: timed out")
        return
    if r.returncode != 0:
        rec.part("nvidia-smi", f"failed: exit {r.returncode}: {tail(r.stderr, 2)}")
        return
    rec.lines(["", "nvidia-smi:", "```", r.stdout.strip(), "```"])
    rec.part("nvidia-smi", "ok", csv=r.stdout.strip())


def cuda_device(ctx: Context, rec: Record) -> None:
    import torch

    cuda = torch.cuda.is_available()
    rec.data["cuda"] = cuda
    if not cuda and not ctx.smoke:
        rec.part("cuda", "failed: torch sees no CUDA device (use --smoke without a GPU)")
        return
    if cuda:
        p = torch.cuda.get_device_properties(0)
        rec.data["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}",
                              "sms": p.multi_processor_count,
                              "memory_gib": round(p.total_memory / 2**30, 1),
                              "cuda": torch.version.cuda,
                              "cudnn": torch.backends.cudnn.version()}
        rec.lines([f"device: {rec.data['device']}"])
    n = (16 if ctx.smoke else 512) * 2**20
    device = "cuda" if cuda else "cpu"
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    reps = 3 if ctx.smoke else 20
    for _ in range(3):
        dst.copy_(src)
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / reps
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            dst.copy_(src)
        ms = (time.perf_counter() - t0) / reps * 1e3
    gbs = 2 * n / (ms * 1e-3) / 1e9  # bytes read + written
    label = MEANINGLESS if ctx.smoke else "CUDA events"
    rec.data["copy_bandwidth_gbs"] = None if ctx.smoke else gbs
    rec.lines([f"copy bandwidth (device-to-device copy of {n >> 20} MiB, read + write): "
               f"{gbs:.1f} GB/s ({label})"])
    rec.part("copy bandwidth", "ok", gbs=gbs, timing=label)


# ------------------------------------------------------------------------------------------
# 2. correctness
# ------------------------------------------------------------------------------------------
def step_correctness(ctx: Context, rec: Record) -> None:
    from perf import gpu_check_models as lat

    pytest_gpu(ctx, rec, time.time() + 0.25 * ctx.left())
    conformance(ctx, rec, time.time() + 0.6 * ctx.left())  # the rest for the models
    lat.model_checks(ctx, rec, ctx.deadline)


def pytest_summary(text: str) -> dict[str, int]:
    last = next((ln for ln in reversed(text.splitlines()) if re.search(r"\d+ \w+ in ", ln)), "")
    return {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|"
                                             r"xpassed|deselected)", last)}


def pytest_gpu(ctx: Context, rec: Record, until: float) -> None:
    if not have("pytest"):
        rec.part("pytest -m gpu", "skipped: pytest is not installed")
        return
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "pytest.mark.gpu" in p.read_text())
    runs = [("pytest -m gpu", ["-m", "gpu", *files])]
    if ctx.smoke:
        rec.part("pytest model placement", "skipped: smoke mode (CI runs "
                 "tests/test_model_placement.py in the interpreter)")
    else:  # whole quick models on the Triton provider against onnxruntime
        runs.append(("pytest model placement", ["tests/test_model_placement.py"]))
    for i, (name, args) in enumerate(runs):
        left = (until - time.time()) / (len(runs) - i)
        if left < 5:
            rec.part(name, f"skipped: {left:.0f} s left")
            continue
        rc, out, err = run_child(python_cmd(["-m", "pytest", "-q", "-p", "no:cacheprovider",
                                             "-rfs", *args]), left,
                                 ctx.work / "logs" / f"{name}.txt")
        out += err
        counts = pytest_summary(out)
        failed = [ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        rec.lines(["", f"{name}: {counts or tail(out, 3)}", *[f"- {ln}" for ln in failed[:30]]])
        if rc is None:
            status = f"failed: timed out after {left:.0f} s"
        elif rc == 0 and counts.get("passed"):
            status = "ok"
        elif rc == 0 and ctx.smoke:
            status = f"skipped: no CUDA device ({counts.get('skipped', 0)} gpu tests skipped)"
        else:
            status = f"failed: exit {rc}, {counts or tail(out, 3)}"
        rec.part(name, status, counts=counts, failed=failed, output_tail=tail(out, 20))


def conformance_order(cases: dict) -> list[str]:
    """One case of every op set before a second of any: a cut-off run covers the most ops;
    the _expanded function bodies last."""
    from tests.conformance import case_ops

    groups: dict[tuple, list[str]] = collections.defaultdict(list)
    for name in sorted(cases):
        groups[("_expanded" in name, "+".join(sorted(case_ops(cases[name]))))].append(name)
    ranked = [((key[0], i, key[1]), name) for key, names in groups.items()
              for i, name in enumerate(names)]
    return [name for _, name in sorted(ranked)]


def conformance(ctx: Context, rec: Record, until: float) -> None:
    name = "conformance (Triton first)"
    left = until - time.time()
    if left < 10:
        rec.part(name, f"skipped: {left:.0f} s left")
        return
    shards = 1 if ctx.smoke else max(1, min(8, (os.cpu_count() or 2) // 2))
    limit = 12 if ctx.smoke else 0
    results = [ctx.work / f"conformance-{i}.jsonl" for i in range(shards)]
    (ctx.work / "conformance-total.json").unlink(missing_ok=True)
    procs = []
    for i, path in enumerate(results):
        path.unlink(missing_ok=True)
        cmd = step_cmd(ctx, "conformance-worker", "--shard", str(i), "--shards", str(shards),
                       "--limit", str(limit), "--result", str(path), "--until", str(until))
        log = open(ctx.work / "logs" / f"conformance-{i}.txt", "w")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL), log))
    for proc, log in procs:  # workers stop starting cases at `until`; a hung one is killed
        try:
            proc.wait(timeout=max(1.0, min(until + 15, ctx.deadline - 5) - time.time()))
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()
        log.close()
    rows: dict[str, dict] = {}
    for path in results:
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                rows[row["name"]] = row
    by = collections.Counter(r["status"] for r in rows.values())
    total = json.loads((ctx.work / "conformance-total.json").read_text()) \
        if (ctx.work / "conformance-total.json").exists() else {"selected": 0, "all": 0}
    failures = [f"{r['name']}: {r['error']}" for r in rows.values() if r["status"] == "fail"]
    unfinished = [r["name"] for r in rows.values() if r["status"] == "started"]
    on_triton = sum(1 for r in rows.values() if r.get("triton_units"))
    not_run = max(0, total["selected"] - len(rows))
    summary = (f"{name}: {len(rows)} of {total['all']} cases ran ({on_triton} placed work on "
               f"Triton): " + ", ".join(f"{v} {k}" for k, v in sorted(by.items()))
               + f"; {not_run} not run (time box)" * (not_run > 0)
               + (f"; {total['all'] - total['selected']} left out by the smoke limit"
                  if total["selected"] < total["all"] else ""))
    done = {r["name"] for r in rows.values()}
    missed = [n for n in total.get("order", []) if n not in done]
    rec.lines(["", summary, *[f"- {f}" for f in failures[:40]],
               *[f"- {n}: did not finish before the time box closed" for n in unfinished],
               *([f"- not run, first 30 in priority order: {', '.join(missed[:30])}"]
                 if missed and not ctx.smoke else [])])
    status = "ok" if not failures and rows else \
        f"failed: {len(failures)} case(s)" if failures else "failed: no case ran"
    rec.part(name, status, counts=dict(by), failures=failures, not_run=not_run,
             not_run_names=missed[:300],
             on_triton=on_triton)


def conformance_worker(ctx: Context) -> None:
    """Run every shards-th case of the priority order until ``--until``; one JSON line each
    (a 'started' line first, so a case that hangs is named)."""
    import numpy as np

    import tritort
    from perf.bench_system import TooSlow, _Deadline
    from tests.conformance import assert_same, node_cases, to_value
    from tests.expected_failures import EXPECTED_FAILURES, TRITON_EXPECTED_FAILURES

    a = ctx.args
    cases = node_cases()
    order = conformance_order(cases)
    selected = order[:a.limit] if a.limit else order
    if a.shard == 0:
        write_json(ctx.work / "conformance-total.json",
                   {"all": len(order), "selected": len(selected), "order": selected})
    expected = {**EXPECTED_FAILURES, **TRITON_EXPECTED_FAILURES}
    providers = ["TritonExecutionProvider", "CPUExecutionProvider"]
    with open(a.result, "a") as out:
        def emit(row: dict) -> None:
            out.write(json.dumps(row) + "\n")
            out.flush()

        for name in selected[a.shard::a.shards]:
            if time.time() > a.until:
                break
            emit({"name": name, "status": "started"})
            case, t0, units, error = cases[name], time.time(), 0, ""
            try:
                with _Deadline(120.0, name), np.errstate(all="ignore"):
                    sess = tritort.InferenceSession(case.model.SerializeToString(),
                                                    providers=providers)
                    units = sum(pu.provider.name == providers[0] for pu in sess._program.units)
                    ins = [i.name for i in case.model.graph.input]
                    outs = [o.name for o in case.model.graph.output]
                    for inputs, expect in case.data_sets:
                        got = sess.run(outs, dict(zip(ins, to_value(list(inputs)))))
                        for o, e, g in zip(outs, to_value(list(expect)), got):
                            assert_same(e, g, case.rtol, case.atol, o)
            except (Exception, TooSlow) as e:  # noqa: BLE001
                error = f"{type(e).__name__}: {(str(e).strip() or '-').splitlines()[0][:300]}"
            status = ("xfail" if error else "xpass") if name in expected else \
                ("fail" if error else "pass")
            emit({"name": name, "status": status, "triton_units": units, "error": error,
                  "s": round(time.time() - t0, 3)})


# ------------------------------------------------------------------------------------------
# 4. kernel benchmarks
# ------------------------------------------------------------------------------------------
def step_kernels(ctx: Context, rec: Record) -> None:
    env_json = ctx.out / "env.json"
    copy = json.loads(env_json.read_text()).get("copy_bandwidth_gbs") if env_json.exists() \
        else None
    if copy:
        rec.lines([f"copy bandwidth from the env step: {copy:.1f} GB/s (each bench_kernels "
                   f"run measures its own, below)"])
    smoke = ["--smoke"] if ctx.smoke else []
    compute = ["perf/bench_compute.py", "--no-compile", "--rounds", "1" if ctx.smoke else "3",
               "--out", "", *smoke]
    kernels = ["perf/bench_kernels.py", "--dtype", "float16", *smoke]
    runs = [("compute gemm", [*compute, "--cases", "gemm"]),
            ("kernels pointwise", [*kernels, "--cases", "pointwise"])]
    if not ctx.smoke:
        runs[1:1] = [("compute attention", [*compute, "--cases", "attention"])]
        runs += [(f"kernels {c}", [*kernels, "--cases", c])
                 for c in ("layernorm", "softmax", "reduce_sum")]
        runs += [("compute conv", [*compute, "--cases", "conv"]),
                 ("compute fp8", [*compute, "--cases", "fp8"])]
    label = ctx.timing_label()
    for i, (name, args) in enumerate(runs):
        left = ctx.left()
        if left < 10:
            rec.part(name, f"skipped: {left:.0f} s left of the step")
            continue
        # no run may take more than half of what is left while others wait
        budget = left if i == len(runs) - 1 else min(left, max(20.0, 0.5 * left))
        rc, out, err = run_child(python_cmd(args), budget, ctx.work / "logs" / f"{name}.txt")
        rec.lines(["", f"### {name} ({label})", f"`python {' '.join(args)}`", "",
                   *out.strip().splitlines()])
        status = "ok" if rc == 0 else \
            f"failed: timed out after {budget:.0f} s" if rc is None else \
            f"failed: exit {rc}: {tail(out + err, 3)}"
        if rc is None and name.startswith("kernels"):
            status += " (bench_kernels prints its table only at the end)"
        rec.part(name, status, stderr_tail=tail(err, 20), timing=label)


# ------------------------------------------------------------------------------------------
STEPS = {"env": step_env, "correctness": step_correctness, "kernels": step_kernels}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="perf/gpu_check_steps.py")
    p.add_argument("step")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--deadline", type=float, required=True, help="time.time() to end by")
    p.add_argument("--t0", type=float, default=time.time(), help="the run's start, for the log")
    p.add_argument("--models", default="bert,gpt2,vit,resnet50")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--until", type=float, default=0.0)
    p.add_argument("--result", default="")
    p.add_argument("--spec", default="")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = Context(args)
    if ctx.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # nothing here may touch a GPU
    from perf import gpu_check_models as lat

    if args.step == "conformance-worker":
        conformance_worker(ctx)
        return 0
    if args.step in lat.WORKERS:
        return lat.WORKERS[args.step](ctx)
    steps = {**STEPS, **lat.STEPS}
    rec = Record(ctx, args.step)
    try:
        steps[args.step](ctx, rec)
    except Exception as e:  # noqa: BLE001
        import traceback

        rec.part("error", f"failed: {type(e).__name__}: {e}",
                 traceback=traceback.format_exc()[-3000:])
    rec.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
