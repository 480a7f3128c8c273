"""Normalization kernels of the NumPy provider: Batch/Instance/Layer/Group/RMS/Lp/MVN
normalization, LRN and Dropout."""
from __future__ import annotations

import math

import numpy as np

from tritort.dtypes import numpy_dtype

from .nn_util import narrow, widen
from .numeric import fits_into, with_inplace
from .registry import register
from .shape import norm_axis


def _channel_shape(x, p):
    """Broadcast a per-channel parameter (C,) against (N, C, ...); higher-rank ones as is."""
    if p.ndim == 1:
        return p.reshape((-1,) + (1,) * (x.ndim - 2))
    return p


@register("BatchNormalization", since=[1, 6, 7, 9, 14, 15])
def batch_normalization(ctx):
    eps = float(ctx.attr("epsilon", 1e-5))
    momentum = float(ctx.attr("momentum", 0.9))
    outputs = [bool(n) for n in ctx.output_names]
    if ctx.since_version >= 14:
        training = bool(ctx.attr("training_mode", 0))
    elif ctx.since_version >= 7:
        training = sum(outputs) > 1  # old forms: asking for the statistics means training
    else:
        training = not ctx.attr("is_test", 0) and sum(outputs) > 1

    last = [None]  # (scale, bias, mean, var, multiplier, offset): constants come back

    def inference_affine(params, dtype):
        """y = x * a + b with a = scale / sqrt(var + eps), b = bias - mean * a."""
        entry = last[0]
        if entry is not None and all(p is q for p, q in zip(entry, params)) and \
                entry[4].dtype == dtype:
            return entry[4:]
        ws, wb, wm, wv = (widen(a).astype(dtype, copy=False) for a in params)
        a = ws / np.sqrt(wv + dtype.type(eps))
        b = wb - wm * a
        last[0] = (*params, a, b)
        return a, b

    def run(x, scale, bias, mean, var):
        dtype = x.dtype
        wx = widen(x)
        if not training:
            a, b = inference_affine((scale, bias, mean, var), wx.dtype)
            y = wx * _channel_shape(wx, a)
            y += _channel_shape(wx, b)
            return (narrow(y, dtype),)
        ws, wb, wm, wv = (widen(a) for a in (scale, bias, mean, var))
        axes = (0,) + tuple(range(2, x.ndim))
        batch_mean = wx.mean(axis=axes)
        batch_var = wx.var(axis=axes)
        inv_std = 1 / np.sqrt(batch_var + eps)
        y = (wx - _channel_shape(wx, batch_mean)) * _channel_shape(wx, ws * inv_std) \
            + _channel_shape(wx, wb)
        running_mean = wm * momentum + batch_mean * (1 - momentum)
        running_var = wv * momentum + batch_var * (1 - momentum)
        res = [narrow(y, dtype), narrow(running_mean, mean.dtype), narrow(running_var, var.dtype)]
        if ctx.since_version < 14:  # saved_mean, saved_var outputs of the old forms
            res += [narrow(batch_mean, mean.dtype), narrow(batch_var, var.dtype)]
        return tuple(res)

    def into(pos, x, scale, bias, mean, var):
        if training or pos != 0 or not fits_into(x):
            return run(x, scale, bias, mean, var)
        a, b = inference_affine((scale, bias, mean, var), x.dtype)
        x *= _channel_shape(x, a)
        x += _channel_shape(x, b)
        return (x,)

    return with_inplace(run, into)


@register("InstanceNormalization", since=[1, 6, 22])
def instance_normalization(ctx):
    eps = float(ctx.attr("epsilon", 1e-5))

    def run(x, scale, bias):
        wx = widen(x)
        axes = tuple(range(2, x.ndim))
        mean = wx.mean(axis=axes, keepdims=True)
        var = wx.var(axis=axes, keepdims=True)
        y = (wx - mean) / np.sqrt(var + eps) * _channel_shape(wx, widen(scale)) \
            + _channel_shape(wx, widen(bias))
        return (narrow(y, x.dtype),)

    return run


