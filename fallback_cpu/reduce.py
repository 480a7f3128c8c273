"""Reductions (Reduce*, ArgMax/ArgMin), scans (CumSum/CumProd) and Softmax/LogSoftmax/Hardmax.

Float16 and the ml_dtypes floats accumulate in float32 and round back once; integer
reductions accumulate in their own type (wrapping, as onnxruntime does).
"""
from __future__ import annotations

import math

import numpy as np

from .numeric import as_array, compute_dtype, normalize_axes, normalize_axis, round_back, upcast
from .registry import NodeContext, register


def _empty_identity(dtype: np.dtype, largest: bool):
    """Value of Max (largest=False) / Min (largest=True) over an empty set."""
    if dtype == np.bool_:
        return largest
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return info.max if largest else info.min
    return np.inf if largest else -np.inf


def _is_empty_reduction(x: np.ndarray, axes) -> bool:
    dims = range(x.ndim) if axes is None else axes
    return any(x.shape[a] == 0 for a in dims)


def _sum(x, axes, keepdims):
    return np.sum(x, axis=axes, keepdims=keepdims, dtype=x.dtype)


def _max(x, axes, keepdims):
    if _is_empty_reduction(x, axes):
        return np.max(x, axis=axes, keepdims=keepdims, initial=_empty_identity(x.dtype, False))
    return np.max(x, axis=axes, keepdims=keepdims)


def _min(x, axes, keepdims):
    if _is_empty_reduction(x, axes):
        return np.min(x, axis=axes, keepdims=keepdims, initial=_empty_identity(x.dtype, True))
    return np.min(x, axis=axes, keepdims=keepdims)


def _mean(x, axes, keepdims):
    count = math.prod(x.shape[a] for a in (range(x.ndim) if axes is None else axes))
    if x.dtype.kind in "iu":
        # integer mean truncates toward zero like the integer division it is
        return np.trunc(np.sum(x, axis=axes, keepdims=keepdims, dtype=np.float64) / count)
    # an empty set gives 0/0 = nan
    return np.sum(x, axis=axes, keepdims=keepdims, dtype=x.dtype) / x.dtype.type(count)


def _prod(x, axes, keepdims):
    return np.prod(x, axis=axes, keepdims=keepdims, dtype=x.dtype)


def _l1(x, axes, keepdims):
    return _sum(np.abs(x), axes, keepdims)


def _sum_square(x, axes, keepdims):
    return _sum(x * x, axes, keepdims)


def _l2(x, axes, keepdims):
    if x.dtype.kind in "iu":
        return np.sqrt(_sum_square(x.astype(np.float64), axes, keepdims))
    return np.sqrt(_sum_square(x, axes, keepdims))


def _log_sum(x, axes, keepdims):
    return np.log(_sum(x, axes, keepdims))


def _log_sum_exp(x, axes, keepdims):
    if _is_empty_reduction(x, axes):
        return np.log(_sum(np.exp(x), axes, keepdims))
    m = np.max(x, axis=axes, keepdims=True)
    # an infinite max would turn x - m into nan; shift by 0 there instead
    m = np.where(np.isfinite(m), m, m.dtype.type(0))
    y = np.log(_sum(np.exp(x - m), axes, True)) + m
    return y if keepdims else np.squeeze(y, axis=axes)


# (function, first since_version taking axes as an input, all since_versions)
_REDUCTIONS = {
    "ReduceSum": (_sum, 13, [1, 11, 13]),
    "ReduceMean": (_mean, 18, [1, 11, 13, 18]),
    "ReduceMax": (_max, 18, [1, 11, 12, 13, 18, 20]),
    "ReduceMin": (_min, 18, [1, 11, 12, 13, 18, 20]),
    "ReduceProd": (_prod, 18, [1, 11, 13, 18]),
    "ReduceL1": (_l1, 18, [1, 11, 13, 18]),
    "ReduceL2": (_l2, 18, [1, 11, 13, 18]),
    "ReduceLogSum": (_log_sum, 18, [1, 11, 13, 18, 28]),
    "ReduceLogSumExp": (_log_sum_exp, 18, [1, 11, 13, 18, 28]),
    "ReduceSumSquare": (_sum_square, 18, [1, 11, 13, 18]),
}


