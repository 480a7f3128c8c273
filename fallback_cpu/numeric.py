"""Helpers shared by the elementwise, reduction and quantization kernels.

Low-precision floats (bfloat16, float8, float4, e8m0: the ml_dtypes types) are computed in
float32 and rounded back once, with Cast's saturation rules for the float8 types.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from tritort.dtypes import LOW_PRECISION_FLOATS, numpy_dtype, saturating_cast

# The ml_dtypes floats: numpy has no native arithmetic for them.
LOWP = frozenset(numpy_dtype(t) for t in LOW_PRECISION_FLOATS)
# Types whose multi-step formulas are evaluated in float32 to round only once.
HALF_AND_LOWP = LOWP | {np.dtype(np.float16)}


def as_array(x) -> np.ndarray:
    """numpy ufuncs return scalars for 0-d operands; kernels must return arrays."""
    return x if isinstance(x, np.ndarray) else np.asarray(x)


def is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype in LOWP


def compute_dtype(dtype: np.dtype, include_half: bool = True) -> np.dtype:
    """The dtype to evaluate a float formula in for inputs of ``dtype``."""
    if dtype in LOWP or (include_half and dtype == np.float16):
        return np.dtype(np.float32)
    return dtype


def round_back(y, dtype: np.dtype) -> np.ndarray:
    """Round a float32 result back to the input's type (float8 saturates like Cast)."""
    y = as_array(y)
    if y.dtype == dtype:
        return y
    if dtype in LOWP:
        return saturating_cast(y, dtype)
    return y.astype(dtype)


def upcast(x: np.ndarray, include_half: bool = True) -> np.ndarray:
    cdt = compute_dtype(x.dtype, include_half)
    return x if cdt == x.dtype else x.astype(cdt)


def float_kernel(fn: Callable[..., np.ndarray], include_half: bool = True):
    """Wrap ``fn(*arrays)`` so low-precision inputs run in float32 and round back once.

    The output type is the first input's; floating-point warnings are silenced (ONNX
    defines the results: inf/nan, not exceptions).
    """

    @functools.wraps(fn)
    def run(*xs):
        dtype = xs[0].dtype
        with np.errstate(all="ignore"):
            if dtype in LOWP or (include_half and dtype == np.float16):
                return round_back(fn(*[upcast(x, include_half) for x in xs]), dtype)
            y = as_array(fn(*xs))
        return y if y.dtype == dtype else y.astype(dtype)

    return run


NATIVE_FLOATS = frozenset(np.dtype(t) for t in (np.float32, np.float64))


def fits_into(out: np.ndarray, *operands: np.ndarray) -> bool:
    """May a float32/64 elementwise op over ``operands`` write its result into ``out`` (one of
    them)? Same dtype everywhere, and ``out`` already has the broadcast shape."""
    dtype = out.dtype
    if dtype not in NATIVE_FLOATS:
        return False
    for x in operands:
        if x.dtype != dtype:
            return False
    shape = out.shape
    for x in operands:  # equal, or a trailing slice of out's shape (a bias): no broadcast call
        if x.shape != shape[len(shape) - x.ndim:] or x.ndim > len(shape):
            return np.broadcast_shapes(*[x.shape for x in operands]) == shape
    return True


def with_inplace(run: Callable, into: Callable) -> Callable:
    """Give kernel ``run`` an in-place form: ``into(pos, *inputs)`` returns what ``run``
    returns, writing it into ``inputs[pos]`` when that fits. The executor calls it only with
    an input that nothing else references any more (see tritort.executor)."""
    run.inplace = into
    return run


def normalize_axis(axis: int, ndim: int) -> int:
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(f"axis {axis} out of range for rank {ndim}")
    return axis + ndim if axis < 0 else axis


def normalize_axes(axes, ndim: int) -> tuple[int, ...]:
    if ndim == 0:
        return ()  # a scalar has nothing to reduce over
    return tuple(sorted({normalize_axis(int(a), ndim) for a in np.asarray(axes).ravel()}))


def legacy_broadcast(ctx) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Binary ops before opset 7: ``broadcast=1`` with ``axis`` aligns B to A at ``axis``.

    Returns a function ``(a, b) -> b`` reshaped so that numpy broadcasting applies.
    """
    axis = ctx.attr("axis")
    if ctx.since_version >= 7 or not ctx.attr("broadcast", 0) or axis is None:
        return lambda a, b: b

    def align(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        start = axis + a.ndim if axis < 0 else axis
        trailing = a.ndim - start - b.ndim
        return b.reshape(b.shape + (1,) * trailing) if trailing > 0 else b

    return align


def erf(x: np.ndarray) -> np.ndarray:
    """The error function: float32 through :func:`fastmath.erf32` (8x faster than scipy's),
    other types through scipy's (imported on first use: it is slow to import)."""
    if x.dtype == np.float32:
        from .fastmath import erf32

        return erf32(x)
    from scipy import special

    return special.erf(x)


def erf_into(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """erf of float32/64 ``x`` written into ``out``."""
    if x.dtype == np.float32:
        from .fastmath import erf32

        return erf32(x, out=out)
    from scipy import special

    return special.erf(x, out=out)


def expit(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Overflow-safe logistic sigmoid in x's own precision (scipy's, imported on first use)."""
    from scipy import special

    return special.expit(x) if out is None else special.expit(x, out=out)
