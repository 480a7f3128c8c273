"""Image kernels of the NumPy provider: Resize, Upsample, CenterCropPad.
GridSample, AffineGrid and RoiAlign live in :mod:`tritort.fallback_cpu.sampling`.

Resize is separable: each resized axis maps its output indices to source coordinates once,
then takes a few weighted taps along that axis (np.take), one axis after the other.
"""
from __future__ import annotations

import math

import numpy as np

from . import sampling  # noqa: F401  (registers GridSample, AffineGrid, RoiAlign)
from .nn_util import narrow, widen
from .registry import register
from .shape import norm_axes


def _source_coords(mode, out_len, in_len, scale, roi):
    """Source coordinate of every output index along one axis (float64), per the
    coordinate_transformation_mode; ``scale`` is the float output/input ratio."""
    i = np.arange(out_len, dtype=np.float64)
    out_float = scale * in_len  # the spec's length_resized before truncation
    if mode == "align_corners":
        return np.zeros(out_len) if out_float == 1 else i * (in_len - 1) / (out_float - 1)
    if mode == "asymmetric":
        return i / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out_float == 1:
            return np.full(out_len, (end - start) * (in_len - 1) / 2 + start * (in_len - 1))
        return i * (end - start) * (in_len - 1) / (out_float - 1) + start * (in_len - 1)
    if mode == "pytorch_half_pixel":
        return np.zeros(out_len) if out_len == 1 else (i + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / out_float)
        return offset + (i + 0.5) / scale - 0.5
    return (i + 0.5) / scale - 0.5  # half_pixel


def _nearest_index(x, nearest_mode, in_len, downsampling):
    if nearest_mode == "round_prefer_ceil":
        idx = np.floor(x + 0.5)
    elif nearest_mode == "floor":
        idx = np.floor(x)
    elif nearest_mode == "ceil":
        idx = np.ceil(x)
    elif nearest_mode == "simple":  # Resize-10 / Upsample (onnxruntime's legacy rule)
        idx = np.ceil(x) if downsampling else np.floor(x)
    else:  # round_prefer_floor
        idx = np.ceil(x - 0.5)
    return np.clip(idx, 0, in_len - 1).astype(np.intp)


