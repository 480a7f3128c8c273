"""Compile every kernel a model uses for a GPU target, on a machine without a GPU.

    python perf/compile_check.py MODEL.onnx [--shapes name=d0,d1 ...] [--arch 90]
    python perf/compile_check.py --model bert      # a benchmark model at its quick size
    python perf/compile_check.py --model bert --layers 12   # ... with 12 layers

The model runs once on the Triton provider in Triton's interpreter, with the sources and
launch configs a GPU would get (``TRITORT_GPU_SOURCES=1``), while every kernel launch is
recorded: kernel (its cache file), argument types, constexprs, num_warps and num_stages.
Each distinct launch is then compiled by Triton's real compiler for ``cuda`` at the given
compute capability (ptxas included), in a subprocess without the interpreter and with an
empty Triton cache (a cold compile). The table says, per launch: the kernel (named by the
hash of its code, so the layers of a model share theirs) and the units running it,
compiled or the error, shared memory, and whether tl.dot became Hopper's wgmma; then the
wall time of the recording run and of the compiles. It catches what the interpreter accepts
and the compiler does not (types, layouts, shared memory over the limit).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_POINTER_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64",
                  "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64", "uint8": "u8",
                  "uint16": "u16", "uint32": "u32", "uint64": "u64", "bool": "i1",
                  "float8_e4m3fn": "fp8e4nv", "float8_e5m2": "fp8e5"}
_OPTIONS = ("num_warps", "num_stages")


def _arg_type(value: Any) -> tuple[str, Any]:
    """(signature type, constexpr value or None) of one launch argument."""
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + _POINTER_TYPES[str(value.dtype).removeprefix("torch.")], None
    if value is None:
        return "constexpr", None
    if isinstance(value, bool):
        return "i1", None
    if isinstance(value, int):
        return ("i32" if -2 ** 31 <= value < 2 ** 31 else "i64"), None
    if isinstance(value, float):
        return "fp32", None
    raise TypeError(f"unexpected kernel argument {type(value).__name__}")


class _Recorder:
    """Wraps a loaded kernel: ``fn[grid](*args, **kw)`` is recorded, then run."""

    def __init__(self, fn: Any, path: Path, jobs: dict) -> None:
        self.fn, self.path, self.name, self.jobs = fn, path, path.stem, jobs

    def __getattr__(self, item):
        return getattr(self.fn, item)

    def __getitem__(self, grid):
        launch = self.fn[grid]

        def run(*args, **kwargs):
            names = list(self.fn.arg_names)
            signature, constexprs = {}, {}
            for name, value in zip(names, args):
                signature[name], _ = _arg_type(value)
            options = {k: kwargs[k] for k in _OPTIONS if k in kwargs}
            for name, value in kwargs.items():
                if name in names:
                    signature[name] = "constexpr"
                    constexprs[names.index(name)] = value
            for name in names:
                if signature.get(name) == "constexpr" and names.index(name) not in constexprs:
                    constexprs[names.index(name)] = None
            key = json.dumps([str(self.path), signature, sorted(constexprs.items()), options],
                             sort_keys=True, default=str)
            self.jobs.setdefault(key, {"path": str(self.path), "name": self.name,
                                       "signature": signature, "constexprs": constexprs,
                                       "options": options})
            return launch(*args, **kwargs)

        return run


def record(model_path: str, feeds: dict | None, shapes: list[str] = ()) -> list[dict]:
    """Run the model once on the Triton provider (interpreter, GPU sources); the distinct
    launches, each with the units (as the placement report names them) whose kernel it ran.
    Without ``feeds``, random inputs of the ``shapes`` given as NAME=D0,D1,..."""
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["TRITORT_GPU_SOURCES"] = "1"
    os.environ.setdefault("TRITORT_CACHE_DIR", tempfile.mkdtemp(prefix="tritort-compile-"))
    import numpy as np

    import tritort as ort
    from tritort.codegen import cache

    jobs: dict[str, dict] = {}
    real_load = cache.load

    def load(source, name, device):
        loaded = real_load(source, name, device)
        return loaded._replace(fn=_Recorder(loaded.fn, loaded.path, jobs))

    cache.load = load
    try:
        sess = ort.InferenceSession(model_path, providers=["TritonExecutionProvider",
                                                           "CPUExecutionProvider"])
        if feeds is None:
            from tritort.tools import parse_shapes, random_inputs

            feeds = random_inputs(model_path, parse_shapes(list(shapes)))
        with np.errstate(all="ignore"):
            sess.run(None, feeds)
    finally:
        cache.load = real_load
    units: dict[str, list[str]] = {}
    for ep in sess._program.providers:
        for report in getattr(ep, "kernels", []):
            units.setdefault(report["kernel"], []).append(report["name"])
    jobs = list(jobs.values())
    for job in jobs:
        job["units"] = units.get(job["name"], [])
    return jobs


_COMPILE = r"""
import importlib.util, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

