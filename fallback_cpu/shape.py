"""Shape kernels of the NumPy provider: ops that move or copy data without arithmetic.

Most results are views of their input where numpy allows it (Reshape, Squeeze,
Transpose, Slice, Expand); kernels never write into an input.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from onnx import numpy_helper

from tritort.dtypes import numpy_dtype
from tritort.errors import InvalidArgument

from .registry import NodeContext, register


def int_list(values) -> list[int]:
    """An int64 tensor or attribute list as Python ints."""
    return [int(v) for v in np.asarray(values).reshape(-1)]


def norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [norm_axis(int(a), rank) for a in axes]


def fill_value_of(dtype: np.dtype):
    """The spec's default padding/fill value: 0, False or the empty string."""
    return "" if dtype == object else np.zeros((), dtype)[()]


# ---------------------------------------------------------------- reshaping


def reshape_to(x: np.ndarray, shape: Sequence[int], allowzero: bool = False) -> np.ndarray:
    target = [int(s) for s in shape]
    if not allowzero:  # 0 copies the input's dimension
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    if -1 in target:
        known = int(np.prod([s for s in target if s != -1], dtype=np.int64))
        target[target.index(-1)] = x.size // known if known else 0
    return x.reshape(target)


@register("Reshape", since=[1, 5, 13, 14, 19, 21, 23, 24, 25])
def reshape(ctx: NodeContext):
    if ctx.since_version < 5:
        shape_attr = ctx.attr("shape", [])
        return lambda x: (reshape_to(x, shape_attr),)
    allowzero = bool(ctx.attr("allowzero", 0))
    return lambda x, shape: (reshape_to(x, int_list(shape), allowzero),)


@register("Flatten", since=[1, 9, 11, 13, 21, 23, 24, 25])
def flatten(ctx: NodeContext):
    axis = ctx.attr("axis", 1)

    def run(x):
        a = axis + x.ndim if axis < 0 else axis
        outer = int(np.prod(x.shape[:a], dtype=np.int64))
        inner = int(np.prod(x.shape[a:], dtype=np.int64))
        return (x.reshape(outer, inner),)

    return run


def squeeze_axes(x: np.ndarray, axes) -> np.ndarray:
    if axes is None or len(axes) == 0:
        return x.reshape([d for d in x.shape if d != 1])
    return np.squeeze(x, axis=tuple(norm_axes(axes, x.ndim)))


def unsqueeze_axes(x: np.ndarray, axes) -> np.ndarray:
    out_rank = x.ndim + len(axes)
    positions = sorted(norm_axes(axes, out_rank))
    shape = list(x.shape)
    for p in positions:
        shape.insert(p, 1)
    return x.reshape(shape)


@register("Squeeze", since=[1, 11, 13, 21, 23, 24, 25])
def squeeze(ctx: NodeContext):
    if ctx.since_version < 13:
        axes = ctx.attr("axes")
        return lambda x: (squeeze_axes(x, axes),)
    return lambda x, axes=None: (squeeze_axes(x, None if axes is None else int_list(axes)),)


@register("Unsqueeze", since=[1, 11, 13, 21, 23, 24, 25])
def unsqueeze(ctx: NodeContext):
    if ctx.since_version < 13:
        axes = ctx.attr("axes", [])
        return lambda x: (unsqueeze_axes(x, axes),)
    return lambda x, axes: (unsqueeze_axes(x, int_list(axes)),)


@register("Transpose", since=[1, 13, 21, 23, 24, 25])
def transpose(ctx: NodeContext):
    perm = ctx.attr("perm")

    def run(x):
        return (np.transpose(x, perm if perm is not None else None),)

    return run


