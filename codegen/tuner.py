"""The tuner: time a recorded launch's candidate configs and pick the fastest correct one.

:func:`tune` takes one :class:`tritort.codegen.tuning.RecordedLaunch` (recorded while a
session ran under its table's :meth:`~tritort.codegen.tuning.TuningTable.recording`), prunes
its space's candidates for the problem, checks each candidate's output against the default
config's on private copies of the launch's tensors, and times the ones that match with
``triton.testing.do_bench`` (in Triton's interpreter: one timed call, meaningless).
``tritort autotune`` drives it and stores the winners with
:meth:`tritort.codegen.tuning.TuningTable.store`.

``triton.autotune`` itself is not used at launch: it would time configs silently on the first
call of every new key, in every process, while a normal run must never tune.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .tuning import DeviceInfo, RecordedLaunch, private_copy

# Normwise tolerance against the default config's output: the K loop's summation order
# changes with BLOCK_K, and fp16/bf16 results round once at the end.
TOLERANCE = {"float16": 1e-2, "bfloat16": 4e-2, "float32": 1e-4, "float64": 1e-9}


@dataclass
class Trial:
    config: Any
    ms: float | None = None
    skipped: str | None = None  # why it did not count: failed to compile or run, differs


@dataclass
class TuneResult:
    launch: RecordedLaunch
    default_ms: float
    best: Any
    best_ms: float
    trials: list[Trial] = field(default_factory=list)
    dropped: list[tuple[Any, str]] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.default_ms / self.best_ms if self.best_ms > 0 else 1.0

    def entry(self) -> dict:
        from tritort.version import __version__

        return {"config": dataclasses.asdict(self.best),
                "default": dataclasses.asdict(self.launch.default),
                "default_ms": self.default_ms, "tuned_ms": self.best_ms,
                "problem": self.launch.problem, "tritort": __version__}


def measure(fn: Callable[[], None], device: DeviceInfo) -> float:
    """Milliseconds per call: triton.testing.do_bench's median on a GPU; one timed call in
    the interpreter (meaningless, but it exercises the path)."""
    if device.interpreted:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))


def _outputs(launch: RecordedLaunch, cfg: Any) -> list:
    """Run ``cfg`` on fresh copies; every tensor argument afterwards."""
    import torch

    args = tuple(private_copy(a) for a in launch.args)
    launch.run(cfg, *args)
    if not launch.device.interpreted:
        torch.cuda.synchronize()
    return [a for a in args if isinstance(a, torch.Tensor)]


def _differs(ref: list, got: list) -> str | None:
    import torch

    for i, (r, g) in enumerate(zip(ref, got)):
        if r.dtype.is_floating_point:
            tol = TOLERANCE.get(str(r.dtype).removeprefix("torch."), 1e-4)
            rd, gd = r.double(), g.double()
            finite = rd[torch.isfinite(rd)]
            scale = float(finite.abs().max()) if finite.numel() else 1.0
            if not torch.allclose(gd, rd, rtol=tol, atol=tol * max(scale, 1e-30),
                                  equal_nan=True):
                err = float((gd - rd).abs().nan_to_num(float("inf")).max())
                return f"argument {i} differs from the default config's by {err:.3g}"
        elif not torch.equal(r, g):
            return f"argument {i} differs from the default config's"
    return None


def tune(launch: RecordedLaunch, budget_s: float, limit: int | None = None,
         on_trial: Callable[[Trial], None] | None = None) -> TuneResult:
    """Time the pruned candidates of one recorded launch; the fastest whose outputs match
    the default config's wins. After ``budget_s`` seconds the remaining ones are skipped."""
    start = time.perf_counter()
    configs, dropped = launch.space.pruned(launch.problem, launch.device, launch.default,
                                           limit)
    ref = _outputs(launch, launch.default)  # a failing default raises: nothing to compare to
    work = tuple(private_copy(a) for a in launch.args)

    def timed(cfg):
        return measure(lambda: launch.run(cfg, *work), launch.device)

    default = Trial(launch.default, timed(launch.default))
    trials = [default]
    if on_trial:
        on_trial(default)
    for cfg in configs[1:]:
        trial = Trial(cfg)
        if time.perf_counter() - start > budget_s:
            trial.skipped = f"over the budget of {budget_s:g} s"
        else:
            try:
                trial.skipped = _differs(ref, _outputs(launch, cfg))
                if trial.skipped is None:
                    trial.ms = timed(cfg)
            except Exception as e:  # out of resources, a compile error: skip, report
                trial.skipped = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        trials.append(trial)
        if on_trial:
            on_trial(trial)
    best = min((t for t in trials if t.ms is not None), key=lambda t: t.ms)
    return TuneResult(launch, default.ms, best.config, best.ms, trials, dropped)


def candidate_count(launch: RecordedLaunch, limit: int | None = None) -> int:
    return len(launch.space.pruned(launch.problem, launch.device, launch.default, limit)[0])
