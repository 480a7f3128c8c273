"""Kernel-level benchmarks of the Triton provider against torch eager and torch.compile.

    python perf/bench_kernels.py [--rows 8192] [--cols 8192] [--dtype float16] [--out perf/results]
    TRITON_INTERPRET=1 python perf/bench_kernels.py --smoke   # tiny sizes on the CPU

Cases: a fused pointwise chain, a row reduction, Softmax and LayerNormalization. Each runs as
the tritort kernel (the compiled unit called on device tensors), as torch eager and as
torch.compile; every result is checked against eager first. Memory-bound kernels are reported
as a share of the measured copy bandwidth (bytes read + written by a device-to-device clone).
With --smoke, on the CPU, timings mean nothing: the run only proves the harness works.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
              "bfloat16": TensorProto.BFLOAT16}


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "bench", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def pointwise_case(dt):
    """y = gelu(x * scale + bias) + x: four ONNX nodes, one fused kernel."""
    nodes = [helper.make_node("Mul", ["x", "scale"], ["xs"]),
             helper.make_node("Add", ["xs", "bias"], ["xb"]),
             helper.make_node("Gelu", ["xb"], ["g"]),
             helper.make_node("Add", ["g", "x"], ["y"])]
    model = _model(nodes, [_vi("x", dt, ["r", "c"]), _vi("scale", dt, ["c"]),
                           _vi("bias", dt, ["c"])], [_vi("y", dt, ["r", "c"])])

    def torch_fn(x, scale, bias):
        import torch

        return torch.nn.functional.gelu(x * scale + bias) + x

    return model, torch_fn, ("x", "scale", "bias")


def reduce_case(dt):
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    model = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
                   [_vi("x", dt, ["r", "c"])], [_vi("y", dt, ["r", 1])], [axes])
    return model, (lambda x: x.sum(dim=1, keepdim=True)), ("x",)


def softmax_case(dt):
    model = _model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
                   [_vi("x", dt, ["r", "c"])], [_vi("y", dt, ["r", "c"])])
    return model, (lambda x: x.softmax(dim=-1)), ("x",)


def layernorm_case(dt):
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=-1,
                              epsilon=1e-5)]
    model = _model(nodes, [_vi("x", dt, ["r", "c"]), _vi("scale", dt, ["c"]),
                           _vi("bias", dt, ["c"])], [_vi("y", dt, ["r", "c"])])

    def torch_fn(x, scale, bias):
        import torch

        return torch.nn.functional.layer_norm(x, x.shape[-1:], scale, bias, 1e-5)

    return model, torch_fn, ("x", "scale", "bias")


CASES = {"pointwise": pointwise_case, "reduce_sum": reduce_case, "softmax": softmax_case,
         "layernorm": layernorm_case}


def timed(fn, cuda: bool, warmup: int = 3, repeat: int = 20) -> float:
    """Median milliseconds: CUDA events through triton's do_bench on a GPU."""
    if cuda:
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
        raise SystemExit(f"expected one Triton kernel, got {[u.name for u in units]}")
    return units[0]


def run_case(name, builder, onnx_type, args, device, torch_dtype, cuda):
    import torch

    model, torch_fn, input_names = builder(onnx_type)
    gen = torch.Generator(device=device).manual_seed(0)
    shapes = {"x": (args.rows, args.cols), "scale": (args.cols,), "bias": (args.cols,)}
    tensors = [torch.randn(shapes[n], device=device, generator=gen).to(torch_dtype)
               for n in input_names]
    unit = tritort_unit(model)
    ours = lambda: unit.fn(*tensors)[0]  # noqa: E731
    eager = lambda: torch_fn(*tensors)  # noqa: E731
    ref = eager().float()
    err = float((ours().float() - ref).norm() / ref.norm())
    tol = 1e-5 if torch_dtype == torch.float32 else 2e-2
    if not err <= tol:
        raise SystemExit(f"{name}: tritort differs from eager, relative error {err:.3g}")
    rows = [("tritort", timed(ours, cuda)), ("torch eager", timed(eager, cuda))]
    if cuda:
        for mode in ("default", "max-autotune"):
            compiled = torch.compile(torch_fn, mode=mode)
            rows.append((f"torch.compile {mode}", timed(lambda: compiled(*tensors), cuda)))
    out = ours()
    nbytes = sum(t.numel() * t.element_size() for t in tensors) + out.numel() * out.element_size()
    return rows, nbytes, err


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--dtype", default="float16", choices=sorted(ONNX_TYPES))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed")
    parser.add_argument("--out", default=None, help="folder for the raw results (.md)")
    args = parser.parse_args()
    import torch
    import triton

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("no CUDA device: run with --smoke (TRITON_INTERPRET=1) to check the harness only")
        return 2
    if args.smoke:
        args.rows, args.cols = 64, 48
    device = "cuda" if cuda else "cpu"
    torch_dtype = getattr(torch, args.dtype)
    x = torch.randn(args.rows, args.cols, device=device).to(torch_dtype)
    copy_ms = timed(lambda: x.clone(), cuda)
    copy_bw = 2 * x.numel() * x.element_size() / (copy_ms * 1e-3)
    device_name = torch.cuda.get_device_name() if cuda else (platform.processor() or "cpu")
    lines = [f"# kernel benchmark {datetime.date.today()} on {device_name}",
             f"torch {torch.__version__}, triton {triton.__version__}, "
             f"command: {' '.join(sys.argv)}",
             f"{args.dtype}[{args.rows}, {args.cols}]; copy bandwidth {copy_bw / 1e9:.1f} GB/s",
             "" if cuda else "timings are meaningless (Triton interpreter on the CPU)",
             "| case | variant | median ms | GB/s | % of copy bandwidth | rel. error |",
             "|---|---|---|---|---|---|"]
    for name in args.cases.split(","):
        rows, nbytes, err = run_case(name, CASES[name], ONNX_TYPES[args.dtype], args, device,
                                     torch_dtype, cuda)
        for variant, ms in rows:
            bw = nbytes / (ms * 1e-3)
            lines.append(f"| {name} | {variant} | {ms:.4f} | {bw / 1e9:.1f} | "
                         f"{100 * bw / copy_bw:.0f}% | {err:.1e} |")
    text = "\n".join(line for line in lines if line)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        name = f"{datetime.date.today()}-{platform.node()}-kernels.md"
        (Path(args.out) / name).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
