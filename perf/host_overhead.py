"""Host cost of the Triton provider's GPU launch path, measured without a GPU.

    python perf/host_overhead.py MODEL.onnx [--shapes NAME=D0,D1,...] [--runs N] [--json OUT]
    python perf/host_overhead.py --model bert|gpt2|vit|resnet50 [--quick] [--json OUT]
    python perf/host_overhead.py --smoke --json OUT       # a tiny model, for CI

A model runs on tritort's Triton provider the way it would on an H100: GPU sources and
launch configs, kernels compiled for sm_90 (ptxas included), launched through Triton's
``JITFunction.run`` and its compiled C launcher. The CUDA driver underneath is a stub
(perf/stub_cuda/libcuda_stub.c, built here as libcuda.so.1) whose calls do nothing, and
Triton's driver object answers device queries with constants, so no torch.cuda is needed:
tensors stay torch CPU tensors, whose addresses the stub never touches. What remains is the
host's work per run. Side by side in one process, it times:

- ``host``: ``session.run`` as is;
- ``no_launcher``: the compiled kernels' launchers (Triton's CudaLauncher and its C launch)
  are no-ops; JITFunction.run stays;
- ``tritort_only``: ``fn[grid](...)`` is a no-op too: tritort's runtime and launchers alone;
- ``floor``: as many launches of an empty 4-argument kernel straight through Triton's
  compiled launcher (``CompiledKernel.run``), the least a launch costs on this path;
- ``jit_floor``: the same empty kernel through ``fn[grid](...)``, i.e. JITFunction.run.

The split per launch follows: tritort = tritort_only, JITFunction.run = no_launcher -
tritort_only, launcher = host - no_launcher. Where the session replays a bound plan's
recorded launches (tritort/replay.py) JITFunction.run is not called, and the launches go
through tritort's batch launcher (codegen/batch_launch.py: parameters packed once, one C call
per batch into cuLaunchKernelEx), which counts as tritort's; a check sends each packed launch
both ways, Triton's launcher and the batch, and compares what the stub driver got; the per-launch path (the session config entry
``tritort.bound_plans`` = "0") is then measured beside it. Times are the running thread's
CPU time (medians), which other processes sharing the cores do not inflate; torch runs on
this one thread. Wall times (the median of each round's fastest run) come along.

Not included, as the stub cannot show them: the real driver's own cost per launch (a few µs
in cuLaunchKernelEx), torch.cuda's device and stream guards and the CUDA caching allocator
(torch's CPU allocator stands in), and host<->device copies of inputs and outputs.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perf.stub_driver import (STUB_DEVICE_NAME, check_batched_launches,  # noqa: E402
                              install_stub_driver, use_gpu_path_on_cpu_tensors)

# tritort/session.py's session config key: "0" runs every launch through its launcher
BOUND_PLANS_KEY = "tritort.bound_plans"


# -- what is timed --------------------------------------------------------------------------
def _skip_launch(*args, **kwargs) -> None:
    return None


@contextlib.contextmanager
def launcher_skipped():
    """Every compiled kernel's launcher (Triton's CudaLauncher and C launch) is a no-op."""
    from triton.compiler.compiler import CompiledKernel

    real = CompiledKernel.__dict__["run"]
    CompiledKernel.run = property(lambda self: _skip_launch)
    try:
        yield
    finally:
        CompiledKernel.run = real


@contextlib.contextmanager
def triton_skipped():
    """``fn[grid](...)`` is a no-op, so JITFunction.run is never entered, and so are the
    compiled kernels' launchers (what a replayed launch calls, not going through it)."""
    from triton.runtime.jit import JITFunction

    own = JITFunction.__dict__.get("__getitem__")  # None: inherited from KernelInterface
    JITFunction.__getitem__ = lambda self, grid: _skip_launch
    try:
        with launcher_skipped():
            yield
    finally:
        if own is None:
            del JITFunction.__getitem__
        else:
            JITFunction.__getitem__ = own


