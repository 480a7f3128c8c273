"""The model steps of perf/gpu_check.py: full models against onnxruntime (in correctness),
latency side by side with torch (step 3), autotune (5), host time and launches per run (6).

The models are perf/models.py's (the torch modules and their ONNX exports share weights);
fp16/bf16 variants are the fp32 graphs with their float tensors cast (values clamped to the
type's range, so GPT-2's float32-min mask stays finite). Every runtime is checked against
onnxruntime's CPU provider on the fp32 graph before it is timed. Each (model, dtype, batch)
runs in a worker process of its own (``item``), which writes its result after every runtime:
a worker killed at its time cap keeps what it finished.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from perf.gpu_check_steps import (Context, Record, have, python_cmd, run_child, step_cmd, tail,
                                  write_json)

TRITON, CPU = "TritonExecutionProvider", "CPUExecutionProvider"
LABELS = {"tritort": "tritort", "tritort_cuda_graph": "tritort + CUDA graphs",
          "torch_eager": "torch eager", "torch_compile": "torch.compile default",
          "torch_compile_max-autotune": "torch.compile max-autotune",
          "torch_compile_reduce-overhead": "torch.compile reduce-overhead"}
# rtol, and atol as a fraction of max |reference|: against the fp32 graph on onnxruntime CPU
TOLERANCE = {"float32": (1e-2, 1e-3), "float16": (5e-2, 1e-2), "bfloat16": (1e-1, 3e-2)}


def model_cache(ctx: Context) -> str | None:
    return str(ctx.work / "models") if ctx.smoke else None  # None: perf/.models


def low_precision(model, dtype: str):
    """The graph with every float32 tensor, input, output and Cast target in ``dtype``."""
    import ml_dtypes
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    elem, np_type = {"float16": (TensorProto.FLOAT16, np.float16),
                     "bfloat16": (TensorProto.BFLOAT16, ml_dtypes.bfloat16)}[dtype]
    big = float(ml_dtypes.finfo(np_type).max)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default=22)
    if dtype == "bfloat16" and opset < 22:  # Conv, Gemm and others take bfloat16 from 22
        from onnx import version_converter

        model = version_converter.convert_version(model, 22)

    def cast(t):
        array = np.clip(numpy_helper.to_array(t), -big, big).astype(np_type)
        return numpy_helper.from_array(array, t.name)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(cast(t))
    for v in [*g.input, *g.output]:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = elem
    del g.value_info[:]  # the loader infers the new types
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = elem
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(cast(a.t))
    return out


def prepared_model(name: str, dtype: str, quick: bool, batch: int, cache: str | None):
    """(BuiltModel, path of the graph in ``dtype``), built or converted once and cached."""
    import onnx

    from perf import models

    built = models.get_model(name, quick=quick, batch=batch, cache=cache)
    if dtype == "float32":
        return built, built.path
    path = built.path.with_name(f"{built.path.stem}-{dtype}.onnx")
    if not path.exists():
        models._atomic_save(low_precision(onnx.load(str(built.path)), dtype), path)
    return built, path


# ------------------------------------------------------------------------------------------
# the worker: one model, dtype and batch; its runtimes created, checked, timed
# ------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, run: Callable[[], Any], result: Callable[[], list], info: dict) -> None:
        self.run, self.result, self.info = run, result, info


def make_runner(key: str, built, path: Path, inputs: dict, device: str, dtype: str) -> Runner:
    import torch

    if key.startswith("tritort"):
        import tritort

        options = [{"enable_cuda_graph": "1"}, {}] if key == "tritort_cuda_graph" else None
        sess = tritort.InferenceSession(str(path), providers=[TRITON, CPU],
                                        provider_options=options)
        if TRITON not in sess.get_providers():
            raise RuntimeError(f"the Triton provider was not usable: {sess.get_providers()}")
        binding = sess.io_binding()
        for name, tensor in inputs.items():
            binding.bind_input(name, tensor)
        for out in sess.get_outputs():
            binding.bind_output(out.name, device)
        units = [pu.provider.name for pu in sess._program.units]
        info = {"triton_units": units.count(TRITON), "cpu_units": units.count(CPU)}

        def run():
            sess.run_with_iobinding(binding)

        def result():
            run()
            return [torch.from_dlpack(v) for v in binding.get_outputs()]

        return Runner(run, result, info)
    module = built.torch_module().to(device=device, dtype=getattr(torch, dtype))
    if key.startswith("torch_compile"):
        mode = key.removeprefix("torch_compile").lstrip("_") or None
        module = torch.compile(module, mode=mode)
    args = tuple(inputs.values())

    def run():
        with torch.inference_mode():
            return module(*args)

    return Runner(run, lambda: [run().clone()], {})


def device_inputs(built, dtype: str, device: str) -> dict:
    import torch

    out = {}
    for name, array in built.feeds.items():
        t = torch.from_numpy(array)
        out[name] = (t.to(getattr(torch, dtype)) if t.is_floating_point() else t).to(device)
    return out


def sample_ms(run: Callable, inner: int, cuda: bool) -> float:
    import torch

    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(inner):
        run()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / inner * 1e3


def item_worker(ctx: Context) -> int:
    """Worker entry: the spec in --spec, the result (rewritten as it grows) in --result."""
    import onnxruntime

    from perf.bench_system import compare, describe_error, stats

    spec = json.loads(Path(ctx.args.spec).read_text())
    until = ctx.args.until
    res: dict[str, Any] = {**spec, "status": "running", "runners": {}, "notes": []}
    save = lambda: write_json(Path(ctx.args.result), res)  # noqa: E731
    cuda = not ctx.smoke
    device = "cuda" if cuda else "cpu"
    label = ctx.timing_label()
    built, path = prepared_model(spec["model"], spec["dtype"], ctx.smoke, spec["batch"],
                                 model_cache(ctx))
    res["input"] = built.input_desc
    ref = onnxruntime.InferenceSession(str(built.path), providers=[CPU]).run(None, built.feeds)
    inputs = device_inputs(built, spec["dtype"], device)
    rtol, atol = TOLERANCE[spec["dtype"]]
    live: dict[str, Runner] = {}
    for key in spec["runners"]:
        if time.time() > until - (3 if ctx.smoke else 10):
            res["notes"].append(f"{LABELS[key]}: not run, out of time")
            continue
        rec = res["runners"][key] = {"label": LABELS[key], "status": "running", "timing": label}
        save()
        try:
            t0 = time.perf_counter()
            runner = make_runner(key, built, path, inputs, device, spec["dtype"])
            rec["create_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            got = [t.detach().float().cpu().numpy() for t in runner.result()]
            rec["first_run_s"] = time.perf_counter() - t0
            if not got:
                raise RuntimeError("the run returned no outputs")
            check = compare(got, ref[:len(got)], rtol, atol)
            rec.update(runner.info, check="ok" if check["ok"] else "MISMATCH",
                       max_rel_err=check.get("max_rel_err"), detail=check["detail"])
            if spec.get("mode") == "host":
                rec.update(host_times(runner, cuda, 20 if cuda else 2))
            elif spec.get("timing", True):
                rec["inner"] = 1
                if cuda:  # warm up (compile, autotune, record graphs), then >= 10 ms a sample
                    for _ in range(3):
                        runner.run()
                    est = sample_ms(runner.run, 1, cuda)
                    rec["inner"] = max(1, min(200, math.ceil(10.0 / max(est, 1e-3))))
                rec["samples_ms"] = [sample_ms(runner.run, rec["inner"], cuda)
                                     for _ in range(10 if cuda else 2)]
                rec["median_ms"] = statistics.median(rec["samples_ms"])
            rec["status"] = "ok"
            live[key] = runner
        except Exception as e:  # noqa: BLE001
            rec.update(status="failed", error=describe_error(e)[:1500])
        save()
    if spec.get("timing", True) and spec.get("mode") != "host" and cuda:
        # a second pass, alternating: every runtime also timed next to the others
        for i in range(10):
            if time.time() > until - 15:
                break
            for key in (list(live) if i % 2 == 0 else list(live)[::-1]):
                rec = res["runners"][key]
                rec["samples_ms"].append(sample_ms(live[key].run, rec["inner"], cuda))
        for key in live:
            rec = res["runners"][key]
            rec.update(stats(rec["samples_ms"]))
    res["status"] = "done"
    save()
    return 0


def host_times(runner: Runner, cuda: bool, runs: int) -> dict[str, Any]:
    """Per run: the host's time until the call returns, the GPU's time between CUDA events
    around it, and the wall time until the GPU is done; kernels per run from the profiler."""
    import torch

    for _ in range(3 if cuda else 0):  # the check's run warmed the interpreter
        runner.run()
    host, gpu, wall = [], [], []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
        t0 = time.perf_counter()
        runner.run()
        host.append((time.perf_counter() - t0) * 1e3)
        if cuda:
            end.record()
            torch.cuda.synchronize()
            gpu.append(start.elapsed_time(end))
        wall.append((time.perf_counter() - t0) * 1e3)
    out: dict[str, Any] = {"host_ms": statistics.median(host), "wall_ms": statistics.median(wall),
                           "gpu_ms": statistics.median(gpu) if gpu else None}
    if not cuda:
        out["launches"] = "skipped: kernels are counted by CUPTI on a GPU"
        return out
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                runner.run()
            torch.cuda.synchronize()
        names = [e.name for e in prof.events()
                 if e.device_type == torch.autograd.DeviceType.CUDA]
        copies = sum(("memcpy" in n.lower() or "memset" in n.lower()) for n in names)
        out.update(kernels_per_run=(len(names) - copies) / 5, copies_per_run=copies / 5)
    except Exception as e:  # noqa: BLE001  (no CUPTI)
        out["launches"] = f"failed: {type(e).__name__}: {e}"
    return out


def run_item(ctx: Context, spec: dict, cap: float) -> dict:
    """One worker process for ``spec``, killed after ``cap`` seconds; its result as far as it
    got, with why it stopped."""
    key = f"{spec['model']}-{spec['dtype']}-b{spec['batch']}-{spec.get('mode', 'latency')}"
    folder = ctx.work / "items"
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, result = folder / f"{key}.spec.json", folder / f"{key}.json"
    write_json(spec_path, spec)
    result.unlink(missing_ok=True)
    until = time.time() + cap
    cmd = step_cmd(ctx, "item", "--spec", str(spec_path), "--result", str(result), "--until",
                   str(until))
    rc, _, err = run_child(cmd, cap + 5, ctx.work / "logs" / f"{key}.txt")
    res = json.loads(result.read_text()) if result.exists() else \
        {**spec, "status": "running", "runners": {}, "notes": []}
    if res["status"] != "done":
        why = f"timed out after {cap:.0f} s" if rc is None else f"exit {rc}"
        res["status"] = f"failed: worker {why}: {tail(err, 4)}"
        for rec in res["runners"].values():
            if rec["status"] == "running":
                rec.update(status="failed", error=f"cut off: worker {why}")
    return res


# ------------------------------------------------------------------------------------------
# correctness: each model in fp32 on the Triton provider against onnxruntime CPU
# ------------------------------------------------------------------------------------------
def model_checks(ctx: Context, rec: Record, until: float) -> None:
    lines = ["", "Full models, fp32, batch 1, Triton first, against onnxruntime CPU"
             + (" (quick sizes)" if ctx.smoke else ""),
             "", "| model | input | check | max err / max abs ref | Triton kernels | CPU units |",
             "|---|---|---|---|---|---|"]
    for i, name in enumerate(ctx.models):
        left = until - time.time()
        if left < 10:
            rec.part(f"model {name}", f"skipped: {left:.0f} s left")
            continue
        spec = {"model": name, "dtype": "float32", "batch": 1, "runners": ["tritort"],
                "timing": False}
        res = run_item(ctx, spec, left / (len(ctx.models) - i))
        r = res["runners"].get("tritort", {})
        lines.append(f"| {name} | {res.get('input', '')} | {r.get('check', r.get('error', ''))}"
                     f" | {_num(r.get('max_rel_err'), '.2e')} | {r.get('triton_units', '')} | "
                     f"{r.get('cpu_units', '')} |")
        ok = res["status"] == "done" and r.get("check") == "ok"
        rec.part(f"model {name}", "ok" if ok else
                 f"failed: {r.get('error') or r.get('detail') or res['status']}"[:500],
                 result=r)
    rec.lines(lines)


def _num(x, spec: str) -> str:
    return "" if x is None else format(x, spec)


# ------------------------------------------------------------------------------------------
# 3. latency
# ------------------------------------------------------------------------------------------
def cuda_graph_option() -> bool:
    from tritort.providers.triton import TritonExecutionProvider

    return "enable_cuda_graph" in TritonExecutionProvider.option_docs


def latency_items(ctx: Context, compile_mode: str) -> tuple[list[dict], list[str]]:
    """Work in order of importance: every model once, fp16 batch 1, tritort and eager; then
    the same with torch.compile; then bf16; then batch 8."""
    from perf import models

    notes = []
    quick = ["tritort"]
    if cuda_graph_option() and not ctx.smoke:
        quick.append("tritort_cuda_graph")
    else:
        notes.append("tritort + CUDA graphs: skipped: "
                     + ("smoke mode (CUDA graphs need a GPU)" if ctx.smoke else
                        "the Triton provider has no enable_cuda_graph option"))
    full = quick + ([] if ctx.smoke else ["torch_compile", f"torch_compile_{compile_mode}"])
    if ctx.smoke:
        notes.append("torch.compile: skipped: smoke mode (CPU inductor compiles C++ for minutes)")
        notes.append("batch 8: skipped: smoke mode")

    def runners(name: str, base: list[str]) -> list[str]:
        torch_ok = name not in models.LIGHT_MODELS
        return [base[0], "torch_eager", *base[1:]] if torch_ok else \
            [r for r in base if r.startswith("tritort")]

    items = [{"model": m, "dtype": "float16", "batch": 1, "runners": runners(m, quick)}
             for m in ctx.models]
    if not ctx.smoke:
        items += [{"model": m, "dtype": "float16", "batch": 1, "runners": runners(m, full)}
                  for m in ctx.models if m not in models.LIGHT_MODELS]
    items += [{"model": m, "dtype": "bfloat16", "batch": 1, "runners": runners(m, full)}
              for m in ctx.models]
    if not ctx.smoke:
        for dtype in ("float16", "bfloat16"):
            items += [{"model": m, "dtype": dtype, "batch": 8, "runners": runners(m, full)}
                      for m in ctx.models if m not in models.LIGHT_MODELS]
    for m in ctx.models:
        if m in models.LIGHT_MODELS:
            notes.append(f"{m}: tritort only (an ONNX model from the onnx package: no torch "
                         f"module with its weights), batch 1 only (its Reshapes fix the batch)")
    return items, notes


def step_latency(ctx: Context, rec: Record) -> None:
    compile_mode = "max-autotune" if ctx.left() > 300 else "reduce-overhead"
    items, notes = latency_items(ctx, compile_mode)
    if not ctx.smoke:
        notes.append(f"second torch.compile mode: {compile_mode}" + (
            "" if compile_mode == "max-autotune" else
            f" (max-autotune would not fit the {ctx.left():.0f} s left)"))
    label = ctx.timing_label()
    head = [f"Median ms per run ({label}); inputs and outputs stay on the device (tritort "
            f"through IOBinding); checked against onnxruntime CPU on the fp32 graph first; "
            f"÷ tritort: this median over tritort's (above 1: tritort is faster)",
            *[f"- {n}" for n in notes], "",
            "| model | dtype | batch | runtime | median ms | ÷ tritort | err / max abs ref "
            "| check | timing |", "|---|---|---|---|---|---|---|---|---|"]
    done: dict[tuple, dict] = {}
    not_run: list[str] = []
    for i, spec in enumerate(items):
        left = ctx.left()
        if left < (5 if ctx.smoke else 20):
            not_run.append(f"{spec['model']} {spec['dtype']} b{spec['batch']} "
                           f"({', '.join(spec['runners'])})")
            continue
        cap = left if i == len(items) - 1 else max(min(left, 90.0), 0.6 * left)
        res = run_item(ctx, spec, cap)
        config = (spec["model"], spec["dtype"], spec["batch"])
        if res["runners"].get("tritort", {}).get("median_ms") or config not in done:
            done[config] = res
        tri = res["runners"].get("tritort", {})
        ok = tri.get("status") == "ok" and tri.get("check") == "ok"
        why = tri.get("error") or tri.get("detail") or res["status"]
        rec.part(f"{'/'.join(map(str, config))} {len(spec['runners'])} runtimes",
                 "ok" if ok else f"failed: {why}"[:500], notes=res.get("notes", []))
        rec.data["lines"] = head + table_rows(done.values(), label) + _not_run(not_run)
        rec.data["results"] = list(done.values())
        rec.save()
    rec.data["lines"] = head + table_rows(done.values(), label) + _not_run(not_run)
    rec.save()


def _not_run(not_run: list[str]) -> list[str]:
    return ["", f"not run (time budget): {'; '.join(not_run)}"] if not_run else []


def table_rows(results, label: str) -> list[str]:
    rows = []
    for res in results:
        base = res["runners"].get("tritort", {}).get("median_ms")
        for r in res["runners"].values():
            ms = r.get("median_ms")
            ratio = f"{ms / base:.2f}" if ms and base else ""
            check = r.get("check") or f"{r['status']}: {r.get('error', '')[:120]}"
            rows.append(f"| {res['model']} | {res['dtype']} | {res['batch']} | {r['label']} | "
                        f"{_num(ms, '.3f')} | {ratio} | {_num(r.get('max_rel_err'), '.2e')} | "
                        f"{check} | {label} |")
        for note in res.get("notes", []):
            rows.append(f"| {res['model']} | {res['dtype']} | {res['batch']} | {note} "
                        f"| | | | | |")
    return rows


# ------------------------------------------------------------------------------------------
# 5. autotune
# ------------------------------------------------------------------------------------------
def step_autotune(ctx: Context, rec: Record) -> None:
    name, dtype = ("mlp", "float32") if ctx.smoke else ("bert", "float16")
    built, path = prepared_model(name, dtype, quick=ctx.smoke, batch=1,
                                 cache=model_cache(ctx))
    shapes = [f"{k}={','.join(map(str, v.shape))}" for k, v in built.feeds.items()]
    db = Path(os.environ.get("TRITORT_TUNING_DB") or ctx.work / "tuning.json")
    env = dict(os.environ, TRITORT_TUNING_DB=str(db))
    if not have("tqdm"):  # tritort.autotune draws a tqdm bar; a silent stand-in does here
        shim = ctx.work / "shim"
        shim.mkdir(exist_ok=True)
        (shim / "tqdm.py").write_text(
            "class tqdm:\n    def __init__(self, *a, **k): pass\n"
            "    def __enter__(self): return self\n    def __exit__(self, *e): return False\n"
            "    def update(self, n=1): pass\n    def set_postfix_str(self, s): pass\n")
        env["PYTHONPATH"] = os.pathsep.join([str(shim), env.get("PYTHONPATH", "")])
        rec.lines(["tqdm is not installed: a silent stand-in was put on PYTHONPATH"])
    # tritort.autotune's budget is per kernel; BERT has about 6 distinct tunable launches
    per_kernel = 1.0 if ctx.smoke else max(2.0, min(30.0, (ctx.left() - 40) / 8))
    args = ["perf/autotune.py", str(path), "--shapes", *shapes, "--budget", f"{per_kernel:.0f}",
            "--db", str(db)]
    rc, out, err = run_child(python_cmd(args), ctx.left() - 3,
                             ctx.work / "logs" / "autotune.txt", env)
    label = ctx.timing_label()
    rec.lines([f"`python {' '.join(args)}` ({name} {dtype}; {label})", "```",
               *out.strip().splitlines()[-60:], "```"])
    wrote = "wrote " in out  # tritort.autotune: "wrote N entries to PATH"
    if wrote:
        rec.data["tuning_database"] = json.loads(db.read_text())
        rec.lines([f"tuning database {db}: {db.stat().st_size} bytes (in autotune.json)"])
    if rc is None:
        status = "failed: timed out"
    elif rc == 0 or (rc == 1 and wrote):  # 1: some kernels kept their default config
        status = "ok"
    else:
        status = f"failed: exit {rc}: {tail(out + err, 3)}"
    rec.part("autotune", status, model=f"{name} {dtype}", exit=rc, timing=label)


# ------------------------------------------------------------------------------------------
# 6. host time and launches per run
# ------------------------------------------------------------------------------------------
def step_host(ctx: Context, rec: Record) -> None:
    from perf import models

    name = next((m for m in ctx.models if m not in models.LIGHT_MODELS), ctx.models[0])
    runners = ["tritort"] + (["tritort_cuda_graph"] if cuda_graph_option() and not ctx.smoke
                             else []) + (["torch_eager"] if name not in models.LIGHT_MODELS
                                         else [])
    spec = {"model": name, "dtype": "float16", "batch": 1, "runners": runners, "mode": "host"}
    res = run_item(ctx, spec, ctx.left() - 2)
    label = ctx.timing_label()
    lines = [f"{name} fp16 batch 1, per run, medians ({label}): host = until the call "
             f"returns; GPU = CUDA events around the call; wall = until the GPU is done", "",
             "| runtime | host ms | GPU ms | wall ms | host / GPU | kernels per run | copies "
             "per run | Triton kernels / CPU units | timing |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["runners"].values():
        host, gpu = r.get("host_ms"), r.get("gpu_ms")
        units = f"{r['triton_units']} / {r['cpu_units']}" if "triton_units" in r else ""
        lines.append(f"| {r['label']} | {_num(host, '.3f')} | {_num(gpu, '.3f')} | "
                     f"{_num(r.get('wall_ms'), '.3f')} | "
                     f"{_num(host / gpu if host and gpu else None, '.2f')} | "
                     f"{r.get('kernels_per_run', r.get('launches', r.get('error', '')))} | "
                     f"{_num(r.get('copies_per_run'), 'g')} | "
                     f"{units} | {label} |")
    rec.lines(lines)
    tri = res["runners"].get("tritort", {})
    rec.part("host time", "ok" if tri.get("status") == "ok" else
             f"failed: {tri.get('error') or res['status']}"[:500], result=res)


# ------------------------------------------------------------------------------------------
# prebuild: the models built and converted in the background while the GPU checks run
# ------------------------------------------------------------------------------------------
def prebuild_worker(ctx: Context) -> int:
    for dtype in ("float32", "float16", "bfloat16"):
        for name in ctx.models:
            t0 = time.time()
            try:
                _, path = prepared_model(name, dtype, ctx.smoke, 1, model_cache(ctx))
                ctx.log("prebuild", f"{name} {dtype}: {path.name} ({time.time() - t0:.1f} s)")
            except Exception as e:  # noqa: BLE001  (the steps that need it report it)
                ctx.log("prebuild", f"{name} {dtype}: failed: {type(e).__name__}: {e}"[:400])
    return 0


STEPS = {"latency": step_latency, "autotune": step_autotune, "host": step_host}
WORKERS = {"item": item_worker, "prebuild": prebuild_worker}
