"""Compile every kernel a model uses for a GPU target, on a machine without a GPU.

    python perf/compile_check.py MODEL.onnx [--shapes name=d0,d1 ...] [--arch 90]
    python perf/compile_check.py --model bert      # a benchmark model at its quick size
    python perf/compile_check.py --model bert --full --fp16 --json bert.json

The model runs once on the Triton provider in Triton's interpreter, with the sources and
launch configs a GPU would get (``TRITORT_GPU_SOURCES=1``), while every kernel launch is
recorded: kernel (its cache file), argument types, constexprs, num_warps and num_stages, and
the unit (as the placement report names it) that launched it. Each distinct launch is then
compiled by Triton's real compiler for ``cuda`` at the given compute capability, ptxas
included (perf/compile_check_ptxas.py): a cold compile, without the interpreter.

The kernel table says, per distinct launch: the kernel (named by the hash of its code, so the
layers of a model share theirs), the units running it, launches per run, warps and stages,
registers, spilled bytes (stores + loads), shared memory, and what its dots became (wgmma,
mma = mma.sync, fma = scalar FFMA, none = no dot). The layer table divides the run's launches
between the model's layers, read from node names (``/encoder/layer.3/...``, ``/h.3/...``) or
torch.onnx's name scopes (``layers.3``). ``--fp16`` compiles a float16 copy of the model
(perf/compile_check_fp16.py); ``--use-tf32 0`` sets the Triton provider's option (float32 dots
as FFMA instead of TF32 tensor cores); ``--record-only`` records the launches without running
them (many times faster; right for models whose launches depend on shapes alone, as the
benchmark models'); ``--json OUT`` writes it all.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perf.compile_check_ptxas import compile_all  # noqa: E402

_POINTER_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64",
                  "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64", "uint8": "u8",
                  "uint16": "u16", "uint32": "u32", "uint64": "u64", "bool": "i1",
                  "float8_e4m3fn": "fp8e4nv", "float8_e5m2": "fp8e5"}
_OPTIONS = ("num_warps", "num_stages")
# a layer's index in a node name or name scope: /encoder/layer.3/, /h.3/, layers.3, blocks.3
_LAYER = re.compile(r"(?:^|[/'\s:])(?:[\w.]*\.)?(?:layers?|h|blocks?)\.(\d+)(?=$|[/'\s:.,\]])")
_SCOPE_KEYS = ("pkg.torch.onnx.name_scopes", "namespace")


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _launching_unit() -> str | None:
    """The unit whose step the executor is running (its label), None outside a run's steps."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "_execute" and "step" in frame.f_locals:
            return frame.f_locals["step"].label
        frame = frame.f_back
    return None


class _Recorder:
    """Wraps a loaded kernel: ``fn[grid](*args, **kw)`` is recorded, then run."""

    def __init__(self, fn: Any, path: Path, jobs: dict, launches: list,
                 execute: bool = True) -> None:
        self.fn, self.path, self.name = fn, path, path.stem
        self.jobs, self.launches, self.execute = jobs, launches, execute

    def __getattr__(self, item):
        return getattr(self.fn, item)

    def __getitem__(self, grid):
        launch = self.fn[grid]

        def run(*args, **kwargs):
            names = list(self.fn.arg_names)
            signature, constexprs, aligned = {}, {}, []
            # as Triton's launcher specializes a launch: ints equal to 1 become constants,
            # 16-divisible ints and pointers (torch allocates 16-byte aligned) are marked so
            for index, (name, value) in enumerate(zip(names, args)):
                signature[name], _ = _arg_type(value)
                if _is_int(value) and value == 1:
                    signature[name] = "constexpr"
                    constexprs[index] = 1
                elif signature[name].startswith("*") and value.data_ptr() % 16 == 0 or \
                        _is_int(value) and value % 16 == 0:
                    aligned.append(index)
            options = {k: kwargs[k] for k in _OPTIONS if k in kwargs}
            for name, value in kwargs.items():
                if name in names:
                    signature[name] = "constexpr"
                    constexprs[names.index(name)] = value
            for name in names:
                if signature.get(name) == "constexpr" and names.index(name) not in constexprs:
                    constexprs[names.index(name)] = None
            key = json.dumps([str(self.path), signature, sorted(constexprs.items()), aligned,
                              options], sort_keys=True, default=str)
            config = {names[i]: v for i, v in sorted(constexprs.items()) if v is not None}
            self.jobs.setdefault(key, {"path": str(self.path), "name": self.name,
                                       "signature": signature, "constexprs": constexprs,
                                       "aligned": aligned,
                                       "options": options, "config": config})
            self.launches.append((key, _launching_unit()))
            return launch(*args, **kwargs) if self.execute else None

        return run


