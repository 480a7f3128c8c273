"""Pooling templates: MaxPool and AveragePool over windows, GlobalMaxPool and GlobalAveragePool.

MaxPool / AveragePool: a program owns BLOCK output elements of Y [N, C, *O] (flattened, the
last axis fastest, so stores are contiguous) and loops over the kernel taps, reading X
through its strides; positions outside the input are padding. The window geometry (pads for
auto_pad, ceil_mode's extra window) is :class:`tritort.codegen.conv.Window`'s, resolved per input
shape at launch, so sizes and pads are runtime arguments and a kernel is specialized on rank,
dtype and the kernel / stride / dilation attributes only. Values are computed in fp32 (fp64
for double, int32 for int8/uint8) and rounded once on store.

NaN as in onnx.reference (onnxruntime's answers depend on where a NaN sits in a window or a
SIMD lane, except in its 1-D MaxPool, which agrees): MaxPool skips NaN, a window holding only
NaN gives NaN; GlobalMaxPool and the averages propagate it. The Global* ops are row reductions
over the spatial axes (:mod:`tritort.codegen.rowwise`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from tritort.dtypes import FLOAT_TYPES

from .launch import launch_kernel
from . import conv
from .cache import KERNEL
from .emit import acc_type, compute_type, helper_source, store
from .rowwise import Layout, TileSource, check_dtypes, extreme, torch_dtype
from .rowwise_launch import TileLauncher
from .templates import KernelSpec, Template, kernel_signature, load_source, template

SMALL_INTS = frozenset({"int8", "uint8"})  # MaxPool computes them in int32
# the interpreter pays per operation, not per element: big blocks (tests still see several
# programs and a ragged last block on their larger shapes)
_INTERPRETER_BLOCK = 2048
_GPU_BLOCK = 256


def pick_block(total: int, interpreted: bool) -> tuple[int, int]:
    """(BLOCK, num_warps) for ``total`` output elements."""
    cap = _INTERPRETER_BLOCK if interpreted else _GPU_BLOCK
    block = min(1 << max(total - 1, 0).bit_length(), cap)
    return max(block, 16), 4 if block >= 128 else 1


# ------------------------------------------------------------------ windowed pools


def _pool_params(node, ctx) -> tuple[conv.Window, bool, int] | str:
    """(window, with Indices, storage_order), or why the node is declined."""
    x = node.inputs[0]
    rank = ctx.rank_of(x)
    if rank is None:
        return f"rank of '{x}' unknown at load time"
    if not 3 <= rank <= 2 + conv.MAX_SPATIAL_RANK:
        return f"{node.op_type} over {rank - 2} spatial axes (Triton's takes 1 to " \
               f"{conv.MAX_SPATIAL_RANK})"
    allowed = FLOAT_TYPES | SMALL_INTS if node.op_type == "MaxPool" else FLOAT_TYPES
    why = check_dtypes(ctx, [x], allowed, node.op_type)
    if why:
        return why
    if "kernel_shape" not in node.attrs:
        return "kernel_shape missing"
    ceil_mode = bool(node.attrs.get("ceil_mode", 0))
    window = conv.window_from_attrs(node.attrs, rank - 2, None, ceil_mode)
    if isinstance(window, str):
        return window
    with_indices = len(node.outputs) > 1 and bool(node.outputs[1])
    storage_order = int(node.attrs.get("storage_order", 0))
    if storage_order not in (0, 1):
        return f"storage_order {storage_order}"
    return window, with_indices, storage_order


def _flat_index(r: int, storage_order: int) -> str:
    """The Indices value of input position (n, c, i0..): X's flat row-major offset, its
    spatial part column-major (i0 fastest) with storage_order 1."""
    if storage_order == 0 or r == 1:
        expr = "nc"
        for j in range(r):
            expr = f"({expr} * S{j} + i{j})"
        return expr
    spatial = " + ".join(f"i{j}" + "".join(f" * S{a}" for a in range(j)) for j in range(r))
    return f"nc * {' * '.join(f'S{j}' for j in range(r))} + {spatial}"


def pool_source(name: str, header: list[str], op: str, window: conv.Window, dtype: str,
                include_pad: bool = False, with_indices: bool = False,
                storage_order: int = 0) -> str:
    """A MaxPool / AveragePool kernel over ``window.rank`` spatial axes."""
    r = window.rank
    ct = acc_type(dtype)
    sizes = [f"{p}{j}" for p in "SOPE" for j in range(r)]  # in, out, begin pad, end pad
    strides = [f"sx{j}" for j in range(r + 2)] + [f"sy{j}" for j in range(r + 2)]
    params = ["x", "y"] + (["ind"] if with_indices else []) + ["TOTAL", "C", *sizes, *strides,
                                                               "BLOCK: tl.constexpr"]
    lines = ["    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
             "    live = idx < TOTAL",
             "    # output element -> (n, c, output position), the last axis fastest",
             "    rem = idx"]
    for j in range(r - 1, -1, -1):
        lines += [f"    o{j} = rem % O{j}", f"    rem = rem // O{j}"]
    lines += ["    nc = rem", "    c = rem % C", "    n = rem // C"]
    lines += [f"    h{j} = {conv.scaled(f'o{j}', s)} - P{j}" for j, s in enumerate(window.strides)]
    lines.append("    x_base = x + (n * sx0 + c * sx1)")
    floats = dtype in FLOAT_TYPES
    if op == "MaxPool":
        lowest = "float('-inf')" if floats else extreme(dtype, largest=False)
        lines.append(f"    acc = tl.full([BLOCK], {lowest}, {ct})")
        if floats:
            lines.append("    found = tl.zeros([BLOCK], dtype=tl.int1)  # a non-NaN value seen")
        if with_indices:
            lines.append("    best = tl.full([BLOCK], -1, tl.int64)")
    else:
        lines += [f"    acc = tl.zeros([BLOCK], dtype={ct})",
                  f"    count = tl.zeros([BLOCK], dtype={ct})"]
    loop = "tl.static_range" if window.taps <= 16 else "range"
    lines.append(f"    for tap in {loop}(0, {window.taps}):")
    t = conv.tap_indices("tap", window.kernel)
    body = [f"t{j} = {t[j]}" for j in range(r)]
    body += [f"i{j} = h{j} + {conv.scaled(f't{j}', d)}" for j, d in enumerate(window.dilations)]
    bounds = " & ".join(f"(i{j} >= 0) & (i{j} < S{j})" for j in range(r))
    body.append(f"valid = live & {bounds}")
    offsets = " + ".join(f"i{j} * sx{j + 2}" for j in range(r))
    if op == "MaxPool":
        body.append(f"v = tl.load(x_base + ({offsets}), mask=valid, other={lowest}).to({ct})")
        body.append("better = v > acc  # NaN never is; ties keep the first")
        if with_indices:
            # the first valid tap stands in until a value beats the initial lowest
            body.append(f"best = tl.where(better | (valid & (best < 0)), "
                        f"{_flat_index(r, storage_order)}, best)")
        body.append("acc = tl.where(better, v, acc)")
        if floats:
            body.append("found = found | (v == v)")
    else:
        body.append(f"acc += tl.load(x_base + ({offsets}), mask=valid, other=0).to({ct})")
        if include_pad:  # explicit (and SAME) pads count, ceil_mode's overhang does not
            counted = "live & " + " & ".join(f"(i{j} < S{j} + E{j})" for j in range(r))
        else:
            counted = "valid"
        body.append(f"count += ({counted}).to({ct})")
    lines += ["        " + line for line in body]
    if op == "MaxPool":
        if floats:
            lines.append("    acc = tl.where(found, acc, float('nan'))")
        result = "acc"
    else:
        result = "acc / count"
    y_off = " + ".join(["n * sy0", "c * sy1"] + [f"o{j} * sy{j + 2}" for j in range(r)])
    lines.append(f"    y_off = {y_off}")
    lines.append("    " + store("y + y_off", result, dtype, "live"))
    if with_indices:
        lines.append("    tl.store(ind + y_off, best, mask=live)")
    text = ["# tritort pool kernel", *[f"# {h}" for h in header],
            "import triton", "import triton.language as tl"]
    helpers = helper_source("\n".join(lines))
    if helpers:
        text.append(helpers.rstrip("\n"))
    text += ["", "", "@triton.jit", *kernel_signature(name, params), *lines]
    return "\n".join(text) + "\n"


class PoolLauncher:
    """Resolves the window for the input's shape, allocates Y (and Indices), launches."""

    def __init__(self, fn: Any, window: conv.Window, dtype: Any, with_indices: bool, device: Any,
                 interpreted: bool, node_name: str, op: str) -> None:
        self.fn, self.window, self.dtype, self.with_indices = fn, window, dtype, with_indices
        self.device, self.interpreted, self.where = device, interpreted, \
            f"{op} node '{node_name}'"

    def __call__(self, x: Any) -> tuple:
        import torch

        win = self.window
        if x.dim() != win.rank + 2:
            raise ValueError(f"{self.where}: X has shape {list(x.shape)}, expected rank "
                             f"{win.rank + 2}")
        outs, begins, ends = win.resolve(tuple(x.shape[2:]))
        if any(o < 0 for o in outs):
            raise ValueError(f"{self.where}: input spatial shape {list(x.shape[2:])} is "
                             f"smaller than the window ({win.text()})")
        shape = (*x.shape[:2], *outs)
        y = torch.empty(shape, dtype=self.dtype, device=self.device)
        ind = torch.empty(shape, dtype=torch.int64, device=self.device) \
            if self.with_indices else None
        total = y.numel()
        if total:
            block, warps = pick_block(total, self.interpreted)
            fn_args = [x, y] + ([ind] if ind is not None else [])
            with np.errstate(all="ignore"):  # the interpreter computes masked lanes' 0 / 0
                launch_kernel(self.fn, (math.ceil(total / block),), *fn_args, total, x.shape[1],
                       *x.shape[2:], *outs, *begins, *ends, *x.stride(), *y.stride(),
                       BLOCK=block, num_warps=warps)
        return (y, ind) if ind is not None else (y,)


