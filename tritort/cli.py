"""``python -m tritort``: demo, run any model, and show where its nodes run."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np

from . import dtypes


def _random_inputs(sess, shapes: dict[str, list[int]], rng: np.random.Generator) -> dict:
    feeds = {}
    for arg in sess.get_inputs():
        if not arg.type.startswith("tensor("):
            raise SystemExit(f"input '{arg.name}' is {arg.type}; only tensor inputs get random "
                             "values")
        dims = shapes.get(arg.name) or [d if isinstance(d, int) else 1 for d in arg.shape]
        dtype = dtypes.BY_NAME[arg.type[len("tensor("):-1]].numpy
        if dtype == np.bool_:
            feeds[arg.name] = rng.random(dims) > 0.5
        elif dtype.kind in "iu":
            feeds[arg.name] = rng.integers(0, 4, size=dims).astype(dtype)
        elif dtype == object:
            feeds[arg.name] = np.array(rng.choice(["a", "b"], size=dims), dtype=object)
        else:
            feeds[arg.name] = rng.standard_normal(dims).astype(np.float32).astype(dtype)
    return feeds


def _time_runs(fn, repeat: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _placement(sess) -> str:
    counts: dict[str, int] = {}
    for line in sess.placement_report().splitlines():
        ep = line.split("->")[1].split()[0]
        counts[ep] = counts.get(ep, 0) + 1
    return ", ".join(f"{ep}: {n} nodes" for ep, n in counts.items()) or "no nodes"


def _compare_with_onnxruntime(model: Any, feeds: dict, ours: list, names: list[str]) -> None:
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime is not installed: outputs not cross-checked")
        return
    ref_sess = onnxruntime.InferenceSession(
        model if isinstance(model, (str, bytes)) else model.SerializeToString(),
        providers=["CPUExecutionProvider"])
    ref = ref_sess.run(names, feeds)
    for name, a, b in zip(names, ours, ref):
        if isinstance(b, np.ndarray) and b.dtype.kind in "fc":
            err = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
            ok = np.allclose(a, b, rtol=1e-3, atol=1e-4, equal_nan=True)
            print(f"  {name}: max |tritort - onnxruntime| = {err:.3g} -> {'OK' if ok else 'MISMATCH'}")
        else:
            same = np.array_equal(np.asarray(a), np.asarray(b))
            print(f"  {name}: {'identical' if same else 'MISMATCH'} to onnxruntime")


def cmd_run(args) -> int:
    from . import InferenceSession, SessionOptions

    shapes = {}
    for spec in args.shape or []:
        name, _, dims = spec.partition("=")
        shapes[name] = [int(d) for d in dims.split(",") if d]
    so = SessionOptions()
    t0 = time.perf_counter()
    sess = InferenceSession(args.model, so, providers=args.providers)
    created_ms = (time.perf_counter() - t0) * 1e3
    feeds = _random_inputs(sess, shapes, np.random.default_rng(args.seed))
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    times = _time_runs(lambda: sess.run(names, feeds), args.repeat)
    print(f"model: {args.model}")
    print(f"providers: {sess.get_providers()}  placement: {_placement(sess)}")
    for name, value in zip(names, outs):
        desc = f"{value.dtype}{list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
        print(f"  output {name}: {desc}")
    print(f"session creation {created_ms:.1f} ms; run median {statistics.median(times):.3f} ms "
          f"over {args.repeat} runs")
    _compare_with_onnxruntime(args.model, feeds, outs, names)
    return 0


def cmd_demo(args) -> int:
    from . import InferenceSession, SessionOptions
    from .demo_model import build_demo_model

    model = build_demo_model()
    so = SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    t0 = time.perf_counter()
    sess = InferenceSession(model, so, providers=args.providers)
    created_ms = (time.perf_counter() - t0) * 1e3
    x = np.random.default_rng(0).standard_normal((2, 16, 64)).astype(np.float32)
    probs, res = sess.run(None, {"x": x})
    np.set_printoptions(precision=4, suppress=True)
    print("tritort demo: LayerNorm -> FFN (MatMul, Gelu) -> residual -> pool -> Gemm -> Softmax")
    print(f"input x: float32{list(x.shape)}")
    print(f"output probs (rows sum to {probs.sum(axis=1)}):\n{probs}")
    print(f"output res: float32{list(res.shape)}")
    print("\nplacement:")
    for sub in sess.get_provider_graph_assignment_info():
        print(f"  {sub.ep_name}: " + ", ".join(f"{n.name}({n.op_type})" for n in sub.get_nodes()))
    times = _time_runs(lambda: sess.run(None, {"x": x}), args.repeat)
    print(f"\ntimings: session creation {created_ms:.1f} ms; run median "
          f"{statistics.median(times):.3f} ms (min {min(times):.3f}) over {args.repeat} runs")
    _compare_with_onnxruntime(model, {"x": x}, [probs, res], ["probs", "res"])
    return 0


def cmd_inspect(args) -> int:
    """Placement and fusion report: kernels with their nodes and cache files, CPU fallbacks."""
    from . import InferenceSession, get_available_providers

    providers = args.providers or [p for p in ("TritonExecutionProvider", "CPUExecutionProvider")
                                   if p in get_available_providers()]
    sess = InferenceSession(args.model, providers=providers)
    program = sess._program
    kernel_files = {k["name"]: k for ep in program.providers for k in getattr(ep, "kernels", [])}
    print(f"model: {args.model}\nproviders: {sess.get_providers()}")
    for pu in program.units:
        unit = pu.unit
        info = kernel_files.get(unit.name)
        if info is not None:
            state = "cached" if info["cached"] else "compiled"
            print(f"[{pu.provider.name}] kernel {unit.name}: "
                  + ", ".join(f"{n.name}({n.op_type})" for n in unit.nodes)
                  + f"\n    {state}: {info['path']}")
            continue
        node = unit.nodes[0]
        declined = program.partition.assignments[node.name].declined
        why = "; ".join(f"{k}: {v}" for k, v in declined.items())
        print(f"[{pu.provider.name}] {node.name}({node.op_type})" + (f"  <- {why}" if why else ""))
    return 0


def cmd_bench(argv: list[str]) -> int:
    """The benchmark harness lives in the source checkout's perf/ folder."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "perf" / "bench.py").exists():
        print("python -m tritort bench needs a source checkout (perf/bench.py)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    from perf import bench

    return bench.main(argv)


def cmd_autotune(argv: list[str]) -> int:
    """The tuner lives in the source checkout's perf/ folder, like the benchmarks."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "perf" / "autotune.py").exists():
        print("python -m tritort autotune needs a source checkout (perf/autotune.py)",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    from perf import autotune

    return autotune.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser, so `bench --help` shows the harness's options
        return cmd_bench(argv[1:])
    if argv[:1] == ["autotune"]:
        return cmd_autotune(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m tritort")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a built-in model and show placement and timings")
    demo.add_argument("--repeat", type=int, default=20)
    demo.add_argument("--providers", nargs="*", default=None)
    run = sub.add_parser("run", help="run MODEL.onnx on random inputs, check with onnxruntime")
    run.add_argument("model")
    run.add_argument("--shape", action="append", metavar="NAME=D0,D1,...",
                     help="concrete dims for an input with symbolic dims")
    run.add_argument("--repeat", type=int, default=10)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--providers", nargs="*", default=None)
    sub.add_parser("bench", help="benchmark models against onnxruntime (and torch on a GPU); "
                                 "see perf/bench.py --help")
    sub.add_parser("autotune", help="tune MODEL.onnx's Triton kernels into the tuning "
                                    "database; see perf/autotune.py --help")
    inspect = sub.add_parser("inspect", help="placement and fusion report for MODEL.onnx")
    inspect.add_argument("model")
    inspect.add_argument("--providers", nargs="*", default=None)
    args = parser.parse_args(argv)
    from .errors import OrtError

    try:
        return {"demo": cmd_demo, "run": cmd_run, "inspect": cmd_inspect}[args.command](args)
    except OrtError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
