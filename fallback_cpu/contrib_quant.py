"""onnxruntime's ``com.microsoft`` quantized matrix products on the NumPy provider:
MatMulNBits, DynamicQuantizeMatMul, MatMulIntegerToFloat and QGemm.

- MatMulNBits: ``Y = A @ dequant(B)^T + bias`` with B (N, k_blocks, blob) holding ``bits``
  (2, 4 or 8) wide values packed little end first along K in blocks of ``block_size``;
  ``scales`` (N, k_blocks) or flat; ``zero_points`` packed like B (N, ceil(k_blocks * bits /
  8)) or unpacked in A's type (N, k_blocks), default ``2^(bits - 1)``; ``g_idx`` (deprecated)
  maps each k to its block. The dequantized weight is built once per distinct B/scales/zero
  point arrays (initializers come back as the same arrays) and kept. An empty B (a zero dim)
  gives zeros plus the bias. ``accuracy_level`` is a license to lose precision, not a
  requirement: the product is exact in float32 (onnxruntime's level 4 quantizes A to int8).
- DynamicQuantizeMatMul: A quantized as DynamicQuantizeLinear does (uint8, range including
  0), then ``(A_q - zp_a) @ (B - zp_b) * scale_a * scale_b + bias`` with per-tensor or
  per-column (N) B parameters; exact integer products.
- MatMulIntegerToFloat: ``(A - zp_a) @ (B - zp_b) * scale_a * scale_b + bias`` (per-tensor A
  parameters, per-tensor or per-column B ones), in the scales' type.
- QGemm: ``alpha * scale_a * scale_b * ((A - zp_a) @ (B - zp_b) + C)`` with transA/transB and
  the int32 C, float when ``y_scale`` is absent, else requantized (round half to even,
  saturated) to ``y_zero_point``'s type.
"""
from __future__ import annotations

import numpy as np

from .nn_util import narrow, widen
from .registry import register