def _stash_dtype(x_dtype, stash_type):
    if x_dtype == np.float64:  # never compute a double input in less than double
        return np.dtype(np.float64)
    return numpy_dtype(stash_type) if stash_type != 16 else np.dtype(np.float32)


def _layer_norm_rows(x, axis, scale, bias, eps):
    """LayerNormalization when x is already in its statistics type: rows of the trailing
    axes, one fresh buffer normalized, scaled and shifted in place (6 passes, not 10)."""
    lead = x.shape[:axis]
    rows, cols = math.prod(lead), math.prod(x.shape[axis:])
    x2 = x.reshape(rows, cols)
    mean = x2.mean(axis=1, keepdims=True)
    y = x2 - mean
    var = np.einsum("ij,ij->i", y, y)[:, None]
    var *= x.dtype.type(1.0 / cols) if cols else x.dtype.type(np.nan)
    var += x.dtype.type(eps)
    inv_std = np.reciprocal(np.sqrt(var, out=var), out=var)
    y *= inv_std
    y = y.reshape(x.shape)
    y *= scale
    if bias is not None:
        y += bias
    stat_shape = lead + (1,) * (x.ndim - axis)
    return y, mean.reshape(stat_shape), inv_std.reshape(stat_shape)


@register("LayerNormalization", since=[17])
def layer_normalization(ctx):
    axis = int(ctx.attr("axis", -1))
    eps = float(ctx.attr("epsilon", 1e-5))
    stash_type = int(ctx.attr("stash_type", 1))
    stat_dtype = np.dtype(numpy_dtype(ctx.output_elem_type(1) or stash_type))

    def run(x, scale, bias=None):
        a = norm_axis(axis, x.ndim) if x.ndim else 0
        if x.ndim and x.dtype == _stash_dtype(x.dtype, stash_type) == scale.dtype and \
                scale.ndim <= x.ndim - a and \
                (bias is None or (bias.dtype == x.dtype and bias.ndim <= x.ndim - a)):
            y, mean, inv_std = _layer_norm_rows(x, a, scale, bias, eps)
            return y, narrow(mean, stat_dtype), narrow(inv_std, stat_dtype)
        axes = tuple(range(a, x.ndim))
        xs = x.astype(_stash_dtype(x.dtype, stash_type))
        mean = xs.mean(axis=axes, keepdims=True)
        centered = xs - mean
        inv_std = 1 / np.sqrt((centered * centered).mean(axis=axes, keepdims=True) + eps)
        normalized = narrow(centered * inv_std, x.dtype)
        y = widen(normalized) * widen(scale)
        if bias is not None:
            y = y + widen(bias)
        return narrow(y, x.dtype), narrow(mean, stat_dtype), narrow(inv_std, stat_dtype)

    return run


@register("RMSNormalization", since=[23])
def rms_normalization(ctx):
    axis = int(ctx.attr("axis", -1))
    eps = float(ctx.attr("epsilon", 1e-5))
    stash_type = int(ctx.attr("stash_type", 1))

    def run(x, scale):
        a = norm_axis(axis, x.ndim) if x.ndim else 0
        axes = tuple(range(a, x.ndim))
        xs = x.astype(_stash_dtype(x.dtype, stash_type))
        inv_rms = 1 / np.sqrt(np.mean(xs * xs, axis=axes, keepdims=True) + eps)
        normalized = narrow(xs * inv_rms, x.dtype)
        return (narrow(widen(normalized) * widen(scale), x.dtype),)

    return run


