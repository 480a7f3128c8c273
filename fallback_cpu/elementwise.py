"""Elementwise kernels: unary math, arithmetic, comparisons, logic, bitwise, Where, Clip.

Activations live in :mod:`.activations`, Cast/CastLike/BitCast in :mod:`.cast`; both are
imported at the end of this module so that importing it registers the whole family.
"""
from __future__ import annotations

import functools

import numpy as np
from .numeric import (HALF_AND_LOWP, LOWP, as_array, erf, erf_into, fits_into, float_kernel,
                      legacy_broadcast, round_back, upcast, with_inplace)
from .registry import NodeContext, register


def _unary(op_type: str, fn, since, include_half: bool = False, inplace=None) -> None:
    """Register an attribute-free op whose output type is its input type. ``inplace(x, out)``
    computes it for float32/64 ``x`` into ``out``."""
    kernel = float_kernel(fn, include_half)

    def into(pos, x):
        if not fits_into(x):
            return (kernel(x),)
        with np.errstate(all="ignore"):
            return (inplace(x, x),)

    @register(op_type, since)
    def factory(ctx: NodeContext):
        run = lambda x: (kernel(x),)  # noqa: E731
        return with_inplace(run, into) if inplace is not None else run


# numpy's float16 loops already evaluate in float32 and round once, so only the ml_dtypes
# types are upcast here.
_unary("Abs", np.abs, [1, 6, 13], inplace=np.abs)
_unary("Neg", np.negative, [1, 6, 13], inplace=np.negative)
_unary("Reciprocal", np.reciprocal, [1, 6, 13], inplace=np.reciprocal)
_unary("Sqrt", np.sqrt, [1, 6, 13], inplace=np.sqrt)
_unary("Exp", np.exp, [1, 6, 13], inplace=np.exp)
_unary("Log", np.log, [1, 6, 13], inplace=np.log)
_unary("Ceil", np.ceil, [1, 6, 13])
_unary("Floor", np.floor, [1, 6, 13])
_unary("Round", np.round, [11, 22])  # numpy rounds half to even, as ONNX does
_unary("Sign", np.sign, [9, 13])
_unary("Sin", np.sin, [7, 22])
_unary("Cos", np.cos, [7, 22])
_unary("Tan", np.tan, [7, 22])
_unary("Asin", np.arcsin, [7, 22])
_unary("Acos", np.arccos, [7, 22])
_unary("Atan", np.arctan, [7, 22])
_unary("Sinh", np.sinh, [9, 22])
_unary("Cosh", np.cosh, [9, 22])
_unary("Asinh", np.arcsinh, [9, 22])
_unary("Acosh", np.arccosh, [9, 22])
_unary("Atanh", np.arctanh, [9, 22])
# Erf also accepts integer tensors; the result is truncated back to the input type.
_unary("Erf", erf, [9, 13], inplace=erf_into)
_unary("Not", np.logical_not, [1])
_unary("BitwiseNot", np.invert, [18])


@register("IsNaN", [9, 13, 20])
def is_nan(ctx: NodeContext):
    return lambda x: (as_array(np.isnan(upcast(x, False))),)


@register("IsInf", [10, 20])
def is_inf(ctx: NodeContext):
    negative = bool(ctx.attr("detect_negative", 1))
    positive = bool(ctx.attr("detect_positive", 1))

    def run(x):
        x = upcast(x, False)
        if negative and positive:
            return (as_array(np.isinf(x)),)
        if positive:
            return (as_array(x == np.inf),)
        if negative:
            return (as_array(x == -np.inf),)
        return (np.zeros(x.shape, dtype=bool),)

    return run


# ----------------------------------------------------------------------------- arithmetic

