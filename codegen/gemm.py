"""Matrix-multiply kernel templates: MatMul and Gemm as one tiled Triton kernel.

A program computes one BLOCK_M x BLOCK_N tile of one batch entry of ``Y = A @ B``: it walks K
BLOCK_K at a time, multiplying tiles with ``tl.dot`` into an fp32 accumulator (fp64 for
double), then runs the *epilogue* (pointwise lines on the accumulator tile: Gemm's alpha
scale and ``+ beta * C``, then what the fusion pass adds: bias, activations, residuals) and
rounds once on store. Programs are numbered batch-major and, within a batch entry, in
groups of GROUP_M row blocks, so a column block of B is reused from L2 by GROUP_M
neighbouring programs.

Every operand is read through its strides: transposed views (Gemm's transA/transB, a
Transpose in front of a MatMul) and broadcast batch dims (stride 0) are never copied.
Sizes are runtime arguments; a kernel is specialized on ranks, dtypes and attributes only.

Block sizes are picked at launch: a config that ``tritort autotune`` stored in the tuning
database for this kernel key (``matmul:<dtype>:batch<rank>``) and shape bucket wins;
otherwise the size heuristic of :mod:`tritort.codegen.gemm_configs` chooses.

A fused *prologue* converts an operand's tiles as they are loaded (a Cast, a scalar scale:
:func:`operand_prologue`), so the converted operand is never written.
"""
from __future__ import annotations

import functools
import math
import textwrap
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tritort import dtypes

from .launch import launch_kernel
from .prologues import operand_prologue
from .cache import KERNEL
from .emit import acc_type, helper_source, store
from .gemm_configs import DEFAULT_SMS, SPLIT_SLOTS, TUNING, GemmConfig, pick_config
from .rowwise import torch_dtype
from .templates import KernelSpec, Template, kernel_signature, load_source, template
from .tuning import choose

# ------------------------------------------------------------------ kernel source


@dataclass
class Epilogue:
    """Pointwise work on the accumulator tile before the store.

    ``params``: extra kernel parameters (right after ``y``), whose values the launcher
    passes as ``extra`` to :func:`launch`; ``lines``: statements updating the accumulator
    (see :func:`epilogue_and_store`); ``text``: what they do, for the IR description.
    """

    params: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


def epilogue_and_store(acc: str, epilogue_lines: Sequence[str], out_dtype: str) -> list[str]:
    """The kernel's last lines: ``epilogue_lines`` (statements, unindented) update the
    accumulator tile ``acc`` in order, then it is rounded once to ``out_dtype`` and stored.

    In scope for the epilogue: ``rows`` / ``cols`` (int64 [BLOCK_M, 1] / [1, BLOCK_N] output
    indices), ``tile_mask`` (in-bounds elements), ``i0``.. (batch indices, int64), the names
    of :mod:`tritort.codegen.epilogue`'s contract (``out_idx_j``, ``y_offs``) and every kernel
    parameter, the epilogue's own included.
    """
    lines = ["    y_offs = y_base + rows * sym + cols * syn"]
    lines += [textwrap.indent(line, "    ") for line in epilogue_lines]
    return lines + ["    " + store("y + y_offs", acc, out_dtype, "tile_mask")]


def _dot_line(in_dtype: str, interpreted: bool, upcast: str | None = None,
              precision: str | None = None) -> list[str]:
    """``precision``: a float32 dot's ``input_precision`` ('tf32' on tensor cores, or
    'ieee', the default: float32 results then match onnxruntime's CPU ones)."""
    if upcast == "tl.float32":
        return [f"        a_tile = a_tile.to({upcast})", f"        b_tile = b_tile.to({upcast})",
                '        acc = tl.dot(a_tile, b_tile, acc, input_precision="ieee")']
    if upcast is not None:
        return [f"        a_tile = a_tile.to({upcast})", f"        b_tile = b_tile.to({upcast})",
                "        acc = tl.dot(a_tile, b_tile, acc)"]
    if in_dtype == "bfloat16" and interpreted:
        # the interpreter multiplies bf16 bit patterns as integers; bf16 products are exact
        # in fp32, so upcasting gives what a bf16 MMA with fp32 accumulation gives
        return ["        a_tile = a_tile.to(tl.float32)",
                "        b_tile = b_tile.to(tl.float32)",
                '        acc = tl.dot(a_tile, b_tile, acc, input_precision="ieee")']
    if in_dtype in ("float", "double"):
        mode = precision if in_dtype == "float" and precision else "ieee"
        return [f'        acc = tl.dot(a_tile, b_tile, acc, input_precision="{mode}")']
    return ["        acc = tl.dot(a_tile, b_tile, acc)"]


