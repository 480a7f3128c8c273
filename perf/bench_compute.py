"""Compute-bound kernel benchmarks of the Triton provider: GEMM, fp8 GEMM, attention, Conv.

    python perf/bench_compute.py [--cases gemm,fp8,attention,conv] [--rounds 5]
                                 [--autotune SECONDS] [--no-compile] [--out perf/results]
    python perf/bench_compute.py --smoke   # tiny sizes; on the CPU in Triton's interpreter

Every problem is a one-op ONNX model compiled by the Triton provider; its compiled unit is
called directly on device tensors (as perf/bench_kernels.py does) next to the torch baseline:
torch.matmul (and torch.compile max-autotune), torch._scaled_mm, scaled_dot_product_attention
on the flash backend, conv2d on cuDNN. Each output is first checked against a ground truth
(normwise relative error); a variant that cannot run (an old torch, a compile failure) is
listed as n/a with the reason. The variants of a problem are then timed in alternating
rounds (triton.testing.do_bench's median per round on a GPU, one call on the CPU) and the
median over the rounds is reported, with TFLOP/s and the throughput relative to the case's
reference. A tritort failure (wrong result, error) makes the exit status 1.

Goals (issue 5): GEMM >= 0.95x torch.matmul; fp8 GEMM >= 1.6x tritort's bf16 GEMM;
attention >= 0.9x flash SDPA; ResNet-50 convs >= 0.8x cuDNN. Tritort uses the configs the
tuning database holds for the device (perf/autotune.py); --autotune tunes each kernel in this
process first (nothing is saved). With --smoke on the CPU timings mean nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perf.bench_kernels import ONNX_TYPES, _vi, timed, tritort_unit  # noqa: E402

# normwise relative error allowed against the ground truth, by the compared output's type
TOLERANCE = {"float16": 1e-2, "bfloat16": 2e-2}
SHORT = {"float16": "fp16", "bfloat16": "bf16"}

FULL = {"gemm_sizes": (2048, 4096, 8192), "fp8_sizes": (4096, 8192),
        "attention": {"batch": 4, "heads": 16, "seqs": (1024, 4096), "dims": (64, 128)},
        "conv_batch": 32}
SMOKE = {"gemm_sizes": (64,), "fp8_sizes": (64,),
         "attention": {"batch": 1, "heads": 2, "seqs": (64,), "dims": (32,)},
         "conv_batch": 1}

# ResNet-50 (torchvision, stride on the 3x3): every distinct Conv as (what, C_in, C_out,
# kernel, stride, input H=W, how many times the network has it); 53 convs in all.
RESNET50_CONVS = [
    ("stem", 3, 64, 7, 2, 224, 1),
    ("l1 reduce", 64, 64, 1, 1, 56, 1), ("l1", 64, 64, 3, 1, 56, 3),
    ("l1 expand+down", 64, 256, 1, 1, 56, 4), ("l1 reduce", 256, 64, 1, 1, 56, 2),
    ("l2 reduce", 256, 128, 1, 1, 56, 1), ("l2 strided", 128, 128, 3, 2, 56, 1),
    ("l2 expand", 128, 512, 1, 1, 28, 4), ("l2 down", 256, 512, 1, 2, 56, 1),
    ("l2 reduce", 512, 128, 1, 1, 28, 3), ("l2", 128, 128, 3, 1, 28, 3),
    ("l3 reduce", 512, 256, 1, 1, 28, 1), ("l3 strided", 256, 256, 3, 2, 28, 1),
    ("l3 expand", 256, 1024, 1, 1, 14, 6), ("l3 down", 512, 1024, 1, 2, 28, 1),
    ("l3 reduce", 1024, 256, 1, 1, 14, 5), ("l3", 256, 256, 3, 1, 14, 5),
    ("l4 reduce", 1024, 512, 1, 1, 14, 1), ("l4 strided", 512, 512, 3, 2, 14, 1),
    ("l4 expand", 512, 2048, 1, 1, 7, 3), ("l4 down", 1024, 2048, 1, 2, 14, 1),
    ("l4 reduce", 2048, 512, 1, 1, 7, 2), ("l4", 512, 512, 3, 1, 7, 2),
]
SMOKE_CONVS = [("stem", 3, 8, 7, 2, 16, 1), ("3x3", 8, 8, 3, 1, 8, 1),
               ("expand", 8, 16, 1, 1, 8, 1), ("down", 16, 16, 1, 2, 8, 1),
               ("strided", 8, 8, 3, 2, 8, 1)]


@dataclass
class Variant:
    name: str
    fn: Callable[[], Any] | None  # None: cannot run here, ``note`` says why
    expect: Any = None  # the ground truth its output must match; None for a reference
    note: str = ""
    tritort: bool = False  # an error here fails the run; elsewhere it is just n/a


@dataclass
class Problem:
    label: str
    flops: float
    variants: list[Variant]
    weight: int = 1  # occurrences in the network (conv)


@dataclass
class Result:
    name: str
    ms: float | None = None
    err: float | None = None
    note: str = ""
    failed: bool = False
    samples: list = field(default_factory=list)


@dataclass
class Case:
    title: str
    reference: str  # the variant ratios are relative to
    target: str  # the variant the goal is about
    goal: float
    problems: Iterator[Problem]
    context: Callable[[], Any] = contextlib.nullcontext
    notes: list = field(default_factory=list)


# ------------------------------------------------------------------ helpers


def _model(nodes, inputs, outputs, opset):
    graph = helper.make_graph(nodes, "bench", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:100] if text else ''}".replace("|", "/")


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def rel_error(out, expect) -> float:
    out, expect = out.float(), expect.float()
    return float((out - expect).norm() / expect.norm().clamp_min(1e-30))


class Tritort:
    """The compiled unit of a one-op model, fed by input name; ``tune_s`` > 0 autotunes
    its launches in this process before anything is timed."""

    def __init__(self, model, tensors: dict, tune_s: float = 0.0) -> None:
        self.unit = tritort_unit(model)
        self.args = [tensors[name] for name in self.unit.inputs]
        self.tuning = ""
        if tune_s > 0:
            self.tuning = autotune(self.unit, self.args, tune_s)

    def __call__(self):
        return self.unit.fn(*self.args)[0]


def autotune(unit, args, budget_s: float) -> str:
    from tritort.codegen import tuner, tuning

    # the table the provider handed its launchers (one per database and device) records them
    with tuning.active_table(args[0].device).recording() as recorder:
        unit.fn(*args)
    notes = []
    for launch in recorder.launches:
        result = tuner.tune(launch, budget_s)
        tuning.table_at(tuning.db_path(), launch.device).store(launch.kernel, launch.shape,
                                                               result.entry())
        notes.append(f"tuned {result.speedup:.2f}x over the default config")
    return "; ".join(notes)


def tritort_variant(name, model, tensors, expect, tune_s) -> Variant:
    try:
        run = Tritort(model, tensors, tune_s)
    except (Exception, SystemExit) as e:  # tritort_unit exits when no single kernel results
        return Variant(name, None, note=f"error: {_reason(e)}", tritort=True)
    return Variant(name, run, expect, run.tuning, tritort=True)


def torch_compiled(expect, fn, *args) -> Variant:
    """torch.compile max-autotune of ``fn``; compile errors surface on the first call."""
    import torch

    name = "torch.compile max-autotune"
    try:
        torch._dynamo.reset()  # a fresh cache: no recompile limit across problems
        compiled = torch.compile(fn, mode="max-autotune", dynamic=False)
    except Exception as e:
        return Variant(name, None, note=f"n/a: {_reason(e)}")
    return Variant(name, lambda: compiled(*args), expect)


# ------------------------------------------------------------------ cases


def gemm_case(env) -> Case:
    def problems():
        import torch

        for dtype in ("float16", "bfloat16"):
            for n in env.sizes["gemm_sizes"]:
                a, b = env.randn(n, n, dtype=dtype), env.randn(n, n, dtype=dtype)
                t = ONNX_TYPES[dtype]
                model = _model([helper.make_node("MatMul", ["A", "B"], ["Y"])],
                               [_vi("A", t, [n, n]), _vi("B", t, [n, n])],
                               [_vi("Y", t, [n, n])], 21)
                expect = torch.matmul(a, b)
                variants = [tritort_variant("tritort", model, {"A": a, "B": b}, expect,
                                            env.tune_s),
                            Variant("torch.matmul", lambda a=a, b=b: torch.matmul(a, b))]
                if env.compile:
                    variants.append(torch_compiled(expect, _matmul, a, b))
                yield Problem(f"{SHORT[dtype]} {n}x{n}x{n}", 2.0 * n ** 3, variants)

    return Case("GEMM (MatMul)", "torch.matmul", "tritort", 0.95, problems())


def _matmul(a, b):
    import torch

    return torch.matmul(a, b)


def fp8_case(env) -> Case:
    """DequantizeLinear(A8, sa) x DequantizeLinear(B8, sb) -> MatMul, which the optimizer
    turns into one ai.tritort Float8MatMul; e4m3fn operands, bfloat16 scales and output."""
    import torch

    def problems():
        for n in env.sizes["fp8_sizes"]:
            f8, bf16 = TensorProto.FLOAT8E4M3FN, TensorProto.BFLOAT16
            a8 = (env.randn(n, n) * 4).to(torch.float8_e4m3fn)
            b8 = (env.randn(n, n) * 4).to(torch.float8_e4m3fn)
            sa_value, sb_value = 0.125, 0.0625  # powers of two: exact in every type
            sa = torch.tensor(sa_value, dtype=torch.bfloat16, device=env.device)
            sb = torch.tensor(sb_value, dtype=torch.bfloat16, device=env.device)
            nodes = [helper.make_node("DequantizeLinear", ["A8", "sa"], ["a"]),
                     helper.make_node("DequantizeLinear", ["B8", "sb"], ["b"]),
                     helper.make_node("MatMul", ["a", "b"], ["Y"])]
            model = _model(nodes, [_vi("A8", f8, [n, n]), _vi("sa", bf16, []),
                                   _vi("B8", f8, [n, n]), _vi("sb", bf16, [])],
                           [_vi("Y", bf16, [n, n])], 21)
            exact = (a8.float() @ b8.float()) * (sa_value * sb_value)
            # the bf16 GEMM multiplies the same values, dequantized exactly
            a16, b16 = a8.to(torch.bfloat16) * sa, b8.to(torch.bfloat16) * sb
            mm = _model([helper.make_node("MatMul", ["A", "B"], ["Y"])],
                        [_vi("A", bf16, [n, n]), _vi("B", bf16, [n, n])],
                        [_vi("Y", bf16, [n, n])], 21)
            variants = [
                tritort_variant("tritort fp8", model, {"A8": a8, "sa": sa, "B8": b8, "sb": sb},
                                exact, env.tune_s),
                tritort_variant("tritort bf16", mm, {"A": a16, "B": b16}, exact, env.tune_s),
                scaled_mm_variant(a8, b8, sa_value, sb_value, exact),
                Variant("torch.matmul bf16", lambda a=a16, b=b16: torch.matmul(a, b), exact)]
            yield Problem(f"e4m3fn->bf16 {n}x{n}x{n}", 2.0 * n ** 3, variants)

    return Case("fp8 GEMM (Float8MatMul)", "tritort bf16", "tritort fp8", 1.6, problems())


def scaled_mm_variant(a8, b8, sa: float, sb: float, expect) -> Variant:
    import torch

    name = "torch._scaled_mm"
    if not hasattr(torch, "_scaled_mm"):
        return Variant(name, None, note="n/a: torch has no _scaled_mm")
    b_cols = b8.t().contiguous().t()  # cuBLASLt wants the second operand column-major
    scale_a = torch.tensor(sa, dtype=torch.float32, device=a8.device)
    scale_b = torch.tensor(sb, dtype=torch.float32, device=a8.device)

    def run():
        out = torch._scaled_mm(a8, b_cols, scale_a=scale_a, scale_b=scale_b,
                               out_dtype=torch.bfloat16)
        return _first(out)  # torch < 2.4 also returned the amax

    return Variant(name, run, expect)


def attention_case(env) -> Case:
    """ai.onnx Attention (opset 23) on [B, H, S, D] inputs, default scale 1/sqrt(D)."""
    import torch

    cfg = env.sizes["attention"]
    context = contextlib.nullcontext
    backend = "torch's default SDPA backend (CPU)"
    if env.cuda:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            context = lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])  # noqa: E731
            backend = "torch SDPA restricted to the flash backend"
        except ImportError as e:  # torch < 2.3
            backend = f"torch's default SDPA backend ({_reason(e)})"
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def problems():
        bsz, heads = cfg["batch"], cfg["heads"]
        for dtype in ("float16", "bfloat16"):
            for seq in cfg["seqs"]:
                for dim in cfg["dims"]:
                    for causal in (False, True):
                        shape = [bsz, heads, seq, dim]
                        q, k, v = (env.randn(*shape, dtype=dtype) for _ in range(3))
                        t = ONNX_TYPES[dtype]
                        node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"],
                                                is_causal=int(causal))
                        model = _model([node], [_vi(x, t, shape) for x in "QKV"],
                                       [_vi("Y", t, shape)], 23)
                        expect = sdpa(q.float(), k.float(), v.float(), is_causal=causal)
                        variants = [
                            tritort_variant("tritort", model, {"Q": q, "K": k, "V": v},
                                            expect, env.tune_s),
                            Variant("torch sdpa", lambda q=q, k=k, v=v, c=causal:
                                    sdpa(q, k, v, is_causal=c), expect)]
                        flops = 4.0 * bsz * heads * seq * seq * dim / (2 if causal else 1)
                        label = (f"{SHORT[dtype]} B{bsz} H{heads} S{seq} D{dim}"
                                 f"{' causal' if causal else ''}")
                        yield Problem(label, flops, variants)

    notes = [f"reference: {backend}; causal FLOPs are half the full ones"]
    return Case("Attention (ai.onnx Attention, opset 23)", "torch sdpa", "tritort", 0.9,
                problems(), context, notes)


def conv_case(env) -> Case:
    """Single-Conv models of ResNet-50's distinct conv shapes, float16 NCHW, no bias."""
    import torch

    if env.cuda:
        torch.backends.cudnn.benchmark = True  # cuDNN picks its fastest algorithm per shape
    shapes = SMOKE_CONVS if env.smoke else RESNET50_CONVS
    batch = env.sizes["conv_batch"]
    conv2d = torch.nn.functional.conv2d

    def problems():
        t = ONNX_TYPES["float16"]
        for what, cin, cout, kernel, stride, hw, count in shapes:
            pad = kernel // 2
            out_hw = (hw + 2 * pad - kernel) // stride + 1
            x = env.randn(batch, cin, hw, hw, dtype="float16")
            w = env.randn(cout, cin, kernel, kernel, dtype="float16") / math.sqrt(cin * kernel ** 2)
            node = helper.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[kernel, kernel],
                                    strides=[stride, stride], pads=[pad] * 4)
            model = _model([node], [_vi("X", t, list(x.shape)), _vi("W", t, list(w.shape))],
                           [_vi("Y", t, [batch, cout, out_hw, out_hw])], 21)
            expect = conv2d(x.float(), w.float(), stride=stride, padding=pad)
            variants = [tritort_variant("tritort", model, {"X": x, "W": w}, expect, env.tune_s),
                        Variant("torch conv2d", lambda x=x, w=w, s=stride, p=pad:
                                conv2d(x, w, stride=s, padding=p), expect)]
            flops = 2.0 * batch * cout * cin * kernel * kernel * out_hw * out_hw
            label = (f"{what} {kernel}x{kernel}/{stride} {cin}->{cout} @{hw} N{batch} "
                     f"(x{count})")
            yield Problem(label, flops, variants, count)

    where = "cuDNN, benchmark mode" if env.cuda else "CPU"
    return Case("ResNet-50 convolutions (fp16 NCHW)", "torch conv2d", "tritort", 0.8,
                problems(), notes=[f"reference: torch conv2d ({where}); the whole-network figure "
                                   f"weights each shape by its occurrences"])


