"""Reduction kernel templates: Reduce* over any set of axes, ArgMax and ArgMin.

Each output element is a row of the input's [kept, reduced] view (see :mod:`tritort.codegen.rowwise`);
a program sums (or maxes, multiplies, ...) its rows BLOCK_N columns at a time into a tile-sized
accumulator and folds it once at the end. Floats accumulate in fp32 (fp64 for double) and round
once on store; integer sums and products wrap in their own type, as onnxruntime's do. An empty
reduced set gives the op's identity (0, 1, -inf, +inf; NaN for the mean).
"""
from __future__ import annotations

from tritort.dtypes import FLOAT_TYPES, INT_TYPES

from .cache import KERNEL
from .emit import acc_type
from .rowwise import (Layout, TileFusion, TileSource, arg_best, check_dtypes, constant_ints,
                      extreme, normalize_axes, since_version, torch_dtype)
from .rowwise_launch import TileLauncher
from .templates import KernelSpec, Template, load_source, template

# op: (term accumulated per element, how terms combine, result from the folded `total`)
_REDUCE = {
    "ReduceSum": ("x", "add", "total"),
    "ReduceMean": ("x", "add", "total / N"),
    "ReduceMax": ("x", "max", "total"),
    "ReduceMin": ("x", "min", "total"),
    "ReduceProd": ("x", "mul", "total"),
    "ReduceL1": ("tl.abs(x)", "add", "total"),
    "ReduceL2": ("x * x", "add", "tl.sqrt(total)"),
    "ReduceLogSum": ("x", "add", "tl.log(total)"),
    "ReduceSumSquare": ("x * x", "add", "total"),
    "ReduceLogSumExp": (None, None, None),  # two passes, see _log_sum_exp
}
_INT_OPS = ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd")
_BOOL_OPS = ("ReduceMax", "ReduceMin")  # since opset 20


def _axes_input_since(op_type: str) -> int:
    """The first version taking axes as an input rather than an attribute."""
    return 13 if op_type == "ReduceSum" else 18


def reduced_axes(node, ctx, rank: int) -> tuple[int, ...] | str:
    """The sorted axes a Reduce* node reduces, or why they can't be known at load time."""
    from_input = since_version(node.op_type, ctx.opset) >= _axes_input_since(node.op_type)
    noop = bool(node.attrs.get("noop_with_empty_axes", 0)) if from_input else False
    if from_input:
        name = node.inputs[1] if len(node.inputs) > 1 else ""
        axes = constant_ints(ctx, name) if name else []
        if axes is None:
            return f"axes '{name}' is not a constant"
    else:
        axes = list(node.attrs.get("axes") or [])
    if rank == 0:
        return ()
    if not axes:
        # no axes: everything, or with noop_with_empty_axes nothing (the op's elementwise
        # part still applies, as in onnxruntime)
        return () if noop else tuple(range(rank))
    normalized = normalize_axes(axes, rank)
    return f"axes {axes} invalid for rank {rank}" if normalized is None else normalized


def _out_shape(reduced: tuple[int, ...], keepdims: bool):
    def shape(x_shape):
        if keepdims:
            return tuple(1 if a in reduced else d for a, d in enumerate(x_shape))
        return tuple(d for a, d in enumerate(x_shape) if a not in reduced)

    return shape


def _fold(k: TileSource, term: str, how: str, ct: str, floats: bool) -> None:
    """One pass accumulating ``term`` (of the loaded tile `x`) into `total`, one per row."""
    init = {"add": "0", "mul": "1", "max": None, "min": None}[how]
    if init is None:
        init = extreme(k.data_dtype, how == "min")
    k.line(f"acc = tl.full([BLOCK_M, BLOCK_N], {init}, {ct})")
    with k.columns(*k.data_tensors):
        k.line(f"x = {k.data()}")
        # masked lanes keep the accumulator as it is
        if how == "add":
            k.line(f"acc += tl.where(mask, {term}, 0)")
        elif how == "mul":
            k.line(f"acc = acc * tl.where(mask, {term}, 1)")
        elif floats:
            fn = k.combine(how)
            k.line(f"acc = {fn}(acc, tl.where(mask, {term}, acc))")
        else:
            k.line(f"acc = tl.{'maximum' if how == 'max' else 'minimum'}"
                   f"(acc, tl.where(mask, {term}, acc))")
    if how == "add":
        k.line("total = tl.sum(acc, axis=1)")
    elif how == "mul" or floats:
        k.line(f"total = tl.reduce(acc, 1, {k.combine(how)})")
    else:
        k.line(f"total = tl.{how}(acc, axis=1)")


def _log_sum_exp(k: TileSource, ct: str) -> str:
    """log(sum(exp(x - m))) + m with m the row max (0 where that is not finite)."""
    _fold(k, "x", "max", ct, True)
    k.line("shift = tl.where((total == total) & (tl.abs(total) != float('inf')), total, 0.0)")
    k.line(f"acc = tl.zeros([BLOCK_M, BLOCK_N], dtype={ct})")
    with k.columns(*k.data_tensors):
        k.line(f"x = {k.data()}")
        k.line("acc += tl.where(mask, tl.exp(x - shift[:, None]), 0.0)")
    k.line("total = tl.sum(acc, axis=1)")
    return "tl.log(total) + shift"