@register("DepthToSpace", since=[1, 11, 13, 28])
def depth_to_space(ctx: NodeContext):
    bs = ctx.attr("blocksize")
    crd = ctx.attr("mode", "DCR") == "CRD"

    def run(x):
        b, c, h, w = x.shape
        if crd:
            t = x.reshape(b, c // (bs * bs), bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
        else:
            t = x.reshape(b, bs, bs, c // (bs * bs), h, w).transpose(0, 3, 4, 1, 5, 2)
        return (t.reshape(b, c // (bs * bs), h * bs, w * bs),)

    return run


@register("SpaceToDepth", since=[1, 13, 28])
def space_to_depth(ctx: NodeContext):
    bs = ctx.attr("blocksize")
    crd = ctx.attr("mode", "DCR") == "CRD"

    def run(x):
        b, c, h, w = x.shape
        t = x.reshape(b, c, h // bs, bs, w // bs, bs)
        t = t.transpose(0, 1, 3, 5, 2, 4) if crd else t.transpose(0, 3, 5, 1, 2, 4)
        return (t.reshape(b, c * bs * bs, h // bs, w // bs),)

    return run


# ------------------------------------------------------- joining and splitting


@register("Concat", since=[1, 4, 11, 13])
def concat(ctx: NodeContext):
    axis = ctx.attr("axis", 1)  # v1 defaulted to 1

    def run(*xs):
        xs = [x for x in xs if x is not None]
        ax = norm_axis(axis, xs[0].ndim)
        # a C-ordered result: np.concatenate follows its inputs' layout, and a transposed view
        # among them (ViT's patch tokens) would make every later elementwise op strided
        shape = list(xs[0].shape)
        shape[ax] = sum(x.shape[ax] for x in xs)
        out = np.empty(shape, dtype=np.result_type(*xs))
        return (np.concatenate(xs, axis=ax, out=out),)

    return run


def split_sizes(dim: int, split, parts: int) -> list[int]:
    if split is not None and len(split):
        return int_list(split)
    chunk = -(-dim // parts)  # ceil: the last chunk may be smaller (v18)
    return [min(chunk, max(dim - i * chunk, 0)) for i in range(parts)]


@register("Split", since=[1, 2, 11, 13, 18])
def split(ctx: NodeContext):
    axis = ctx.attr("axis", 0)
    attr_split = ctx.attr("split") if ctx.since_version < 13 else None
    parts = ctx.attr("num_outputs") or ctx.num_outputs

    def run(x, split_input=None):
        a = norm_axis(axis, x.ndim)
        sizes = split_sizes(x.shape[a], split_input if split_input is not None else attr_split,
                            parts)
        bounds = np.cumsum(sizes)[:-1]
        return tuple(np.split(x, bounds, axis=a))

    return run


@register("Tile", since=[1, 6, 13])
def tile(ctx: NodeContext):
    if ctx.since_version < 6:  # v1: repeat `tiles` copies along one `axis`
        def run_v1(x, tiles, axis):
            reps = [1] * x.ndim
            reps[norm_axis(int(axis), x.ndim)] = int(tiles)
            return (np.tile(x, reps),)
        return run_v1
    return lambda x, repeats: (np.tile(x, int_list(repeats)),)


@register("Expand", since=[8, 13])
def expand(ctx: NodeContext):
    def run(x, shape):
        out_shape = np.broadcast_shapes(x.shape, tuple(int_list(shape)))
        return (np.broadcast_to(x, out_shape),)

    return run


# ----------------------------------------------------------------- slicing


def _onnx_slice(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX's clamping, which differs from Python's for negative steps and starts < -dim."""
    if step == 0:
        raise ValueError("Slice step cannot be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)  # -1 would mean "last" to Python


def slice_view(x: np.ndarray, starts, ends, axes=None, steps=None) -> np.ndarray:
    starts, ends = int_list(starts), int_list(ends)
    axes = list(range(len(starts))) if axes is None else norm_axes(int_list(axes), x.ndim)
    steps = [1] * len(starts) if steps is None else int_list(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise InvalidArgument(f"Slice: starts {starts}, ends {ends}, axes {axes} and steps "
                              f"{steps} must have one value per sliced axis (the same length)")
    if len(set(axes)) != len(axes):
        raise InvalidArgument(f"Slice: axes {axes} repeat an axis")
    index = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[a] = _onnx_slice(s, e, st, x.shape[a])
    return x[tuple(index)]


@register("Slice", since=[1, 10, 11, 13])
def slice_op(ctx: NodeContext):
    if ctx.since_version < 10:
        starts, ends, axes = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes")
        return lambda x: (slice_view(x, starts, ends, axes),)
    return lambda x, starts, ends, axes=None, steps=None: (
        slice_view(x, starts, ends, axes, steps),)


def pad_array(x: np.ndarray, pads: Sequence[int], mode: str, value=None,
              axes: Sequence[int] | None = None) -> np.ndarray:
    rank = x.ndim
    axes = list(range(rank)) if axes is None else norm_axes(axes, rank)
    n = len(axes)
    before, after = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        before[a], after[a] = int(pads[i]), int(pads[n + i])
    # Negative pads crop.
    crop = tuple(slice(max(-b, 0), x.shape[d] - max(-e, 0)) for d, (b, e) in
                 enumerate(zip(before, after)))
    x = x[crop]
    before = [max(b, 0) for b in before]
    after = [max(e, 0) for e in after]
    if mode == "constant":
        out_shape = [d + b + e for d, b, e in zip(x.shape, before, after)]
        fill = fill_value_of(x.dtype) if value is None else value
        out = np.full(out_shape, fill, dtype=x.dtype)
        out[tuple(slice(b, b + d) for b, d in zip(before, x.shape))] = x
        return out
    if mode not in ("reflect", "edge", "wrap"):
        raise ValueError(f"Pad: unsupported mode {mode!r}")
    return np.pad(x, list(zip(before, after)), mode=mode)


@register("Pad", since=[1, 2, 11, 13, 18, 19, 21, 23, 24, 25])
def pad(ctx: NodeContext):
    mode = ctx.attr("mode", "constant")
    if ctx.since_version < 11:
        pads = ctx.attr("paddings" if ctx.since_version < 2 else "pads")
        value = ctx.attr("value", 0.0)
        return lambda x: (pad_array(x, pads, mode, x.dtype.type(value)),)

    def run(x, pads, constant_value=None, axes=None):
        value = None
        if constant_value is not None and constant_value.size:
            value = constant_value.reshape(-1)[0]
        return (pad_array(x, int_list(pads), mode, value,
                          None if axes is None else int_list(axes)),)

    return run


# ---------------------------------------------------------- shape queries


@register("Shape", since=[1, 13, 15, 19, 21, 23, 24, 25])
def shape(ctx: NodeContext):
    start, end = ctx.attr("start", 0), ctx.attr("end")

    def run(x):
        dims = x.shape
        r = len(dims)
        s = min(max(start + r if start < 0 else start, 0), r)
        e = r if end is None else min(max(end + r if end < 0 else end, 0), r)
        return (np.array(dims[s:e], dtype=np.int64),)

    run.reads_only_shapes = True  # a device tensor's shape is read where it lives
    return run


@register("Size", since=[1, 13, 19, 21, 23, 24, 25])
def size(ctx: NodeContext):
    def run(x):
        return (np.array(math.prod(x.shape), dtype=np.int64),)

    run.reads_only_shapes = True
    return run


# ------------------------------------------------------------- constants


def _sparse_to_dense(sp) -> np.ndarray:
    values = numpy_helper.to_array(sp.values)
    indices = numpy_helper.to_array(sp.indices).astype(np.int64)
    dims = tuple(int(d) for d in sp.dims)
    dense = np.zeros(int(np.prod(dims, dtype=np.int64)), dtype=values.dtype)
    if indices.ndim == 2:  # [NNZ, rank] coordinates
        indices = np.ravel_multi_index(tuple(indices.T), dims) if indices.size else \
            indices.reshape(-1)
    dense[indices.reshape(-1)] = values.reshape(-1)
    return dense.reshape(dims)


def constant_value(ctx: NodeContext) -> np.ndarray:
    a = ctx.attrs
    if "value" in a:
        return np.asarray(a["value"])
    if "sparse_value" in a:
        return _sparse_to_dense(a["sparse_value"])
    if "value_float" in a:
        return np.array(a["value_float"], dtype=np.float32)
    if "value_floats" in a:
        return np.array(a["value_floats"], dtype=np.float32).reshape(-1)
    if "value_int" in a:
        return np.array(a["value_int"], dtype=np.int64)
    if "value_ints" in a:
        return np.array(a["value_ints"], dtype=np.int64).reshape(-1)
    if "value_string" in a:
        out = np.empty((), dtype=object)
        out[()] = a["value_string"]
        return out
    if "value_strings" in a:
        out = np.empty(len(a["value_strings"]), dtype=object)
        out[:] = a["value_strings"]
        return out
    raise ValueError(f"Constant node {ctx.name!r} has no value attribute")


@register("Constant", since=[1, 9, 11, 12, 13, 19, 21, 23, 24, 25])
def constant(ctx: NodeContext):
    value = constant_value(ctx)
    # Shared across runs: make accidental in-place writes fail loudly.
    value.flags.writeable = False
    return lambda: (value,)


@register("ConstantOfShape", since=[9, 20, 21, 23, 24, 25])
def constant_of_shape(ctx: NodeContext):
    value = ctx.attr("value")
    fill = np.zeros((), np.float32) if value is None else np.asarray(value).reshape(-1)[0]
    dtype = np.float32 if value is None else np.asarray(value).dtype

    def run(shape):
        return (np.full(tuple(int_list(shape)), fill, dtype=dtype),)

    return run


@register("Identity", since=[1, 13, 14, 16, 19, 21, 23, 24, 25])
def identity(ctx: NodeContext):
    # Tensors, sequences and optionals all pass through unchanged.
    return lambda x: (x,)


@register("EyeLike", since=[9, 22])
def eye_like(ctx: NodeContext):
    k = ctx.attr("k", 0)
    dtype_attr = ctx.attr("dtype")

    def run(x):
        dtype = x.dtype if dtype_attr is None else numpy_dtype(dtype_attr)
        rows, cols = x.shape
        return (np.eye(rows, cols, k, dtype=np.float32).astype(dtype),)

    return run


@register("Trilu", since=[14])
def trilu(ctx: NodeContext):
    upper = bool(ctx.attr("upper", 1))

    def run(x, k=None):
        diag = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
        rows, cols = x.shape[-2:]
        keep = np.tri(rows, cols, diag - 1 if upper else diag, dtype=bool)
        if upper:
            keep = ~keep
        return (np.where(keep, x, fill_value_of(x.dtype)).astype(x.dtype, copy=False),)

    return run


@register("Range", since=[11, 27])
def range_op(ctx: NodeContext):
    # Float ranges are computed as start + i * delta in float64 and rounded once, which
    # also covers v27's stash_type for float16/bfloat16.
    def run(start, limit, delta):
        # the spec says scalars; exporters also write one-element tensors
        start, limit, delta = (np.asarray(v).reshape(-1)[0] for v in (start, limit, delta))
        dtype = start.dtype
        if dtype.kind in "iu":
            s, l, d = int(start), int(limit), int(delta)
            n = max(-((s - l) // d), 0)  # ceil((l - s) / d) in exact integer arithmetic
            return ((s + np.arange(n, dtype=np.int64) * d).astype(dtype),)
        s, l, d = (float(v) for v in (start, limit, delta))
        n = max(int(np.ceil((l - s) / d)), 0)
        return ((s + np.arange(n, dtype=np.float64) * d).astype(dtype),)

    return run


@register("ReverseSequence", since=[10, 28])
def reverse_sequence(ctx: NodeContext):
    batch_axis, time_axis = ctx.attr("batch_axis", 1), ctx.attr("time_axis", 0)

    def run(x, sequence_lens):
        t = np.arange(x.shape[time_axis])[:, None]  # [time, batch]
        lens = sequence_lens.astype(np.int64)[None, :]
        src = np.where(t < lens, lens - 1 - t, t)
        shape = [1] * x.ndim
        shape[time_axis], shape[batch_axis] = src.shape[0], src.shape[1]
        if time_axis > batch_axis:
            src = src.T
        return (np.take_along_axis(x, src.reshape(shape), axis=time_axis),)

    return run