def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero, as in C (numpy floors)."""
    q, r = np.divmod(a, b)
    if a.dtype.kind == "i":
        # floor and trunc differ where the division is inexact and the signs differ
        q = q + ((r != 0) & ((a < 0) != (b < 0))).astype(q.dtype)
    return q


def _divide(a: np.ndarray, b: np.ndarray, out=None) -> np.ndarray:
    if out is not None:  # floats only (fits_into)
        return np.true_divide(a, b, out=out)
    return _int_div(a, b) if a.dtype.kind in "iu" else np.true_divide(a, b)


def _binary(op_type: str, fn, since) -> None:
    """Register a same-type binary op; before opset 7 it may carry broadcast/axis attrs."""
    kernel = float_kernel(fn, include_half=False)

    @register(op_type, since)
    def factory(ctx: NodeContext):
        align = legacy_broadcast(ctx)

        def into(pos, a, b):
            b = align(a, b)
            out = b if pos else a
            if not fits_into(out, a, b):
                return (kernel(a, b),)
            with np.errstate(all="ignore"):
                return (fn(a, b, out=out),)

        return with_inplace(lambda a, b: (kernel(a, align(a, b)),), into)


_binary("Add", np.add, [1, 6, 7, 13, 14])
_binary("Sub", np.subtract, [1, 6, 7, 13, 14])
_binary("Mul", np.multiply, [1, 6, 7, 13, 14])
_binary("Div", _divide, [1, 6, 7, 13, 14])


def _int_pow(base: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    exponent = exponent.astype(np.int64, copy=False)
    if np.any(exponent < 0):
        # numpy refuses negative integer powers; 1/base**n truncates like C's pow then cast
        with np.errstate(all="ignore"):
            y = np.power(base.astype(np.float64), exponent.astype(np.float64))
            return np.trunc(np.nan_to_num(y, nan=0.0)).astype(base.dtype)
    return np.power(base, exponent).astype(base.dtype, copy=False)


def _pow(base: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """Pow with independent base and exponent types (opset 12+); the output is the base's."""
    dtype = base.dtype
    with np.errstate(all="ignore"):
        if dtype.kind in "iu":
            if exponent.dtype.kind in "iub":
                return as_array(_int_pow(base, exponent))
            y = np.power(base.astype(np.float64), upcast(exponent).astype(np.float64))
            return as_array(y).astype(dtype)
        if dtype in HALF_AND_LOWP:
            y = np.power(upcast(base), upcast(exponent).astype(np.float32, copy=False))
            return round_back(y, dtype)
        if exponent.size == 1 and dtype.kind == "f":
            square = _SMALL_POWERS.get(float(exponent.reshape(-1)[0]))
            if square is not None:  # x**2, x**3 (tanh-GELU): multiplications, 100x faster
                return as_array(square(base)).reshape(np.broadcast_shapes(base.shape,
                                                                           exponent.shape))
        # an integer or wider float exponent must not widen the float result
        return as_array(np.power(base, upcast(exponent, False).astype(dtype, copy=False)))


_SMALL_POWERS = {1.0: lambda x: x.copy(), 2.0: lambda x: x * x, 3.0: lambda x: x * x * x,
                 0.5: np.sqrt}


@register("Pow", [1, 7, 12, 13, 15])
def pow_(ctx: NodeContext):
    align = legacy_broadcast(ctx)
    return lambda a, b: (_pow(a, align(a, b)),)


@register("Mod", [10, 13, 28])
def mod(ctx: NodeContext):
    # fmod=1: sign of the dividend (C fmod); fmod=0: sign of the divisor (Python %)
    kernel = float_kernel(np.fmod if ctx.attr("fmod", 0) else np.mod, include_half=False)
    return lambda a, b: (kernel(a, b),)


def _variadic(op_type: str, fn, since, mean: bool = False) -> None:
    def combine(*xs):
        y = functools.reduce(fn, xs)
        return y / y.dtype.type(len(xs)) if mean else y

    # Sum/Mean of float16 accumulate in float32 and round once, as onnxruntime does
    kernel = float_kernel(combine, include_half=fn is np.add)

    @register(op_type, since)
    def factory(ctx: NodeContext):
        def run(*xs):
            xs = [x for x in xs if x is not None]
            if len(xs) == 1 and not mean:
                return (xs[0],)
            return (kernel(*xs),)

        def into(pos, *xs):
            out = xs[pos]
            present = [x for x in xs if x is not None]
            if mean or len(present) < 2 or not fits_into(out, *present):
                return run(*xs)
            rest = [x for i, x in enumerate(xs) if x is not None and i != pos]
            with np.errstate(all="ignore"):  # out first: it is overwritten by the first step
                fn(out, rest[0], out=out)
                for x in rest[1:]:
                    fn(out, x, out=out)
            return (out,)

        return with_inplace(run, into)