def _split_range() -> list[str]:
    """Split-K: program (pid, s) walks the s-th of SPLIT_K equal runs of K blocks."""
    return ["    k_blocks = tl.cdiv(K, BLOCK_K)",
            "    if SPLIT_K > 1:",
            "        run = tl.cdiv(k_blocks, SPLIT_K)",
            "        kb_lo = tl.program_id(1) * run",
            "        kb_hi = tl.minimum(kb_lo + run, k_blocks)",
            "    else:",
            "        kb_lo, kb_hi = 0, k_blocks"]


def _split_reduce(acc: str) -> list[str]:
    """Split-K in one launch: each program writes its partial tile to the fp32 workspace
    ``ws`` and counts itself in ``arrivals[pid]``; the tile's last program to arrive sums
    the SPLIT_K partials in split order (deterministic), resets the count for the next
    launch and alone runs the epilogue and stores (``tile_mask`` masks the others off), so
    the epilogue sees the full reduction."""
    return [
        "    if SPLIT_K > 1:",
        "        tile_size = BLOCK_M * BLOCK_N",
        "        slots = tl.num_programs(0).to(tl.int64)",
        "        in_tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + "
        "tl.arange(0, BLOCK_N)[None, :]",
        "        tl.store(ws + ((tl.program_id(1) * slots + pid) * tile_size + in_tile), acc)",
        "        tl.debug_barrier()  # every thread's partial is written before the release",
        '        arrived = tl.atomic_add(arrivals + pid, 1, sem="acq_rel")',
        "        last = arrived + tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32) == SPLIT_K - 1",
        f"        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype={acc})",
        "        for s in range(0, SPLIT_K):  # .cg: the other programs' partials, not L1's",
        "            acc += tl.load(ws + ((s * slots + pid) * tile_size + in_tile), mask=last,",
        "                           other=0.0, cache_modifier=\".cg\")",
        "        tl.store(arrivals + pid, 0, mask=arrived == SPLIT_K - 1)  # for the next launch",
        "        tile_mask = tile_mask & last",
    ]


def _base(prefix: str, rank: int) -> str:
    return " + ".join(f"i{j} * {prefix}{j}" for j in range(rank)) if rank else "0"


