"""Softmax, LogSoftmax, Hardmax and the normalizations as row-wise tile kernels.

Each works on the input's [kept, reduced] view (see :mod:`tritort.codegen.rowwise`): statistics are
gathered in passes over a row's columns, then a last pass writes every element. Parameters
(Scale, B, running mean, ...) are broadcast to the input's shape with zero strides so they
share its index math. Registered by importing :mod:`tritort.codegen.reductions`.
"""
from __future__ import annotations

from typing import Callable, Sequence

from tritort.dtypes import FLOAT_TYPES

from .cache import KERNEL
from .emit import acc_type
from .rowwise import (Layout, TileFusion, TileSource, arg_best, check_dtypes, normalize_axes,
                      since_version, torch_dtype)
from .rowwise_launch import TileLauncher, row_in_cache
from .templates import KernelSpec, Template, load_source, template


def built(name, node, ctx, k: TileSource, inputs, describe: str, **launch) -> KernelSpec:
    source = k.render()
    fn, path, cached = load_source(source, KERNEL, ctx)
    launcher = TileLauncher(fn, k.layout, ctx.torch_device, ctx.interpreted,
                            **k.launch_args(**launch))
    dts = ", ".join(f"{t} {dt}" for t, dt in {**k.full, **k.rows}.items())
    ir = (f"kernel {name} {node.op_type} node={node.name!r}\n"
          f"  rank {k.layout.rank}: {k.layout.text()}\n  {dts}\n  {describe}")
    return KernelSpec(name, launcher, inputs, ir, source, path, cached)


def trailing_axes(rank: int, axis: int) -> tuple[int, ...] | str:
    """Axes axis..rank-1, or why axis is out of range."""
    a = normalize_axes([axis], rank)
    return f"axis {axis} invalid for rank {rank}" if a is None else tuple(range(a[0], rank))


# ------------------------------------------------------------------- softmax and friends

def _softmax_axes(node, ctx, rank: int) -> tuple[int, ...] | str:
    coerce_2d = since_version(node.op_type, ctx.opset) < 13
    axis = node.attrs.get("axis", 1 if coerce_2d else -1)
    if rank == 0:
        return ()
    if coerce_2d:  # before opset 13 the input is flattened to 2-D at axis
        return trailing_axes(rank, axis)
    a = normalize_axes([axis], rank)
    return f"axis {axis} invalid for rank {rank}" if a is None else a


class _SoftmaxAxis(Template):
    """Softmax-like ops over the axes of their opset's ``axis`` rule."""

    kind = "rowwise"

    def claim(self, node, ctx) -> str | None:
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        if rank is None:
            return f"rank of '{x}' unknown at load time"
        why = check_dtypes(ctx, [x], FLOAT_TYPES, node.op_type)
        axes = _softmax_axes(node, ctx, rank)
        return why or (axes if isinstance(axes, str) else None)


@template("Hardmax")
class Hardmax(_SoftmaxAxis):
    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        dt = ctx.dtype_of(x)
        layout = Layout.reducing(rank, _softmax_axes(node, ctx, rank))
        k = TileSource(name, node, layout, {"x": dt, "y": dt}, {})
        arg_best(k, "x", largest=True, last=False)
        with k.columns("y"):
            k.store_full("y", "tl.where(cols[None, :] == best_idx[:, None], 1.0, 0.0)")
        return built(name, node, ctx, k, [x], "one-hot of the first row max",
                      full=[torch_dtype(dt)])


