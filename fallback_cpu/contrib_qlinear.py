"""onnxruntime's ``com.microsoft`` QOperator kernels on the NumPy provider: QLinearAdd,
QLinearMul, QLinearSigmoid, QLinearLeakyRelu, QLinearGlobalAveragePool, QLinearAveragePool,
QLinearConcat and QLinearSoftmax.

Each dequantizes (``(x - zero_point) * scale``, per-tensor parameters), computes in float32
and requantizes ``rint(v / y_scale) + y_zero_point`` (round half to even), saturated to the
8-bit type. The unary ops evaluate their function once per 8-bit value into a 256-entry table
(as onnxruntime does) and index it. Omitted zero points are 0. Pools take ``channels_last``
(N, *spatial, C) input too; QLinearAveragePool's window attributes are AveragePool's.
QLinearSoftmax follows the ``opset`` attribute: from 13 along ``axis``, before that over the
input coerced to 2-D at ``axis``.
"""
from __future__ import annotations

import math

import numpy as np

from . import pool
from .registry import register

MS_DOMAIN = "com.microsoft"


def _scalar(p, default=0.0) -> np.float32:
    if p is None:
        return np.float32(default)
    a = np.asarray(p)
    if a.size != 1:
        raise ValueError(f"scales and zero points must be per-tensor (one element), got shape "
                         f"{list(a.shape)}")
    return np.float32(a.reshape(-1)[0])


def _out_dtype(x_dtype, y_zero_point):
    return np.dtype(y_zero_point.dtype) if y_zero_point is not None else np.dtype(x_dtype)


def dequantize(x, scale, zero_point) -> np.ndarray:
    return (x.astype(np.float32) - _scalar(zero_point)) * _scalar(scale)