# np.maximum/np.minimum propagate NaN, as ONNX Max/Min do.
_variadic("Max", np.maximum, [1, 6, 8, 12, 13])
_variadic("Min", np.minimum, [1, 6, 8, 12, 13])
_variadic("Sum", np.add, [1, 6, 8, 13])
_variadic("Mean", np.add, [1, 6, 8, 13], mean=True)


# ----------------------------------------------------------------- comparisons and logic

def _predicate(op_type: str, fn, since) -> None:
    """Register a binary op with a bool output (comparisons, And/Or/Xor)."""

    @register(op_type, since)
    def factory(ctx: NodeContext):
        align = legacy_broadcast(ctx)

        def run(a, b):
            b = align(a, b)
            if a.dtype in LOWP or b.dtype in LOWP:
                a, b = upcast(a, False), upcast(b, False)
            with np.errstate(invalid="ignore"):
                return (as_array(fn(a, b)).astype(bool, copy=False),)

        return run


_predicate("Equal", np.equal, [1, 7, 11, 13, 19])
_predicate("Less", np.less, [1, 7, 9, 13])
_predicate("Greater", np.greater, [1, 7, 9, 13])
_predicate("LessOrEqual", np.less_equal, [12, 16])
_predicate("GreaterOrEqual", np.greater_equal, [12, 16])
_predicate("And", np.logical_and, [1, 7])
_predicate("Or", np.logical_or, [1, 7])
_predicate("Xor", np.logical_xor, [1, 7])


@register("BitwiseAnd", 18)
def bitwise_and(ctx: NodeContext):
    return lambda a, b: (as_array(np.bitwise_and(a, b)),)


@register("BitwiseOr", 18)
def bitwise_or(ctx: NodeContext):
    return lambda a, b: (as_array(np.bitwise_or(a, b)),)


@register("BitwiseXor", 18)
def bitwise_xor(ctx: NodeContext):
    return lambda a, b: (as_array(np.bitwise_xor(a, b)),)


@register("BitShift", [11, 28])
def bit_shift(ctx: NodeContext):
    # numpy's shifts already give 0 (or -1 for a negative X shifted right) when the count is
    # negative or >= the bit width, which is what opset 28 specifies.
    shift = np.left_shift if ctx.attr("direction") == "LEFT" else np.right_shift

    def run(x, y):
        return (as_array(shift(x, y.astype(x.dtype, copy=False))),)

    return run


# ------------------------------------------------------------------ selection and clamping

@register("Where", [9, 16])
def where(ctx: NodeContext):
    return lambda cond, x, y: (as_array(np.where(cond, x, y)),)


def _clip(x: np.ndarray, lo, hi) -> np.ndarray:
    if lo is None and hi is None:
        return x
    dtype = x.dtype
    y = upcast(x, False)
    # max then min: when min > max every value becomes max, as the spec says
    if lo is not None:
        y = np.maximum(y, upcast(as_array(lo), False).astype(y.dtype, copy=False))
    if hi is not None:
        y = np.minimum(y, upcast(as_array(hi), False).astype(y.dtype, copy=False))
    return as_array(y).astype(dtype, copy=False)


@register("Clip", [1, 6, 11, 12, 13])
def clip(ctx: NodeContext):
    if ctx.since_version < 11:
        # min/max were attributes; an absent one means unbounded
        lo, hi = ctx.attr("min"), ctx.attr("max")
        return lambda x: (_clip(x, lo, hi),)
    return lambda x, lo=None, hi=None: (_clip(x, lo, hi),)


@register("PRelu", [1, 6, 7, 9, 16])
def prelu(ctx: NodeContext):
    legacy = ctx.since_version < 7

    def compute(x, slope):
        return np.where(x < 0, x * slope, x)

    kernel = float_kernel(compute, include_half=False)

    def run(x, slope):
        if legacy and slope.ndim == 1 and x.ndim > 2 and slope.shape[0] == x.shape[1] > 1:
            # before opset 7 a 1-D slope is per channel (axis 1)
            slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))
        return (kernel(x, slope.astype(x.dtype, copy=False)),)

    return run


# Registered on import; see the module docstring.
from . import activations, cast  # noqa: E402,F401
