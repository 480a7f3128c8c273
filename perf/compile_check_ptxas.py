"""Compile recorded kernel launches for a CUDA target without a GPU, and read what ptxas made.

Each launch goes through Triton's real compiler (ptxas included) in subprocesses without the
interpreter and with an empty Triton cache (a cold compile). Per launch it gives: shared memory
(Triton's metadata, what the launch asks for), registers and spilled bytes (ptxas's ``-v`` log
of that very compile: Triton prints it when ``knobs.nvidia.dump_ptxas_log`` is set; a loaded
module's ``n_regs`` would need a driver), and which instructions the kernel's ``tl.dot``
became: ``wgmma`` (Hopper's warpgroup MMA, ``wgmma.mma_async`` in the PTX), ``mma``
(``mma.sync``), ``fma`` (a dot, but neither: scalar FFMA), ``none`` (no dot). The SASS
instruction counts (HGMMA, HMMA, FFMA, ...) from Triton's bundled cuobjdump back that up.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

MMA_KINDS = ("wgmma", "mma", "fma", "none")

_COMPILE = r"""
import contextlib, importlib.util, io, json, os, subprocess, sys, tempfile, time
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
sys.path.insert(0, sys.argv[3])
from perf.compile_check_ptxas import mma_kind, parse_ptxas_log, sass_counts

knobs.nvidia.dump_ptxas_log = True  # the -v log of the compile's own ptxas run
jobs, arch = json.load(open(sys.argv[1])), int(sys.argv[2])
for job in jobs:
    spec = importlib.util.spec_from_file_location("k", job["path"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, job["name"])
    constexprs = {(int(i),): v for i, v in job["constexprs"].items()}
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            attrs = {(i,): [["tt.divisibility", 16]] for i in job.get("aligned", ())}
            compiled = triton.compile(ASTSource(fn, job["signature"], constexprs, attrs),
                                      target=GPUTarget("cuda", arch, 32),
                                      options=job["options"])
        seconds = time.perf_counter() - start
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(compiled.asm["cubin"])
            cubin.flush()
            sass = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", cubin.name],
                                  capture_output=True, text=True).stdout
        result = {"ok": True, "shared": compiled.metadata.shared,
                  "num_warps": compiled.metadata.num_warps,
                  "num_stages": compiled.metadata.num_stages,
                  "mma": mma_kind(compiled.asm["ttir"], compiled.asm["ptx"]),
                  "sass": sass_counts(sass), "compile_s": round(seconds, 2),
                  **parse_ptxas_log(log.getvalue())}
    except Exception as e:  # the table reports it
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"[:400]}
    print(json.dumps(result))
    sys.stdout.flush()
"""

_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_SASS_OPS = ("HGMMA", "HMMA", "IMMA", "QGMMA", "IGMMA", "FFMA", "HFMA2")


def parse_ptxas_log(log: str) -> dict:
    """Registers, stack frame and spilled bytes from ptxas's ``-v`` log of one kernel."""
    registers = _REGISTERS.search(log)
    spills = _SPILLS.search(log)
    if registers is None or spills is None:
        raise ValueError(f"no ptxas -v report in the compile's output: {log[-400:]!r}")
    stack, stores, loads = map(int, spills.groups())
    return {"registers": int(registers.group(1)), "stack_bytes": stack,
            "spill_stores": stores, "spill_loads": loads, "spills": stores + loads}


def mma_kind(ttir: str, ptx: str) -> str:
    """What the kernel's dots compiled to: wgmma, mma (mma.sync), fma (neither), none (no dot)."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if "mma.sync" in ptx:
        return "mma"
    return "fma" if re.search(r"\btt\.dot(_scaled)?\b", ttir) else "none"


def sass_counts(sass: str) -> dict[str, int]:
    """How many of each matrix / fused multiply-add instruction the SASS holds (nonzero only)."""
    counts = {op: len(re.findall(rf"\b{op}\b", sass)) for op in _SASS_OPS}
    return {op: n for op, n in counts.items() if n}


def compile_all(jobs: list[dict], arch: int, processes: int = 1) -> list[dict]:
    """Every job compiled cold for ``cuda`` at ``arch``, in up to ``processes`` subprocesses
    (each with its own empty Triton cache); results in the jobs' order."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "TRITORT_GPU_SOURCES")}
    processes = max(1, min(processes, len(jobs)))
    shares = [list(range(i, len(jobs), processes)) for i in range(processes)]
    running = []
    for share in shares:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump([jobs[i] for i in share], f, default=str)
        share_env = dict(env, TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="tritort-compile-triton-"))
        running.append(subprocess.Popen([sys.executable, "-c", _COMPILE, f.name, str(arch), root],
                                        env=share_env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    results: list[dict | None] = [None] * len(jobs)
    for share, proc in zip(shares, running):
        out, err = proc.communicate()
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if len(lines) != len(share):
            raise RuntimeError(f"a compiler process stopped early:\n{err[-3000:]}")
        for i, res in zip(share, lines):
            results[i] = res
    return results