def node_layer(node: Any) -> int | None:
    """The layer index a node belongs to, from its name or torch.onnx's scope metadata."""
    texts = [node.name] + [p.value for p in getattr(node.proto, "metadata_props", ())
                           if p.key in _SCOPE_KEYS]
    for text in texts:
        found = _LAYER.search(text)
        if found:
            return int(found.group(1))
    return None


def unit_layers(units: list[tuple[str, list]]) -> dict[str, int | None]:
    """Each unit's layer (its nodes' most common one), in run order; a unit whose nodes name
    none (made by a rewrite, say) takes the layer of the units around it when both agree."""
    layers: list[int | None] = []
    for _, nodes in units:
        found = collections.Counter(x for x in map(node_layer, nodes) if x is not None)
        layers.append(min(found, key=lambda k: (-found[k], k)) if found else None)
    known = [i for i, x in enumerate(layers) if x is not None]
    for i, layer in enumerate(layers):
        if layer is None:
            before = [layers[j] for j in known if j < i][-1:]
            after = [layers[j] for j in known if j > i][:1]
            if before and before == after:
                layers[i] = before[0]
    return {name: layer for (name, _), layer in zip(units, layers)}


def record(model_path: str, feeds: dict | None, shapes: list[str] = (),
           provider_options: dict | None = None, execute: bool = True) -> dict:
    """Run the model once on the Triton provider (interpreter, GPU sources), with
    ``provider_options`` (``{"use_tf32": "0"}``, say); ``execute=False`` records each launch
    without running it (outputs are garbage: right only for models whose launches depend on
    shapes alone, as the benchmark models'; many times faster at full size). Returns the
    distinct launches (``jobs``, each with the units that made it and its launches per run),
    every launch of the run in order (``launches``: job index, unit), the Triton units
    (``units``: name -> nodes, kind, layer) and how many nodes ran on the CPU."""
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["TRITORT_GPU_SOURCES"] = "1"
    os.environ.setdefault("TRITORT_CACHE_DIR", tempfile.mkdtemp(prefix="tritort-compile-"))
    import numpy as np

    import tritort as ort
    from tritort.codegen import cache

    jobs: dict[str, dict] = {}
    launches: list[tuple[str, str | None]] = []
    real_load = cache.load

    def load(source, name, device):
        loaded = real_load(source, name, device)
        return loaded._replace(fn=_Recorder(loaded.fn, loaded.path, jobs, launches, execute))

    cache.load = load
    try:
        sess = ort.InferenceSession(model_path, providers=[
            ("TritonExecutionProvider", dict(provider_options or {})), "CPUExecutionProvider"])
        if feeds is None:
            from tritort.tools import parse_shapes, random_inputs

            feeds = random_inputs(model_path, parse_shapes(list(shapes)))
        setup = len(launches)
        with np.errstate(all="ignore"):
            sess.run(None, feeds)
    finally:
        cache.load = real_load
    reports = {r["name"]: r for ep in sess._program.providers for r in getattr(ep, "kernels", [])}
    placed = [(pu.unit.name, pu.unit.nodes) for pu in sess._program.units
              if pu.provider.name != "CPUExecutionProvider"]
    layers = unit_layers(placed)
    units = {name: {"nodes": [n.name for n in nodes], "layer": layers[name],
                    "kind": reports.get(name, {}).get("kind", "-")} for name, nodes in placed}
    cpu_nodes = sum(len(pu.unit.nodes) for pu in sess._program.units
                    if pu.provider.name == "CPUExecutionProvider")
    index = {key: i for i, key in enumerate(jobs)}
    jobs = list(jobs.values())
    for job in jobs:
        job["units"], job["launches_per_run"] = [], 0
    run = [(index[key], unit) for key, unit in launches[setup:]]
    for i, unit in run:
        jobs[i]["launches_per_run"] += 1
        if unit is not None and unit not in jobs[i]["units"]:
            jobs[i]["units"].append(unit)
    for key, _ in launches[:setup]:  # at session creation (weights prepared, say)
        jobs[index[key]]["setup_launches"] = jobs[index[key]].get("setup_launches", 0) + 1
    return {"jobs": jobs, "launches": run, "units": units, "cpu_nodes": cpu_nodes}