@template("Softmax", "LogSoftmax")
class Softmax(_SoftmaxAxis):
    passes = 2  # the row max and sum, then every element
    prologue = True  # computed in both passes
    epilogue = True  # on each element of the result
    per_element_epilogue = True

    def build(self, node, ctx, name, fusion: TileFusion | None = None) -> KernelSpec:
        """With a fused prologue the launcher takes the prologue's inputs in place of the
        node's input; with an epilogue its inputs last."""
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        dt = ctx.dtype_of(x)
        ct = acc_type(dt)
        layout = Layout.reducing(rank, _softmax_axes(node, ctx, rank))
        k = TileSource(name, node, layout, {"x": dt, "y": dt}, {}, fusion)
        # pass 1: the row max and the sum of exp(x - max), rescaled as the max grows
        k.line(f"top = tl.full([BLOCK_M], float('-inf'), {ct})")
        k.line(f"total = tl.zeros([BLOCK_M], dtype={ct})")
        with k.columns(*k.data_tensors):
            k.line(f"x = tl.where(mask, {k.data()}, float('-inf'))")
            k.line("new_top = tl.maximum(top, tl.max(x, axis=1))")
            # rows that are all -inf so far shift by 0: exp(-inf - -inf) would be NaN
            k.line("shift = tl.where(new_top == float('-inf'), 0.0, new_top)")
            k.line("total = total * tl.exp(top - shift) + "
                   "tl.sum(tl.exp(x - shift[:, None]), axis=1)")
            k.line("top = new_top")
        k.line("shift = tl.where(top == float('-inf'), 0.0, top)")
        # pass 2: every element
        with k.columns(*k.data_tensors, *k.outputs()):
            k.line(f"x = {k.data()}")
            if node.op_type == "Softmax":
                k.finish_full("tl.exp(x - shift[:, None]) / total[:, None]")
            else:
                k.finish_full("x - shift[:, None] - tl.log(total)[:, None]")
        fused = f"\n{fusion.text()}" if fusion else ""
        return built(name, node, ctx, k, k.launch_inputs(x),
                      f"{node.op_type} computed in {ct}{fused}", full=[torch_dtype(dt)])


# ----------------------------------------------------------------------- normalizations

def row_statistics(k: TileSource, st: str, eps: float, rms: bool = False,
                   data: Callable[[], str] | None = None, tensors: Sequence[str] = ("x",)) -> None:
    """Passes leaving each row's ``inv_std`` = 1/sqrt(var + eps) in type st: var is the mean
    square with ``rms``, else the centred variance, and ``mean`` is left too. ``data()`` is
    the data tile's text in st inside ``columns(*tensors)`` (default: x loaded)."""
    data = data or (lambda: k.load("x", st))
    k.line(f"acc = tl.zeros([BLOCK_M, BLOCK_N], dtype={st})")
    if rms:
        with k.columns(*tensors):
            k.line(f"x = tl.where(mask, {data()}, 0.0)")
            k.line("acc += x * x")
    else:
        with k.columns(*tensors):
            k.line(f"acc += tl.where(mask, {data()}, 0.0)")
        k.line("mean = tl.sum(acc, axis=1) / N")
        # the variance of the centred values: no cancellation as in E[x^2] - E[x]^2
        k.line(f"acc = tl.zeros([BLOCK_M, BLOCK_N], dtype={st})")
        with k.columns(*tensors):
            k.line(f"centred = tl.where(mask, ({data()}) - mean[:, None], 0.0)")
            k.line("acc += centred * centred")
    k.line(f"inv_std = 1.0 / tl.sqrt(tl.sum(acc, axis=1) / N + {float(eps)!r})")


def stats_type(node, ctx) -> str | None:
    """The statistics' compute type for stash_type, or None if unsupported."""
    stash = node.attrs.get("stash_type", 1)
    if ctx.dtype_of(node.inputs[0]) == "double" or stash == 11:
        return "tl.float64"
    return "tl.float32" if stash == 1 else None


def row_shape(axes: tuple[int, ...]):
    return lambda shape: tuple(1 if a in axes else d for a, d in enumerate(shape))


