"""Tune the Triton kernels of one model and store the winners in the tuning database.

    tritort autotune MODEL.onnx [--shapes NAME=D0,D1,... ...] [--budget SECONDS]
                     [--db PATH] [--max-candidates N] [--seed S]

The model is compiled on the Triton provider and run once on valid random inputs
(tritort.tools.random_inputs; inputs with symbolic dims need --shapes, inputs sharing a
symbolic dim name agree) while every tunable launch (MatMul, Gemm, Conv, attention) is
recorded. Each distinct (kernel key, shape key) then times its pruned candidates with
``triton.testing.do_bench``, within --budget seconds per kernel; a candidate that fails to
compile or whose output differs from the default config's is skipped. The winners go into the
database (default: ``tuning.json`` next to the kernel cache, or ``TRITORT_TUNING_DB``), which
later sessions on the same GPU and Triton version read at creation.

In Triton's interpreter (TRITON_INTERPRET=1, no GPU) the timings mean nothing: the run tries a
few candidates with a small budget, so CI can check the whole path quickly.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import tools
from .errors import OrtError

TRITON = "TritonExecutionProvider"
GPU_BUDGET_S = 30.0
INTERPRETER_BUDGET_S = 2.0
INTERPRETER_CANDIDATES = 3


def autotune(model: str, shapes: dict[str, list[int]], *, budget_s: float | None = None,
             db: str | None = None, max_candidates: int | None = None, seed: int = 0) -> int:
    """Tune ``model``'s kernels at ``shapes`` into the database; prints a table. The exit
    code: 0 when every kernel was tuned, 1 when some failed or the model does not load, 2
    when it cannot start (no Triton provider, shapes missing)."""
    from .providers.triton import TritonExecutionProvider
    from .session import InferenceSession

    reason = TritonExecutionProvider.unavailable_reason()
    if reason:
        print(f"autotune needs the Triton provider: {reason}", file=sys.stderr)
        return 2
    try:
        inputs = tools.describe_inputs(model)
        resolved = tools.input_shapes(inputs, shapes, default_dim=None)
        missing = [f"{info.name} {info.shape}" for info in inputs if resolved[info.name] is None]
        if missing:
            print("inputs with symbolic dims need --shapes NAME=D0,D1,...: "
                  + "; ".join(missing), file=sys.stderr)
            return 2
        sess = InferenceSession(model, providers=[TRITON, "CPUExecutionProvider"])
        feeds = tools.random_inputs(inputs, shapes, seed=seed)
    except OrtError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    launches, table = _record_launches(sess, feeds, db)
    if not launches:
        print(f"{model}: no tunable Triton kernel ran (placement: "
              f"{tools.placement_summary(sess)}); nothing to tune")
        return 0
    device = launches[0].device
    limit = max_candidates
    if device.interpreted:
        print("NOTE: Triton's interpreter (TRITON_INTERPRET=1): timings mean nothing; this run "
              "only checks the tuning path (few candidates, small budget).")
        budget_s = INTERPRETER_BUDGET_S if budget_s is None else min(budget_s,
                                                                     INTERPRETER_BUDGET_S)
        limit = INTERPRETER_CANDIDATES if limit is None else limit
    budget_s = GPU_BUDGET_S if budget_s is None else budget_s
    print(f"model: {model}\ndevice: {device.name}, triton {table.triton}; "
          f"{len(launches)} kernel/shape pairs; budget {budget_s:g} s each")
    results, failures = _tune_all(launches, table, budget_s, limit)
    if results:
        print(f"wrote {len(results)} entries to {table.save()}")
    print(_results_table(results))
    if device.interpreted:
        print("(interpreter timings: meaningless)")
    for line in failures:
        print(f"skipped: {line}")
    return 1 if len(results) < len(launches) else 0


def _record_launches(sess: Any, feeds: dict, db: str | None) -> tuple[list, Any]:
    """The tuning API in one place: one run's tunable launches, and the table of their device
    (in ``db``, else the default database) that the winners go into."""
    from .codegen import tuning

    # the table the session's Triton launchers were handed records what they launch
    with sess.tuning_tables()[TRITON].recording() as recorder:
        sess.run(None, feeds)
    launches = recorder.launches
    if not launches:
        return [], None
    path = Path(db) if db else tuning.db_path()
    return launches, tuning.table_at(path, launches[0].device)


def _tune_all(launches: list, table: Any, budget_s: float,
              limit: int | None) -> tuple[list, list[str]]:
    """Tune each launch, storing each winner in ``table``; (results, why things were
    skipped)."""
    from tqdm import tqdm

    from .codegen import tuner, tuning

    results, failures = [], []
    total = sum(tuner.candidate_count(launch, limit) for launch in launches)
    with tqdm(total=total, desc="autotune", unit="config", file=sys.stderr) as bar:
        for launch in launches:
            bar.set_postfix_str(f"{launch.kernel} {launch.shape}")
            try:
                result = tuner.tune(launch, budget_s, limit, on_trial=lambda _t: bar.update())
            except Exception as e:  # the default config itself failed: nothing to compare to
                failures.append(f"{launch.kernel} {launch.shape}: default config failed: "
                                f"{type(e).__name__}: {e}")
                continue
            table.store(launch.kernel, launch.shape, result.entry())
            results.append(result)
            failures += [f"{launch.kernel} {launch.shape} [{tuning.describe(t.config)}]: "
                         f"{t.skipped}" for t in result.trials
                         if t.skipped and not t.skipped.startswith("over the budget")]
    return results, failures


def _results_table(results: list) -> str:
    from .codegen import tuning

    rows = [["kernel", "shape", "chosen config", "default ms", "tuned ms", "speedup",
             "tried"]]
    for r in results:
        timed = sum(t.ms is not None for t in r.trials)
        rows.append([r.launch.kernel, r.launch.shape, tuning.describe(r.best),
                     f"{r.default_ms:.4f}", f"{r.best_ms:.4f}", f"{r.speedup:.2f}x",
                     f"{timed}/{len(r.trials)}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "tritort autotune") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_parsed(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The autotune options, for this module's parser and the tritort CLI's subcommand."""
    parser.add_argument("model")
    parser.add_argument("--shapes", nargs="+", action="extend", default=[],
                        metavar="NAME=D0,D1,...", help="concrete dims for inputs with "
                                                       "symbolic dims")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds per kernel (default {GPU_BUDGET_S:g} on a GPU, "
                             f"{INTERPRETER_BUDGET_S:g} in the interpreter)")
    parser.add_argument("--db", default=None, help="tuning database file (default: "
                                                   "$TRITORT_TUNING_DB or next to the cache)")
    parser.add_argument("--max-candidates", type=int, default=None,
                        help=f"configs tried per kernel, the default one included (default: "
                             f"all that survive pruning; {INTERPRETER_CANDIDATES} in the "
                             f"interpreter)")
    parser.add_argument("--seed", type=int, default=0)


def run_parsed(args: argparse.Namespace) -> int:
    """Run autotune from parsed ``add_arguments`` options."""
    try:
        shapes = tools.parse_shapes(args.shapes)
    except OrtError as e:
        print(f"--shapes: {e}", file=sys.stderr)
        return 2
    return autotune(args.model, shapes, budget_s=args.budget, db=args.db,
                    max_candidates=args.max_candidates, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
