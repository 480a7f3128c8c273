"""GroupQueryAttention's quantized KV caches (``k_quant_type`` / ``v_quant_type``,
``kv_cache_bit_width``, ``k_scale`` / ``v_scale``) on the NumPy provider.

Symmetric and zero-point free, as in onnxruntime's kernels: a value x is stored as
``clip(rint(x * (1 / scale)), lo, hi)`` computed in float32 (round half to even; a zero scale
counts as 1) and read back as ``q * scale``. 8-bit caches are int8 (lo, hi = -128, 127);
4-bit caches are uint8 rows of H / 2 bytes, each byte two values biased by 8 (lo, hi = -8, 7),
the even column in the low nibble. PER_TENSOR takes one scale, PER_CHANNEL one per key/value
head and channel ((1, N_kv, 1, H), or anything broadcastable to the unpacked cache).
Attention reads the whole cache dequantized, the step's new rows included (they are
quantized first), which is what onnxruntime's CPU kernel does.
"""
from __future__ import annotations

import numpy as np

MODES = ("NONE", "PER_TENSOR", "PER_CHANNEL")


class KVCodec:
    """How one cache (K or V) is stored: ``None`` from :func:`codec` for a float cache."""

    def __init__(self, mode: str, bits: int):
        self.mode, self.bits = mode, bits
        self.dtype = np.dtype(np.int8 if bits == 8 else np.uint8)

    def row_width(self, head_size: int) -> int:
        return head_size if self.bits == 8 else head_size // 2

    def _scale(self, scale, what: str) -> np.ndarray:
        if scale is None:
            raise ValueError(f"{self.mode} quantized caches need {what}")
        s = np.asarray(scale, dtype=np.float32)
        if self.mode == "PER_TENSOR" and s.size != 1:
            raise ValueError(f"a PER_TENSOR {what} has one element, got shape {list(s.shape)}")
        return s.reshape(1, 1, 1, 1) if s.size == 1 else s.reshape((1,) * (4 - s.ndim) +
                                                                   s.shape)

    def encode(self, x: np.ndarray, scale, what: str) -> np.ndarray:
        """(B, N_kv, L, H) float -> the stored (B, N_kv, L, row_width) cache rows."""
        s = self._scale(scale, what)
        inv = np.where(s != 0, np.float32(1) / np.where(s != 0, s, np.float32(1)),
                       np.float32(1)).astype(np.float32)
        q = np.rint(x.astype(np.float32) * inv)
        if self.bits == 8:
            return np.clip(q, -128, 127).astype(np.int8)
        if x.shape[-1] % 2:
            raise ValueError(f"4-bit caches pack two values a byte: head size {x.shape[-1]} "
                             f"is odd")
        u = (np.clip(q, -8, 7).astype(np.int32) + 8) & 0x0F
        return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)

    def decode(self, stored: np.ndarray, scale, what: str, work) -> np.ndarray:
        """Stored cache rows -> (B, N_kv, L, H) values in the work dtype."""
        s = self._scale(scale, what)
        if self.bits == 8:
            values = stored.astype(np.float32)
        else:
            low = (stored & 0x0F).astype(np.int32) - 8
            high = (stored >> 4).astype(np.int32) - 8
            values = np.stack((low, high), axis=-1).reshape(stored.shape[:-1] +
                                                           (2 * stored.shape[-1],))
            values = values.astype(np.float32)
        return (values * s).astype(work, copy=False)


def codec(mode: str, bits: int, which: str) -> KVCodec | None:
    """The codec of the K or V cache from the node's attributes (None: a float cache)."""
    if mode in ("NONE", ""):
        return None
    if mode not in MODES:
        raise ValueError(f"{which}_quant_type={mode!r}: one of {', '.join(MODES)}")
    if bits not in (4, 8):
        raise ValueError(f"kv_cache_bit_width {bits}: quantized caches are 8-bit or 4-bit")
    return KVCodec(mode, bits)


def check_modes(kc: KVCodec | None, vc: KVCodec | None) -> None:
    """K and V caches share one element type: both float or both quantized alike."""
    if (kc is None) != (vc is None):
        raise ValueError("k_quant_type and v_quant_type are both NONE or both quantized (the "
                         "caches share one element type)")


def check_cache_type(kc: KVCodec | None, cache_dtype) -> None:
    """The past caches' element type must be what the quantization stores."""
    if kc is None:
        if np.dtype(cache_dtype).kind in "iu":
            raise ValueError(f"{np.dtype(cache_dtype)} caches need k_quant_type/v_quant_type")
    elif np.dtype(cache_dtype) != kc.dtype:
        raise ValueError(f"{kc.bits}-bit quantized caches are {kc.dtype}, got "
                         f"{np.dtype(cache_dtype)}")