def _units(names: list[str]) -> str:
    return "-" if not names else names[0] + (f" +{len(names) - 1}" if len(names) > 1 else "")


def _kind(job: dict, units: dict) -> str:
    kinds = dict.fromkeys(units[u]["kind"] for u in job["units"] if u in units)
    return "/".join(kinds) or "-"


def table(jobs: list[dict], results: list[dict], units: dict | None = None) -> str:
    """One row per distinct launch: its kernel, the first unit running it (+ how many more),
    kind, launches per run, warps, stages, registers, spilled bytes, shared memory, mma."""
    units = units or {}
    lines = [f"{'kernel':<14} {'units':<30} {'kind':<9} {'runs':>4} {'warps':>5} {'stages':>6} "
             f"{'regs':>4} {'spills':>6} {'shared':>7} {'mma':>5}  result", "-" * 112]
    for job, res in zip(jobs, results):
        opts = job["options"]
        spills = f"{res['spill_stores']}+{res['spill_loads']}" if res.get("spills") else \
            res.get("spills", "-")
        lines.append(f"{job['name']:<14} {_units(job['units'])[:30]:<30} "
                     f"{_kind(job, units)[:9]:<9} {job.get('launches_per_run', '-'):>4} "
                     f"{res.get('num_warps', opts.get('num_warps', '-')):>5} "
                     f"{res.get('num_stages', opts.get('num_stages', '-')):>6} "
                     f"{res.get('registers', '-'):>4} {spills:>6} {res.get('shared', '-'):>7} "
                     f"{res.get('mma', '-'):>5}  {'ok' if res['ok'] else res['error']}")
    return "\n".join(lines)


def layer_counts(recording: dict) -> dict:
    """Launches per run, per layer and outside the layers."""
    per_layer: collections.Counter = collections.Counter()
    outside = 0
    for _, unit in recording["launches"]:
        layer = recording["units"].get(unit, {}).get("layer")
        if layer is None:
            outside += 1
        else:
            per_layer[layer] += 1
    return {"launches_per_run": len(recording["launches"]),
            "launches_per_layer": {str(k): per_layer[k] for k in sorted(per_layer)},
            "launches_outside_layers": outside}


def layer_table(recording: dict, jobs: list[dict], results: list[dict]) -> str:
    """Launches per layer, then the first layer's launches in run order."""
    counts = layer_counts(recording)
    per_layer = counts["launches_per_layer"]
    lines = [f"launches per run: {counts['launches_per_run']}; outside layers: "
             f"{counts['launches_outside_layers']}; layers: {len(per_layer)}"]
    if not per_layer:
        return "\n".join(lines + ["(no layers named in the model's nodes)"])
    groups = collections.defaultdict(list)
    for layer, n in per_layer.items():
        groups[n].append(int(layer))
    lines.append("launches per layer: " + "; ".join(
        f"{n} in layer{'s' if len(ls) > 1 else ''} {_ranges(ls)}"
        for n, ls in sorted(groups.items())))
    first = min(int(k) for k in per_layer)
    lines += ["", f"layer {first}, launches in run order:",
              f"{'unit':<36} {'kernel':<14} {'kind':<9} {'regs':>4} {'spills':>6} "
              f"{'shared':>7} {'mma':>5}", "-" * 88]
    for i, unit in recording["launches"]:
        info = recording["units"].get(unit, {})
        if info.get("layer") != first:
            continue
        res = results[i] if results else {}
        lines.append(f"{unit[:36]:<36} {jobs[i]['name']:<14} {info.get('kind', '-')[:9]:<9} "
                     f"{res.get('registers', '-'):>4} {res.get('spills', '-'):>6} "
                     f"{res.get('shared', '-'):>7} {res.get('mma', '-'):>5}")
    return "\n".join(lines)


