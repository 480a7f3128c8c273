"""Conv as an implicit GEMM Triton template (1-D, 2-D and 3-D, grouped and depthwise).

Per group g, ``Y[n, g*MG + m, o] = sum over (c, tap) of X[n, g*CG + c, o*s - p + tap*d] *
W[g*MG + m, c, tap]``: a GEMM whose rows are (n, output position) flattened, whose columns
are the group's MG output channels and whose K is (input channel of the group, kernel tap).
A program computes one BLOCK_M x BLOCK_N tile of it; the A tile is gathered from X through
index math (no im2col buffer), positions outside the input read as zero padding. Two K
orders exist, picked from W's shape when the kernel is generated:

* ``tap_major`` (CG a multiple of 16, or large): one pass over the kernel taps, each walking
  the group's channels BLOCK_K at a time; a tap's window positions and bounds are computed
  once per row, so the inner loop is a strided GEMM.
* ``flat`` (few channels, e.g. RGB input layers): K = CG * taps is one flattened range
  walked BLOCK_K at a time, so the tile is not mostly padding when CG is small.

One input channel per group (depthwise) has no reduction worth a ``tl.dot``: its ``direct``
kernel accumulates one tap at a time on a [positions, channels] tile.

Accumulation is fp32 (fp64 for double); the optional bias and then the *epilogue* (see
:func:`conv_source`) run on the accumulator tile before one rounding store. Sizes (N, C,
spatial dims, pads) are runtime arguments; a kernel is specialized on rank, dtype, variant
and the kernel / stride / dilation attributes only.

Block sizes are picked at launch: a config that ``tritort autotune`` stored in the tuning
database for this kernel key (``conv:<dtype>:<variant>:<rank>d``) and shape bucket wins;
otherwise :func:`tritort.codegen.conv_configs.pick_config`'s size heuristic chooses. The tuner's
candidates and pruning rules are :data:`tritort.codegen.conv_configs.TUNING`. The pooling templates
reuse :class:`Window`.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tritort import dtypes
from tritort.windows import output_size, resolved_pads

from .launch import launch_kernel
from . import gemm
from .cache import KERNEL
from .conv_configs import (DOT_VARIANTS, TUNING, ConvConfig, kernel_key, pick_config,
                           problem_of, unusable)
from .emit import acc_type, helper_source, store
from .rowwise import torch_dtype
from .templates import KernelSpec, Template, kernel_signature, load_source, template
from .tuning import choose

log = logging.getLogger("tritort.tuning")

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
MAX_SPATIAL_RANK = 3

# ------------------------------------------------------------------ window geometry


@dataclass(frozen=True)
class Window:
    """Sliding-window attributes shared by Conv and the pools (spatial axes only)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # explicit begins then ends (used with auto_pad NOTSET)
    auto_pad: str = "NOTSET"
    ceil_mode: bool = False

    @property
    def rank(self) -> int:
        return len(self.kernel)

    @property
    def taps(self) -> int:
        return math.prod(self.kernel)

    def resolve(self, in_spatial: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        """(output sizes, begin pads, end pads) for an input's spatial sizes.

        SAME_* pads to ``ceil(size / stride)`` outputs, the odd pad at the end (UPPER) or the
        start (LOWER); with ceil_mode a last window that would start in the end padding is
        dropped. Sizes may come out negative for inputs smaller than the window.
        """
        pads = resolved_pads(self.auto_pad, in_spatial, self.kernel, self.strides,
                             self.dilations, self.pads)
        begins, ends = pads[:self.rank], pads[self.rank:]
        same = self.auto_pad in ("SAME_UPPER", "SAME_LOWER")
        outs = [output_size(size, (k - 1) * d + 1, s, pb, pe, self.ceil_mode, same)
                for size, k, s, d, pb, pe in zip(in_spatial, self.kernel, self.strides,
                                                  self.dilations, begins, ends)]
        return outs, begins, ends

    def text(self) -> str:
        pads = self.auto_pad if self.auto_pad != "NOTSET" else f"pads {list(self.pads)}"
        return (f"kernel {list(self.kernel)}, strides {list(self.strides)}, dilations "
                f"{list(self.dilations)}, {pads}" + (", ceil_mode" if self.ceil_mode else ""))


def window_from_attrs(attrs: dict, rank: int, kernel: Sequence[int] | None,
                      ceil_mode: bool = False) -> Window | str:
    """The window of a conv/pool node over ``rank`` spatial axes, or why it is declined."""
    kernel = attrs.get("kernel_shape") or kernel
    if kernel is None:
        return "kernel_shape unknown"
    auto_pad = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad not in AUTO_PADS:
        return f"auto_pad '{auto_pad}'"
    lists = {"kernel_shape": list(kernel),
             "strides": attrs.get("strides") or [1] * rank,
             "dilations": attrs.get("dilations") or [1] * rank,
             "pads": attrs.get("pads") or [0] * (2 * rank)}
    for what, values in lists.items():
        want = 2 * rank if what == "pads" else rank
        if len(values) != want:
            return f"{what} {values} has {len(values)} entries, expected {want}"
        low = 0 if what == "pads" else 1
        if any(v < low for v in values):
            return f"{what} {values} has an entry below {low}"
    return Window(tuple(lists["kernel_shape"]), tuple(lists["strides"]),
                  tuple(lists["dilations"]), tuple(lists["pads"]), auto_pad, ceil_mode)


def tap_indices(tap: str, kernel: Sequence[int]) -> list[str]:
    """Expressions for each spatial axis' kernel index of flat tap index ``tap`` (the last
    axis fastest); the kernel sizes are literals, so these are constant divisions."""
    exprs = []
    for j, k in enumerate(kernel):
        inner = math.prod(kernel[j + 1:])
        e = tap if inner == 1 else f"({tap} // {inner})"
        exprs.append(e if j == 0 else f"({e} % {k})")
    return exprs


# ------------------------------------------------------------------ the node's description


@dataclass(frozen=True)
class ConvSpec:
    """What a Conv kernel is specialized on."""

    window: Window
    group: int
    channels_per_group: int  # W's dim 1
    with_bias: bool
    dtype: str

    @property
    def variant(self) -> str:
        cg = self.channels_per_group
        if cg == 1:
            return "direct"
        return "tap_major" if cg % 16 == 0 or cg >= 64 else "flat"

    def text(self) -> str:
        return (f"{self.window.rank}-D, group {self.group}, {self.channels_per_group} input "
                f"channels per group, {self.window.text()}, variant {self.variant}")


def conv_spec(node, ctx) -> ConvSpec | str:
    """The node's ConvSpec, or why the template declines it."""
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else ""
    rank = ctx.rank_of(x)
    if rank is None:
        return f"rank of '{x}' unknown at load time"
    if not 3 <= rank <= 2 + MAX_SPATIAL_RANK:
        return f"Conv over {rank - 2} spatial axes (Triton's Conv takes 1 to {MAX_SPATIAL_RANK})"
    for value in [x, w] + ([b] if b else []):
        dt = ctx.dtype_of(value)
        if dt is None:
            return f"element type of '{value}' unknown at load time"
        if dt not in dtypes.FLOAT_TYPES:
            return f"Triton's Conv does not take {dt} ('{value}')"
    if len({ctx.dtype_of(v) for v in [x, w] + ([b] if b else [])}) != 1:
        return "Conv inputs of different element types"
    return window_spec(node, ctx, x, w, b, ctx.dtype_of(x))


def window_spec(node, ctx, x: str, w: str, b: str, dtype: str) -> ConvSpec | str:
    """The ConvSpec of a conv node reading ``x``, ``w`` and bias ``b`` ('' if none), their
    element types already checked, or why its geometry is declined."""
    rank = ctx.rank_of(x)
    if rank is None:
        return f"rank of '{x}' unknown at load time"
    if not 3 <= rank <= 2 + MAX_SPATIAL_RANK:
        return f"Conv over {rank - 2} spatial axes (Triton's Conv takes 1 to {MAX_SPATIAL_RANK})"
    w_shape = ctx.shape_of(w)
    if w_shape is None or len(w_shape) != rank:
        return f"shape of W '{w}' unknown or not of rank {rank}"
    if not all(isinstance(d, int) for d in w_shape[1:]):
        return f"W '{w}' has symbolic channel or kernel dims {list(w_shape)}"
    if b and ctx.rank_of(b) != 1:
        return f"bias '{b}' is not 1-D"
    group = int(node.attrs.get("group", 1))
    if group < 1:
        return f"group {group}"
    m, cg = w_shape[0], w_shape[1]
    if isinstance(m, int) and m % group:
        return f"W's {m} output channels are not a multiple of group {group}"
    x_shape = ctx.shape_of(x)
    if x_shape and isinstance(x_shape[1], int) and x_shape[1] != cg * group:
        return f"X has {x_shape[1]} channels, W expects {cg} x group {group}"
    window = window_from_attrs(node.attrs, rank - 2, w_shape[2:])
    if isinstance(window, str):
        return window
    if window.kernel != tuple(w_shape[2:]):
        return f"kernel_shape {list(window.kernel)} differs from W's {list(w_shape[2:])}"
    return ConvSpec(window, group, cg, bool(b), dtype)


# ------------------------------------------------------------------ kernel source


def _params(spec: ConvSpec, epilogue: gemm.Epilogue) -> list[str]:
    r = spec.window.rank
    sizes = [f"S{j}" for j in range(r)] + [f"O{j}" for j in range(r)] + \
        [f"P{j}" for j in range(r)]
    strides = [f"sx{j}" for j in range(r + 2)] + [f"sw{j}" for j in range(r + 2)] + \
        (["sb0"] if spec.with_bias else []) + [f"sy{j}" for j in range(r + 2)]
    blocks = ["BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr"] + \
        ([] if spec.variant == "direct" else ["BLOCK_K: tl.constexpr"])
    return (["x", "w"] + (["b"] if spec.with_bias else []) + ["y", *epilogue.params,
                                                             "ROWS", "M", "CG", "MG"]
            + sizes + strides + blocks)


def _rows_to_positions(r: int) -> list[str]:
    """Each GEMM row -> batch index n and output position pos0.. (the last axis fastest).
    Not o0..: codegen.epilogue names its output pointers so."""
    lines = ["    # row -> (n, output position), the last spatial axis fastest",
             "    rem = rows"]
    for j in range(r - 1, -1, -1):
        lines += [f"    pos{j} = rem % O{j}", f"    rem = rem // O{j}"]
    return lines + ["    n = rem"]


def scaled(expr: str, factor: int) -> str:
    return expr if factor == 1 else f"{expr} * {factor}"


def _window_starts(window: Window) -> list[str]:
    """Each row's first input position per axis (may lie in the begin padding)."""
    return [f"    h{j} = {scaled(f'pos{j}', s)} - P{j}" for j, s in enumerate(window.strides)]



def dot_program(win: Window) -> list[str]:
    """A dot variant program's tile: its group, rows (output positions) and columns (output
    channels), the positions' window starts and the base pointers of X's rows and W's
    columns; the float and int8 kernels share it."""
    return [
        "    pid = tl.program_id(0)",
        "    g = tl.program_id(1).to(tl.int64)",
        "    blocks_n = tl.cdiv(MG, BLOCK_N)",
        "    # neighbouring programs share a row block: X's tile is reused from L2",
        "    pid_m = pid // blocks_n",
        "    pid_n = pid % blocks_n",
        "    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)",
        "    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)",
        "    row_in = rows < ROWS",
        "    col_in = cols < MG",
        "    m = g * MG + cols  # output channel (int64)",
        *_rows_to_positions(win.rank),
        *_window_starts(win),
        "    x_rows = x + (n * sx0 + g * CG * sx1)",
        "    w_cols = w + m * sw0",
    ]


def direct_program(win: Window) -> list[str]:
    """The direct (depthwise) variant program's tile, as :func:`dot_program`."""
    return [
        "    pid = tl.program_id(0)",
        "    blocks_n = tl.cdiv(M, BLOCK_N)",
        "    pid_m = pid // blocks_n",
        "    pid_n = pid % blocks_n",
        "    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)",
        "    m = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channel",
        "    row_in = rows < ROWS",
        "    col_in = m < M",
        *_rows_to_positions(win.rank),
        *_window_starts(win),
        "    # group m // MG has one input channel: channel m // MG",
        "    x_tile = x + (n * sx0)[:, None] + ((m // MG) * sx1)[None, :]",
        "    w_cols = w + m * sw0",
    ]


def _in_bounds(r: int) -> str:
    return " & ".join(f"(i{j} >= 0) & (i{j} < S{j})" for j in range(r))


def _spatial(prefix: str, stride: str, r: int) -> str:
    return " + ".join(f"{prefix}{j} * {stride}{j + 2}" for j in range(r))


def _gemm_body(spec: ConvSpec, interpreted: bool, precision: str | None = None) -> list[str]:
    """The implicit-GEMM main loop (tap_major or flat) filling ``acc``."""
    win, r = spec.window, spec.window.rank
    taps = win.taps
    lines = [*dot_program(win),
             f"    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype={acc_type(spec.dtype)})"]
    dot = gemm._dot_line(spec.dtype, interpreted, precision=precision)
    if spec.variant == "tap_major":
        t = tap_indices("tap", win.kernel)
        lines += [f"    for tap in range(0, {taps}):"]
        lines += [f"        t{j} = {t[j]}" for j in range(r)]
        lines += [f"        i{j} = h{j} + {scaled(f't{j}', d)}"
                  for j, d in enumerate(win.dilations)]
        lines += [f"        valid = row_in & {_in_bounds(r)}",
                  f"        a_rows = x_rows + ({_spatial('i', 'sx', r)})",
                  f"        b_cols = w_cols + ({_spatial('t', 'sw', r)})",
                  "        for cb in range(0, CG, BLOCK_K):",
                  "            c = cb + tl.arange(0, BLOCK_K)",
                  "            c_in = c < CG",
                  "            c64 = c.to(tl.int64)",
                  "            # loaded [channels, positions], then transposed: a warp's threads",
                  "            # spread over positions, so each holds one or two rows' pointers",
                  "            a_tile = tl.trans(tl.load(a_rows[None, :] + c64[:, None] * sx1,",
                  "                                      mask=valid[None, :] & c_in[:, None],",
                  "                                      other=0.0))",
                  "            b_tile = tl.load(b_cols[None, :] + c64[:, None] * sw1,",
                  "                             mask=c_in[:, None] & col_in[None, :], other=0.0)"]
        lines += ["    " + line for line in dot]
        return lines
    t = tap_indices("tap", win.kernel)
    lines += [f"    K = CG * {taps}",
              "    for kb in range(0, tl.cdiv(K, BLOCK_K)):",
              "        k = kb * BLOCK_K + tl.arange(0, BLOCK_K)",
              "        k_in = k < K",
              f"        c = (k // {taps}).to(tl.int64)",
              f"        tap = k % {taps}"]
    lines += [f"        t{j} = {t[j]}" for j in range(r)]
    lines += [f"        i{j} = h{j}[:, None] + {scaled(f't{j}[None, :]', d)}"
              for j, d in enumerate(win.dilations)]
    lines += [f"        a_mask = row_in[:, None] & k_in[None, :] & {_in_bounds(r)}",
              f"        a_tile = tl.load(x_rows[:, None] + (c[None, :] * sx1 + "
              f"{_spatial('i', 'sx', r)}),",
              "                         mask=a_mask, other=0.0)",
              f"        b_tile = tl.load(w_cols[None, :] + (c * sw1 + {_spatial('t', 'sw', r)})"
              "[:, None],",
              "                         mask=k_in[:, None] & col_in[None, :], other=0.0)"]
    return lines + dot


def _direct_body(spec: ConvSpec) -> list[str]:
    """Depthwise: output channel m reads input channel m // MG; one FMA per tap."""
    win, r = spec.window, spec.window.rank
    ct = acc_type(spec.dtype)
    t = tap_indices("tap", win.kernel)
    loop = "tl.static_range" if win.taps <= 32 else "range"
    lines = [
        *direct_program(win),
        f"    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype={ct})",
        f"    for tap in {loop}(0, {win.taps}):",
    ]
    lines += [f"        t{j} = {t[j]}" for j in range(r)]
    lines += [f"        i{j} = h{j} + {scaled(f't{j}', d)}" for j, d in enumerate(win.dilations)]
    lines += [f"        valid = row_in & {_in_bounds(r)}",
              f"        xv = tl.load(x_tile + ({_spatial('i', 'sx', r)})[:, None],",
              "                     mask=valid[:, None] & col_in[None, :], other=0.0)",
              f"        wv = tl.load(w_cols + ({_spatial('t', 'sw', r)}), mask=col_in, "
              "other=0.0)",
              f"        acc += xv.to({ct}) * wv.to({ct})[None, :]"]
    return lines


def _finish(spec: ConvSpec, epilogue: gemm.Epilogue, out_dtype: str,
            channels_first: bool = False) -> list[str]:
    """Bias, the epilogue's lines, then the one rounding store. ``channels_first``: the
    epilogue and store see the tile transposed, [channels, positions]: Triton then spreads
    a warp's threads over positions (Y's contiguous axis) and each thread holds one or two
    rows' indices instead of one per row of the tile (64-row tiles spilled holding them)."""
    r = spec.window.rank
    lines = []
    if spec.with_bias:
        lines.append("    bias = tl.load(b + m * sb0, mask=col_in, other=0.0)")
        lines.append("    acc += bias.to(acc.dtype)[None, :]")
    row, col = ("[None, :]", "[:, None]") if channels_first else ("[:, None]", "[None, :]")
    if channels_first:
        lines.append("    acc = tl.trans(acc)  # [channels, positions]")
    lines += [f"    tile_mask = row_in{row} & col_in{col}",
              "    # the output index of each tile element along Y's dims, for the epilogue",
              f"    out_idx_0 = n{row}",
              f"    out_idx_1 = m{col}"]
    lines += [f"    out_idx_{j + 2} = pos{j}{row}" for j in range(r)]
    lines += [f"    y_offs = (n * sy0 + {_spatial('pos', 'sy', r)}){row} + (m * sy1){col}"]
    lines += ["    " + line for line in epilogue.lines]
    return lines + ["    " + store("y + y_offs", "acc", out_dtype, "tile_mask")]


def conv_source(name: str, header: Sequence[str], spec: ConvSpec, out_dtype: str,
                interpreted: bool, epilogue: gemm.Epilogue, precision: str | None = None,
                body: Sequence[str] | None = None) -> str:
    """The kernel's source: ``Y = epilogue(conv(X, W) + B)`` rounded once to ``out_dtype``.

    ``epilogue.params`` follow ``y`` in the signature; ``epilogue.lines`` (unindented
    statements) update ``acc`` (fp32, fp64 for double; [BLOCK_N, BLOCK_M] for the float dot
    variants, whose epilogue sees the tile channels first, else [BLOCK_M, BLOCK_N]) after
    the bias and before the store. In scope for them (:mod:`tritort.codegen.epilogue`'s
    contract): ``acc``, ``tile_mask`` (in-bounds elements), ``out_idx_0`` ..
    ``out_idx_{R-1}`` (int64, broadcastable to the tile: the index of each element along Y's
    dim j, so ``out_idx_1`` is the output channel), ``y_offs`` (each element's offset in Y,
    which the launcher allocates contiguous) and every kernel parameter. ``precision``: a
    float32 dot's input_precision. ``body``: the main loop's lines in place of the float ones
    (the int8 path's, whose epilogue lines broadcast per-channel scales as [None, :]).
    """
    channels_first = spec.variant in DOT_VARIANTS and body is None
    if body is not None:
        body = list(body)
    elif spec.variant == "direct":
        body = _direct_body(spec)
    else:
        body = _gemm_body(spec, interpreted, precision)
    body += _finish(spec, epilogue, out_dtype, channels_first)
    lines = ["# tritort conv kernel", *[f"# {h}" for h in header],
             "import triton", "import triton.language as tl"]
    helpers = helper_source("\n".join(body))
    if helpers:
        lines.append(helpers.rstrip("\n"))
    lines += ["", "", "@triton.jit", *kernel_signature(name, _params(spec, epilogue)), *body]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ launching


def launch(fn: Any, spec: ConvSpec, x: Any, w: Any, b: Any, y: Any, extra: Sequence[Any],
           interpreted: bool, table: Any, tf32: bool = False) -> None:
    """``x`` [N, C, *S], ``w`` [M, CG, *K], ``b`` [M] or None, ``y`` [N, M, *O]: torch
    tensors with any strides; ``extra``: the epilogue's args, passed right after ``y``.
    The config: ``table``'s (a codegen.tuning.TuningTable, or None) for this kernel key and
    shape, else the heuristic's; ``tf32``: float32 dots on TF32 tensor cores (own key)."""
    if y.numel() == 0:
        return
    win, variant = spec.window, spec.variant
    m = w.shape[0]
    rows = y.shape[0] * math.prod(y.shape[2:])
    cols = m if variant == "direct" else m // spec.group
    k = spec.channels_per_group * (1 if variant == "tap_major" else win.taps)
    itemsize = x.element_size()
    problem = problem_of(rows, cols, k, spec.group, win.taps, itemsize, variant)

    dtype = str(x.dtype).removeprefix("torch.")

    def default() -> ConvConfig:
        return pick_config(rows, cols, k, spec.group, itemsize, variant, interpreted,
                           tf32 and dtype == "float32")

    key = kernel_key("tf32" if tf32 and dtype == "float32" else dtype, variant, win.rank)
    cfg = choose(table, TUNING, key, problem, default, (x, w, b, y, *extra),
                 functools.partial(_run, fn, spec=spec))
    reason = unusable(cfg, variant)
    if reason is not None:
        _warn_once(key, cfg, reason)
        cfg = default()
    _run(fn, cfg, x, w, b, y, *extra, spec=spec)


def _run(fn: Any, cfg: ConvConfig, x: Any, w: Any, b: Any, y: Any, *extra: Any,
         spec: ConvSpec) -> None:
    """One launch with ``cfg`` (the tuner relaunches through here with other configs)."""
    outs, begins, _ = spec.window.resolve(tuple(x.shape[2:]))
    m = w.shape[0]
    mg = m // spec.group
    rows = x.shape[0] * math.prod(outs)
    blocks_m = math.ceil(rows / cfg.block_m)
    if spec.variant == "direct":
        grid = (blocks_m * math.ceil(m / cfg.block_n),)
        blocks = {}
    else:
        grid = (blocks_m * math.ceil(mg / cfg.block_n), spec.group)
        blocks = {"BLOCK_K": cfg.block_k}
    bias = [b] if spec.with_bias else []
    launch_kernel(fn, grid, x, w, *bias, y, *extra, rows, m, spec.channels_per_group, mg,
           *x.shape[2:], *outs, *begins, *x.stride(), *w.stride(),
           *(b.stride() if spec.with_bias else ()), *y.stride(), BLOCK_M=cfg.block_m,
           BLOCK_N=cfg.block_n, **blocks, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


@functools.lru_cache(maxsize=64)
def _warn_once(key: str, cfg: ConvConfig, reason: str) -> None:
    log.warning("tuned config %s for %s ignored: %s; using the heuristic's", cfg, key, reason)


class ConvLauncher:
    """Checks shapes, allocates Y and launches. Called with (x, w[, b]); with a fused
    epilogue (:class:`tritort.codegen.epilogue.FusedEpilogue`) its input tensors follow, and the
    outputs are the ones :meth:`~tritort.codegen.rowwise.TileFusion.kernel_outputs` lists."""

    def __init__(self, fn: Any, spec: ConvSpec, out_dtype: Any, ctx, node_name: str,
                 fused: Any = None) -> None:
        self.fn, self.spec, self.out_dtype, self.device = fn, spec, out_dtype, ctx.torch_device
        self.interpreted, self.table = ctx.interpreted, ctx.tuning
        self.node_name, self.fused = node_name, fused
        self.tf32 = ctx.use_tf32 and spec.variant != "direct"

    def __call__(self, x: Any, w: Any, *rest: Any) -> tuple:
        import torch

        spec = self.spec
        b, epilogue_inputs = (rest[0], rest[1:]) if spec.with_bias else (None, rest)
        self._check(x, w, b)
        outs, _, _ = spec.window.resolve(tuple(x.shape[2:]))
        y = torch.empty((x.shape[0], w.shape[0], *outs), dtype=self.out_dtype,
                        device=self.device)
        if self.fused is None:
            launch(self.fn, spec, x, w, b, y, (), self.interpreted, self.table, self.tf32)
            return (y,)
        from .epilogue import launch_args

        args, outputs = launch_args(self.fused, epilogue_inputs, y.shape, y.shape, y.device)
        with np.errstate(all="ignore"):  # the interpreter computes masked lanes too
            launch(self.fn, spec, x, w, b, y, args, self.interpreted, self.table, self.tf32)
        return (y, *outputs) if self.fused.result_stored else (*outputs, y)

    def _check(self, x: Any, w: Any, b: Any) -> None:
        spec = self.spec
        rank = spec.window.rank + 2
        where = f"Conv node '{self.node_name}'"
        if x.dim() != rank:
            raise ValueError(f"{where}: X has shape {list(x.shape)}, expected rank {rank}")
        want_w = (spec.channels_per_group, *spec.window.kernel)
        if tuple(w.shape[1:]) != want_w or w.shape[0] % spec.group:
            raise ValueError(f"{where}: W has shape {list(w.shape)}, expected [M, "
                             f"{', '.join(map(str, want_w))}] with M a multiple of "
                             f"group {spec.group}")
        cg = spec.channels_per_group
        if x.shape[1] != cg * spec.group:
            raise ValueError(f"{where}: X has {x.shape[1]} channels, expected "
                             f"{cg * spec.group} (W's {cg} x group {spec.group})")
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"{where}: B has shape {list(b.shape)}, expected [{w.shape[0]}]")
        outs, _, _ = spec.window.resolve(tuple(x.shape[2:]))
        if any(o < 0 for o in outs):
            raise ValueError(f"{where}: input spatial shape {list(x.shape[2:])} is smaller "
                             f"than the window ({spec.window.text()})")


# ------------------------------------------------------------------ the template


def build_conv(node, ctx, name: str, fusion: Any = None) -> KernelSpec:
    """The node's kernel; a ``fusion`` (:class:`tritort.codegen.rowwise.TileFusion`, chosen by
    codegen.fusion) is rendered by :func:`tritort.codegen.epilogue.build` in front of the store, its
    inputs following the node's in the launcher's."""
    if fusion is not None and fusion.operands:  # DequantizeLinear x and w: the int8 path
        from .int8_conv import build_dq_conv, dq_conv

        made = {v: n for n in fusion.operands.values() for v in n.outputs}
        q = dq_conv(node, ctx, made.get)
        if q is None:
            raise ValueError(f"Conv node '{node.name}': operands {sorted(made)} are not a "
                             "DequantizeLinear pair the int8 path takes")
        return build_dq_conv(node, ctx, name, q, fusion)
    spec = conv_spec(node, ctx)
    if isinstance(spec, str):
        raise ValueError(f"Conv node '{node.name}': {spec}")
    x, w = node.inputs[:2]
    b = node.inputs[2] if spec.with_bias else ""
    inputs = [x, w] + ([b] if b else [])
    epilogue, out_dtype, fused = gemm.Epilogue(), spec.dtype, None
    if fusion is not None:
        from .epilogue import build

        fused = build(fusion, spec.dtype, spec.window.rank + 2)
        epilogue, out_dtype = fused.epilogue, fused.out_dtype
        inputs += fused.inputs
    ir_text = (f"kernel {name} Conv node={node.name!r}\n"
               f"X: {x} {spec.dtype}[N, C, {spec.window.rank}-D] * W: {w}"
               f"{f' + B: {b}' if b else ''} -> {node.outputs[0]} {spec.dtype}\n"
               f"{spec.text()}\n"
               + ("direct: one multiply-add per tap on a [positions, channels] tile"
                  if spec.variant == "direct" else
                  "implicit GEMM: rows (n, output position), cols output channels of a group, "
                  f"K (channel, tap); tl.dot accumulating in {acc_type(spec.dtype)}")
               + (f"\n{fusion.text()}" if fusion is not None else ""))
    header = [f"ONNX node: {node.name} (Conv)", *ir_text.splitlines()[1:]]
    source = conv_source(KERNEL, header, spec, out_dtype, ctx.interpreted, epilogue,
                         ctx.dot_precision(spec.dtype))
    fn, path, cached = load_source(source, KERNEL, ctx)
    launcher = ConvLauncher(fn, spec, torch_dtype(out_dtype), ctx, node.name, fused)
    return KernelSpec(name, launcher, inputs, ir_text, source, path, cached)


@template("Conv")
class Conv(Template):
    kind = "tiled"
    epilogue = True  # on the output tile, before the one rounding store
    operand_prologues = True  # DequantizeLinear x and w: int8 tiles (int8_conv.dq_conv)

    def claim(self, node, ctx) -> str | None:
        spec = conv_spec(node, ctx)
        return spec if isinstance(spec, str) else None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        return build_conv(node, ctx, name, fusion)
