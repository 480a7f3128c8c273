"""ONNX's sliding-window arithmetic (Conv, MaxPool, AveragePool, ...), shared by providers.

The spec's rules for auto_pad, explicit pads and ceil_mode, so every provider sizes a
window op's output, and places its padding, the same way.
"""
from __future__ import annotations

from typing import Sequence


def resolved_pads(auto_pad: str, in_shape: Sequence[int], kernel: Sequence[int],
                  strides: Sequence[int], dilations: Sequence[int],
                  pads: Sequence[int] | None) -> list[int]:
    """Explicit pads (all begins, then all ends, ONNX order) for an auto_pad attribute.

    SAME_* pads to ``ceil(size / stride)`` outputs, the odd pad at the end (UPPER) or the
    start (LOWER); VALID pads nothing; NOTSET takes ``pads`` (zeros when absent)."""
    n = len(in_shape)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(in_shape, kernel, strides, dilations):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begins.append(begin)
            ends.append(total - begin)
        return begins + ends
    if auto_pad == "VALID" or not pads:
        return [0] * (2 * n)
    return [int(p) for p in pads]


def output_size(size: int, extent: int, stride: int, pad_begin: int, pad_end: int,
                ceil_mode: bool = False, same: bool = False) -> int:
    """Output positions along one axis for a window spanning ``extent`` input positions
    (``(kernel - 1) * dilation + 1``). With ceil_mode a last window that would start in the
    end padding is dropped. May be negative for inputs smaller than the window."""
    if same:
        return -(-size // stride)
    span = size + pad_begin + pad_end - extent
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + pad_begin else out
