"""``tritort`` / ``python -m tritort``: demo, run any model, show where its nodes run, tune its
Triton kernels, serve it with Ray Serve (the ``serve`` extra). Everything here works from an
installed wheel; the benchmarks are checkout scripts (perf/bench.py)."""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import autotune, tools
from .errors import InvalidArgument, NoSuchFile, OrtError


def _time_runs(fn, repeat: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


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


def read_input_files(specs: list[str], input_names: list[str]) -> dict[str, np.ndarray]:
    """``--input NAME=FILE.npy`` values, used as they are; errors name the input."""
    arrays = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise InvalidArgument(f"--input takes NAME=FILE.npy, got '{spec}'")
        if name not in input_names:
            raise InvalidArgument(f"--input {name}: the model has no input '{name}'; its "
                                  f"inputs are {input_names}")
        if not Path(file).is_file():
            raise NoSuchFile(f"--input {name}: {file} does not exist")
        try:
            value = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"--input {name}: cannot read {file} as a .npy array "
                                  f"({e})") from None
        if not isinstance(value, np.ndarray):  # an .npz archive
            raise InvalidArgument(f"--input {name}: expected one array (.npy) in {file}, got "
                                  f"{type(value).__name__}")
        arrays[name] = value
    return arrays


def _save_outputs(directory: str, names: list[str], values: list) -> None:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, value in zip(names, values):
        if isinstance(value, np.ndarray):
            # output names may hold '/' or ':' (exporters' scopes)
            np.save(out / (re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".npy"), value)
    print(f"outputs saved in {out}")


def cmd_run(args) -> int:
    from . import InferenceSession, SessionOptions

    inputs = tools.describe_inputs(args.model)
    shapes = tools.parse_shapes(args.shape or [])
    given = read_input_files(args.input or [], [info.name for info in inputs])
    # a given array fixes its symbolic dims for the random inputs that share them
    shapes.update({name: list(value.shape) for name, value in given.items()})
    feeds = {**tools.random_inputs(inputs, shapes, seed=args.seed), **given}
    t0 = time.perf_counter()
    sess = InferenceSession(args.model, SessionOptions(), providers=args.providers)
    created_ms = (time.perf_counter() - t0) * 1e3
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    times = _time_runs(lambda: sess.run(names, feeds), args.repeat)
    print(f"model: {args.model}")
    print(f"providers: {sess.get_providers()}  placement: {tools.placement_summary(sess)}")
    for name, value in feeds.items():
        source = "from file" if name in given else "random"
        print(f"  input {name}: {value.dtype}{list(value.shape)} ({source})")
    for name, value in zip(names, outs):
        desc = f"{value.dtype}{list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
        print(f"  output {name}: {desc}")
    print(f"session creation {created_ms:.1f} ms; run median {statistics.median(times):.3f} ms "
          f"over {args.repeat} runs")
    if args.save_outputs:
        _save_outputs(args.save_outputs, names, outs)
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


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an .onnx file every node of the cluster can read")
    parser.add_argument("--replicas", type=int, default=1, help="replicas of the model")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="requests joined into one run (1: no batching)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="how long a batch waits to fill up")
    parser.add_argument("--address", default=None,
                        help="a Ray cluster to join (ray://HOST:10001 or 'auto'); default: "
                             "start a local one")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--route", default="/", help="the URL path the model answers on")
    parser.add_argument("--num-cpus", type=float, default=1,
                        help="CPUs per replica: also its intra-op and BLAS threads")
    parser.add_argument("--provider", "--providers", dest="providers", nargs="*", default=None,
                        help="e.g. TritonExecutionProvider CPUExecutionProvider (Triton: one "
                             "GPU per replica)")
    parser.add_argument("--throughput", action="store_true",
                        help="Ray Serve's throughput mode for the Ray instance this command "
                             "starts: replicas answer HTTP on ports of their own, HAProxy "
                             "on --port when the haproxy binary is on PATH")


def throughput_environment(haproxy: str | None) -> tuple[dict[str, str], str]:
    """The environment of Ray Serve's throughput mode, and what a user should know of it;
    ``haproxy``: the haproxy binary's path, if any."""
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    if haproxy:
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        return env, "throughput mode: HAProxy answers on the port, straight to the replicas"
    return env, ("throughput mode without a haproxy binary: replicas answer HTTP on ports of "
                 "their own (from 30000); the port given is Serve's Python proxy, the slow path")


def cmd_serve(args) -> int:
    """Serve MODEL over HTTP and Ray handles until Ctrl-C."""
    try:
        import ray
        from ray import serve

        from . import serve as tritort_serve
    except ImportError as e:
        print(f"{e}; install the extra: pip install 'tritort[serve]'", file=sys.stderr)
        return 1
    if not Path(args.model).is_file():
        raise NoSuchFile(f"{args.model} does not exist")
    if args.throughput:
        import os
        import shutil

        env, note = throughput_environment(shutil.which("haproxy"))
        if args.address is not None:
            note += ("; a cluster joined with --address runs in the mode its processes were "
                     "started with (set the variables before `ray start`)")
        os.environ.update(env)  # the local Ray instance inherits them
        print(note, flush=True)
    ray.init(address=args.address, include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    application = tritort_serve.app(
        args.model, providers=args.providers, num_replicas=args.replicas,
        ray_actor_options={"num_cpus": args.num_cpus}, max_batch_size=args.max_batch,
        batch_wait_timeout_s=args.batch_wait_ms / 1e3)
    serve.run(application, name="tritort", route_prefix=args.route)
    print(f"serving {args.model} at http://{args.host}:{args.port}{args.route} "
          f"({args.replicas} replica(s), max batch {args.max_batch}); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        serve.delete("tritort")
        if args.address is None:  # the local instance this command started
            serve.shutdown()
            ray.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="tritort")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a built-in model and show placement and timings")
    demo.add_argument("--repeat", type=int, default=20)
    demo.add_argument("--providers", nargs="*", default=None)
    run = sub.add_parser("run", help="run MODEL.onnx on valid random inputs (or given ones), "
                                     "check with onnxruntime")
    run.add_argument("model")
    run.add_argument("--shape", action="append", metavar="NAME=D0,D1,...",
                     help="concrete dims for an input with symbolic dims (default 1)")
    run.add_argument("--input", action="append", metavar="NAME=FILE.npy",
                     help="feed this array to input NAME instead of random values")
    run.add_argument("--save-outputs", metavar="DIR", help="write each output to DIR/NAME.npy")
    run.add_argument("--repeat", type=int, default=10)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--providers", nargs="*", default=None)
    inspect = sub.add_parser("inspect", help="placement and fusion report for MODEL.onnx")
    inspect.add_argument("model")
    inspect.add_argument("--providers", nargs="*", default=None)
    tune = sub.add_parser("autotune", help="tune MODEL.onnx's Triton kernels into the tuning "
                                           "database", description=autotune.__doc__.split("\n")[0])
    autotune.add_arguments(tune)
    add_serve_arguments(sub.add_parser("serve", help="serve MODEL.onnx with Ray Serve (HTTP "
                                                     "and handles) until Ctrl-C"))
    args = parser.parse_args(argv)
    if args.command == "autotune":
        return autotune.run_parsed(args)
    try:
        return {"demo": cmd_demo, "run": cmd_run, "inspect": cmd_inspect,
                "serve": cmd_serve}[args.command](args)
    except OrtError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