@template("MaxPool", "AveragePool")
class Pool(Template):
    kind = "window"

    def claim(self, node, ctx) -> str | None:
        params = _pool_params(node, ctx)
        return params if isinstance(params, str) else None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        window, with_indices, storage_order = _pool_params(node, ctx)
        x = node.inputs[0]
        dt = ctx.dtype_of(x)
        include_pad = node.op_type == "AveragePool" and \
            bool(node.attrs.get("count_include_pad", 0))
        what = ("max, NaN skipped" if node.op_type == "MaxPool" else
                f"mean, count_include_pad={int(include_pad)}")
        if with_indices:
            what += f", Indices (storage_order={storage_order})"
        ir_text = (f"kernel {name} {node.op_type} node={node.name!r}\n"
                   f"X: {x} {dt}[N, C, {window.rank}-D] -> {node.outputs[0]} {dt}\n"
                   f"{window.text()}\n{what}; one output element per lane, looping over "
                   f"{window.taps} taps")
        header = [f"ONNX node: {node.name} ({node.op_type})", *ir_text.splitlines()[1:]]
        source = pool_source(KERNEL, header, node.op_type, window, dt, include_pad,
                             with_indices, storage_order)
        fn, path, cached = load_source(source, KERNEL, ctx)
        launcher = PoolLauncher(fn, window, torch_dtype(dt), with_indices, ctx.torch_device,
                                ctx.interpreted, node.name, node.op_type)
        return KernelSpec(name, launcher, [x], ir_text, source, path, cached)


