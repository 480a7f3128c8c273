"""QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear.

Per-tensor (scalar scale), per-axis (1-D scale along ``axis``) and blocked (scale of the
input's rank, each entry covering ``block_size`` elements along ``axis``) granularities.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
from tritort import dtypes
from tritort.dtypes import numpy_dtype, saturating_cast
from tritort.contracts import INTERNAL_DOMAIN

from .numeric import as_array, normalize_axis
from .registry import NodeContext, register

# Saturation ranges of the integer quantized types.
_INT_RANGES = {
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint16): (0, 65535),
    np.dtype(np.int16): (-32768, 32767),
    np.dtype(ml_dtypes.uint4): (0, 15),
    np.dtype(ml_dtypes.int4): (-8, 7),
    np.dtype(ml_dtypes.uint2): (0, 3),
    np.dtype(ml_dtypes.int2): (-2, 1),
}
_FLOAT8 = frozenset(np.dtype(t) for t in (
    ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2,
    ml_dtypes.float8_e5m2fnuz))
_OUTPUT_FLOATS = frozenset(np.dtype(t) for t in (
    np.float32, np.float16, ml_dtypes.bfloat16, np.float64))
# Division precisions narrower than float32 that the quotient is rounded to.
_NARROW_PRECISIONS = frozenset({np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)})


def _compute_dtype(x: np.ndarray) -> type:
    # int32 inputs (and accumulators) exceed float32's 24-bit mantissa
    return np.float64 if x.dtype.kind in "iu" and x.dtype.itemsize >= 4 else np.float32


def _expand(param: np.ndarray, shape: tuple, axis: int, block_size: int, dtype) -> np.ndarray:
    """Make a scale / zero point broadcastable against the input, as float ``dtype``."""
    param = param.astype(dtype)
    if param.ndim == 0 or (param.ndim == 1 and param.size == 1 and not block_size):
        return param.reshape(())
    ax = normalize_axis(axis, len(shape))
    if not block_size:
        if param.ndim != 1 or param.shape[0] != shape[ax]:
            raise ValueError(f"per-axis parameter of shape {param.shape} does not match "
                             f"axis {axis} of input shape {shape}")
        return param.reshape([-1 if d == ax else 1 for d in range(len(shape))])
    if param.ndim != len(shape):
        raise ValueError(f"blocked parameter rank {param.ndim} != input rank {len(shape)}")
    # each entry covers block_size consecutive elements; the last block may be partial
    expanded = np.repeat(param, block_size, axis=ax)
    return expanded[(slice(None),) * ax + (slice(0, shape[ax]),)]


@register("QuantizeLinear", [10, 13, 19, 21, 23, 24, 25, 28])
def quantize_linear(ctx: NodeContext):
    axis = ctx.attr("axis", 1)
    saturate = bool(ctx.attr("saturate", 1))
    block_size = ctx.attr("block_size", 0)
    output_dtype = ctx.attr("output_dtype", 0)
    precision = ctx.attr("precision", 0)
    default_out = numpy_dtype(output_dtype) if output_dtype else np.dtype(np.uint8)

    def run(x, scale, zero_point=None):
        out = zero_point.dtype if zero_point is not None else default_out
        cdt = _compute_dtype(x)
        narrow = numpy_dtype(precision) if precision else scale.dtype
        with np.errstate(all="ignore"):
            q = x.astype(cdt) / _expand(scale, x.shape, axis, block_size, cdt)
            if narrow in _NARROW_PRECISIONS:
                q = q.astype(narrow).astype(cdt)  # the division happens in that precision
            zp = (_expand(zero_point, x.shape, axis, block_size, cdt)
                  if zero_point is not None else None)
            if out in _INT_RANGES:
                lo, hi = _INT_RANGES[out]
                q = np.rint(q)  # round half to even
                if zp is not None:
                    q = q + zp
                return (as_array(np.clip(q, lo, hi)).astype(out),)
            if zp is not None:
                q = q + zp
            if out in _FLOAT8:
                return (saturating_cast(as_array(q), out, saturate),)
            # float4e2m1 has no inf/NaN: the conversion always saturates
            return (as_array(q).astype(out),)

    return run


@register("DequantizeLinear", [10, 13, 19, 21, 23, 24, 25, 28])
def dequantize_linear(ctx: NodeContext):
    axis = ctx.attr("axis", 1)
    block_size = ctx.attr("block_size", 0)
    output_dtype = ctx.attr("output_dtype", 0)

    def run(x, scale, zero_point=None):
        # without output_dtype the scale's type, unless that is float8e8m0 (not an output type)
        out = numpy_dtype(output_dtype) if output_dtype else (
            scale.dtype if scale.dtype in _OUTPUT_FLOATS else np.dtype(np.float32))
        cdt = _compute_dtype(x)
        dx = x.astype(cdt)
        if zero_point is not None:
            dx = dx - _expand(zero_point, x.shape, axis, block_size, cdt)
        y = dx * _expand(scale, x.shape, axis, block_size, cdt)
        return (as_array(y).astype(out),)

    return run


@register("DynamicQuantizeLinear", [11])
def dynamic_quantize_linear(ctx: NodeContext):
    def run(x):
        xf = x.astype(np.float32, copy=False)
        # the range always includes 0 so that 0 is exactly representable
        lo = min(float(xf.min()), 0.0) if xf.size else 0.0
        hi = max(float(xf.max()), 0.0) if xf.size else 0.0
        scale = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(255))
        if scale == 0:
            scale = np.float32(1)  # all zeros: onnxruntime reports scale 1 rather than 0
        zero_point = np.uint8(np.clip(np.rint(np.float32(0 - lo) / scale), 0, 255))
        y = np.clip(np.rint(xf / scale) + np.float32(zero_point), 0, 255).astype(np.uint8)
        return (y, np.asarray(scale), np.asarray(zero_point))

    return run


@register("Float8MatMul", since=1, domain=INTERNAL_DOMAIN)
def float8_matmul(ctx):
    """The optimizer's fused DequantizeLinear -> MatMul on float8 operands (per-tensor
    scales): (a8 @ b8) * sa * sb, products in float32 (exact for float8 values)."""
    out = ctx.output_types[0]
    out_dtype = dtypes.BY_ONNX[out.tensor_type.elem_type].numpy if out is not None else None

    def run(a8, sa, b8, sb):
        y = np.matmul(a8.astype(np.float32), b8.astype(np.float32))
        y *= np.float32(sa.astype(np.float32).reshape(-1)[0]) * \
            np.float32(sb.astype(np.float32).reshape(-1)[0])
        return (y.astype(out_dtype or sa.dtype),)

    return run