def _register_reduction(op_type: str, fn, axes_input_since: int, since) -> None:
    @register(op_type, since)
    def factory(ctx: NodeContext):
        # flags are on only when 1, as onnx's shape inference and onnxruntime read them
        # (keepdims=2 reduces the rank: the inferred output type says so)
        keepdims = ctx.attr("keepdims", 1) == 1
        axes_from_input = ctx.since_version >= axes_input_since
        noop = axes_from_input and ctx.attr("noop_with_empty_axes", 0) == 1
        attr_axes = None if axes_from_input else ctx.attr("axes")

        def run(data, axes=None):
            if not axes_from_input:
                axes = attr_axes
            if axes is None or np.size(axes) == 0:
                # no axes: reduce everything, or (noop) reduce nothing, which still applies
                # the op's elementwise part (ReduceSumSquare squares), as onnxruntime does
                axes = () if noop else None
            else:
                axes = normalize_axes(axes, data.ndim)
            dtype = data.dtype
            with np.errstate(all="ignore"):
                return (round_back(fn(upcast(data), axes, keepdims), dtype),)

        return run


for _op, (_fn, _axes_since, _versions) in _REDUCTIONS.items():
    _register_reduction(_op, _fn, _axes_since, _versions)


def _arg_reduction(op_type: str, fn) -> None:
    @register(op_type, [1, 11, 12, 13])
    def factory(ctx: NodeContext):
        axis = ctx.attr("axis", 0)
        keepdims = ctx.attr("keepdims", 1) == 1  # as onnx's inference reads it
        last = bool(ctx.attr("select_last_index", 0))

        def run(data):
            x = upcast(data, False)
            ax = normalize_axis(axis, x.ndim)
            if last:
                # first hit in the reversed axis is the last hit in the original
                idx = x.shape[ax] - 1 - fn(np.flip(x, ax), axis=ax)
            else:
                idx = fn(x, axis=ax)
            if keepdims:
                idx = np.expand_dims(idx, ax)
            return (as_array(idx).astype(np.int64, copy=False),)

        return run


_arg_reduction("ArgMax", np.argmax)
_arg_reduction("ArgMin", np.argmin)


# ----------------------------------------------------------------------------------- scans

def _register_scan(op_type: str, scan, identity: int, since) -> None:
    @register(op_type, since)
    def factory(ctx: NodeContext):
        exclusive = bool(ctx.attr("exclusive", 0))
        reverse = bool(ctx.attr("reverse", 0))

        def run(x, axis):
            ax = normalize_axis(int(np.asarray(axis).ravel()[0]), x.ndim)
            dtype = x.dtype
            v = upcast(x)
            if reverse:
                v = np.flip(v, ax)
            y = scan(v, axis=ax, dtype=v.dtype)
            if exclusive:
                # shift by one along the axis; the first slot holds the identity
                shifted = np.full_like(y, identity)
                dst = [slice(None)] * y.ndim
                src = [slice(None)] * y.ndim
                dst[ax], src[ax] = slice(1, None), slice(None, -1)
                shifted[tuple(dst)] = y[tuple(src)]
                y = shifted
            if reverse:
                y = np.flip(y, ax)
            return (round_back(y, dtype),)

        return run


_register_scan("CumSum", np.cumsum, 0, [11, 14])
_register_scan("CumProd", np.cumprod, 1, [26])


# ------------------------------------------------------------------- softmax and friends

def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    # e is a fresh array, so the later steps may work in place
    e = x - np.max(x, axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    shifted -= np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return shifted


def _hardmax(x: np.ndarray, axis: int) -> np.ndarray:
    y = np.zeros(x.shape, dtype=x.dtype)
    if x.size:
        np.put_along_axis(y, np.argmax(x, axis=axis, keepdims=True), 1, axis=axis)
    return y


def _register_softmax(op_type: str, fn) -> None:
    @register(op_type, [1, 11, 13])
    def factory(ctx: NodeContext):
        coerce_2d = ctx.since_version < 13
        axis = ctx.attr("axis", 1 if coerce_2d else -1)

        def run(x):
            if x.size == 0:
                return (np.empty(x.shape, dtype=x.dtype),)
            dtype = x.dtype
            v = upcast(x)
            ax = normalize_axis(axis, max(v.ndim, 1))
            with np.errstate(all="ignore"):
                if v.ndim == 0:
                    y = fn(v.reshape(1), 0).reshape(())
                elif coerce_2d:
                    # before opset 13 the input is flattened to 2-D at axis
                    rows = math.prod(v.shape[:ax])
                    y = fn(v.reshape(rows, math.prod(v.shape[ax:])), 1).reshape(v.shape)
                else:
                    y = fn(v, ax)
                return (round_back(y, dtype),)

        return run


_register_softmax("Softmax", _softmax)
_register_softmax("LogSoftmax", _log_softmax)
_register_softmax("Hardmax", _hardmax)