def matmul_source(name: str, header: Sequence[str], batch_rank: int, in_dtype: str,
                  out_dtype: str, interpreted: bool, epilogue: Epilogue,
                  dot_upcast: str | None = None,
                  prologues: dict[int, str] | None = None,
                  others: dict[int, str] | None = None, setup: Sequence[str] = (),
                  b_load: Sequence[str] | None = None, precision: str | None = None,
                  split_k: bool = False) -> str:
    """``Y[b] = epilogue(A[b] @ B[b])`` over ``batch_rank`` broadcast batch dims; tiles are
    converted to ``dot_upcast`` before ``tl.dot`` when given (float8 without native MMA).
    ``prologues``: operand index -> a line turning the loaded tile (``a_tile`` / ``b_tile``,
    read from the prologue's source) into the operand (see :func:`operand_prologue`), lines
    separated by newlines; ``others``: operand index -> the value masked lanes load (an
    int8 prologue's shift must turn them into 0); ``setup``: lines before the K loop;
    ``b_load``: lines computing ``b_tile`` in place of its load (packed weights);
    ``precision``: a float32 dot's input_precision; ``split_k``: the kernel takes a
    ``SPLIT_K`` (see :func:`_split_reduce`)."""
    prologues, others = prologues or {}, others or {}
    r = batch_rank
    dims = [f"d{j}" for j in range(r)]
    strides = ([f"sa{j}" for j in range(r)] + ["sam", "sak"] +
               [f"sb{j}" for j in range(r)] + ["sbk", "sbn"] +
               [f"sy{j}" for j in range(r)] + ["sym", "syn"])
    params = ["a", "b", "y", *epilogue.params, "M", "N", "K", *dims, *strides,
              *(["ws", "arrivals"] if split_k else []),
              "BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr", "BLOCK_K: tl.constexpr",
              "GROUP_M: tl.constexpr", *(["SPLIT_K: tl.constexpr"] if split_k else [])]
    acc = acc_type(in_dtype)
    body = [
        "    pid = tl.program_id(0)",
        "    blocks_m = tl.cdiv(M, BLOCK_M)",
        "    blocks_n = tl.cdiv(N, BLOCK_N)",
        "    tiles = blocks_m * blocks_n",
        "    tile = pid % tiles",
        "    # grouped order: GROUP_M row blocks in turn per column block, so B's tile stays in L2",
        "    group_span = GROUP_M * blocks_n",
        "    first_m = (tile // group_span) * GROUP_M",
        "    group_rows = tl.minimum(blocks_m - first_m, GROUP_M)",
        "    pid_m = first_m + (tile % group_span) % group_rows",
        "    pid_n = (tile % group_span) // group_rows",
    ]
    if r:
        body += ["    # batch entry -> i0.. over the output's batch dims (int64: batches are big)",
                 "    rem = (pid // tiles).to(tl.int64)"]
        for j in range(r - 1, 0, -1):
            body += [f"    i{j} = rem % d{j}", f"    rem = rem // d{j}"]
        body.append("    i0 = rem")
    body += [
        f"    a_base = {_base('sa', r)}",
        f"    b_base = {_base('sb', r)}",
        f"    y_base = {_base('sy', r)}",
        "    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
        "    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)",
        "    offs_k = tl.arange(0, BLOCK_K)",
        "    mask_m = offs_m[:, None] < M",
        "    mask_n = offs_n[None, :] < N",
        "    # int64 offsets: a strided operand may span more than 2**31 elements",
        "    rows = offs_m[:, None].to(tl.int64)",
        "    cols = offs_n[None, :].to(tl.int64)",
        "    a_rows = a + (a_base + rows * sam)",
        "    b_cols = b + (b_base + cols * sbn)",
        f"    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype={acc})",
        *setup,
        *(_split_range() if split_k else ["    kb_lo, kb_hi = 0, tl.cdiv(K, BLOCK_K)"]),
        "    for kb in range(kb_lo, kb_hi):",
        "        k_idx = kb * BLOCK_K + offs_k",
        "        k_off = k_idx.to(tl.int64)",
        "        k_in = k_idx < K",
        "        a_tile = tl.load(a_rows + k_off[None, :] * sak, mask=mask_m & k_in[None, :],",
        f"                         other={others.get(0, '0.0')})",
        *([f"        {line}" for line in b_load] if b_load is not None else [
            "        b_tile = tl.load(b_cols + k_off[:, None] * sbk, mask=k_in[:, None] & mask_n,",
            f"                         other={others.get(1, '0.0')})"]),
        *[f"        {line.format(t=t)}" for i, t in enumerate(("a_tile", "b_tile"))
          if i in prologues for line in prologues[i].splitlines()],
        *_dot_line(in_dtype, interpreted, dot_upcast, precision),
        "    tile_mask = mask_m & mask_n",
        *(_split_reduce(acc) if split_k else []),
        *[f"    out_idx_{j} = i{j}" for j in range(r)],
        f"    out_idx_{r} = rows",
        f"    out_idx_{r + 1} = cols",
        *epilogue_and_store("acc", epilogue.lines, out_dtype),
    ]
    lines = ["# tritort matmul kernel", *[f"# {h}" for h in header],
             "import triton", "import triton.language as tl"]
    helpers = helper_source("\n".join(body))
    if helpers:
        lines.append(helpers.rstrip("\n"))
    lines += ["", "", "@triton.jit", *kernel_signature(name, params), *body]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ launching