def empty_kernel(folder: Path):
    """A kernel with 4 arguments (2 pointers, 2 ints) and no body, its source in ``folder``."""
    import triton

    source = ("import triton\n\n\n@triton.jit\n"
              "def empty_kernel(x_ptr, y_ptr, n, m):\n    pass\n")
    path = folder / "empty_kernel.py"
    path.write_text(source)  # Triton's jit reads the source from a file
    namespace: dict[str, Any] = {"__name__": "empty_kernel", "__file__": str(path)}
    exec(compile(source, str(path), "exec"), namespace)
    fn = namespace["empty_kernel"]
    assert isinstance(fn, triton.runtime.jit.JITFunction)
    return fn


def floor_launchers(launches: int, folder: Path) -> tuple[Callable[[], None],
                                                         Callable[[], None]]:
    """(direct, through_jit): each makes ``launches`` launches of the empty kernel, straight
    through its compiled launcher, and through ``fn[grid](...)``."""
    import torch

    fn = empty_kernel(folder)
    x, y = torch.empty(1024), torch.empty(1024)
    kernel = fn[(1,)](x, y, 1024, 3)  # compiles it and returns the CompiledKernel
    run, function, metadata = kernel.run, kernel.function, kernel.packed_metadata

    def direct() -> None:
        for _ in range(launches):
            run(1, 1, 1, 0, function, metadata, None, None, None, x, y, 1024, 3)

    def through_jit() -> None:
        for _ in range(launches):
            fn[(1,)](x, y, 1024, 3)

    return direct, through_jit


@contextlib.contextmanager
def recording_loads(loaded: list):
    """Appends the metadata of every compiled kernel loaded into the driver meanwhile."""
    from triton.compiler.compiler import CompiledKernel

    real = CompiledKernel._init_handles

    def init_handles(self) -> None:
        first = self.module is None
        real(self)
        if first:
            loaded.append(self.metadata)

    CompiledKernel._init_handles = init_handles
    try:
        yield
    finally:
        CompiledKernel._init_handles = real


def _sample_us(call: Callable[[], Any], count: int) -> tuple[list[float], list[float]]:
    """(this thread's CPU time, wall time) of each of ``count`` calls, in µs."""
    cpu, wall = time.thread_time_ns, time.perf_counter_ns
    cpu_us, wall_us = [], []
    for _ in range(count):
        c0, w0 = cpu(), wall()
        call()
        w1, c1 = wall(), cpu()
        cpu_us.append((c1 - c0) / 1e3)
        wall_us.append((w1 - w0) / 1e3)
    return cpu_us, wall_us


def split(per_run: dict[str, float], launches: int) -> dict[str, float]:
    """Host time per launch by owner, from one session's modes' times per run."""
    return {"tritort": per_run["tritort_only"] / launches,
            "triton_run": (per_run["no_launcher"] - per_run["tritort_only"]) / launches,
            "launcher": (per_run["host"] - per_run["no_launcher"]) / launches}


@contextlib.contextmanager
def counting_jit_runs(counter: list[int]):
    """Counts JITFunction.run calls into ``counter[0]``."""
    from triton.runtime.jit import JITFunction

    real = JITFunction.run

    def run(self, *args, **kwargs):
        counter[0] += 1
        return real(self, *args, **kwargs)

    JITFunction.run = run
    try:
        yield
    finally:
        JITFunction.run = real


def warm_up(sess, feeds: dict, stub: ctypes.CDLL) -> dict:
    """Runs a session until it is warm (the first run compiles, a bound plan records on its
    first run and replays from the second) and counts what one warm run does."""
    loaded: list = []
    with np.errstate(all="ignore"):  # random inputs; the values are never computed
        t0 = time.perf_counter()
        with recording_loads(loaded):
            sess.run(None, feeds)
        first_run_s = time.perf_counter() - t0
        sess.run(None, feeds)
        launches_before = stub.tritort_stub_launch_count()
        queries_before = stub.tritort_stub_pointer_query_count()
        jit_runs = [0]
        with counting_jit_runs(jit_runs):
            sess.run(None, feeds)
    targets = sorted({f"{m.target.backend}:{m.target.arch}" for m in loaded})
    if loaded and targets != ["cuda:90"]:
        raise RuntimeError(f"kernels were built for {targets}, not cuda:90 alone")
    launches = stub.tritort_stub_launch_count() - launches_before
    if launches == 0:
        raise RuntimeError("no kernel reached the driver: is anything placed on Triton?")
    path = "launchers" if jit_runs[0] >= launches else "replayed" if jit_runs[0] == 0 \
        else "mixed"
    return {"path": path, "launches": launches, "jit_runs_per_run": jit_runs[0],
            "pointer_queries_per_run": stub.tritort_stub_pointer_query_count() - queries_before,
            "first_run_s": first_run_s, "loaded": loaded}