CASES = {"gemm": gemm_case, "fp8": fp8_case, "attention": attention_case, "conv": conv_case}


# ------------------------------------------------------------------ running


class Env:
    def __init__(self, args, cuda: bool) -> None:
        import torch

        self.cuda, self.smoke = cuda, args.smoke
        self.device = "cuda" if cuda else "cpu"
        self.sizes = SMOKE if args.smoke else FULL
        self.tune_s = args.autotune
        self.compile = cuda and not args.no_compile
        self.gen = torch.Generator(device=self.device).manual_seed(0)

    def randn(self, *shape, dtype="float32"):
        import torch

        x = torch.randn(shape, device=self.device, generator=self.gen)
        return x.to(getattr(torch, dtype))


def run_problem(problem: Problem, cuda: bool, rounds: int) -> dict[str, Result]:
    """Check every variant once, then time the ones that pass in alternating rounds."""
    import torch

    results, live = {}, {}
    is_tritort = {v.name: v.tritort for v in problem.variants}
    for v in problem.variants:
        r = results[v.name] = Result(v.name, note=v.note)
        if v.fn is None:
            r.failed = v.tritort
            continue
        try:
            out = _first(v.fn())
            if cuda:
                torch.cuda.synchronize()
        except Exception as e:
            r.note, r.failed = f"n/a: {_reason(e)}", v.tritort
            continue
        if v.expect is not None:
            r.err = rel_error(out, v.expect)
            tol = TOLERANCE[str(out.dtype).removeprefix("torch.")]
            if not r.err <= tol:  # NaN fails too
                r.note, r.failed = f"WRONG: error above {tol:g}", True
                continue
        live[v.name] = v.fn
    names = list(live)
    for i in range(rounds):  # alternate the order: no variant always runs first
        for name in names if i % 2 == 0 else names[::-1]:
            if name not in live:
                continue
            try:
                results[name].samples.append(timed(live[name], cuda, warmup=0, repeat=1))
            except Exception as e:
                results[name].note = f"timing failed: {_reason(e)}"
                results[name].failed = is_tritort[name]
                del live[name]
    for name in live:
        results[name].ms = statistics.median(results[name].samples)
    return results


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def run_case(case: Case, cuda: bool, rounds: int, emit: Callable[[str], None]) -> bool:
    """Emits the case's table line by line (a run cut short keeps what it measured);
    True when a tritort variant failed."""
    for line in [f"## {case.title}", "",
                 f"goal: {case.target} >= {case.goal:g}x the throughput of {case.reference}",
                 *[f"note: {n}" for n in case.notes], "",
                 f"| problem | variant | median ms | TFLOP/s | vs {case.reference} | "
                 f"rel. error | note |", "|---|---|---|---|---|---|---|"]:
        emit(line)
    failed, ratios, weighted = False, [], [0.0, 0.0]
    for problem in case.problems:  # built outside the context: it may restrict torch
        with case.context():
            results = run_problem(problem, cuda, rounds)
        ref = results[case.reference].ms
        for r in results.values():
            failed |= r.failed
            tflops = problem.flops / (r.ms * 1e-3) / 1e12 if r.ms else None
            ratio = ref / r.ms if ref and r.ms else None
            emit(f"| {problem.label} | {r.name} | {_fmt(r.ms, '.4f')} | {_fmt(tflops, '.4g')} "
                 f"| {_fmt(ratio, '.3f')} | {_fmt(r.err, '.1e')} | {r.note} |")
        target = results[case.target].ms
        if ref and target:
            ratios.append(ref / target)
            weighted[0] += problem.weight * ref
            weighted[1] += problem.weight * target
    emit("")
    if not ratios:
        emit(f"{case.target} vs {case.reference}: no problem measured both")
        return failed
    mean = math.exp(statistics.fmean(math.log(r) for r in ratios))
    summary = (f"{case.target} vs {case.reference}: geomean {mean:.3f}x, min "
               f"{min(ratios):.3f}x over {len(ratios)} problem(s)")
    if case.title.startswith("ResNet"):
        summary += f"; whole-network conv time {weighted[0] / weighted[1]:.3f}x"
    verdict = ("met" if mean >= case.goal else "NOT met") if cuda else "timings meaningless"
    emit(f"{summary} (goal {case.goal:g}x: {verdict})")
    return failed