def launch(fn: Any, a: Any, b: Any, y: Any, extra: Sequence[Any], interpreted: bool,
           table: Any, arrivals: Any = None, tf32: bool = False) -> None:
    """``a`` [*batch, M, K], ``b`` [*batch, K, N], ``y`` [*batch, M, N]: torch views with the
    kernel's batch rank (broadcast batch dims have stride 0); ``extra``: the epilogue's args.
    The config: ``table``'s (a codegen.tuning.TuningTable, or None) for this kernel key and
    shape, else the heuristic's. ``arrivals``: the split-K counters of a kernel taking
    SPLIT_K (zeros, as many as programs may be; None: no split-K); ``tf32``: a float32
    kernel whose dots run on TF32 tensor cores (its own key and tiles)."""
    *batch, m, k = a.shape
    n = b.shape[-1]
    if y.numel() == 0:
        return
    nbatch = math.prod(batch)
    problem = {"batch": nbatch, "M": m, "N": n, "K": k, "itemsize": a.element_size(),
               "layout": _order(a) + _order(b)}
    dtype = str(a.dtype).removeprefix("torch.")
    if b.dtype != a.dtype:  # float8 e4m3 x e5m2
        dtype += "x" + str(b.dtype).removeprefix("torch.")
    tf32 = tf32 and dtype == "float32"
    sms = table.device.sms if table is not None else DEFAULT_SMS
    cfg = choose(table, TUNING, f"matmul:{'tf32' if tf32 else dtype}:batch{len(batch)}",
                 problem, lambda: pick_config(m, n, k, nbatch, a.element_size(), interpreted,
                                              tf32, sms),
                 (a, b, y, *extra), functools.partial(_run, fn, arrivals=arrivals))
    _run(fn, cfg, a, b, y, *extra, arrivals=arrivals)


def _order(t: Any) -> str:
    """'n': contiguous along the last dim, 't': along the one before (transposed), else 's'."""
    return "n" if t.stride(-1) == 1 else "t" if t.stride(-2) == 1 else "s"


def _run(fn: Any, cfg: GemmConfig, a: Any, b: Any, y: Any, *extra: Any,
         arrivals: Any = None) -> None:
    """One launch with ``cfg`` (the tuner relaunches through here with other configs)."""
    import torch

    *batch, m, k = a.shape
    n = b.shape[-1]
    programs = math.prod(batch) * math.ceil(m / cfg.block_m) * math.ceil(n / cfg.block_n)
    split, grid, split_args = 1, (programs,), ()
    if arrivals is not None:  # a kernel taking SPLIT_K
        split = cfg.split_k if programs <= arrivals.numel() else 1
        ws = y
        if split > 1:  # each program's partial tile, fp32 (arena memory: written before read)
            ws = torch.empty(split * programs * cfg.block_m * cfg.block_n,
                             dtype=torch.float64 if a.dtype == torch.float64 else torch.float32,
                             device=y.device)
            grid = (programs, split)
        split_args = (ws, arrivals)
    kw = {"SPLIT_K": split} if arrivals is not None else {}
    launch_kernel(fn, grid, a, b, y, *extra, m, n, k, *batch, *a.stride(),
           *b.stride(), *y.stride(), *split_args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
           BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, num_warps=cfg.num_warps,
           num_stages=cfg.num_stages, **kw)


def split_counters(fn: Any, device: Any) -> Any:
    """The zeroed arrival counters of a kernel taking SPLIT_K (None for others): made once,
    with the launcher, as every launch's last program leaves them zero again. One set per
    launcher: runs of one session on several streams at once must not share a GEMM node."""
    if "SPLIT_K" not in getattr(fn, "arg_names", ()):
        return None
    import torch

    return torch.zeros(SPLIT_SLOTS, dtype=torch.int32, device=device)


def _check_k(op: str, a_shape, b_shape, ka: int, kb: int) -> None:
    if ka != kb:
        raise ValueError(f"{op}: inner dimensions differ: {list(a_shape)} x {list(b_shape)}")