@template(*(op for op in _REDUCE if op != "ReduceLogSumExp"))
class Reduce(Template):
    kind = "rowwise"
    prologue = True  # computed on each loaded tile
    epilogue = True  # computed on each reduced row

    def claim(self, node, ctx) -> str | None:
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        if rank is None:
            return f"rank of '{x}' unknown at load time"
        allowed = FLOAT_TYPES | INT_TYPES if node.op_type in _INT_OPS else FLOAT_TYPES
        allowed |= {"bool"} if node.op_type in _BOOL_OPS else set()
        why = check_dtypes(ctx, [x], allowed, node.op_type)
        if why:
            return why
        axes = reduced_axes(node, ctx, rank)
        return axes if isinstance(axes, str) else None

    def build(self, node, ctx, name, fusion: TileFusion | None = None) -> KernelSpec:
        """The kernel, computing ``fusion``'s prologue on each loaded tile and its epilogue
        on each reduced row; the launcher takes the prologue's inputs in place of the
        node's input, then the epilogue's, and returns the stored rows."""
        x, y = node.inputs[0], node.outputs[0]
        rank = ctx.rank_of(x)
        reduced = reduced_axes(node, ctx, rank)
        keepdims = bool(node.attrs.get("keepdims", 1))
        dt = out_dt = ctx.dtype_of(x)
        ct = acc_type(dt)
        layout = Layout.reducing(rank, reduced)
        k = TileSource(name, node, layout, {"x": dt}, {"y": out_dt}, fusion)
        if node.op_type == "ReduceLogSumExp":
            result = _log_sum_exp(k, ct)
        else:
            term, how, result = _REDUCE[node.op_type]
            _fold(k, term, how, ct, dt in FLOAT_TYPES)
        k.finish_rows(result)
        source = k.render()
        fn, path, cached = load_source(source, KERNEL, ctx)
        out_shape = _out_shape(reduced, keepdims)
        stored = [out_dt] if not fusion or not fusion.epilogue or fusion.store_result else []
        stored += [dt_ for _, dt_ in fusion.row_outputs] if fusion else []
        launcher = TileLauncher(fn, layout, ctx.torch_device, ctx.interpreted,
                                **k.launch_args(rows=[(torch_dtype(d), out_shape)
                                                      for d in stored], keepdims=keepdims))
        ir = (f"kernel {name} {node.op_type} node={node.name!r}\n"
              f"  in: {x} {dt}[rank {rank}], {layout.text()}\n"
              f"  accumulate in {ct}, keepdims={int(keepdims)}\n"
              f"  out: {y} {out_dt}")
        if fusion:
            ir += "\n" + fusion.text()
        return KernelSpec(name, launcher, k.launch_inputs(x), ir, source, path, cached)


@template("ReduceLogSumExp")
class ReduceLogSumExp(Reduce):
    passes = 2  # the row max, then the sum of exp(x - max)


@template("ArgMax", "ArgMin")
class ArgReduce(Template):
    kind = "rowwise"

    def claim(self, node, ctx) -> str | None:
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        if not rank:
            return f"rank of '{x}' unknown at load time" if rank is None else "0-d input"
        why = check_dtypes(ctx, [x], FLOAT_TYPES | INT_TYPES, node.op_type)
        if why:
            return why
        if normalize_axes([node.attrs.get("axis", 0)], rank) is None:
            return f"axis {node.attrs.get('axis', 0)} invalid for rank {rank}"
        return None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        x, y = node.inputs[0], node.outputs[0]
        rank = ctx.rank_of(x)
        axis = normalize_axes([node.attrs.get("axis", 0)], rank)
        keepdims = bool(node.attrs.get("keepdims", 1))
        last = bool(node.attrs.get("select_last_index", 0))
        dt = ctx.dtype_of(x)
        layout = Layout.reducing(rank, axis)
        k = TileSource(name, node, layout, {"x": dt}, {"y": "int64"})
        arg_best(k, "x", node.op_type == "ArgMax", last)
        k.store_row("y", "best_idx")
        source = k.render()
        fn, path, cached = load_source(source, KERNEL, ctx)
        launcher = TileLauncher(fn, layout, ctx.torch_device, ctx.interpreted,
                                rows=[(torch_dtype("int64"), _out_shape(axis, keepdims))])
        ir = (f"kernel {name} {node.op_type} node={node.name!r}\n"
              f"  in: {x} {dt}[rank {rank}], {layout.text()}\n"
              f"  {'last' if last else 'first'} index, keepdims={int(keepdims)}\n"
              f"  out: {y} int64")
        return KernelSpec(name, launcher, [x], ir, source, path, cached)


# Softmax and the normalizations register on import, through the names above.
from . import norms  # noqa: E402,F401