@template("LayerNormalization", "RMSNormalization")
class LayerNorm(Template):
    kind = "rowwise"
    passes = 3  # mean, variance, output (RMSNormalization skips the mean)
    prologue = True  # a residual Add (+ bias) computed in each pass, its sum stored once
    epilogue = True  # on each element of the result (single-output nodes)
    per_element_epilogue = True

    def memory_passes(self, node, shape) -> int:
        """A row that fits a tile is read from memory once: later passes over it hit the
        cache of the program that just loaded it."""
        axes = trailing_axes(len(shape), node.attrs.get("axis", -1))
        if isinstance(axes, str):
            return self.passes
        return 1 if row_in_cache([shape[a] for a in axes]) else self.passes

    def claim(self, node, ctx) -> str | None:
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        if not rank:
            return f"rank of '{x}' unknown at load time" if rank is None else "0-d input"
        why = check_dtypes(ctx, node.inputs, FLOAT_TYPES, node.op_type)
        if why:
            return why
        if stats_type(node, ctx) is None:
            return f"stash_type {node.attrs.get('stash_type')}"
        for p in node.inputs[1:]:
            if p and (ctx.rank_of(p) is None or ctx.rank_of(p) > rank):
                return f"rank of '{p}' unknown or above the input's"
        axes = trailing_axes(rank, node.attrs.get("axis", -1))
        return axes if isinstance(axes, str) else None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        dt = ctx.dtype_of(x)
        axes = trailing_axes(rank, node.attrs.get("axis", -1))
        eps = node.attrs.get("epsilon", 1e-5)
        st, xt = stats_type(node, ctx), acc_type(dt)
        params = [p for p in node.inputs[1:3] if p]
        names = ["scale", "bias"][:len(params)]
        outputs = list(node.outputs) + [""] * (3 - len(node.outputs))
        # Mean and InvStdDev: their declared type, else the stash type
        stash = "double" if node.attrs.get("stash_type", 1) == 11 else "float"
        stats = {t: ctx.dtype_of(o) or stash
                 for t, o in zip(["mean_out", "inv_out"], outputs[1:]) if o}
        full = {"x": dt, **{t: ctx.dtype_of(p) for t, p in zip(names, params)}, "y": dt}
        k = TileSource(name, node, Layout.reducing(rank, axes), full, stats, fusion)
        rms = node.op_type == "RMSNormalization"
        row_statistics(k, st, eps, rms, lambda: k.data(st), k.data_tensors)
        for t in stats:
            k.store_row(t, "mean" if t == "mean_out" else "inv_std")
        with k.columns(*k.data_tensors, *names, *k.outputs()):
            centred = "x" if rms else "(x - mean[:, None])"
            k.line(f"x = {k.data(st)}")
            # the spec rounds the normalized value to X's type before scaling
            k.line(f"normalized = {k.round_to(f'{centred} * inv_std[:, None]', dt)}")
            y = "normalized * " + k.load("scale", xt)
            if "bias" in names:
                y += " + " + k.load("bias", xt)
            k.finish_full(y)
        row_outs = [(torch_dtype(stats[t]) if t in stats else None, row_shape(axes))
                    for t in ["mean_out", "inv_out"]][:max(0, len(node.outputs) - 1)]
        fused = f"\n{fusion.text()}" if fusion else ""
        return built(name, node, ctx, k, k.launch_inputs(x, params),
                      f"statistics in {st}, epsilon={eps!r}{fused}", full=[torch_dtype(dt)],
                      rows=row_outs)


def _per_channel(rank: int):
    """Broadcast (C,) parameters against (N, C, ...); higher-rank ones align as numpy does."""
    def prepare(x, *params):
        return [p.reshape((-1,) + (1,) * (rank - 2)) if p.dim() == 1 else p for p in params]

    return prepare


@template("InstanceNormalization", "BatchNormalization")
class ChannelNorm(Template):
    kind = "rowwise"
    passes = 3  # mean, variance, output (BatchNormalization's statistics are inputs: one)

    def claim(self, node, ctx) -> str | None:
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        if rank is None or rank < 2:
            return f"rank of '{x}' unknown at load time" if rank is None else "input below 2-D"
        why = check_dtypes(ctx, node.inputs, FLOAT_TYPES, node.op_type)
        if why:
            return why
        if node.op_type == "BatchNormalization":
            if node.attrs.get("training_mode", 0) or len([o for o in node.outputs if o]) > 1:
                return "training mode (batch statistics) runs on the CPU"
        for p in node.inputs[1:]:
            if ctx.rank_of(p) is None or ctx.rank_of(p) > rank:
                return f"rank of '{p}' unknown or above the input's"
        return None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        dt = ctx.dtype_of(x)
        ct = acc_type(dt)
        eps = float(node.attrs.get("epsilon", 1e-5))
        instance = node.op_type == "InstanceNormalization"
        names = ["scale", "bias"] if instance else ["scale", "bias", "mean", "var"]
        full = {"x": dt, **{t: ctx.dtype_of(p) for t, p in zip(names, node.inputs[1:])},
                "y": dt}
        k = TileSource(name, node, Layout.reducing(rank, range(2, rank)), full, {})
        if instance:
            row_statistics(k, ct, eps)
            formula = "(x - mean[:, None]) * inv_std[:, None] * scale + bias"
        else:
            formula = f"(x - mean) * (scale / tl.sqrt(var + {eps!r})) + bias"
        with k.columns(*full):
            for t in full:
                if t != "y":
                    k.line(f"{t} = {k.load(t, ct)}")
            k.store_full("y", formula)
        what = "per (n, c) statistics" if instance else "inference with running statistics"
        return built(name, node, ctx, k, node.inputs[:len(names) + 1],
                      f"{what} in {ct}, epsilon={eps!r}", full=[torch_dtype(dt)],
                      prepare=_per_channel(rank))


# onnxruntime's normalizations share these passes; their rows register on import.
from . import norms_contrib  # noqa: E402,F401
