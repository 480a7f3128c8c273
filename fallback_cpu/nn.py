"""Convolution kernels of the NumPy provider: Conv, ConvTranspose, ConvInteger, QLinearConv,
DeformConv, Col2Im. Pooling lives in :mod:`tritort.fallback_cpu.pool`.

Conv is im2col over a strided window view plus one batched BLAS matmul over the groups;
1x1 convolutions skip im2col and depthwise ones accumulate one kernel tap at a time.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from tritort.errors import Fail, InvalidArgument
from tritort.windows import resolved_pads

from . import pool  # noqa: F401  (registers the pooling kernels)

from .nn_util import int_or_list, narrow, pad_spatial, widen, windows
from .registry import register


class ConvParams:
    """Conv-style attributes parsed once; kernel/pads resolved per input shape."""

    def __init__(self, ctx):
        self.group = int(ctx.attr("group", 1))
        self.auto_pad = ctx.attr("auto_pad", "NOTSET")
        self.kernel_shape = ctx.attr("kernel_shape")
        self.strides = ctx.attr("strides")
        self.dilations = ctx.attr("dilations")
        self.pads = ctx.attr("pads")

    def resolve(self, x_shape, w_shape):
        nd = len(x_shape) - 2
        kernel = int_or_list(self.kernel_shape, nd, 1) if self.kernel_shape else list(w_shape[2:])
        strides = int_or_list(self.strides, nd, 1)
        dilations = int_or_list(self.dilations, nd, 1)
        pads = resolved_pads(self.auto_pad, x_shape[2:], kernel, strides, dilations, self.pads)
        return kernel, strides, dilations, pads


def conv_nd(x, w, bias, group, strides, dilations, pads):
    """N-D grouped convolution of already widened arrays; returns (N, M, *out)."""
    _check_conv(x, w, group, strides, dilations, pads)
    n, c = x.shape[:2]
    m = w.shape[0]
    kernel = w.shape[2:]
    c_g, m_g = c // group, m // group
    xp = pad_spatial(x, pads)
    out_shape = tuple((size - (k - 1) * d - 1) // s + 1
                      for size, k, d, s in zip(xp.shape[2:], kernel, dilations, strides))
    if all(k == 1 for k in kernel):  # 1x1: the input already is the im2col matrix
        xs = xp[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)]
        cols = xs.reshape(n, group, c_g, math.prod(out_shape))
        y = np.matmul(w.reshape(group, m_g, c_g), cols)
    elif c_g == 1:  # depthwise: one multiply-add per kernel tap, vectorized over N, C, space
        y = _depthwise(xp, w, m_g, kernel, strides, dilations, out_shape)
    elif group == 1 and len(kernel) == 2 and all(s == 1 for s in strides) and 2 * m <= c:
        y = _conv_tap_products(xp, w, dilations, out_shape)
    else:
        y = np.matmul(w.reshape(group, m_g, -1), _im2col(xp, group, kernel, strides,
                                                         dilations, out_shape))
    y = y.reshape(n, m, *out_shape)
    if bias is not None:
        y += bias.reshape((m,) + (1,) * len(out_shape))
    return y


def _check_conv(x, w, group, strides, dilations, pads):
    """The input against the weights and the window, before anything is allocated, with
    ORT's Conv classes: ranks, channels per group and parameters ``Fail``, a window larger
    than the padded input ``InvalidArgument``."""
    nd = w.ndim - 2
    if x.ndim != w.ndim or nd < 1:
        raise Fail(f"Conv: input shape {list(x.shape)} and weight shape "
                              f"{list(w.shape)} must have the same rank (at least 3)")
    c, m = x.shape[1], w.shape[0]
    if group < 1 or c % group or m % group or w.shape[1] * group != c:
        raise Fail(f"Conv: the input has {c} channels, the weights {list(w.shape)} "
                              f"with group {group} need {w.shape[1] * group} (and "
                              f"{m} output channels divisible by the group)")
    if len(strides) != nd or len(dilations) != nd or len(pads) != 2 * nd or \
            min(strides) < 1 or min(dilations) < 1:
        raise Fail(f"Conv: strides {list(strides)} and dilations {list(dilations)} "
                              f"need {nd} positive values, pads {list(pads)} {2 * nd}")
    for i, (size, k, d, pb, pe) in enumerate(zip(x.shape[2:], w.shape[2:], dilations,
                                                 pads[:nd], pads[nd:])):
        if size + pb + pe < (k - 1) * d + 1:
            raise InvalidArgument(
                f"Conv: the window does not fit the padded input on spatial axis {i}: kernel "
                f"{k} with dilation {d} spans {(k - 1) * d + 1} positions, the input has "
                f"{size} plus pads {pb} and {pe} (input shape {list(x.shape)}, weight shape "
                f"{list(w.shape)})")


def _im2col(xp, group, kernel, strides, dilations, out_shape):
    """(N, G, Cg*prod(kernel), prod(out)): one strided slice copy per kernel tap, or for many
    taps (a ViT patch embedding has 256) one copy of the transposed window view."""
    n, c = xp.shape[:2]
    nd = len(kernel)
    if math.prod(kernel) > 16:
        view = windows(xp, kernel, strides, dilations)  # (N, C, *out, *k)
        order = (0, 1) + tuple(range(2 + nd, 2 + 2 * nd)) + tuple(range(2, 2 + nd))
        cols = np.ascontiguousarray(view.transpose(order))
        return cols.reshape(n, group, c // group * math.prod(kernel), math.prod(out_shape))
    cols = np.empty((n, c, *kernel, *out_shape), dtype=xp.dtype)
    for tap in itertools.product(*[range(k) for k in kernel]):
        where = tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                      for t, d, s, o in zip(tap, dilations, strides, out_shape))
        cols[(slice(None), slice(None)) + tap] = xp[(slice(None), slice(None)) + where]
    return cols.reshape(n, group, c // group * math.prod(kernel), math.prod(out_shape))


def _conv_tap_products(xp, w, dilations, out_shape):
    """Stride-1 2-D conv with fewer output than input channels, without im2col.

    One GEMM multiplies every tap's weights with the flattened padded input: Z[t] = W_t @ X,
    (taps*M, Hp*Wp). Output position p of tap (i, j) reads input position p + i*dh*Wp + j*dw
    of the flat image, so the output (on a grid Wp wide, the last columns dropped) is the sum
    of shifted slices of Z. This trades the Cin*taps*P im2col copy for taps passes over the
    smaller M*P output.
    """
    n, c, hp, wp = xp.shape
    m, _, kh, kw = w.shape
    oh, ow = out_shape
    taps = kh * kw
    wt = np.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(taps * m, c)
    z = np.matmul(wt, xp.reshape(n, c, hp * wp)).reshape(n, taps, m, hp * wp)
    span = (oh - 1) * wp + ow  # flat positions covering every output row
    acc = np.empty((n, m, oh * wp), dtype=z.dtype)
    flat = acc[:, :, :span]
    offsets = [i * dilations[0] * wp + j * dilations[1] for i in range(kh) for j in range(kw)]
    if taps == 1:
        flat[...] = z[:, 0, :, :span]
    else:
        np.add(z[:, 0, :, offsets[0]:offsets[0] + span], z[:, 1, :, offsets[1]:offsets[1] + span],
               out=flat)
        for t in range(2, taps):
            flat += z[:, t, :, offsets[t]:offsets[t] + span]
    return np.ascontiguousarray(acc.reshape(n, m, oh, wp)[:, :, :, :ow])


def _depthwise(xp, w, m_g, kernel, strides, dilations, out_shape):
    n, c = xp.shape[:2]
    view = windows(xp, kernel, strides, dilations)  # (N, C, *out, *k)
    wk = w.reshape(c, m_g, -1)
    y = np.zeros((n, c, m_g, *out_shape), dtype=np.result_type(xp, w))
    term = np.empty_like(y)
    spatial_ones = (1,) * len(kernel)
    for t, tap in enumerate(itertools.product(*[range(k) for k in kernel])):
        patch = view[(Ellipsis,) + tap][:, :, None]
        np.multiply(patch, wk[:, :, t].reshape(c, m_g, *spatial_ones), out=term)
        y += term
    return y


@register("Conv", since=[1, 11, 22])
def conv(ctx):
    p = ConvParams(ctx)

    def run(x, w, b=None):
        kernel, strides, dilations, pads = p.resolve(x.shape, w.shape)
        y = conv_nd(widen(x), widen(w), None if b is None else widen(b), p.group,
                    strides, dilations, pads)
        return (narrow(y, x.dtype),)

    return run


def _sub_zero_point(x, zp, channel_axis_len=None):
    """x - zero_point in float64 (exact for 8-bit data); zp per channel when 1-D of length > 1."""
    xf = x.astype(np.float64)
    if zp is None:
        return xf
    zp = zp.astype(np.float64)
    if zp.ndim == 1 and zp.size > 1:
        zp = zp.reshape((-1,) + (1,) * (x.ndim - 1))
    return xf - zp


@register("ConvInteger", since=[10])
def conv_integer(ctx):
    p = ConvParams(ctx)

    def run(x, w, x_zero=None, w_zero=None):
        kernel, strides, dilations, pads = p.resolve(x.shape, w.shape)
        y = conv_nd(_sub_zero_point(x, x_zero), _sub_zero_point(w, w_zero), None, p.group,
                    strides, dilations, pads)
        return (y.astype(np.int32),)

    return run


@register("QLinearConv", since=[10])
def qlinear_conv(ctx):
    p = ConvParams(ctx)

    def run(x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, b=None):
        kernel, strides, dilations, pads = p.resolve(x.shape, w.shape)
        acc = conv_nd(_sub_zero_point(x, x_zero), _sub_zero_point(w, w_zero),
                      None if b is None else b.astype(np.float64), p.group,
                      strides, dilations, pads)
        w_scale = np.asarray(w_scale)
        if w_scale.size > 1:
            w_scale = w_scale.reshape((1, -1) + (1,) * (x.ndim - 2))
        y = acc * (x_scale * w_scale / y_scale)
        out_dtype = y_zero.dtype if y_zero is not None else x.dtype
        if y_zero is not None:
            y += y_zero.astype(np.float64)
        info = np.iinfo(out_dtype)
        return (np.clip(np.rint(y), info.min, info.max).astype(out_dtype),)

    return run


def scatter_taps(cols, kernel, strides, dilations, buf_spatial, offsets):
    """Sum cols (N, C, *kernel, *positions) into a zero buffer (N, C, *buf_spatial).

    Tap t of position p lands at offsets + p * stride + t * dilation (the col2im step).
    """
    nd = len(kernel)
    positions = cols.shape[2 + nd:]
    buf = np.zeros(cols.shape[:2] + tuple(buf_spatial), dtype=cols.dtype)
    for tap in itertools.product(*[range(k) for k in kernel]):
        where = tuple(slice(o + t * d, o + t * d + max(s * (q - 1) + 1, 0), s)
                      for o, t, d, s, q in zip(offsets, tap, dilations, strides, positions))
        buf[(slice(None), slice(None)) + where] += cols[(slice(None), slice(None)) + tap]
    return buf


@register("ConvTranspose", since=[1, 11, 22])
def conv_transpose(ctx):
    p = ConvParams(ctx)
    output_padding = ctx.attr("output_padding")
    output_shape = ctx.attr("output_shape")

    def run(x, w, b=None):
        nd = x.ndim - 2
        kernel = list(p.kernel_shape) if p.kernel_shape else list(w.shape[2:])
        strides = int_or_list(p.strides, nd, 1)
        dilations = int_or_list(p.dilations, nd, 1)
        out_pad = int_or_list(output_padding, nd, 0)
        in_spatial = x.shape[2:]
        full = [s * (i - 1) + (k - 1) * d + 1
                for s, i, k, d in zip(strides, in_spatial, kernel, dilations)]
        target = None
        if output_shape is not None and len(output_shape):
            target = list(output_shape)[-nd:]
        elif p.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = [i * s for i, s in zip(in_spatial, strides)]
        if target is not None:
            total = [f + op - t for f, op, t in zip(full, out_pad, target)]
            if p.auto_pad == "SAME_UPPER":
                begins = [t // 2 for t in total]
            else:
                begins = [t - t // 2 for t in total]
        else:
            pads = int_or_list(p.pads, 2 * nd, 0)
            begins = pads[:nd]
            target = [f + op - pb - pe
                      for f, op, pb, pe in zip(full, out_pad, pads[:nd], pads[nd:])]
        n, c = x.shape[:2]
        group = p.group
        c_g, m_g = c // group, w.shape[1]
        k_size = math.prod(kernel)
        wx, ww = widen(x), widen(w)
        # (G, Mg*K, Cg) @ (N, G, Cg, P_in) -> every tap's contribution, then col2im
        wg = ww.reshape(group, c_g, m_g * k_size).transpose(0, 2, 1)
        cols = np.matmul(wg, wx.reshape(n, group, c_g, math.prod(in_spatial)))
        cols = cols.reshape(n, group * m_g, *kernel, *in_spatial)
        shift = [max(0, -b_) for b_ in begins]  # negative pads grow the output at the front
        buf_spatial = [max(f + sh, sh + b_ + t)
                       for f, sh, b_, t in zip(full, shift, begins, target)]
        buf = scatter_taps(cols, kernel, strides, dilations, buf_spatial, shift)
        crop = tuple(slice(sh + b_, sh + b_ + t) for sh, b_, t in zip(shift, begins, target))
        y = buf[(slice(None), slice(None)) + crop]
        if b is not None:
            y = y + widen(b).reshape((-1,) + (1,) * nd)
        return (narrow(np.ascontiguousarray(y), x.dtype),)

    return run


@register("Col2Im", since=[18])
def col2im(ctx):
    dilations_attr = ctx.attr("dilations")
    pads_attr = ctx.attr("pads")
    strides_attr = ctx.attr("strides")

    def run(x, image_shape, block_shape):
        image = [int(v) for v in image_shape]
        block = [int(v) for v in block_shape]
        nd = len(image)
        dilations = int_or_list(dilations_attr, nd, 1)
        strides = int_or_list(strides_attr, nd, 1)
        pads = int_or_list(pads_attr, 2 * nd, 0)
        positions = [(i + pb + pe - ((k - 1) * d + 1)) // s + 1
                     for i, pb, pe, k, d, s in zip(image, pads[:nd], pads[nd:], block, dilations,
                                                   strides)]
        n = x.shape[0]
        wx = widen(x)
        cols = wx.reshape(n, x.shape[1] // math.prod(block), *block, *positions)
        padded = [i + pb + pe for i, pb, pe in zip(image, pads[:nd], pads[nd:])]
        buf = scatter_taps(cols, block, strides, dilations, padded, [0] * nd)
        crop = tuple(slice(pb, pb + i) for pb, i in zip(pads[:nd], image))
        y = np.ascontiguousarray(buf[(slice(None), slice(None)) + crop])
        return (narrow(y, x.dtype),)

    return run


def linear_gather(x, coords):
    """N-linear interpolation with zero outside: x (B, C, *S), coords (B, Q, nd) -> (B, C, Q).

    Corners that fall outside the input contribute zero (GridSample 'zeros' padding).
    """
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    nd = len(spatial)
    flat = x.reshape(b, c, -1)
    low = np.floor(coords)
    frac = coords - low
    low = low.astype(np.int64)
    out = np.zeros((b, c, coords.shape[1]), dtype=x.dtype)
    batch = np.arange(b)[:, None]
    for corner in itertools.product((0, 1), repeat=nd):
        weight = np.ones(coords.shape[:2], dtype=x.dtype)
        index = np.zeros(coords.shape[:2], dtype=np.int64)
        inside = np.ones(coords.shape[:2], dtype=bool)
        for axis, bit in enumerate(corner):
            pos = low[..., axis] + bit
            weight = weight * (frac[..., axis] if bit else 1 - frac[..., axis])
            inside &= (pos >= 0) & (pos < spatial[axis])
            index = index * spatial[axis] + np.clip(pos, 0, spatial[axis] - 1)
        vals = flat[batch, :, index]  # (B, Q, C)
        out += np.moveaxis(vals, -1, 1) * (weight * inside)[:, None, :]
    return out


@register("DeformConv", since=[19, 22])
def deform_conv(ctx):
    p = ConvParams(ctx)
    offset_group = int(ctx.attr("offset_group", 1))

    def run(x, w, offset, b=None, mask=None):
        kernel, strides, dilations, pads = p.resolve(x.shape, w.shape)
        nd = len(kernel)
        wx, ww, woff = widen(x), widen(w), widen(offset)
        n, c = x.shape[:2]
        out_shape = offset.shape[2:]
        k_size = math.prod(kernel)
        n_out = math.prod(out_shape)
        # base sampling position of every (tap, output position), per axis
        taps = np.stack(np.meshgrid(*[np.arange(k) * d for k, d in zip(kernel, dilations)],
                                    indexing="ij"), -1).reshape(k_size, 1, nd)
        grid = np.stack(np.meshgrid(*[np.arange(o) * s - pb for o, s, pb in
                                      zip(out_shape, strides, pads[:nd])], indexing="ij"),
                        -1).reshape(1, n_out, nd)
        base = (taps + grid).astype(wx.dtype)  # (K, P, nd)
        off = woff.reshape(n, offset_group, k_size, nd, n_out).transpose(0, 1, 2, 4, 3)
        coords = (base + off).reshape(n * offset_group, k_size * n_out, nd)
        xg = wx.reshape(n * offset_group, c // offset_group, *x.shape[2:])
        sampled = linear_gather(xg, coords).reshape(n, c, k_size, n_out)
        if mask is not None:
            m = widen(mask).reshape(n, offset_group, 1, k_size, n_out)
            sampled = (sampled.reshape(n, offset_group, c // offset_group, k_size, n_out)
                       * m).reshape(n, c, k_size, n_out)
        group = p.group
        cols = sampled.reshape(n, group, -1, n_out)
        y = np.matmul(ww.reshape(group, ww.shape[0] // group, -1), cols)
        y = y.reshape(n, ww.shape[0], *out_shape)
        if b is not None:
            y += widen(b).reshape((-1,) + (1,) * nd)
        return (narrow(y, x.dtype),)

    return run