class MatMulLauncher:
    """numpy.matmul semantics on torch tensors: 1-D operands, broadcast batch dims.

    With a fused epilogue, its input tensors follow A and B; the outputs are the ones
    :meth:`tritort.codegen.rowwise.TileFusion.kernel_outputs` lists."""

    def __init__(self, fn: Any, batch_rank: int, out_dtype: str, ctx, fused=None):
        self.fn, self.batch_rank, self.fused = fn, batch_rank, fused
        self.out_dtype, self.device = torch_dtype(out_dtype), ctx.torch_device
        self.interpreted, self.table = ctx.interpreted, ctx.tuning
        self.tf32, self.arrivals = ctx.use_tf32, split_counters(fn, ctx.torch_device)

    def __call__(self, a: Any, b: Any, *epilogue_inputs: Any, extra: tuple = (),
                 lead: tuple = ()) -> tuple:
        """``extra``: the template's own epilogue args (they precede the fused epilogue's);
        ``lead``: an int8 GEMM's quantization tensors, first of all."""
        import torch

        extra = tuple(lead) + tuple(extra)
        a2 = a.unsqueeze(0) if a.dim() == 1 else a  # [K] -> [1, K]
        b2 = b.unsqueeze(-1) if b.dim() == 1 else b  # [K] -> [K, 1]
        (m, ka), (kb, n) = a2.shape[-2:], b2.shape[-2:]
        _check_k("MatMul", a.shape, b.shape, ka, kb)
        batch = tuple(torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
        out_shape = batch + ((m,) if a.dim() > 1 else ()) + ((n,) if b.dim() > 1 else ())
        y = torch.empty(out_shape, dtype=self.out_dtype, device=self.device)
        a3, b3, y3 = self._fold_batch(a2, b2, y, batch, m, ka, n)
        pad = (1,) * (self.batch_rank - (a3.dim() - 2))  # folded batch: size-1 dims
        a3, b3, y3 = (t.view(pad + tuple(t.shape)) for t in (a3, b3, y3))
        return _launch_with_epilogue(self, a3, b3, y, y3, epilogue_inputs, extra)

    @staticmethod
    def _fold_batch(a2, b2, y, batch, m, k, n):
        """[*batch, M, K] x [K, N] with A's rows evenly strided is one [batch*M, K] x [K, N]:
        bigger tiles, fewer programs. Otherwise every operand is viewed at the full batch."""
        if math.prod(b2.shape[:-2]) == 1 and a2.shape[:-2] == batch and batch:
            try:
                return a2.view(-1, k), b2.view(k, n), y.view(-1, n)
            except RuntimeError:  # A's batch and row strides do not merge
                pass
        return (a2.expand(batch + (m, k)), b2.expand(batch + (k, n)),
                y.view(batch + (m, n)))


def _launch_with_epilogue(launcher, a, b, y, y_view, epilogue_inputs,
                          extra: tuple = ()) -> tuple:
    """Launch with the template's own ``extra`` args, then the fused epilogue's."""
    fused = launcher.fused
    if fused is None:
        launch(launcher.fn, a, b, y_view, extra, launcher.interpreted, launcher.table,
               launcher.arrivals, launcher.tf32)
        return (y,)
    from .epilogue import launch_args

    args, outputs = launch_args(fused, epilogue_inputs, y.shape, y_view.shape, y.device)
    with np.errstate(all="ignore"):  # the interpreter computes masked lanes too
        launch(launcher.fn, a, b, y_view, extra + args, launcher.interpreted, launcher.table,
               launcher.arrivals, launcher.tf32)
    return (y, *outputs) if fused.result_stored else (*outputs, y)


class GemmLauncher:
    """``alpha * A' @ B' + beta * C`` with A' / B' transposed views and C broadcast to [M, N]."""

    def __init__(self, fn: Any, trans_a: bool, trans_b: bool, with_c: bool, out_dtype: str,
                 ctx, fused=None):
        self.fn, self.trans_a, self.trans_b, self.with_c = fn, trans_a, trans_b, with_c
        self.out_dtype, self.device = torch_dtype(out_dtype), ctx.torch_device
        self.interpreted, self.table, self.fused = ctx.interpreted, ctx.tuning, fused
        self.tf32, self.arrivals = ctx.use_tf32, split_counters(fn, ctx.torch_device)

    def __call__(self, a: Any, b: Any, *rest: Any, lead: tuple = ()) -> tuple:
        import torch

        c, epilogue_inputs = (rest[0], rest[1:]) if self.with_c else (None, rest)
        a2 = a.t() if self.trans_a else a
        b2 = b.t() if self.trans_b else b
        (m, ka), (kb, n) = a2.shape, b2.shape
        _check_k("Gemm", a2.shape, b2.shape, ka, kb)
        y = torch.empty((m, n), dtype=self.out_dtype, device=self.device)
        extra = ()
        if self.with_c:
            c2 = c.expand(m, n)  # unidirectional broadcast: stride 0 along broadcast dims
            extra = (c2, *c2.stride())
        return _launch_with_epilogue(self, a2, b2, y, y, epilogue_inputs, tuple(lead) + extra)


# ------------------------------------------------------------------ templates


def _dtype_reason(ctx, values: Sequence[str], op: str) -> str | None:
    for value in values:
        dt = ctx.dtype_of(value)
        if dt is None:
            return f"element type or rank of '{value}' unknown at load time"
        if dt not in dtypes.FLOAT_TYPES:
            return (f"integer {op} runs on the CPU (tl.dot has no {dt} products)"
                    if "int" in dt else f"Triton's {op} does not take {dt} ('{value}')")
    return None


def _header(node, ir_text: str) -> list[str]:
    return [f"ONNX node: {node.name} ({node.op_type})", *ir_text.splitlines()[1:]]


def _built(name, node, ctx, ir_text, batch_rank, in_dt, epilogue, launcher_for, inputs,
           fusion=None, own_out_dtype=None, dot_upcast=None, int8=None,
           b_load=None) -> KernelSpec:
    """Source, kernel and launcher; ``launcher_for(fn, out_dtype, fused)``. A ``fusion``
    (tritort.codegen.fusion's choice) converts operands as they load and appends its
    pointwise epilogue to the template's own. ``int8``: (prologues, loads' others, row sums,
    column sums) of an int8 kernel (codegen.int8_gemm)."""
    fused, out_dt = None, own_out_dtype or in_dt
    prologues, others, setup = {}, {}, []
    rules = {}
    for index, producer in (fusion.operands.items() if fusion is not None else ()):
        made = {v: n for n in fusion.operands.values() for v in n.outputs}
        rules[index] = operand_prologue(producer, ctx, node, index, made.get)
    if rules and any(r.quant is not None for r in rules.values()):
        from . import int8_gemm

        a, b = rules[0].quant, rules[1].quant
        in_dt, own_out_dtype = "int8", None
        out_dt = ctx.dtype_of(node.outputs[0])
        quant_ep, rowsums, colsums = int8_gemm.epilogue(
            a, b, a.unsigned, b.unsigned, a.zero is not None, b.zero is not None, True)
        epilogue = Epilogue(quant_ep.params + epilogue.params, quant_ep.lines + epilogue.lines,
                            quant_ep.text + epilogue.text)
        int8 = ({i: int8_gemm.tile_lines(s, i, s.unsigned, sums)[1]
                 for i, (s, sums) in enumerate(((a, rowsums), (b, colsums)))},
                {i: "128" if s.unsigned else "0" for i, s in enumerate((a, b))},
                rowsums, colsums)
        count = len(int8_gemm.quant_inputs(a, b))
        inputs = [a.source, b.source] + int8_gemm.quant_inputs(a, b) + inputs[2:]
        wrap = launcher_for
        launcher_for = lambda fn, dt, fz: int8_gemm.QuantLauncher(wrap(fn, dt, fz), count)  # noqa
        ir_text += f"\nint8 operands: {int8_gemm.describe([a, b])}"
        rules = {}
    for index, rule in rules.items():
        inputs = [rule.source if i == index else v for i, v in enumerate(inputs)]
        prologues[index] = rule.line
        ir_text += f"\nprologue on operand {'AB'[index]}: {fusion.operands[index].name} " \
                   f"({rule.text})"
    if int8 is not None:
        from .int8_gemm import sums_setup

        prologues, others = int8[0], int8[1]
        setup = sums_setup(int8[2], int8[3])
    if fusion is not None and fusion.epilogue is not None:
        from .epilogue import build

        fused = build(fusion, out_dt, batch_rank + 2)
        epilogue = Epilogue(epilogue.params + fused.epilogue.params,
                            epilogue.lines + fused.epilogue.lines,
                            epilogue.text + fused.epilogue.text)
        out_dt = fused.out_dtype
        inputs = inputs + fused.inputs
        ir_text += "\n" + fusion.text()
    source = matmul_source(KERNEL, _header(node, ir_text), batch_rank, in_dt, out_dt,
                           ctx.interpreted, epilogue, dot_upcast, prologues, others, setup,
                           b_load, ctx.dot_precision(in_dt), split_k=not setup)
    fn, path, cached = load_source(source, KERNEL, ctx)
    return KernelSpec(name, launcher_for(fn, out_dt, fused), inputs, ir_text, source, path,
                      cached)


@template("MatMul")
class MatMul(Template):
    kind = "tiled"
    epilogue = True  # on the output tile: bias, activation, residual, cast
    operand_prologues = True  # a Cast or scalar scale per operand (operand_prologue)

    def claim(self, node, ctx) -> str | None:
        for value in node.inputs[:2]:
            rank = ctx.rank_of(value)
            if rank is None:
                return f"rank of '{value}' unknown at load time"
            if rank == 0:
                return f"MatMul of a 0-d tensor ('{value}')"
        return _dtype_reason(ctx, node.inputs[:2], "MatMul")

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        a, b = node.inputs[:2]
        ra, rb = ctx.rank_of(a), ctx.rank_of(b)
        batch_rank = max(ra, rb, 2) - 2
        dt = ctx.dtype_of(a)
        ir_text = (f"kernel {name} MatMul node={node.name!r}\n"
                   f"A: {a} {dt}[rank {ra}] x B: {b} {dt}[rank {rb}] -> {node.outputs[0]} {dt}\n"
                   f"batch rank {batch_rank} (broadcast by strides), tl.dot accumulating in "
                   f"{acc_type(dt)}")
        return _built(name, node, ctx, ir_text, batch_rank, dt, Epilogue(),
                      lambda fn, out_dt, fused: MatMulLauncher(fn, batch_rank, out_dt, ctx,
                                                               fused),
                      [a, b], fusion)


def gemm_epilogue(acc: str, alpha: float, beta: float, with_c: bool) -> Epilogue:
    """Gemm's ``alpha * acc + beta * C``; C read through [M, N] strides (0 where broadcast)."""
    ep = Epilogue()
    if alpha != 1.0:
        ep.lines.append(f"{acc} = {acc} * {alpha!r}")
        ep.text.append(f"* alpha ({alpha!r})")
    if with_c:
        ep.params += ["c", "scm", "scn"]
        ep.lines.append(f"c_tile = tl.load(c + (rows * scm + cols * scn), mask=tile_mask, "
                        f"other=0.0).to({acc}.dtype)")
        term = "c_tile" if beta == 1.0 else f"{beta!r} * c_tile"
        ep.lines.append(f"{acc} = {acc} + {term}")
        ep.text.append(f"+ {'' if beta == 1.0 else f'{beta!r} * '}C (broadcast to [M, N])")
    return ep


@template("Gemm")
class Gemm(Template):
    kind = "tiled"
    epilogue = True
    operand_prologues = True

    def claim(self, node, ctx) -> str | None:
        for value in node.inputs[:2]:
            rank = ctx.rank_of(value)
            if rank is None:
                return f"rank of '{value}' unknown at load time"
            if rank != 2:
                return f"Gemm input '{value}' has rank {rank}, not 2"
        c = node.inputs[2] if len(node.inputs) > 2 else ""
        if c and (ctx.rank_of(c) or 0) > 2:
            return f"Gemm's C '{c}' has rank {ctx.rank_of(c)} > 2"
        return _dtype_reason(ctx, [v for v in node.inputs[:3] if v], "Gemm")

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        a, b = node.inputs[:2]
        c = node.inputs[2] if len(node.inputs) > 2 else ""
        alpha = float(node.attrs.get("alpha", 1.0))
        beta = float(node.attrs.get("beta", 1.0))
        trans_a = bool(node.attrs.get("transA", 0))
        trans_b = bool(node.attrs.get("transB", 0))
        # beta == 0 ignores C (as onnxruntime does); Gemm-1/6's 'broadcast' only said whether
        # C may broadcast, and broadcasting it always is a superset
        with_c = bool(c) and beta != 0.0
        dt = ctx.dtype_of(a)
        ep = gemm_epilogue("acc", alpha, beta, with_c)
        ir_text = (f"kernel {name} Gemm node={node.name!r}\n"
                   f"A: {a} {dt}{'^T' if trans_a else ''} x B: {b} {dt}{'^T' if trans_b else ''}"
                   f" -> {node.outputs[0]} {dt} (transposes as strides)\n"
                   f"tl.dot accumulating in {acc_type(dt)}; epilogue: "
                   f"{' '.join(ep.text) or 'none'}")
        inputs = [a, b, c] if with_c else [a, b]
        return _built(name, node, ctx, ir_text, 0, dt, ep,
                      lambda fn, out_dt, fused: GemmLauncher(fn, trans_a, trans_b, with_c,
                                                             out_dt, ctx, fused),
                      inputs, fusion)