def _cubic_weight(d, a):
    """Keys cubic convolution kernel at distance ``d``."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _taps(x, mode, in_len, scale, cubic_a, antialias, exclude_outside):
    """(indices, weights), each (out_len, n_taps), of a linear/cubic filter along one axis."""
    # the left neighbour; an exact integer coordinate counts as the right one of its pair
    left = np.ceil(x) - 1
    ratio = x - left  # in (0, 1]
    support = 1.0 if mode == "linear" else 2.0
    shrink = min(scale, 1.0) if antialias else 1.0  # antialias stretches the filter
    start = int(math.floor(-support / shrink) + 1)
    offsets = np.arange(start, 1 - start + 1)  # symmetric around left + 0.5
    dist = (offsets[None, :] - ratio[:, None]) * shrink
    if mode == "linear":
        w = np.clip(1 - np.abs(dist), 0, None)
    else:
        w = _cubic_weight(dist, cubic_a)
    idx = left[:, None].astype(np.int64) + offsets[None, :]
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= in_len), 0.0, w)
    if antialias or exclude_outside:
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, in_len - 1).astype(np.intp), w


def _apply_filter(y, axis, idx, w):
    """Resample ``y`` along ``axis``: out[o] = sum_k w[o, k] * y[idx[o, k]]."""
    out_len, in_len = idx.shape[0], y.shape[axis]
    if out_len * in_len <= 1 << 22:
        # a dense (out, in) interpolation matrix turns the axis into one BLAS matmul
        dense = np.zeros((out_len, in_len), dtype=y.dtype)
        np.add.at(dense, (np.repeat(np.arange(out_len), idx.shape[1]), idx.reshape(-1)),
                  w.reshape(-1).astype(y.dtype))
        lead, rest = math.prod(y.shape[:axis]), math.prod(y.shape[axis + 1:])
        if rest == 1:
            res = np.matmul(y.reshape(lead, in_len), dense.T)
        else:
            res = np.matmul(dense, y.reshape(lead, in_len, rest))
        return res.reshape(y.shape[:axis] + (out_len,) + y.shape[axis + 1:])
    shape = [1] * y.ndim
    shape[axis] = out_len
    w = w.astype(y.dtype)
    acc = np.take(y, idx[:, 0], axis=axis) * w[:, 0].reshape(shape)
    for k in range(1, idx.shape[1]):
        acc += np.take(y, idx[:, k], axis=axis) * w[:, k].reshape(shape)
    return acc


class ResizeParams:
    def __init__(self, ctx):
        v = ctx.since_version if ctx.op_type == "Resize" else 10
        legacy = v < 11  # Resize-10 and Upsample: asymmetric coordinates, legacy nearest
        self.mode = ctx.attr("mode", "nearest")
        self.coord_mode = "asymmetric" if legacy else ctx.attr("coordinate_transformation_mode",
                                                               "half_pixel")
        self.nearest_mode = "simple" if legacy else ctx.attr("nearest_mode", "round_prefer_floor")
        self.cubic_a = float(ctx.attr("cubic_coeff_a", -0.75))
        self.exclude_outside = bool(ctx.attr("exclude_outside", 0))
        self.extrapolation = float(ctx.attr("extrapolation_value", 0.0))
        self.antialias = bool(ctx.attr("antialias", 0))
        self.axes = ctx.attr("axes")
        self.aspect_policy = ctx.attr("keep_aspect_ratio_policy", "stretch")

    def plan(self, shape, roi, scales, sizes):
        """Per-axis (output length, float scale, roi pair) for the whole rank."""
        rank = len(shape)
        axes = norm_axes(self.axes, rank) if self.axes else list(range(rank))
        full_scales = [1.0] * rank
        out = list(shape)
        if sizes is not None and sizes.size:
            sizes = [int(s) for s in sizes]
            ratios = {a: s / shape[a] if shape[a] else 1.0 for a, s in zip(axes, sizes)}
            if self.aspect_policy in ("not_larger", "not_smaller"):
                pick = min if self.aspect_policy == "not_larger" else max
                common = pick(ratios.values())
                for a in axes:
                    full_scales[a] = common
                    out[a] = int(common * shape[a] + 0.5)  # round half up
            else:
                for a, s in zip(axes, sizes):
                    full_scales[a], out[a] = ratios[a], s
        else:
            for a, s in zip(axes, [float(s) for s in scales]):
                full_scales[a] = s
                out[a] = int(math.floor(shape[a] * s))
        rois = [(0.0, 1.0)] * rank
        if roi is not None and roi.size:
            # keep roi-dtype scalars: the outside-the-input test then rounds like the spec's
            roi = list(roi.reshape(-1))
            n = len(roi) // 2
            roi_axes = axes if n == len(axes) else list(range(rank))
            for k, a in enumerate(roi_axes):
                rois[a] = (roi[k], roi[n + k])
        return out, full_scales, rois

    def resize(self, x, roi, scales, sizes):
        out, axis_scales, rois = self.plan(x.shape, roi, scales, sizes)
        nearest = self.mode == "nearest"
        if nearest:
            y = x
        else:  # float32 for float16/bf16/float32 data, float64 for double and integers
            y = x.astype(np.float64) if x.dtype.kind in "biu" else widen(x)
        crop = self.coord_mode == "tf_crop_and_resize"
        for axis, (o, s, r) in enumerate(zip(out, axis_scales, rois)):
            in_len = x.shape[axis]
            if o == in_len and s == 1.0 and (not crop or (r[0] == 0 and r[1] == 1)):
                continue  # identity along this axis
            if o == 0 or in_len == 0:
                shape = list(y.shape)
                shape[axis] = o
                y = np.zeros(shape, dtype=y.dtype)
                continue
            coords = _source_coords(self.coord_mode, o, in_len, s, r)
            if nearest:
                y = np.take(y, _nearest_index(coords, self.nearest_mode, in_len, s < 1), axis=axis)
            else:
                idx, w = _taps(coords, self.mode, in_len, s, self.cubic_a,
                               self.antialias, self.exclude_outside)
                y = _apply_filter(y, axis, idx, w)
            if crop:  # tf_crop_and_resize: outside the input is the extrapolation value
                outside = (coords < 0) | (coords > in_len - 1)
                if outside.any():
                    shape = [1] * y.ndim
                    shape[axis] = o
                    y = np.where(outside.reshape(shape), np.asarray(self.extrapolation, y.dtype), y)
        return _to_dtype(y, x.dtype)


def _to_dtype(y, dtype):
    if y.dtype == dtype:
        return np.ascontiguousarray(y)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(y), info.min, info.max).astype(dtype)
    return narrow(np.ascontiguousarray(y), dtype)


@register("Resize", since=[10, 11, 13, 18, 19])
def resize(ctx):
    p = ResizeParams(ctx)
    if ctx.since_version == 10:
        return lambda x, scales: (p.resize(x, None, scales, None),)

    def run(x, roi=None, scales=None, sizes=None):
        if sizes is not None and sizes.size == 0:
            sizes = None
        return (p.resize(x, roi, scales, sizes),)

    return run


@register("Upsample", since=[1, 7, 9, 10])
def upsample(ctx):
    p = ResizeParams(ctx)
    if ctx.since_version == 1:  # experimental form: height/width scales of a 4-D input
        attr_scales = np.array([1.0, 1.0, ctx.attr("height_scale", 1.0),
                                ctx.attr("width_scale", 1.0)])
        if p.mode == "bilinear":
            p.mode = "linear"
    else:
        attr_scales = np.asarray(ctx.attr("scales", []), dtype=np.float64)

    def run(x, scales=None):
        return (p.resize(x, None, attr_scales if scales is None else scales, None),)

    return run


@register("CenterCropPad", since=[18])
def center_crop_pad(ctx):
    axes_attr = ctx.attr("axes")

    def run(x, shape):
        rank = x.ndim
        axes = norm_axes(axes_attr, rank) if axes_attr else list(range(rank))
        out_shape = list(x.shape)
        src = [slice(None)] * rank
        dst = [slice(None)] * rank
        for a, target in zip(axes, [int(s) for s in shape]):
            size = x.shape[a]
            out_shape[a] = target
            if target < size:  # crop, the odd element off the end
                begin = (size - target) // 2
                src[a] = slice(begin, begin + target)
            elif target > size:  # pad, the odd element at the end
                begin = (target - size) // 2
                dst[a] = slice(begin, begin + size)
        y = np.zeros(out_shape, dtype=x.dtype)
        y[tuple(dst)] = x[tuple(src)]
        return (y,)

    return run
