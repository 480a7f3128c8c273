"""float8 GEMM: the optimizer's ``Float8MatMul(a8, sa, b8, sb)`` = (a8 @ b8) * sa * sb.

The operands stay float8 (e4m3fn or e5m2) in memory and in the MMA where the GPU has float8
tensor cores (compute capability 8.9+: Ada, Hopper) and both operands share a format;
elsewhere the tiles are widened to float16 (exact for both formats) before ``tl.dot``, and
in Triton's interpreter to float32. Products accumulate in fp32; the per-tensor scales are
one multiply in the epilogue, before any fused epilogue, and the output is rounded once to
the node's type (float, float16 or bfloat16).
"""
from __future__ import annotations

from typing import Any

from tritort import dtypes
from tritort.contracts import INTERNAL_DOMAIN

from .gemm import Epilogue, MatMulLauncher, _built
from .templates import KernelSpec, Template, template

OUTPUTS = dtypes.FLOAT_TYPES - {"double"}


def native_float8(device: Any) -> bool:
    """Does this device multiply float8 tiles natively?"""
    import torch

    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def dot_upcast(a_dtype: str, b_dtype: str, interpreted: bool, native: bool) -> str | None:
    if interpreted:
        return "tl.float32"
    return None if native and a_dtype == b_dtype else "tl.float16"


class Float8Launcher:
    """Node inputs (a8, sa, b8, sb, *epilogue inputs) -> the MatMul launcher, scales as the
    template's own epilogue args."""

    def __init__(self, inner: MatMulLauncher) -> None:
        self.inner = inner

    def __call__(self, a8, sa, b8, sb, *epilogue_inputs) -> tuple:
        return self.inner(a8, b8, *epilogue_inputs, extra=(sa, sb))


@template("Float8MatMul")
class Float8MatMul(Template):
    kind = "tiled"
    epilogue = True

    def claim(self, node, ctx) -> str | None:
        if node.domain != INTERNAL_DOMAIN:
            return f"Float8MatMul of domain '{node.domain}'"
        a8, sa, b8, sb = node.inputs[:4]
        float8 = dtypes.FLOAT8_OCP_TYPES
        for value, allowed in ((a8, float8), (b8, float8), (node.outputs[0], OUTPUTS),
                               (sa, OUTPUTS), (sb, OUTPUTS)):
            dt = ctx.dtype_of(value)
            if dt is None:
                return f"element type or rank of '{value}' unknown at load time"
            if dt not in allowed:
                return f"Float8MatMul does not take {dt} ('{value}')"
        for value in (a8, b8):
            if not ctx.rank_of(value):
                return f"Float8MatMul of a 0-d tensor ('{value}')"
        return None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        a8, sa, b8, sb = node.inputs[:4]
        ra, rb = ctx.rank_of(a8), ctx.rank_of(b8)
        batch_rank = max(ra, rb, 2) - 2
        a_dt, b_dt = ctx.dtype_of(a8), ctx.dtype_of(b8)
        out_dt = ctx.dtype_of(node.outputs[0])
        upcast = dot_upcast(a_dt, b_dt, ctx.interpreted,
                            not ctx.interpreted and native_float8(ctx.torch_device))
        ep = Epilogue(["a_scale", "b_scale"],
                      ["acc = acc * (tl.load(a_scale).to(tl.float32) * "
                       "tl.load(b_scale).to(tl.float32))"],
                      ["* a_scale * b_scale (per tensor)"])
        ir_text = (f"kernel {name} Float8MatMul node={node.name!r}\n"
                   f"A: {a8} {a_dt}[rank {ra}] x B: {b8} {b_dt}[rank {rb}] -> "
                   f"{node.outputs[0]} {out_dt}\n"
                   f"tl.dot on {'float8 tiles' if upcast is None else upcast + ' tiles'}, "
                   f"accumulating in tl.float32; epilogue: {ep.text[0]}")
        return _built(name, node, ctx, ir_text, batch_rank, a_dt, ep,
                      lambda fn, dt, fused: Float8Launcher(MatMulLauncher(fn, batch_rank, dt,
                                                                          ctx, fused)),
                      [a8, sa, b8, sb], fusion, out_dt, upcast)