@register("GroupNormalization", since=[18, 21])
def group_normalization(ctx):
    eps = float(ctx.attr("epsilon", 1e-5))
    groups = int(ctx.attr("num_groups"))
    stash_type = int(ctx.attr("stash_type", 1))
    per_channel = ctx.since_version >= 21  # v18 had one scale/bias per group

    def run(x, scale, bias):
        n, c = x.shape[:2]
        xs = x.astype(_stash_dtype(x.dtype, stash_type)).reshape(n, groups, -1)
        mean = xs.mean(axis=-1, keepdims=True)
        var = xs.var(axis=-1, keepdims=True)
        normalized = narrow(((xs - mean) / np.sqrt(var + eps)).reshape(x.shape), x.dtype)
        ws, wb = widen(scale), widen(bias)
        if not per_channel:
            ws, wb = np.repeat(ws, c // groups), np.repeat(wb, c // groups)
        y = widen(normalized) * _channel_shape(x, ws) + _channel_shape(x, wb)
        return (narrow(y, x.dtype),)

    return run


@register("LRN", since=[1, 13])
def lrn(ctx):
    alpha = float(ctx.attr("alpha", 1e-4))
    beta = float(ctx.attr("beta", 0.75))
    bias = float(ctx.attr("bias", 1.0))
    size = int(ctx.attr("size"))
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2

    def run(x):
        wx = widen(x)
        sq = wx * wx
        # channel window [c - before, c + after]: one shifted add per window slot
        c = x.shape[1]
        # slots further than c - 1 channels away only ever add padding zeros: a window
        # wider than the channels (size comes from the model) costs no more than 2c - 1
        lo, hi = min(before, max(c - 1, 0)), min(after, max(c - 1, 0))
        pad = [(0, 0)] * x.ndim
        pad[1] = (lo, hi)
        padded = np.pad(sq, pad)
        window = padded[:, 0:c].copy()
        for k in range(1, lo + hi + 1):
            window += padded[:, k:k + c]
        y = wx / np.power(bias + alpha / size * window, beta)
        return (narrow(y, x.dtype),)

    return run


@register("LpNormalization", since=[1, 22])
def lp_normalization(ctx):
    axis = int(ctx.attr("axis", -1))
    p = int(ctx.attr("p", 2))

    def run(x):
        wx = widen(x)
        if p == 1:
            norm = np.sum(np.abs(wx), axis=axis, keepdims=True)
        else:
            norm = np.sqrt(np.sum(wx * wx, axis=axis, keepdims=True))
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.where(norm == 0, 0, wx / norm)
        return (narrow(y.astype(wx.dtype), x.dtype),)

    return run


@register("MeanVarianceNormalization", since=[9, 13])
def mean_variance_normalization(ctx):
    axes = tuple(ctx.attr("axes", [0, 2, 3]))

    def run(x):
        wx = widen(x)
        mean = wx.mean(axis=axes, keepdims=True)
        var = (wx * wx).mean(axis=axes, keepdims=True) - mean * mean
        y = (wx - mean) / (np.sqrt(var) + 1e-9)
        return (narrow(y, x.dtype),)

    return run


@register("Dropout", since=[1, 6, 7, 10, 12, 13, 22])
def dropout(ctx):
    seed = ctx.attr("seed")
    ratio_attr = float(ctx.attr("ratio", 0.5))
    mask_dtype = np.bool_ if ctx.since_version >= 10 else None  # before 10 the mask had type T
    # before 12 there is no training_mode input: an inference runtime runs those as identity
    # (Dropout-1/6 'is_test' defaulted to training, which no inference runtime honours)
    rng = np.random.RandomState(seed) if seed is not None else np.random.default_rng()

    def run(x, ratio=None, training_mode=None):
        if ctx.since_version >= 12:
            p = float(ratio) if ratio is not None else 0.5
            training = bool(training_mode) if training_mode is not None else False
        else:
            p, training = ratio_attr, False
        if not training or p == 0:
            mask = np.ones(x.shape, dtype=mask_dtype or x.dtype)
            return x, mask
        # seeded: the same uniform draw as the spec's test cases (RandomState(seed))
        draw = (np.random.RandomState(seed) if seed is not None else rng).uniform(0, 1, x.shape)
        keep = draw >= p
        y = narrow(widen(x) * keep * (1 / (1 - p)), x.dtype)
        return y, keep if mask_dtype else keep.astype(x.dtype)

    return run
