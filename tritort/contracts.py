"""The contracts of the internal ``ai.tritort`` ops the optimizer writes.

Both engines implement these ops, one row per layer like any other op; what the op means
and which shapes it accepts is stated once, here.
"""
from __future__ import annotations

import onnx

# Ops the optimizer writes (fused patterns) live in this domain.
INTERNAL_DOMAIN = "ai.tritort"

# Y = softmax(scale * (Q @ KT) + mask [+ causal -inf], axis=-1) @ V; attributes: scale
# (float, default 1), is_causal (int, default 0); inputs Q, KT, V[, mask].
ATTENTION_OP = "ScaledDotProductAttention"

# Y = (A8 @ B8) * scale_a * scale_b, inputs A8, scale_a, B8, scale_b: per-tensor scales.
FLOAT8_MATMUL_OP = "Float8MatMul"
FLOAT8_TYPES = (onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2)


def attention_shapes(q_shape, kt_shape, v_shape) -> tuple[int, int, int] | None:
    """(B, H, Hk) of ScaledDotProductAttention's Q [B, H, Sq, D], KT [B, Hk, D, Sk] and
    V [B, Hk, Sk, Dv] (the contract both engines' kernels check), or None.

    Batch and head dims of size 1 broadcast, as in the MatMuls the op replaces; H must be a
    multiple of Hk (grouped query heads)."""
    def common(*sizes: int) -> int | None:
        others = set(sizes) - {1}
        return (others.pop() if len(others) == 1 else None) if others else 1

    b = common(q_shape[0], kt_shape[0], v_shape[0])
    kv = common(kt_shape[1], v_shape[1])
    if b is None or kv is None or kt_shape[2] != q_shape[3] or v_shape[2] != kt_shape[3]:
        return None
    h = kv if q_shape[1] == 1 else q_shape[1]
    if (kv == 0 and h) or (kv and h % kv):
        return None
    return b, h, kv