def _ranges(values: list[int]) -> str:
    values, out, start = sorted(values), [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ",".join(out)


def report(recording: dict, results: list[dict], **extra: Any) -> dict:
    """The JSON document: launch counts, then one entry per distinct launch."""
    kernels = []
    for job, res in zip(recording["jobs"], results):
        units = recording["units"]
        nodes = [n for u in job["units"] for n in units.get(u, {}).get("nodes", [])]
        entry = {"name": job["name"], "nodes": nodes, "units": job["units"],
                 "kind": _kind(job, units), "launches_per_run": job["launches_per_run"],
                 "registers": res.get("registers"), "spills": res.get("spills"),
                 "spill_stores": res.get("spill_stores"), "spill_loads": res.get("spill_loads"),
                 "stack_bytes": res.get("stack_bytes"), "shared_bytes": res.get("shared"),
                 "mma": res.get("mma"), "sass": res.get("sass"),
                 "num_warps": res.get("num_warps", job["options"].get("num_warps")),
                 "num_stages": res.get("num_stages", job["options"].get("num_stages")),
                 "config": job["config"], "signature": job["signature"],
                 "compile_s": res.get("compile_s"), "ok": res["ok"]}
        if not res["ok"]:
            entry["error"] = res["error"]
        kernels.append(entry)
    return {**extra, **layer_counts(recording), "cpu_nodes": recording["cpu_nodes"],
            "kernels": kernels}


def _model(args) -> tuple[str, dict | None]:
    if args.model:
        from perf import models

        # exported in a process of its own: torch.onnx's export leaves state behind that
        # breaks Triton's interpreter later in the same process
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                        f"from perf import models; models.get_model({args.model!r}, "
                        f"quick={not args.full}, layers={args.layers!r}, batch={args.batch!r})"],
                       check=True, capture_output=True)
        built = models.get_model(args.model, quick=not args.full, layers=args.layers,
                                 batch=args.batch)
        path, feeds = str(built.path), built.feeds
    else:
        path, feeds = args.path, None
    if args.fp16:
        from perf.compile_check_fp16 import convert, half_feeds

        path = str(convert(path))
        feeds = half_feeds(feeds) if feeds is not None else None
    return path, feeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="an ONNX model")
    parser.add_argument("--model", help="a benchmark model (perf/models.py) instead")
    parser.add_argument("--full", action="store_true", help="the benchmark model's full size")
    parser.add_argument("--layers", type=int, help="the benchmark model's layer count")
    parser.add_argument("--batch", type=int, help="the benchmark model's batch size")
    parser.add_argument("--fp16", action="store_true", help="compile a float16 copy of the model")
    parser.add_argument("--shapes", nargs="*", default=[], help="name=d0,d1,... per input")
    parser.add_argument("--arch", type=int, default=90, help="compute capability (90: H100)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="compiler processes")
    parser.add_argument("--use-tf32", choices=("0", "1"),
                        help="the Triton provider's use_tf32 option (default: the provider's, 1)")
    parser.add_argument("--record-only", action="store_true",
                        help="record the launches without running them (garbage outputs; "
                             "for models whose launches depend on shapes alone)")
    parser.add_argument("--json", metavar="OUT", help="write the report as JSON to OUT")
    args = parser.parse_args(argv)
    if not args.path and not args.model:
        parser.error("give a model path or --model NAME")
    if (args.layers is not None or args.batch is not None) and not args.model:
        parser.error("--layers and --batch set a benchmark model's: give --model NAME")
    path, feeds = _model(args)
    start = time.perf_counter()
    options = {} if args.use_tf32 is None else {"use_tf32": args.use_tf32}
    recording = record(path, feeds, args.shapes, options, execute=not args.record_only)
    recorded = time.perf_counter() - start
    jobs = recording["jobs"]
    start = time.perf_counter()
    results = compile_all(jobs, args.arch, args.jobs)
    compiled = time.perf_counter() - start
    kernels = {job["name"] for job in jobs}
    print(f"{len(jobs)} distinct kernel launches of {len(kernels)} distinct kernels "
          f"({len(recording['units'])} Triton units, {recording['cpu_nodes']} nodes on the CPU) "
          f"of {path}, compiled for sm_{args.arch}:")
    print(table(jobs, results, recording["units"]))
    failed = sum(not r["ok"] for r in results)
    print(f"{len(jobs) - failed} compiled, {failed} failed; "
          f"{sum(bool(r.get('spills')) for r in results)} kernels spill registers")
    print()
    print(layer_table(recording, jobs, results))
    print()
    print(f"interpreter run (recording) {recorded:.1f} s; cold compile of {len(jobs)} "
          f"launches {compiled:.1f} s")
    if args.json:
        doc = report(recording, results, model=args.model or args.path, path=path,
                     arch=args.arch, fp16=args.fp16, full=args.full, batch=args.batch,
                     provider_options=options, record_only=args.record_only,
                     record_s=round(recorded, 1), compile_s=round(compiled, 1))
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