def header(args, cuda: bool) -> list[str]:
    import torch
    import triton

    device = torch.cuda.get_device_name() if cuda else (platform.processor() or "cpu")
    lines = [f"# compute benchmark {datetime.date.today()} on {device}", "",
             f"torch {torch.__version__}, triton {triton.__version__}"
             + (f", cuDNN {torch.backends.cudnn.version()}, CUDA {torch.version.cuda}"
                if cuda else ""),
             f"command: {' '.join(sys.argv)}",
             f"timing: {args.rounds} alternating rounds per problem, median; each round "
             + ("triton.testing.do_bench's median (CUDA events)" if cuda else
                "one call (CPU clock)")]
    try:
        from tritort.codegen import tuning

        table = tuning.active_table(torch.device("cuda", torch.cuda.current_device())
                                    if cuda else torch.device("cpu"))
        lines.append(f"tuning database: {table.path} ({len(table.results())} tuned kernel "
                     f"keys for this device)" + (f"; --autotune {args.autotune:g} s per "
                                                 f"kernel" if args.autotune else ""))
    except Exception as e:  # informational only
        lines.append(f"tuning database: unknown ({_reason(e)})")
    if not cuda:
        lines.append("timings are meaningless (Triton interpreter on the CPU): this run only "
                     "checks the harness and the results")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timing rounds per problem (default 5; 2 with --smoke)")
    parser.add_argument("--autotune", type=float, default=0.0, metavar="SECONDS",
                        help="tune each tritort kernel for up to SECONDS first (not saved)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip torch.compile max-autotune (it takes minutes per shape)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed")
    parser.add_argument("--out", default=str(ROOT / "perf" / "results"),
                        help="folder for <date>-<host>-compute.md ('' to skip)")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {','.join(CASES)}")
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.smoke:
            print("no CUDA device: run with --smoke to check the harness in Triton's "
                  "interpreter")
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is compiled
    args.rounds = args.rounds or (2 if args.smoke else 5)
    env = Env(args, cuda)
    path = None
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        path = Path(args.out) / f"{datetime.date.today()}-{platform.node()}-compute.md"
    lines: list[str] = []

    def emit(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    for line in header(args, cuda):
        emit(line)
    failed = False
    for name in cases:
        emit("")
        failed |= run_case(CASES[name](env), cuda, args.rounds, emit)
        if path:  # after every case: a run cut short keeps the finished tables
            path.write_text("\n".join(lines) + "\n")
    if path:
        print(f"wrote {path}")
    if failed:
        print("FAILED: a tritort variant errored or gave a wrong result (see the notes)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