def requantize(v, scale, zero_point, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.rint(np.asarray(v, dtype=np.float32) / _scalar(scale)) + _scalar(zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def _check_8bit(x):
    if x.dtype not in (np.uint8, np.int8):
        raise ValueError(f"quantized input must be uint8 or int8, got {x.dtype}")


def _binary(fn):
    def factory(ctx):
        def run(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale,
                c_zero_point=None):
            _check_8bit(a)
            v = fn(dequantize(a, a_scale, a_zero_point), dequantize(b, b_scale, b_zero_point))
            return (requantize(v, c_scale, c_zero_point, _out_dtype(a.dtype, c_zero_point)),)

        return run

    return factory


register("QLinearAdd", since=1, domain=MS_DOMAIN)(_binary(np.add))
register("QLinearMul", since=1, domain=MS_DOMAIN)(_binary(np.multiply))


def _unary(make_fn):
    """A per-value table of ``quantize(f(dequantize(x)))`` for all 256 8-bit values."""

    def factory(ctx):
        fn = make_fn(ctx)

        def run(x, x_scale, x_zero_point=None, y_scale=None, y_zero_point=None):
            _check_8bit(x)
            out = _out_dtype(x.dtype, y_zero_point)
            codes = np.arange(256, dtype=np.int64) - (128 if x.dtype == np.int8 else 0)
            with np.errstate(over="ignore"):
                table = requantize(fn(dequantize(codes, x_scale, x_zero_point)), y_scale,
                                   y_zero_point, out)
            index = x.astype(np.int64) + (128 if x.dtype == np.int8 else 0)
            return (table[index],)

        return run

    return factory


@register("QLinearSigmoid", since=1, domain=MS_DOMAIN)
@_unary
def qlinear_sigmoid(ctx):
    return lambda v: np.float32(1) / (np.float32(1) + np.exp(-v))


@register("QLinearLeakyRelu", since=1, domain=MS_DOMAIN)
@_unary
def qlinear_leaky_relu(ctx):
    alpha = np.float32(ctx.attr("alpha", 0.01))
    return lambda v: np.where(v >= 0, v, v * alpha)


def _to_nchw(x, channels_last):
    return np.moveaxis(x, -1, 1) if channels_last else x


def _from_nchw(y, channels_last):
    return np.ascontiguousarray(np.moveaxis(y, 1, -1)) if channels_last else y


@register("QLinearGlobalAveragePool", since=1, domain=MS_DOMAIN)
def qlinear_global_average_pool(ctx):
    channels_last = bool(ctx.attr("channels_last", 0))

    def run(x, x_scale, x_zero_point, y_scale, y_zero_point):
        _check_8bit(x)
        xs = _to_nchw(x, channels_last)
        axes = tuple(range(2, x.ndim))
        count = math.prod(xs.shape[2:])
        # exact integer sums, then one float32 scaling (onnxruntime's order)
        total = xs.astype(np.int64).sum(axis=axes, keepdims=True) - \
            np.int64(_scalar(x_zero_point)) * count
        v = total.astype(np.float32) * (_scalar(x_scale) / np.float32(max(count, 1)))
        y = requantize(v, y_scale, y_zero_point, _out_dtype(x.dtype, y_zero_point))
        return (_from_nchw(y, channels_last),)

    return run


@register("QLinearAveragePool", since=1, domain=MS_DOMAIN)
def qlinear_average_pool(ctx):
    channels_last = bool(ctx.attr("channels_last", 0))
    average = pool.average_pool(ctx)  # AveragePool's kernel on the dequantized values

    def run(x, x_scale, x_zero_point=None, y_scale=None, y_zero_point=None):
        _check_8bit(x)
        # window means of x - zero point in float64: the sums are exact, whatever their order
        centered = _to_nchw(x, channels_last).astype(np.float64) - \
            np.float64(_scalar(x_zero_point))
        (mean,) = average(np.ascontiguousarray(centered))
        v = mean * (np.float64(_scalar(x_scale)) / np.float64(_scalar(y_scale)))
        out = _out_dtype(x.dtype, y_zero_point)
        info = np.iinfo(out)
        q = np.clip(np.rint(v) + np.float64(_scalar(y_zero_point)), info.min, info.max)
        return (_from_nchw(q.astype(out), channels_last),)

    return run


@register("QLinearConcat", since=1, domain=MS_DOMAIN)
def qlinear_concat(ctx):
    axis = int(ctx.attr("axis"))

    def run(y_scale, y_zero_point, *triples):
        if len(triples) % 3 or not triples:
            raise ValueError("QLinearConcat takes (tensor, scale, zero point) triples after "
                             "Y's scale and zero point")
        out = np.dtype(y_zero_point.dtype)
        parts = []
        for i in range(0, len(triples), 3):
            x, s, z = triples[i:i + 3]
            _check_8bit(x)
            if _scalar(s) == _scalar(y_scale) and _scalar(z) == _scalar(y_zero_point) and \
                    x.dtype == out:
                parts.append(x)
            else:
                parts.append(requantize(dequantize(x, s, z), y_scale, y_zero_point, out))
        return (np.concatenate(parts, axis=axis),)

    return run


@register("QLinearSoftmax", since=1, domain=MS_DOMAIN)
def qlinear_softmax(ctx):
    opset = int(ctx.attr("opset"))
    axis = int(ctx.attr("axis", -1 if opset >= 13 else 1))

    def run(x, x_scale, x_zero_point=None, y_scale=None, y_zero_point=None):
        _check_8bit(x)
        out = _out_dtype(x.dtype, y_zero_point)
        a = axis % x.ndim if x.ndim else 0
        if opset >= 13:
            xs = np.moveaxis(x, a, -1)
        else:  # coerced to 2-D at axis
            xs = x.reshape(math.prod(x.shape[:a]), -1)
        xi = xs.astype(np.float64)
        # exp((x - row max) * scale): the zero point cancels, as in onnxruntime's table
        e = np.exp((xi - xi.max(axis=-1, keepdims=True)) * float(_scalar(x_scale)))
        e = e.astype(np.float32)
        total = e.sum(axis=-1, keepdims=True, dtype=np.float32)
        y = requantize(e / total, y_scale, y_zero_point, out)
        if opset >= 13:
            y = np.moveaxis(y, -1, a)
        return (np.ascontiguousarray(y.reshape(x.shape)),)

    return run
