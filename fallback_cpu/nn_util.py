"""Shared helpers of the linear-algebra / nn kernel families (no registrations here)."""
from __future__ import annotations

import numpy as np

from tritort.dtypes import saturating_cast

# float types numpy has no fast (BLAS / SIMD) arithmetic for: compute through float32.
_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def widen(x: np.ndarray) -> np.ndarray:
    """``x`` in a dtype numpy computes fast and accurately: float16/bf16/fp8 become float32."""
    if x.dtype in _NATIVE_FLOATS or x.dtype.kind in "biuc":
        return x
    return x.astype(np.float32)


def narrow(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round a widened result back to ``dtype`` once (float8 targets saturate)."""
    dtype = np.dtype(dtype)
    if y.dtype == dtype:
        return y
    return np.asarray(saturating_cast(np.asarray(y), dtype))


def int_or_list(value, n: int, default: int) -> list[int]:
    """An attribute list such as strides, defaulting to ``n`` copies of ``default``."""
    if value is None or len(value) == 0:
        return [default] * n
    return [int(v) for v in value]


def pad_spatial(x: np.ndarray, pads, value=0) -> np.ndarray:
    """Pad the trailing len(pads)//2 axes of ``x``; negative pads crop."""
    n = len(pads) // 2
    begins, ends = pads[:n], pads[n:]
    if all(p == 0 for p in pads):
        return x
    lead = x.ndim - n
    crop = tuple([slice(None)] * lead + [slice(max(0, -b), x.shape[lead + i] - max(0, -e))
                                         for i, (b, e) in enumerate(zip(begins, ends))])
    x = x[crop]
    widths = [(max(0, b), max(0, e)) for b, e in zip(begins, ends)]
    if all(w == (0, 0) for w in widths):
        return x
    # a filled buffer and one interior copy: a third faster than np.pad
    out = np.full(x.shape[:lead] + tuple(s + b + e for s, (b, e) in zip(x.shape[lead:], widths)),
                  value, dtype=x.dtype)
    out[(Ellipsis,) + tuple(slice(b, b + s) for s, (b, _) in zip(x.shape[lead:], widths))] = x
    return out


def windows(x: np.ndarray, kernel, strides, dilations) -> np.ndarray:
    """A view of shape (*lead, *out, *kernel) over the trailing len(kernel) axes of ``x``."""
    n = len(kernel)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    axes = tuple(range(x.ndim - n, x.ndim))
    view = np.lib.stride_tricks.sliding_window_view(x, extent, axis=axes)
    lead = x.ndim - n
    index = tuple([slice(None)] * lead + [slice(None, None, s) for s in strides]
                  + [slice(None, None, d) for d in dilations])
    return view[index]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive argument only, so large |x| neither overflows nor warns
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))
