"""The robustness fuzzer (perf/fuzz.py) on a few hundred mutants: every invalid model or
input gets one of ORT's error classes, and nothing hangs or crashes.

Each mutant runs in worker processes under a memory cap and a timeout (tritort's CPU
provider, tritort Triton-first in the interpreter, onnxruntime to tell a hang from a model
that runs for ever). A failure prints the command that replays it.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.triton_env import requires_triton

ROOT = Path(__file__).resolve().parents[1]


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("tritort_perf_fuzz", ROOT / "perf" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz = _fuzz_module()


def _describe(report) -> str:
    lines = []
    for f in report["failures"]:
        lines.append(f"{f['runtime']} {f['kind']} on mutant {f['mutant']} ({f['case']}, "
                     f"{f['mutations']}): {f['cls']}: {str(f['msg'])[:300]}\n"
                     f"  replay: python perf/fuzz.py --replay {f['mutant']} "
                     f"--runtimes {f['runtime']}\n{f.get('tb') or ''}")
    return "\n".join(lines)


def _run(mutants, seed, runtimes):
    report = fuzz.fuzz(mutants, seed, runtimes, timeout=10.0)
    assert report["mutants"] == mutants
    assert not report["failures"], _describe(report)
    # the mutants reach every stage: refused at load, refused at run, and run
    kinds = {k.split(":")[1] for k in report["outcomes"] if k.startswith(runtimes[0])}
    assert {"load", "run", "ok"} <= kinds, report["outcomes"]
    return report


def test_fuzz_cpu_provider():
    _run(600, 101, ["cpu", "ort"])


@requires_triton
def test_fuzz_triton_first():
    _run(300, 202, ["triton", "ort"])


def test_a_run_past_the_timeout_is_stopped_by_its_terminate_flag_and_is_slow():
    """A Loop of 2**62 trips is a valid model: the worker stops it with RunOptions.terminate
    and reports it slow, not hung."""
    name, model, feeds = next(c for c in fuzz.synthetic_cases() if c[0] == "synthetic_loop")
    worker = fuzz.Worker("cpu")
    try:
        r = worker.run(model, {**feeds, "trips": fuzz.np.array(2**62, fuzz.np.int64)}, 1.0)
        assert r["stage"] == "slow" and "terminate" in r["msg"], r
        assert fuzz.outcome(r) == "slow" and r["seconds"] < 10
    finally:
        worker.stop()


def test_mutants_are_a_function_of_seed_and_index():
    a, b = fuzz.make_mutant(7, 3), fuzz.make_mutant(7, 3)
    assert (a.case, a.model, a.mutations) == (b.case, b.model, b.mutations)
    assert fuzz.make_mutant(7, 4).model != a.model or fuzz.make_mutant(7, 4).case != a.case


def test_a_worker_reports_a_hang_and_a_crash_and_recovers():
    """The harness itself: a worker that stops answering is a hang, one that dies is a
    crash; the next mutant gets a fresh worker."""
    worker = fuzz.Worker("cpu")
    try:
        hang = worker.run(b"", {"__fuzz_sleep__": 30}, timeout=1.0, grace=1.0)
        assert hang["stage"] == "hang"
        crash = worker.run(b"", {"__fuzz_abort__": True}, timeout=20.0)
        assert crash["stage"] == "crash" and "SIGABRT" in crash["msg"], crash
        fine = worker.run(fuzz.synthetic_cases()[0][1], fuzz.synthetic_cases()[0][2], 20.0)
        assert fine["stage"] == "ok", fine
    finally:
        worker.stop()


@pytest.mark.parametrize("seed_case", [c[0] for c in fuzz.synthetic_cases()])
def test_synthetic_seeds_run(seed_case):
    """The fuzzer's own seed models are valid: tritort runs them."""
    import tritort as ort

    name, model, feeds = next(c for c in fuzz.synthetic_cases() if c[0] == seed_case)
    ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)
