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
from .keys import contrib
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
    return [saturate(q, zero, out, cdt)]


def saturate(q: Expr, zero: Expr | None, out: str, cdt: str = "float") -> Expr:
    """``q`` (already divided by the scale) rounded half to even, plus the zero point, clamped
    to ``out``'s range and cast to it."""
    q = _round({}, [q], [])[0]
    if zero is not None:
        q = op("add", q, _as(zero, cdt))
    lo, hi = RANGES[out]
    q = op("min", op("max", q, Const(cdt, float(lo))), Const(cdt, float(hi)))
    return Cast(out, q)


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
    return [_as(dequantized(x, scale, zero, _compute_type(x)), outs[0])]


def dequantized(x: Expr, scale: Expr, zero: Expr | None, cdt: str = "float") -> Expr:
    """``(x - zero_point) * scale`` in ``cdt``."""
    d = _as(x, cdt)
    if zero is not None:
        d = op("sub", d, _as(zero, cdt))
    return op("mul", d, _as(scale, cdt))


# ------------------------------------------------------------------ QOperator pointwise ops
# onnxruntime's com.microsoft QLinear* ops: dequantize each input with its per-tensor scale and
# zero point (omitted: 0), compute in float32, requantize to the output's 8-bit type (round half
# to even, zero point, saturate), as fallback_cpu/contrib_qlinear.py does. Fused, two in a row
# keep the float value between them in registers only as far as the quantized value allows:
# each output is still rounded to its 8-bit code.

QLINEAR_TYPES = frozenset({"float", "int8", "uint8"})


def _qlinear_reason(attrs: dict, dtypes: Sequence[str]) -> str | None:
    if dtypes[0] not in ("int8", "uint8"):
        return f"quantized input of {dtypes[0]} (onnxruntime takes uint8 or int8)"
    return None


def _per_tensor_reason(params: Sequence[int]):
    """Refuses scales / zero points (inputs ``params``) of more than one element."""
    def reason(attrs: dict, shapes: Sequence[tuple | None]) -> str | None:
        for i in params:
            if i >= len(shapes) or shapes[i] is None:
                continue
            if any(not isinstance(d, int) or d != 1 for d in shapes[i]):
                return f"scale or zero point {i} of shape {list(shapes[i])}: the QOperator " \
                       f"ops take per-tensor parameters only (the CPU reports it)"
        return None
    return reason


def _opt(xs: Sequence[Expr | None], i: int) -> Expr | None:
    return xs[i] if i < len(xs) else None


def _binary(prim: str):
    def build(attrs, xs, outs):
        a = dequantized(xs[0], xs[1], _opt(xs, 2))
        b = dequantized(xs[3], xs[4], _opt(xs, 5))
        v = op(prim, a, b)
        return [saturate(op("fdiv", v, _as(xs[6], "float")), _opt(xs, 7), outs[0])]
    return build


for _name, _prim in (("QLinearAdd", "add"), ("QLinearMul", "mul")):
    lowering(contrib(_name), QLINEAR_TYPES, min_inputs=5, refuses=_qlinear_reason,
             refuses_shapes=_per_tensor_reason((1, 2, 4, 5, 6, 7)))(_binary(_prim))


def _unary(fn):
    def build(attrs, xs, outs):
        v = fn(attrs, dequantized(xs[0], xs[1], _opt(xs, 2)))
        return [saturate(op("fdiv", v, _as(xs[3], "float")), _opt(xs, 4), outs[0])]
    return build


def _sigmoid(attrs, v: Expr) -> Expr:
    # 1 / (1 + exp(-v)) spelled out, as the NumPy kernel computes it
    one = Const("float", 1.0)
    return op("fdiv", one, op("add", one, op("exp", op("neg", v))))


def _leaky(attrs, v: Expr) -> Expr:
    alpha = Const("float", float(attrs.get("alpha", 0.01)))
    return op("where", op("ge", v, Const("float", 0.0), dtype="bool"), v, op("mul", v, alpha),
              dtype="float")


for _name, _fn in (("QLinearSigmoid", _sigmoid), ("QLinearLeakyRelu", _leaky)):
    lowering(contrib(_name), QLINEAR_TYPES, min_inputs=3, refuses=_qlinear_reason,
             refuses_shapes=_per_tensor_reason((1, 2, 3, 4)))(_unary(_fn))
