"""Tune the Triton kernels of one model and store the winners in the tuning database.

    python perf/autotune.py MODEL.onnx [--shapes NAME=D0,D1,... ...] [--budget SECONDS]
                            [--db PATH] [--max-candidates N] [--seed S]
    python -m tritort autotune MODEL.onnx ...          # the same

The model is compiled on the Triton provider and run once on random inputs (inputs with
symbolic dims need --shapes) while every tunable launch (MatMul, Gemm, Conv, attention) is recorded. Each
distinct (kernel key, shape key) then times its pruned candidates with
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TRITON = "TritonExecutionProvider"
GPU_BUDGET_S = 30.0
INTERPRETER_BUDGET_S = 2.0
INTERPRETER_CANDIDATES = 3


def _parse_shapes(specs: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",") if d.strip()]
        except ValueError:
            sep = ""
        if not sep or not name:
            raise SystemExit(f"--shapes takes NAME=D0,D1,... (integers), got '{spec}'")
    return shapes


def _check_shapes(sess, shapes: dict[str, list[int]]) -> str | None:
    """Why the inputs cannot be made from ``shapes``, or None."""
    inputs = {arg.name: arg for arg in sess.get_inputs()}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        return f"--shapes names unknown inputs {unknown}; the inputs are {sorted(inputs)}"
    missing = []
    for name, arg in inputs.items():
        if name in shapes:
            if len(shapes[name]) != len(arg.shape):
                return (f"--shapes {name}: {len(shapes[name])} dims given, the input has "
                        f"rank {len(arg.shape)} {arg.shape}")
        elif any(not isinstance(d, int) for d in arg.shape):
            missing.append(f"{name} {arg.shape}")
    if missing:
        return ("inputs with symbolic dims need --shapes NAME=D0,D1,...: " + "; ".join(missing))
    return None


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perf/autotune.py", description=__doc__.split("\n")[0])
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
    args = parser.parse_args(argv)

    import tritort as ort
    from tritort.codegen import tuner, tuning
    from tritort.cli import _placement, _random_inputs
    from tritort.providers.triton import TritonExecutionProvider

    reason = TritonExecutionProvider.unavailable_reason()
    if reason:
        print(f"autotune needs the Triton provider: {reason}", file=sys.stderr)
        return 2
    shapes = _parse_shapes(args.shapes)
    try:
        sess = ort.InferenceSession(args.model, providers=[TRITON, "CPUExecutionProvider"])
    except ort.OrtError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    problem = _check_shapes(sess, shapes)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    feeds = _random_inputs(sess, shapes, np.random.default_rng(args.seed))
    with tuning.recording() as recorder:
        sess.run(None, feeds)
    launches = recorder.launches
    if not launches:
        print(f"{args.model}: no tunable Triton kernel ran (placement: {_placement(sess)}); "
              "nothing to tune")
        return 0
    device = launches[0].device
    budget, limit = args.budget, args.max_candidates
    if device.interpreted:
        print("NOTE: Triton's interpreter (TRITON_INTERPRET=1): timings mean nothing; this run "
              "only checks the tuning path (few candidates, small budget).")
        budget = INTERPRETER_BUDGET_S if budget is None else min(budget, INTERPRETER_BUDGET_S)
        limit = INTERPRETER_CANDIDATES if limit is None else limit
    budget = GPU_BUDGET_S if budget is None else budget
    path = Path(args.db) if args.db else tuning.db_path()
    table = tuning.table_at(path, device)
    print(f"model: {args.model}\ndevice: {device.name}, triton {table.triton}; "
          f"{len(launches)} kernel/shape pairs; budget {budget:g} s each")

    from tqdm import tqdm

    results, failures = [], []
    total = sum(tuner.candidate_count(launch, limit) for launch in launches)
    with tqdm(total=total, desc="autotune", unit="config", file=sys.stderr) as bar:
        for launch in launches:
            bar.set_postfix_str(f"{launch.kernel} {launch.shape}")
            try:
                result = tuner.tune(launch, budget, limit, on_trial=lambda _t: bar.update())
            except Exception as e:  # the default config itself failed: nothing to compare to
                failures.append(f"{launch.kernel} {launch.shape}: default config failed: "
                                f"{type(e).__name__}: {e}")
                continue
            table.store(launch.kernel, launch.shape, result.entry())
            results.append(result)
            failures += [f"{launch.kernel} {launch.shape} [{tuning.describe(t.config)}]: "
                         f"{t.skipped}" for t in result.trials
                         if t.skipped and not t.skipped.startswith("over the budget")]
    if results:
        saved = table.save()
        print(f"wrote {len(results)} entries to {saved}")
    rows = [["kernel", "shape", "chosen config", "default ms", "tuned ms", "speedup",
             "tried"]]
    for r in results:
        timed = sum(t.ms is not None for t in r.trials)
        rows.append([r.launch.kernel, r.launch.shape, tuning.describe(r.best),
                     f"{r.default_ms:.4f}", f"{r.best_ms:.4f}", f"{r.speedup:.2f}x",
                     f"{timed}/{len(r.trials)}"])
    print(_table(rows))
    if device.interpreted:
        print("(interpreter timings: meaningless)")
    for line in failures:
        print(f"skipped: {line}")
    return 1 if len(results) < len(launches) else 0


if __name__ == "__main__":
    raise SystemExit(main())
