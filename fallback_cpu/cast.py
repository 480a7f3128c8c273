"""Cast, CastLike and BitCast.

``cast_array`` is the one conversion routine: float8 saturation, float8e8m0 rounding modes,
sub-byte integers (wrap like any narrowing integer cast) and string <-> number.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import TensorProto as TP
from tritort.dtypes import from_numpy, numpy_dtype, saturating_cast

from .numeric import LOWP, as_array
from .registry import NodeContext, register

_FLOAT8 = frozenset({TP.FLOAT8E4M3FN, TP.FLOAT8E4M3FNUZ, TP.FLOAT8E5M2, TP.FLOAT8E5M2FNUZ})
_E8M0_MAX_CODE, _E8M0_NAN_CODE = 254, 255


def cast_array(x: np.ndarray, to: int, saturate: bool = True, round_mode: str = "up"
               ) -> np.ndarray:
    """Convert ``x`` to ONNX element type ``to`` following the Cast spec."""
    x = as_array(x)
    if to == TP.STRING:
        return _to_strings(x)
    if x.dtype.kind in "OUS":
        return _from_strings(x, to, saturate, round_mode)
    dtype = numpy_dtype(to)
    if x.dtype == dtype:
        return x
    if to == TP.FLOAT8E8M0:
        return _to_e8m0(x, saturate, round_mode)
    if x.dtype in LOWP and dtype != np.float32:
        x = x.astype(np.float32)  # exact; the ml_dtypes types convert best through float32
        if dtype == np.float32:
            return x
    with np.errstate(invalid="ignore", over="ignore"):
        if to in _FLOAT8:
            return saturating_cast(x, dtype, saturate)
        # float -> integer truncates toward zero; integer -> narrower integer keeps the low
        # bits (sub-byte types too); float4e2m1 always saturates (it has no inf/NaN).
        return x.astype(dtype)


def _to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """float8e8m0 holds only a biased exponent: take float32's and round the mantissa away."""
    bits = x.astype(np.float32, copy=False).view(np.uint32)
    exponent = ((bits >> 23) & 0xFF).astype(np.int32)
    mantissa = bits & 0x7FFFFF
    if round_mode == "up":
        bump = mantissa != 0
    elif round_mode == "down":
        bump = np.zeros(bits.shape, dtype=bool)
    elif round_mode == "nearest":
        # the midpoint between 2^e and 2^(e+1) is mantissa 0.5 (ties go up); below the
        # normal range the midpoint is above mantissa 0.5, so a bare half stays down there
        half = (mantissa & 0x400000) != 0
        bump = half & ((exponent > 0) | ((mantissa & 0x3FFFFF) != 0))
    else:
        raise ValueError(f"Cast: unknown round_mode {round_mode!r}")
    code = exponent + bump
    special = exponent == 0xFF
    if saturate:
        code = np.minimum(code, _E8M0_MAX_CODE)
        # +-inf saturates to the largest value; NaN stays NaN
        code = np.where(special & (mantissa == 0), _E8M0_MAX_CODE, code)
    code = np.where(special & ((mantissa != 0) | (not saturate)), _E8M0_NAN_CODE, code)
    return code.astype(np.uint8).view(ml_dtypes.float8_e8m0fnu)


# ------------------------------------------------------------------------------- strings

def _format_float(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "INF" if v > 0 else "-INF"
    return "%.8g" % v


def _to_strings(x: np.ndarray) -> np.ndarray:
    """Numbers to text as onnxruntime prints them: %.8g floats, NaN/INF/-INF, bools as 1/0."""
    if x.dtype.kind in "OUS":
        return x.astype(object)
    if x.dtype == np.bool_:
        return np.where(x, "1", "0").astype(object)
    if x.dtype.kind in "iu":
        return x.astype(str).astype(object)
    values = x.astype(np.float64).ravel().tolist()
    return np.array([_format_float(v) for v in values], dtype=object).reshape(x.shape)


def _text(s) -> str:
    return s.decode() if isinstance(s, bytes) else str(s)


def _parse_int(s) -> int:
    text = _text(s).strip()
    try:
        return int(text)
    except ValueError:
        return int(float(text))  # "1e3", "2.0": onnxruntime accepts numeric prefixes


def _from_strings(x: np.ndarray, to: int, saturate: bool, round_mode: str) -> np.ndarray:
    """Parse text: floats accept NaN/INF/+INF/-INF in any case (Python's float() does)."""
    dtype = numpy_dtype(to)
    flat = x.ravel().tolist()
    if dtype.kind in "iu":
        ints = [_parse_int(s) for s in flat]
        return np.array(ints, dtype=np.uint64 if dtype.kind == "u" else np.int64).reshape(
            x.shape).astype(dtype)
    values = np.array([float(_text(s).strip()) for s in flat], dtype=np.float64)
    values = values.reshape(x.shape)
    if dtype == np.bool_:
        return values != 0
    return cast_array(values, to, saturate, round_mode)


# ------------------------------------------------------------------------------- kernels

@register("Cast", [1, 6, 9, 13, 19, 21, 23, 24, 25, 28])
def cast(ctx: NodeContext):
    to = ctx.attr("to")
    if isinstance(to, str):  # opset 1 spelled the type as a string
        to = getattr(TP, to.upper())
    saturate = bool(ctx.attr("saturate", 1))
    round_mode = ctx.attr("round_mode", "up")
    return lambda x: (cast_array(x, to, saturate, round_mode),)


@register("CastLike", [15, 19, 21, 23, 24, 25])
def cast_like(ctx: NodeContext):
    saturate = bool(ctx.attr("saturate", 1))
    round_mode = ctx.attr("round_mode", "up")

    def run(x, like):
        return (cast_array(x, from_numpy(like.dtype).onnx, saturate, round_mode),)

    return run


@register("BitCast", [26])
def bit_cast(ctx: NodeContext):
    dtype = numpy_dtype(ctx.attr("to"))

    def run(x):
        if x.dtype.itemsize != dtype.itemsize:
            raise ValueError(f"BitCast: {x.dtype} and {dtype} differ in width")
        # sub-byte ml_dtypes types keep their bits in the low part of a byte, so a view of
        # the same width is the reinterpretation; numpy is little-endian on every target
        return (x.view(dtype),)

    return run
