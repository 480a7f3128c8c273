"""QuantizeLinear and DequantizeLinear as pointwise lowerings (rows of codegen.lowering).

Per-tensor scales and zero points broadcast like any input; per-axis ones (1-D, along
``axis``) are declared ``aligned``, so the kernel loads them along that dim. As ONNX says:
``Q(x) = saturate(round_half_even(x / scale) + zero_point)`` for integer outputs (a float8
output is ``x / scale + zero_point`` cast, saturating or not), ``DQ(x) = (x - zero_point) *
scale``; both computed in float32 (float64 for int32 values, which float32 cannot hold), the
division rounded to float16 / bfloat16 first where the scale (or ``precision``) is one.
"""
from __future__ import annotations

from typing import Sequence

from tritort.dtypes import FLOAT8_OCP_TYPES, FLOAT_TYPES

from .ir import Cast, Const, Expr
from .lowering import _round, lowering, op

RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
          "uint16": (0, 65535)}
PACKED = frozenset({"int4", "uint4"})  # two values a byte
_NARROW = {1: "float", 10: "float16", 16: "bfloat16"}  # precision attribute -> division type
QUANT_TYPES = frozenset(RANGES) | FLOAT8_OCP_TYPES
DTYPES = FLOAT_TYPES | QUANT_TYPES | PACKED | {"int32"}


def _axis(attrs: dict, rank: int) -> int | None:
    axis = attrs.get("axis", 1)
    axis = axis + rank if axis < 0 else axis
    return axis if 0 <= axis < rank else None


def _along_axis(attrs: dict, ranks: Sequence[int | None]) -> dict[int, int]:
    """Scale and zero point, when 1-D, lie along ``axis`` of x (and of the output)."""
    rank = ranks[0]
    axis = _axis(attrs, rank) if rank else None
    if axis is None:
        return {}
    return {i: rank - 1 - axis for i in (1, 2) if i < len(ranks) and ranks[i] == 1}


def _shape_reason(attrs: dict, shapes: Sequence[tuple | None]) -> str | None:
    if attrs.get("block_size", 0):
        return "block-wise scales (block_size) are gathered per block, which pointwise " \
               "loads cannot express; runs on the CPU"
    x, scale = shapes[0], shapes[1]
    zero = shapes[2] if len(shapes) > 2 else None
    if x is None or scale is None:
        return "shape of the input or the scale unknown at load time"
    if len(scale) > 1:
        return f"a scale of rank {len(scale)} (block-wise) runs on the CPU"
    if zero is not None and len(zero) != len(scale):
        return "zero point and scale of different ranks"
    if len(scale) == 1 and scale[0] != 1:
        axis = _axis(attrs, len(x))
        if axis is None or (isinstance(scale[0], int) and isinstance(x[axis], int)
                            and scale[0] != x[axis]):
            return "per-axis scale that does not match the input's axis (the CPU reports it)"
    return None


def _packed_reason(what: str, dtypes: Sequence[str]) -> str | None:
    packed = sorted(set(dtypes) & PACKED)
    if packed:
        return f"{what} of {packed[0]}: 4-bit values are packed two a byte, which Triton's " \
               f"pointwise loads and stores do not address; runs on the CPU"
    return None


def _as(x: Expr, dtype: str) -> Expr:
    return x if x.dtype == dtype else Cast(dtype, x)


def _compute_type(x: Expr) -> str:
    return "double" if x.dtype == "int32" else "float"


def _q_reason(attrs: dict, dtypes: Sequence[str]) -> str | None:
    if attrs.get("precision", 0) not in _NARROW and attrs.get("precision", 0) != 0:
        return f"QuantizeLinear precision {attrs['precision']} runs on the CPU"
    return _packed_reason("QuantizeLinear", dtypes) or (
        None if dtypes[0] in FLOAT_TYPES | {"int32"} else
        f"QuantizeLinear of {dtypes[0]} runs on the CPU")


@lowering("QuantizeLinear", DTYPES, min_inputs=2, refuses=_q_reason,
          refuses_shapes=_shape_reason, aligned=_along_axis)
def _quantize(attrs, xs, outs):
    x, scale = xs[0], xs[1]
    zero = xs[2] if len(xs) > 2 else None
    out, cdt = outs[0], _compute_type(xs[0])
    q = op("fdiv", _as(x, cdt), _as(scale, cdt))
    narrow = _NARROW.get(attrs.get("precision", 0), scale.dtype)
    if narrow in ("float16", "bfloat16"):  # the division happens in that precision
        q = Cast(cdt, Cast(narrow, q))
    if out in FLOAT8_OCP_TYPES:
        if zero is not None:
            q = op("add", q, _as(zero, cdt))
        return [Cast(out, q, bool(attrs.get("saturate", 1)))]
    q = _round({}, [q], [])[0]
    if zero is not None:
        q = op("add", q, _as(zero, cdt))
    lo, hi = RANGES[out]
    q = op("min", op("max", q, Const(cdt, float(lo))), Const(cdt, float(hi)))
    return [Cast(out, q)]


def _dq_reason(attrs: dict, dtypes: Sequence[str]) -> str | None:
    if dtypes[0] not in QUANT_TYPES | {"int32"}:
        return _packed_reason("DequantizeLinear", dtypes) or \
            f"DequantizeLinear of {dtypes[0]} runs on the CPU"
    return None


@lowering("DequantizeLinear", DTYPES, min_inputs=2, refuses=_dq_reason,
          refuses_shapes=_shape_reason, aligned=_along_axis)
def _dequantize(attrs, xs, outs):
    x, scale = xs[0], xs[1]
    zero = xs[2] if len(xs) > 2 else None
    cdt = _compute_type(x)
    d = _as(x, cdt)
    if zero is not None:
        d = op("sub", d, _as(zero, cdt))
    return [_as(op("mul", d, _as(scale, cdt)), outs[0])]
