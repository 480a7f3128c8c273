"""Pooling kernels of the NumPy provider: Max/Average/Lp pooling, their Global forms, MaxUnpool.

Each kernel tap is one strided view (no copy) of the padded input; reductions accumulate
tap by tap, vectorized over batch, channels and output positions. The input is checked
against the window before any tap exists (``PoolParams.check``): a window larger than the
padded input is ``InvalidArgument``, and an output with no positions is returned at once,
so an absurd kernel_shape costs nothing.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from tritort.errors import InvalidArgument
from tritort.windows import output_size, resolved_pads

from .nn_util import int_or_list, narrow, pad_spatial, widen
from .registry import register


class PoolParams:
    def __init__(self, ctx):
        self.op_type = ctx.op_type
        self.kernel = list(ctx.attr("kernel_shape"))
        nd = len(self.kernel)
        self.strides = int_or_list(ctx.attr("strides"), nd, 1)
        self.dilations = int_or_list(ctx.attr("dilations"), nd, 1)
        self.auto_pad = ctx.attr("auto_pad", "NOTSET")
        self.pads = ctx.attr("pads")
        self.ceil_mode = bool(ctx.attr("ceil_mode", 0))

    def layout(self, in_spatial):
        """(begin pads, end pads incl. ceil-mode extra, explicit end pads, output shape)."""
        pads = resolved_pads(self.auto_pad, in_spatial, self.kernel, self.strides, self.dilations,
                         self.pads)
        nd = len(self.kernel)
        begins, ends = pads[:nd], pads[nd:]
        out, padded_ends = [], []
        for i, (size, k, s, d, pb, pe) in enumerate(zip(in_spatial, self.kernel, self.strides,
                                                        self.dilations, begins, ends)):
            extent = (k - 1) * d + 1
            o = output_size(size, extent, s, pb, pe, self.ceil_mode,
                            self.auto_pad in ("SAME_UPPER", "SAME_LOWER"))
            if o < 0:
                raise InvalidArgument(
                    f"{self.op_type}: the window does not fit the padded input on spatial axis "
                    f"{i}: kernel {k} with dilation {d} spans {extent} positions, the input has "
                    f"{size} plus pads {pb} and {pe}; the output size would be {o}. Check "
                    f"kernel_shape {self.kernel}, pads, strides {self.strides} and dilations "
                    f"{self.dilations} against the input's spatial shape {list(in_spatial)}.")
            out.append(o)
            padded_ends.append(max(pe, (o - 1) * s + extent - size - pb))
        return begins, padded_ends, ends, out

    def check(self, x) -> bool:
        """Validate ``x`` against the window (rank, sizes): False when the output has no
        positions, so the kernel returns an empty result without building a tap."""
        nd = len(self.kernel)
        if x.ndim != nd + 2:
            raise InvalidArgument(
                f"{self.op_type}: the input has shape {list(x.shape)} (rank {x.ndim}); "
                f"kernel_shape {self.kernel} needs rank {nd + 2} (N, C and {nd} spatial axes)")
        for name, values in (("strides", self.strides), ("dilations", self.dilations)):
            if len(values) != nd or any(v < 1 for v in values):
                raise InvalidArgument(f"{self.op_type}: {name} {values} must be {nd} positive "
                                      f"values, one per axis of kernel_shape {self.kernel}")
        _, _, _, out = self.layout(x.shape[2:])
        return all(o > 0 for o in out)

    def empty(self, x, dtype=None):
        """The (N, C, *out) result of an input whose output has no positions."""
        _, _, _, out = self.layout(x.shape[2:])
        return np.zeros(tuple(x.shape[:2]) + tuple(out), dtype=dtype or x.dtype)

    def taps(self, x, value):
        """Pad ``x`` with ``value``; return the layout and, per kernel tap, its strided
        (N, C, *out) view. Reducing tap by tap keeps every numpy op large and contiguous-ish."""
        begins, padded_ends, ends, out = self.layout(x.shape[2:])
        xp = pad_spatial(x, begins + padded_ends, value)
        views = []
        for tap in itertools.product(*[range(k) for k in self.kernel]):
            where = tuple(slice(t * d, t * d + max(s * (o - 1) + 1, 0), s)
                          for t, d, s, o in zip(tap, self.dilations, self.strides, out))
            views.append((tap, xp[(slice(None), slice(None)) + where]))
        return (begins, padded_ends, ends, out), views

    def reduce_windows(self, x, value, ufunc):
        """``ufunc``-reduce every window of ``x`` padded with ``value``, one spatial axis at
        a time (max and sum are separable): sum(kernel) strided passes, not prod(kernel)."""
        begins, padded_ends, _, out = self.layout(x.shape[2:])
        y = pad_spatial(x, begins + padded_ends, value)
        if len(out) == 2 and min(out) > 0 and x.size:
            return _reduce_2d(y, self.kernel, self.strides, self.dilations, out, ufunc)
        fresh = y is not x
        for axis, (k, s, d, o) in enumerate(zip(self.kernel, self.strides, self.dilations, out),
                                            start=2):
            def tap(t, y=y, axis=axis):
                index = [slice(None)] * y.ndim
                index[axis] = slice(t * d, t * d + max(s * (o - 1) + 1, 0), s)
                return y[tuple(index)]

            if k == 1:
                y = tap(0)
                continue
            acc = ufunc(tap(0), tap(1))
            for t in range(2, k):
                ufunc(acc, tap(t), out=acc)
            y, fresh = acc, True
        return y if fresh else y.copy()


def _reduce_2d(xp, kernel, strides, dilations, out, ufunc):
    """2-D window reduction on long contiguous runs (numpy is several times slower on short
    inner loops). Strided rows are reduced first on (N*C, out_h, Wp) views; then every
    remaining axis works as shifts of the flattened array: position q reduces q + t*shift over
    the taps t, every stride-1 position is computed and the strided ones are kept at the end."""
    n, c, hp, wp = xp.shape
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, strides, dilations, out
    shifts = [(dw, kw)]
    if sh > 1:  # rows at their stride: Wp-long inner runs, out_h rows
        x3 = xp.reshape(n * c, hp, wp)
        rows = [x3[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, :] for i in range(kh)]
        acc = ufunc(rows[0], rows[1]) if kh > 1 else rows[0].copy()
        for r in rows[2:]:
            ufunc(acc, r, out=acc)
        flat, hp, sh = acc.reshape(-1), oh, 1
    else:
        flat = xp.reshape(-1)
        shifts.append((dh * wp, kh))
    for shift, k in shifts:
        if k == 1:
            continue
        span = flat.size - (k - 1) * shift  # the tail only ever holds dropped positions
        res = np.empty_like(flat)
        ufunc(flat[:span], flat[shift:shift + span], out=res[:span])
        for t in range(2, k):
            ufunc(res[:span], flat[t * shift:t * shift + span], out=res[:span])
        flat = res
    grid = flat.reshape(n, c, hp, wp)
    return np.ascontiguousarray(grid[:, :, :sh * (oh - 1) + 1:sh, :sw * (ow - 1) + 1:sw])


def _lowest(dtype):
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


@register("MaxPool", since=[1, 8, 10, 11, 12, 22])
def max_pool(ctx):
    p = PoolParams(ctx)
    storage_order = int(ctx.attr("storage_order", 0))
    want_indices = ctx.num_outputs > 1 and bool(ctx.output_names[1])

    def run(x):
        if not p.check(x):
            y = p.empty(x)
            return (y,) if not want_indices else (y, p.empty(x, np.int64))
        wx = widen(x)
        if not want_indices:
            return (narrow(p.reduce_windows(wx, _lowest(wx.dtype), np.maximum), x.dtype),)
        nd = len(p.kernel)
        (begins, _, _, out), views = p.taps(wx, _lowest(wx.dtype))
        best = views[0][1].copy()
        best_tap = np.zeros(best.shape, dtype=np.intp)
        for t, (_, v) in enumerate(views[1:], start=1):
            better = v > best  # strict: the first maximum wins ties
            np.copyto(best, v, where=better)
            best_tap[better] = t
        # input coordinate of the winning tap, per spatial axis
        tap_coords = np.unravel_index(best_tap, p.kernel) if nd else ()
        in_spatial = x.shape[2:]
        index = np.zeros(best.shape, dtype=np.int64)
        axes = range(nd - 1, -1, -1) if storage_order == 1 else range(nd)
        for axis in axes:
            pos = np.arange(out[axis]) * p.strides[axis] - begins[axis]
            pos = pos.reshape((-1,) + (1,) * (nd - 1 - axis))
            coord = pos + tap_coords[axis] * p.dilations[axis]
            index = index * in_spatial[axis] + coord
        n, c = x.shape[:2]
        base = (np.arange(n * c, dtype=np.int64) * math.prod(in_spatial)).reshape(
            (n, c) + (1,) * nd)
        return narrow(best, x.dtype), index + base

    return run


def _window_count(p, in_spatial, include_pad):
    """Taps of each window that count in the average, (*out,): a product of per-axis counts
    (explicit pads count when include_pad, the ceil-mode overhang never does)."""
    begins, _, ends, out = p.layout(in_spatial)
    count = np.ones((), dtype=np.int64)
    for size, k, s, d, pb, pe, o in zip(in_spatial, p.kernel, p.strides, p.dilations, begins,
                                        ends, out):
        pos = (np.arange(o) * s - pb)[:, None] + np.arange(k) * d  # input coordinate per tap
        lo, hi = (-pb, size + pe) if include_pad else (0, size)
        axis_count = ((pos >= lo) & (pos < hi)).sum(axis=1)
        count = count[..., None] * axis_count
    return count


@register("AveragePool", since=[1, 7, 10, 11, 19, 22])
def average_pool(ctx):
    p = PoolParams(ctx)
    include_pad = bool(ctx.attr("count_include_pad", 0))
    counts: dict[tuple, np.ndarray | float] = {}  # per input spatial shape

    def run(x):
        if not p.check(x):
            return (p.empty(x),)
        wx = widen(x)
        total = p.reduce_windows(wx, 0, np.add)
        count = counts.get(x.shape[2:])
        if count is None:
            count = _window_count(p, x.shape[2:], include_pad)
            if count.size and (count == count.flat[0]).all():
                count = float(count.flat[0])  # one divisor for every window
            else:
                count = count.astype(wx.dtype)
            counts[x.shape[2:]] = count
        if total.dtype.kind == "f":
            total /= total.dtype.type(count) if isinstance(count, float) else count
        else:
            total = total / count
        return (narrow(total, x.dtype),)

    return run


@register("LpPool", since=[1, 2, 11, 18, 22])
def lp_pool(ctx):
    p = PoolParams(ctx)
    power = float(ctx.attr("p", 2))

    def run(x):
        if not p.check(x):
            return (p.empty(x),)
        _, views = p.taps(np.power(np.abs(widen(x)), power), 0)
        total = views[0][1].copy()
        for _, v in views[1:]:
            total += v
        y = np.power(total, 1 / power)
        return (narrow(y, x.dtype),)

    return run


def _spatial_axes(x):
    return tuple(range(2, x.ndim))


@register("GlobalAveragePool", since=[1, 22])
def global_average_pool(ctx):
    return lambda x: (narrow(widen(x).mean(axis=_spatial_axes(x), keepdims=True), x.dtype),)


@register("GlobalMaxPool", since=[1, 22])
def global_max_pool(ctx):
    return lambda x: (x.max(axis=_spatial_axes(x), keepdims=True),)


@register("GlobalLpPool", since=[1, 2, 22])
def global_lp_pool(ctx):
    power = float(ctx.attr("p", 2))

    def run(x):
        wx = np.abs(widen(x))
        y = np.power(np.sum(np.power(wx, power), axis=_spatial_axes(x), keepdims=True), 1 / power)
        return (narrow(y, x.dtype),)

    return run


@register("MaxUnpool", since=[9, 11, 22])
def max_unpool(ctx):
    kernel = list(ctx.attr("kernel_shape"))
    nd = len(kernel)
    strides = int_or_list(ctx.attr("strides"), nd, 1)
    pads = int_or_list(ctx.attr("pads"), 2 * nd, 0)

    def run(x, indices, output_shape=None):
        inferred = list(x.shape[:2]) + [
            (i - 1) * s + k - pb - pe
            for i, s, k, pb, pe in zip(x.shape[2:], strides, kernel, pads[:nd], pads[nd:])]
        y = np.zeros(math.prod(inferred), dtype=x.dtype)
        y[indices.reshape(-1)] = x.reshape(-1)
        y = y.reshape(inferred)
        if output_shape is None:
            return (y,)
        # indices address the inferred shape; a larger output_shape keeps it at the origin
        # (what the conformance data expects)
        out = np.zeros([int(v) for v in output_shape], dtype=x.dtype)
        out[tuple(slice(0, i) for i in inferred)] = y
        return (out,)

    return run