jobs, arch = json.load(open(sys.argv[1])), int(sys.argv[2])
for job in jobs:
    spec = importlib.util.spec_from_file_location("k", job["path"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, job["name"])
    constexprs = {(int(i),): v for i, v in job["constexprs"].items()}
    try:
        compiled = triton.compile(ASTSource(fn, job["signature"], constexprs),
                                  target=GPUTarget("cuda", arch, 32), options=job["options"])
        ptx = compiled.asm["ptx"]
        mma = "wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "-"
        print(json.dumps({"ok": True, "shared": compiled.metadata.shared, "mma": mma}))
    except Exception as e:  # the table reports it
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"[:400]}))
    sys.stdout.flush()
"""


def compile_all(jobs: list[dict], arch: int) -> list[dict]:
    """Each job compiled in one subprocess, from an empty Triton cache: a cold compile."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "TRITORT_GPU_SOURCES")}
    env["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="tritort-compile-triton-")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(jobs, f, default=str)
    run = subprocess.run([sys.executable, "-c", _COMPILE, f.name, str(arch)], env=env,
                         capture_output=True, text=True)
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    if len(results) != len(jobs):
        raise RuntimeError(f"the compiler process stopped early:\n{run.stderr[-3000:]}")
    return results


def _units(names: list[str]) -> str:
    return "-" if not names else names[0] + (f" +{len(names) - 1}" if len(names) > 1 else "")


def table(jobs: list[dict], results: list[dict]) -> str:
    """One row per launch: its kernel, the first unit running it (+ how many more), ..."""
    lines = [f"{'kernel':<14} {'units':<32} {'warps':>5} {'stages':>6} {'shared':>8} "
             f"{'mma':>6}  result", "-" * 90]
    for job, res in zip(jobs, results):
        opts = job["options"]
        lines.append(f"{job['name']:<14} {_units(job['units'])[:32]:<32} "
                     f"{opts.get('num_warps', '-'):>5} {opts.get('num_stages', '-'):>6} "
                     f"{res.get('shared', '-'):>8} {res.get('mma', '-'):>6}  "
                     f"{'ok' if res['ok'] else res['error']}")
    return "\n".join(lines)


def _feeds(args) -> tuple[str, dict]:
    if args.model:
        from perf import models

        # exported in a process of its own: torch.onnx's export leaves state behind that
        # breaks Triton's interpreter later in the same process
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                        f"from perf import models; models.get_model({args.model!r}, "
                        f"quick={not args.full}, layers={args.layers!r})"],
                       check=True, capture_output=True)
        built = models.get_model(args.model, quick=not args.full, layers=args.layers)
        return str(built.path), built.feeds
    return args.path, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="an ONNX model")
    parser.add_argument("--model", help="a benchmark model (perf/models.py) instead")
    parser.add_argument("--full", action="store_true", help="the benchmark model's full size")
    parser.add_argument("--layers", type=int, help="the benchmark model's layer count")
    parser.add_argument("--shapes", nargs="*", default=[], help="name=d0,d1,... per input")
    parser.add_argument("--arch", type=int, default=90, help="compute capability (90: H100)")
    args = parser.parse_args(argv)
    if not args.path and not args.model:
        parser.error("give a model path or --model NAME")
    if args.layers is not None and not args.model:
        parser.error("--layers sets a benchmark model's layer count: give --model NAME")
    path, feeds = _feeds(args)
    start = time.perf_counter()
    jobs = record(path, feeds, args.shapes)
    recorded = time.perf_counter() - start
    start = time.perf_counter()
    results = compile_all(jobs, args.arch)
    compiled = time.perf_counter() - start
    kernels = {job["name"] for job in jobs}
    units = {unit for job in jobs for unit in job["units"]}
    print(f"{len(jobs)} distinct kernel launches of {len(kernels)} distinct kernels "
          f"({len(units)} units) of {path}, compiled for sm_{args.arch}:")
    print(table(jobs, results))
    failed = sum(not r["ok"] for r in results)
    print(f"{len(jobs) - failed} compiled, {failed} failed")
    print(f"interpreter run (recording) {recorded:.1f} s; cold compile of {len(jobs)} "
          f"launches {compiled:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