# ------------------------------------------------------------------ global pools


@template("GlobalAveragePool", "GlobalMaxPool")
class GlobalPool(Template):
    kind = "rowwise"

    def claim(self, node, ctx) -> str | None:
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        if rank is None:
            return f"rank of '{x}' unknown at load time"
        if rank < 3:
            return f"{node.op_type} of a rank-{rank} input (needs N, C and a spatial axis)"
        return check_dtypes(ctx, [x], FLOAT_TYPES, node.op_type)

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        dt = ctx.dtype_of(x)
        ct = compute_type(dt)
        layout = Layout.reducing(rank, range(2, rank))
        k = TileSource(name, node, layout, {"x": dt}, {"y": dt})
        if node.op_type == "GlobalAveragePool":
            k.line(f"acc = tl.zeros([BLOCK_M, BLOCK_N], dtype={ct})")
            with k.columns("x"):
                k.line(f"acc += tl.where(mask, {k.load('x', ct)}, 0.0)")
            result, what = "tl.sum(acc, axis=1) / N", "mean"
        else:  # NaN propagates, as in onnx.reference and ReduceMax
            combine = k.combine("max")
            k.line(f"acc = tl.full([BLOCK_M, BLOCK_N], float('-inf'), {ct})")
            with k.columns("x"):
                k.line(f"acc = {combine}(acc, tl.where(mask, {k.load('x', ct)}, acc))")
            result, what = f"tl.reduce(acc, 1, {combine})", "max, NaN propagated"
        k.store_row("y", result)
        source = k.render()
        fn, path, cached = load_source(source, KERNEL, ctx)
        launcher = TileLauncher(fn, layout, ctx.torch_device, ctx.interpreted,
                                rows=[(torch_dtype(dt), lambda s: (*s[:2], *(1,) * (len(s) - 2)))])
        ir_text = (f"kernel {name} {node.op_type} node={node.name!r}\n"
                   f"  in: {x} {dt}[rank {rank}], {layout.text()}\n"
                   f"  {what} in {ct}\n  out: {node.outputs[0]} {dt}")
        return KernelSpec(name, launcher, [x], ir_text, source, path, cached)