def _ortvalue(tensor):
    import tritort

    return tritort.OrtValue.from_dlpack(tensor)


def bound_io_run(sess, feeds: dict) -> Callable[[], None]:
    """``sess.run_with_iobinding`` with the inputs and the outputs bound to tensors of their
    own (torch CPU tensors stand for device ones here): a run that hands nothing back to the
    host, as a decode loop or a caller keeping results on the GPU runs."""
    import torch

    outputs = sess.run(None, feeds)
    binding = sess.io_binding()
    keep = []
    for name, value in feeds.items():
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        keep.append(tensor)
        binding.bind_input(name, "cpu", 0, value.dtype, list(value.shape), tensor.data_ptr())
    for meta, value in zip(sess.get_outputs(), outputs):
        tensor = torch.from_numpy(np.empty_like(value))  # a device tensor of the caller's
        keep.append(tensor)
        binding.bind_ortvalue_output(meta.name, _ortvalue(tensor))

    def run() -> None:
        sess.run_with_iobinding(binding)

    run.keep = keep  # the bound tensors live as long as the call
    return run


def measure(sessions: dict[str, Any], counts: dict[str, dict], feeds: dict, runs: int,
            rounds: int, folder: Path) -> dict:
    """Each warm session's timings (``counts``: what :func:`warm_up` said of it; the first
    is the default session) and the floors, as medians over ``runs`` samples per mode taken
    in ``rounds`` rounds, the modes alternating within each round so drift hits them alike."""
    with np.errstate(all="ignore"):
        launches = next(iter(counts.values()))["launches"]
        direct, through_jit = floor_launchers(launches, folder)
        modes: dict[Any, tuple] = {"floor": (contextlib.nullcontext, direct),
                                   "jit_floor": (contextlib.nullcontext, through_jit),
                                   "iobinding": (contextlib.nullcontext, bound_io_run(
                                       next(iter(sessions.values())), feeds))}
        for name, sess in sessions.items():
            run = functools.partial(sess.run, None, feeds)
            modes.update({(name, "host"): (contextlib.nullcontext, run),
                          (name, "no_launcher"): (launcher_skipped, run),
                          (name, "tritort_only"): (triton_skipped, run)})
        cpu_of: dict[Any, list[float]] = {mode: [] for mode in modes}
        wall_rounds_of: dict[Any, list[list[float]]] = {mode: [] for mode in modes}
        per_round = max(1, runs // rounds)
        for _ in range(rounds):
            for mode, (context, call) in modes.items():
                with context():
                    call()  # one untimed call after each switch
                    cpu_us, wall_us = _sample_us(call, per_round)
                cpu_of[mode] += cpu_us
                wall_rounds_of[mode].append(wall_us)
    # CPU time of the running thread: what the host spends, whatever else shares the cores
    cpu = {mode: statistics.median(v) for mode, v in cpu_of.items()}
    # wall time: the median of the rounds' fastest runs (preemptions only ever add)
    wall = {mode: statistics.median(min(r) for r in v) for mode, v in wall_rounds_of.items()}
    results = {}
    for name, info in counts.items():
        n = info["launches"]
        mine = {kind: cpu[(name, kind)] for kind in ("host", "no_launcher", "tritort_only")}
        results[name] = {
            "path": info["path"], "launches": n, "jit_runs_per_run": info["jit_runs_per_run"],
            "host_us_per_run": mine["host"], "host_us_per_launch": mine["host"] / n,
            "no_launcher_us_per_run": mine["no_launcher"],
            "tritort_only_us_per_run": mine["tritort_only"],
            # where a launch's host time goes (tritort's share carries the run's fixed cost)
            "split_us_per_launch": split(mine, n),
            "wall_us_per_run": {kind: wall[(name, kind)] for kind in mine},
            "pointer_queries_per_run": info["pointer_queries_per_run"],
            "first_run_s": info["first_run_s"]}
    loaded = [m for info in counts.values() for m in info["loaded"]]
    default = results.pop("default")
    return {**default, "floor_us_per_run": cpu["floor"],
            "iobinding_us_per_run": cpu["iobinding"],
            "floor_us_per_launch": cpu["floor"] / launches,
            "jit_floor_us_per_launch": cpu["jit_floor"] / launches,
            "wall_floor_us_per_run": wall["floor"], "rounds": rounds,
            "samples_per_mode": per_round * rounds,
            **({"launchers": results["launchers"]} if "launchers" in results else {}),
            "compiled": [{"name": m.name, "target": f"{m.target.backend}:{m.target.arch}",
                          "num_warps": m.num_warps, "num_stages": m.num_stages,
                          "shared": m.shared} for m in loaded]}


# -- models -------------------------------------------------------------------------------
def smoke_model(folder: Path) -> tuple[str, dict]:
    """MatMul with bias and Relu, Softmax, then Tanh and a residual Add: three kernels."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "B")
    nodes = [helper.make_node("MatMul", ["X", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "B"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Softmax", ["r"], ["p"], axis=-1),
             helper.make_node("Tanh", ["p"], ["t"]),
             helper.make_node("Add", ["t", "X"], ["Y"])]
    graph = helper.make_graph(
        nodes, "host_overhead_smoke",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [8, 64])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = folder / "host_overhead_smoke.onnx"
    save(model, str(path))
    return str(path), {"X": rng.standard_normal((8, 64)).astype(np.float32)}


def benchmark_model(name: str, quick: bool, batch: int | None = None) -> tuple[str, dict]:
    from perf import models

    # exported in a process of its own, as perf/compile_check.py does: torch.onnx's export
    # leaves state behind in the process that builds it
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                    f"from perf import models; models.get_model({name!r}, quick={quick}, "
                    f"batch={batch})"], check=True, capture_output=True)
    built = models.get_model(name, quick=quick, batch=batch)
    return str(built.path), built.feeds


def file_model(path: str, shapes: list[str]) -> tuple[str, dict]:
    from tritort.tools import parse_shapes, random_inputs

    return path, random_inputs(path, parse_shapes(list(shapes)))


def placement(sess) -> dict:
    """Units per provider: Triton kernels, and the nodes left to the CPU provider."""
    kernels = cpu_nodes = 0
    for unit in sess._program.units:  # the compiled program's units, in run order
        if unit.provider.name == "CPUExecutionProvider":
            cpu_nodes += len(unit.unit.nodes)
        else:
            kernels += 1
    return {"triton_units": kernels, "cpu_nodes": cpu_nodes}


def environment() -> dict:
    import onnx
    import torch
    import triton

    import tritort

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:  # the tree measured: its commit, and whether uncommitted changes were in it
        tree = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        tree = ""
    return {"tree": tree or "unknown", "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": triton.__version__, "onnx": onnx.__version__,
            "tritort": tritort.__version__, "cpu": cpu, "cores": os.cpu_count(),
            "driver": f"stub libcuda.so.1 (perf/stub_cuda), {STUB_DEVICE_NAME} sm_90",
            # other processes share the cores: the load says how much the times may move
            "load_average_1min": round(os.getloadavg()[0], 2)}


def _session_lines(title: str, r: dict) -> list[str]:
    per = r["split_us_per_launch"]
    return [
        f"{title}: {r['launches']} launches per run, {r['path']} "
        f"({r['jit_runs_per_run']} JITFunction.run calls per run)",
        f"  host:  {r['host_us_per_run']:10.1f} us/run  {r['host_us_per_launch']:7.2f} us/launch"
        f"  (wall {r['wall_us_per_run']['host']:.1f} us/run)",
        f"  per launch: tritort {per['tritort']:.2f} + JITFunction.run {per['triton_run']:.2f} "
        f"+ launcher {per['launcher']:.2f} us"]


def report(result: dict) -> str:
    launches = result["launches"]
    warps: dict[int, int] = {}
    for kernel in result["compiled"]:
        warps[kernel["num_warps"]] = warps.get(kernel["num_warps"], 0) + 1
    lines = [
        f"model: {result['model']}",
        f"placement: {result['triton_units']} Triton units, {result['cpu_nodes']} nodes on "
        f"the CPU provider; first run (compiling) {result['first_run_s']:.1f} s",
        f"compiled for sm_90 and loaded: {len(result['compiled'])} kernels "
        f"(num_warps {dict(sorted(warps.items()))})",
        *_session_lines("session as configured", result),
        f"  through an IOBinding, inputs and outputs bound (nothing handed to the host): "
        f"{result['iobinding_us_per_run']:.1f} us/run",
        f"  batch launcher: {result['batched_launches']['launches_checked']} replayed launches "
        f"packed and sent as Triton's launcher sends them, "
        f"{len(result['batched_launches']['mismatched'])} differing; "
        f"{result['batched_launches']['launches_not_packed']} left to Triton's launcher",
        *(_session_lines("per-launch launchers (bound plans off)", result["launchers"])
          if "launchers" in result else []),
        f"floor: {result['floor_us_per_run']:10.1f} us/run  "
        f"{result['floor_us_per_launch']:7.2f} us/launch  ({launches} launches of an empty "
        f"4-arg kernel, compiled launcher directly)",
        f"       {result['jit_floor_us_per_launch'] * launches:10.1f} us/run  "
        f"{result['jit_floor_us_per_launch']:7.2f} us/launch  (the same through "
        f"JITFunction.run)",
        f"thread CPU time, medians of {result['samples_per_mode']} samples per mode in "
        f"{result['rounds']} rounds; "
        + ", ".join(f"{k} {v}" for k, v in result["environment"].items()),
    ]
    return "\n".join(lines)


def triton_session(ort, path: str, options=None):
    sess = ort.InferenceSession(path, options, providers=["TritonExecutionProvider",
                                                          "CPUExecutionProvider"])
    if "TritonExecutionProvider" not in sess.get_providers():
        raise RuntimeError("the Triton provider was not taken into the session")
    return sess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="an ONNX model")
    parser.add_argument("--model", choices=["bert", "gpt2", "vit", "resnet50"],
                        help="a benchmark model (perf/models.py) instead of a file")
    parser.add_argument("--quick", action="store_true", help="the benchmark model's small size")
    parser.add_argument("--batch", type=int, default=None,
                        help="the benchmark model's batch size (default: its own, 1)")
    parser.add_argument("--smoke", action="store_true", help="a tiny built-in model, for CI")
    parser.add_argument("--shapes", nargs="*", default=[], help="NAME=D0,D1,... per input")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs per mode (default 100; 200 with --smoke)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds the modes alternate in")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if sum(map(bool, (args.path, args.model, args.smoke))) != 1:
        parser.error("give one of: a model path, --model NAME, --smoke")
    runs = args.runs or (200 if args.smoke else 100)

    stub = install_stub_driver()
    use_gpu_path_on_cpu_tensors()
    import torch

    import tritort as ort

    torch.set_num_threads(1)  # all host work on the timed thread (its CPU time is measured)

    with tempfile.TemporaryDirectory(prefix="tritort-host-overhead-") as tmp:
        if args.smoke:
            path, feeds = smoke_model(Path(tmp))
            label = "smoke (MatMul+bias+Relu, Softmax, Tanh+Add; X 8x64)"
        elif args.model:
            path, feeds = benchmark_model(args.model, args.quick, args.batch)
            label = f"{args.model} ({'quick' if args.quick else 'full'} size" + \
                (f", batch {args.batch})" if args.batch else ")")
        else:
            path, feeds = file_model(args.path, args.shapes)
            label = args.path
        sess = triton_session(ort, path)
        sessions, counts = {"default": sess}, {"default": warm_up(sess, feeds, stub)}
        if counts["default"]["path"] != "launchers":
            # launches replayed from a bound plan: the per-launch path measured beside it
            options = ort.SessionOptions()
            options.add_session_config_entry(BOUND_PLANS_KEY, "0")
            sessions["launchers"] = triton_session(ort, path, options)
            counts["launchers"] = warm_up(sessions["launchers"], feeds, stub)
        result = {"model": label, **measure(sessions, counts, feeds, runs, args.rounds, Path(tmp)),
                  **placement(sess), "environment": environment(),
                  "batched_launches": check_batched_launches(sess, stub),
                  "bound_plan_refusals": sorted(set(getattr(
                      getattr(sess, "_bound_plans", None), "refusals", {}).values())),
                  "command": " ".join(["python", "perf/host_overhead.py",
                                       *(argv if argv is not None else sys.argv[1:])])}
    print(report(result))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
