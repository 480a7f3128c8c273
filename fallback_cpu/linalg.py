"""linalg kernels of the NumPy provider: MatMul, Gemm, integer/quantized matmuls, Einsum, Det."""
from __future__ import annotations

import numpy as np

from .nn_util import narrow, widen
from .registry import register


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.matmul (BLAS for float32/64; transposed views are passed without a copy)."""
    out = np.matmul(widen(a), widen(b))
    return narrow(np.asarray(out), a.dtype)


@register("MatMul", since=[1, 9, 13])
def matmul_kernel(ctx):
    return lambda a, b: (matmul(a, b),)


@register("Gemm", since=[1, 6, 7, 9, 11, 13])
def gemm(ctx):
    alpha = float(ctx.attr("alpha", 1.0))
    beta = float(ctx.attr("beta", 1.0))
    trans_a = bool(ctx.attr("transA", 0))
    trans_b = bool(ctx.attr("transB", 0))
    # Gemm-1/6 'broadcast' only said whether C may broadcast; broadcasting it always is a superset.

    def run(a, b, c=None):
        dtype = a.dtype
        wa, wb = widen(a), widen(b)
        if wa.dtype.kind in "iu" and (alpha != 1.0 or beta not in (0.0, 1.0)):
            wa, wb = wa.astype(np.float64), wb.astype(np.float64)  # fractional scaling of ints
        y = np.matmul(wa.T if trans_a else wa, wb.T if trans_b else wb)
        # y is a fresh matmul result: scale and add C in place
        if alpha != 1.0:
            y *= y.dtype.type(alpha)
        if c is not None and beta != 0.0:
            wc = widen(c)
            term = wc if beta == 1.0 else wc * wc.dtype.type(beta)
            if np.broadcast_shapes(y.shape, term.shape) == y.shape and \
                    np.can_cast(term.dtype, y.dtype, "same_kind"):
                y += term
            else:
                y = y + term
        return (narrow(np.asarray(y), dtype),)

    return run


def _row_param(p: np.ndarray | None, a: np.ndarray) -> np.ndarray | int:
    """A per-tensor or per-row (1-D of length rows(a)) parameter shaped to broadcast on ``a``."""
    if p is None:
        return 0
    if p.ndim == 1 and p.size > 1 and a.ndim >= 2:
        return p.reshape(p.shape[0], 1)
    return p


def _int_matmul(a, a_zero, b, b_zero) -> np.ndarray:
    """Exact (a - a_zero) @ (b - b_zero) of 8-bit integers, through float64 BLAS."""
    wa = a.astype(np.float64) - np.asarray(_row_param(a_zero, a), dtype=np.float64)
    wb = b.astype(np.float64) - (0.0 if b_zero is None else b_zero.astype(np.float64))
    return np.matmul(wa, wb)


@register("MatMulInteger", since=[10])
def matmul_integer(ctx):
    return lambda a, b, a_zero=None, b_zero=None: (
        np.asarray(_int_matmul(a, a_zero, b, b_zero)).astype(np.int32),)


def _is_int(dtype) -> bool:
    return np.dtype(dtype).kind in "iu"


@register("QLinearMatMul", since=[10, 21])
def qlinear_matmul(ctx):
    def run(a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero=None):
        out_dtype = y_zero.dtype if y_zero is not None else a.dtype
        if _is_int(a.dtype) and _is_int(b.dtype):
            acc = _int_matmul(a, a_zero, b, b_zero)
            scale = (_row_param(a_scale, a) * b_scale / y_scale).astype(np.float32)
            y = acc * scale
        else:  # float8: dequantize, multiply, requantize
            def deq(x, s, z):
                xf = x.astype(np.float32)
                if z is not None:
                    xf = xf - np.asarray(_row_param(z, x)).astype(np.float32)
                return xf * np.asarray(_row_param(s, x)).astype(np.float32)
            y = np.matmul(deq(a, a_scale, a_zero), deq(b, b_scale, b_zero))
            y = y / y_scale.astype(np.float32)
        if _is_int(out_dtype):
            if y_zero is not None:
                y = y + y_zero.astype(np.float64)
            info = np.iinfo(out_dtype)
            return (np.clip(np.rint(y), info.min, info.max).astype(out_dtype),)
        if y_zero is not None:
            y = y + y_zero.astype(np.float32)
        return (narrow(np.asarray(y, dtype=np.float32), out_dtype),)

    return run


@register("Einsum", since=[12, 28])
def einsum(ctx):
    equation = ctx.attr("equation").replace(" ", "")

    def run(*xs):
        dtype = xs[0].dtype
        y = np.einsum(equation, *[widen(x) for x in xs], optimize=len(xs) > 1)
        return (narrow(np.asarray(y), dtype),)

    return run


@register("Det", since=[11, 22])
def det(ctx):
    def run(x):
        wx = x.astype(np.float64) if x.dtype != np.float32 else x
        return (narrow(np.asarray(np.linalg.det(wx)), x.dtype),)

    return run
