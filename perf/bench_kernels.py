"""Kernel-level benchmarks of the Triton provider against torch eager and torch.compile.

    python perf/bench_kernels.py [--numel 67108864] [--dtype float16] [--out perf/results]
    TRITON_INTERPRET=1 python perf/bench_kernels.py --smoke   # tiny sizes on the CPU

For each case, the same computation runs as a tritort kernel (the compiled unit called on
device tensors), as torch eager and as torch.compile; every result is checked against
eager first. Memory-bound kernels are reported as a share of the measured copy bandwidth
(bytes read + written by a device-to-device clone). With --smoke, on the CPU, timings mean
nothing: the run only proves the harness works.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
              "bfloat16": TensorProto.BFLOAT16}


def pointwise_model(dtype: int):
    """y = gelu(x * scale + bias) + x: four ONNX nodes, one fused kernel."""
    nodes = [helper.make_node("Mul", ["x", "scale"], ["xs"]),
             helper.make_node("Add", ["xs", "bias"], ["xb"]),
             helper.make_node("Gelu", ["xb"], ["g"]),
             helper.make_node("Add", ["g", "x"], ["y"])]
    graph = helper.make_graph(
        nodes, "pointwise",
        [helper.make_tensor_value_info("x", dtype, ["rows", "cols"]),
         helper.make_tensor_value_info("scale", dtype, ["cols"]),
         helper.make_tensor_value_info("bias", dtype, ["cols"])],
        [helper.make_tensor_value_info("y", dtype, ["rows", "cols"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model


def torch_pointwise(x, scale, bias):
    import torch

    return torch.nn.functional.gelu(x * scale + bias) + x


def timed(fn, device: str, warmup: int = 3, repeat: int = 20) -> float:
    """Median milliseconds; CUDA events through triton's do_bench on a GPU."""
    if device == "cuda":
        import triton

        return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def tritort_unit(model):
    import tritort as ort

    sess = ort.InferenceSession(model.SerializeToString(),
                                providers=["TritonExecutionProvider", "CPUExecutionProvider"])
    units = [pu.unit for pu in sess._program.units if pu.provider.name == "TritonExecutionProvider"]
    if len(units) != 1:
        raise SystemExit(f"expected one fused kernel, got {[u.name for u in units]}")
    return units[0]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--dtype", default="float16", choices=sorted(ONNX_TYPES))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed")
    parser.add_argument("--out", default=None, help="folder for the raw results (.md)")
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("no CUDA device: run with --smoke (TRITON_INTERPRET=1) to check the harness only")
        return 2
    if args.smoke:
        args.rows, args.cols = 64, 48
    device = "cuda" if cuda else "cpu"
    dt = getattr(torch, args.dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.rows, args.cols, device=device, generator=gen).to(dt)
    scale = torch.randn(args.cols, device=device, generator=gen).to(dt)
    bias = torch.randn(args.cols, device=device, generator=gen).to(dt)
    unit = tritort_unit(pointwise_model(ONNX_TYPES[args.dtype]))
    ours = lambda: unit.fn(x, scale, bias)[0]  # noqa: E731
    eager = lambda: torch_pointwise(x, scale, bias)  # noqa: E731
    ref = eager().float()
    err = (ours().float() - ref).norm() / ref.norm()
    tol = 1e-2 if dt != torch.float32 else 1e-5
    if not err <= tol:
        raise SystemExit(f"tritort kernel differs from eager: relative error {err:.3g}")
    rows = [("tritort fused", timed(ours, device)), ("torch eager", timed(eager, device))]
    if cuda:
        compiled = torch.compile(torch_pointwise)
        rows.append(("torch.compile", timed(lambda: compiled(x, scale, bias), device)))
    copy_ms = timed(lambda: x.clone(), device)
    nbytes = 2 * x.numel() * x.element_size()  # x read once, y written once
    copy_bw = nbytes / (copy_ms * 1e-3)
    lines = [f"# kernel benchmark {datetime.date.today()} on "
             f"{torch.cuda.get_device_name() if cuda else platform.processor() or 'cpu'}",
             f"torch {torch.__version__}, triton {__import__('triton').__version__}, "
             f"command: {' '.join(sys.argv)}",
             "timings are meaningless (interpreter, CPU)" if not cuda else "",
             f"pointwise y = gelu(x*scale+bias)+x, {args.dtype}[{args.rows}, {args.cols}]",
             "| variant | median ms | GB/s | % of copy bandwidth |", "|---|---|---|---|"]
    for name, ms in rows:
        bw = nbytes / (ms * 1e-3)
        lines.append(f"| {name} | {ms:.4f} | {bw / 1e9:.1f} | {100 * bw / copy_bw:.0f}% |")
    lines.append(f"| copy (x.clone) | {copy_ms:.4f} | {copy_bw / 1e9:.1f} | 100% |")
    text = "\n".join(line for line in lines if line)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        name = f"{datetime.date.today()}-{platform.node()}-kernels.md"
        (Path(args.out) / name).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