MS_DOMAIN = "com.microsoft"


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` ``bits``-wide values along the last axis of uint8 ``packed``,
    lowest bits first, as uint8."""
    if bits == 8:
        return packed[..., :count]
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(packed.shape[:-1] + (-1,))[..., :count]


class _Dequantized:
    """The float weight (K, N) of one MatMulNBits node, rebuilt only when its inputs change."""

    def __init__(self) -> None:
        self.key: tuple = ()
        self.weight: np.ndarray | None = None

    def get(self, arrays: tuple, build) -> np.ndarray:
        if self.weight is None or len(arrays) != len(self.key) or \
                any(a is not b for a, b in zip(arrays, self.key)):
            self.weight = build()
            self.key = arrays
        return self.weight


@register("MatMulNBits", since=1, domain=MS_DOMAIN)
def matmul_nbits(ctx):
    k_dim, n_dim = int(ctx.attr("K")), int(ctx.attr("N"))
    bits = int(ctx.attr("bits", 4))
    block = int(ctx.attr("block_size"))
    if bits not in (2, 4, 8):
        raise ValueError(f"bits={bits}: 2, 4 and 8 are supported")
    if block < 16 or block & (block - 1):
        raise ValueError(f"block_size={block} must be a power of 2, at least 16")
    if int(ctx.attr("weight_prepacked", 0)):
        raise ValueError("weight_prepacked weights (CUDA layouts) cannot run on the CPU")
    blocks = -(-k_dim // block)
    cache = _Dequantized()

    def dequantize(b, scales, zero_points, g_idx, work):
        q = unpack_bits(b.reshape(n_dim, blocks, -1), bits, block).reshape(n_dim, -1)
        q = q[:, :k_dim].astype(work)
        s = widen(scales).astype(work, copy=False).reshape(n_dim, blocks)
        if zero_points is None:
            zp = work.type(1 << (bits - 1))
        elif zero_points.dtype == np.uint8:  # packed like B (one per byte for 8 bits)
            zp = unpack_bits(zero_points.reshape(n_dim, -1), bits, blocks).astype(work)
        else:
            zp = widen(zero_points).astype(work, copy=False).reshape(n_dim, blocks)
        group = (np.asarray(g_idx).astype(np.int64) if g_idx is not None
                 else np.arange(k_dim) // block)
        if isinstance(zp, np.ndarray):
            zp = zp[:, group]
        w = (q - zp) * s[:, group]  # (N, K)
        return np.ascontiguousarray(w.T)

    def run(a, b, scales, zero_points=None, g_idx=None, bias=None):
        dtype = a.dtype
        work = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
        if a.shape[-1] != k_dim:
            raise ValueError(f"A's last dimension {a.shape[-1]} is not K={k_dim}")
        out_shape = a.shape[:-1] + (n_dim,)
        if b.size == 0:  # an omitted projection: zeros, plus the bias
            y = np.zeros(out_shape, work)
        else:
            if b.size != n_dim * blocks * (block * bits // 8):
                raise ValueError(f"B of shape {list(b.shape)} does not hold (N={n_dim}, "
                                 f"k_blocks={blocks}, {block * bits // 8}) bytes")
            w = cache.get((b, scales, zero_points, g_idx),
                          lambda: dequantize(b, scales, zero_points, g_idx, work))
            y = np.matmul(widen(a).astype(work, copy=False), w)
        if bias is not None:
            y = y + widen(bias).astype(work, copy=False)
        return (narrow(np.asarray(y), dtype),)

    return run


def _column_param(p, default=0.0):
    """A per-tensor or per-column (last axis) parameter, as float64 broadcasting on (.., N)."""
    if p is None:
        return np.float64(default)
    return np.asarray(p, dtype=np.float64)


def _int_product(a, a_zero, b, b_zero) -> np.ndarray:
    """(a - a_zero) @ (b - b_zero), exact (float64 BLAS on 8-bit data)."""
    wa = a.astype(np.float64) - _column_param(a_zero)
    wb = b.astype(np.float64) - _column_param(b_zero)
    return np.matmul(wa, wb)


def dynamic_quantize(x: np.ndarray):
    """DynamicQuantizeLinear: (uint8 values, scale, zero point) of float ``x``."""
    xf = x.astype(np.float32, copy=False)
    lo = min(float(xf.min()), 0.0) if xf.size else 0.0
    hi = max(float(xf.max()), 0.0) if xf.size else 0.0
    scale = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(255))
    if scale == 0:
        scale = np.float32(1)
    zero = np.float32(np.clip(np.rint(np.float32(0 - lo) / scale), 0, 255))
    q = np.clip(np.rint(xf / scale) + zero, 0, 255).astype(np.uint8)
    return q, scale, zero


@register("DynamicQuantizeMatMul", since=1, domain=MS_DOMAIN)
def dynamic_quantize_matmul(ctx):
    def run(a, b, b_scale, b_zero_point=None, bias=None):
        q, scale, zero = dynamic_quantize(a)
        acc = _int_product(q, zero, b, b_zero_point)
        y = (acc * (np.float64(scale) * _column_param(b_scale))).astype(np.float32)
        if bias is not None:
            y += bias.astype(np.float32)
        return (y,)

    return run


@register("MatMulIntegerToFloat", since=1, domain=MS_DOMAIN)
def matmul_integer_to_float(ctx):
    def run(a, b, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None):
        if np.size(a_scale) != 1 or (a_zero_point is not None and np.size(a_zero_point) != 1):
            raise ValueError("A's scale and zero point must be per-tensor (one element)")
        acc = _int_product(a, a_zero_point, b, b_zero_point)
        y = acc * (np.float64(np.asarray(a_scale).reshape(-1)[0]) * _column_param(b_scale))
        out = np.asarray(y, dtype=np.float32)
        if bias is not None:
            out = out + bias.astype(np.float32)
        return (narrow(out, a_scale.dtype),)

    return run


@register("QGemm", since=1, domain=MS_DOMAIN)
def qgemm(ctx):
    alpha = float(ctx.attr("alpha", 1.0))
    trans_a, trans_b = bool(ctx.attr("transA", 0)), bool(ctx.attr("transB", 0))

    def run(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c=None, y_scale=None,
            y_zero_point=None):
        wa = a.T if trans_a else a
        wb = b.T if trans_b else b
        acc = _int_product(wa, a_zero_point, wb, b_zero_point)
        if c is not None:
            acc = acc + c.astype(np.float64)
        y = acc * (alpha * np.float64(np.asarray(a_scale).reshape(-1)[0])
                   * _column_param(b_scale))
        if y_scale is None:
            return (np.asarray(y, dtype=np.float32),)
        out = y_zero_point.dtype if y_zero_point is not None else a.dtype
        q = np.rint(y.astype(np.float32) / np.float32(np.asarray(y_scale).reshape(-1)[0]))
        if y_zero_point is not None:
            q = q + np.float32(y_zero_point)
        info = np.iinfo(out)
        return (np.clip(q, info.min, info.max).astype(out),)

    return run
