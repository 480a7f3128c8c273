"""com.microsoft BiasSplitGelu as one Triton kernel per node.

``X + bias`` is split in halves along the last axis (width D); the output, D/2 wide, is the
left half times the erf GELU of the right half. The output shape differs from the input's,
so the pointwise IR cannot express the read of both halves: each output element (row r,
column c) loads its two input elements, (r, c) and (r, c + D/2), and their two bias values.
Values compute in float32 (float64 for double) and are rounded once.
"""
from __future__ import annotations

import math

from tritort.dtypes import FLOAT_TYPES

from .emit import acc_type, helper_source, stored
from .keys import contrib
from .movement import launch, render_kernel
from .rowwise import check_dtypes
from .templates import KernelSpec, Template, load_source, template


def split_gelu_source(name: str, node, dtype: str) -> tuple[str, str]:
    ct = acc_type(dtype)
    ir_text = (f"{name}: BiasSplitGelu '{node.name}' over (rows, D/2)\n"
               "s = x[r, :] + bias; g = s[c + D/2]\n"
               "y[r, c] = s[c] * 0.5 g (1 + erf(g / sqrt 2))")
    params = ["x", "bias", "out", "numel", "d0", "d1", "xs0", "xs1", "bs"]
    body = ["    left = i0 * xs0 + i1 * xs1",
            "    right = left + d1 * xs1",
            f"    a = tl.load(x + left, mask=mask).to({ct}) + "
            f"tl.load(bias + i1 * bs, mask=mask).to({ct})",
            f"    g = tl.load(x + right, mask=mask).to({ct}) + "
            f"tl.load(bias + (i1 + d1) * bs, mask=mask).to({ct})",
            f"    y = a * (0.5 * g * (1.0 + tl.erf(g * {math.sqrt(0.5)!r})))",
            f"    tl.store(out + offs, {stored('y', dtype)}, mask=mask)"]
    source = render_kernel(name, node, ir_text, params, 2, body)
    helper = helper_source(source)  # bfloat16's rounding store
    return source.replace("\n\n@triton.jit\n", helper + "\n\n@triton.jit\n", 1), ir_text


@template(contrib("BiasSplitGelu"))
class BiasSplitGelu(Template):
    """Inputs (X, bias): X of rank 1 or more with an even last dimension, bias 1-D of it."""

    kind = "movement"

    def claim(self, node, ctx) -> str | None:
        x, bias = node.inputs[0], node.inputs[1]
        why = check_dtypes(ctx, [x, bias], FLOAT_TYPES, node.op_type)
        if why:
            return why
        if ctx.dtype_of(x) != ctx.dtype_of(bias):
            return f"input of type {ctx.dtype_of(x)} with bias of type {ctx.dtype_of(bias)}"
        shape = ctx.shape_of(x)
        if not shape:
            return "input of rank 0 or unknown rank"
        if ctx.rank_of(bias) != 1:
            return f"bias of rank {ctx.rank_of(bias)}"
        last = shape[-1]
        if not isinstance(last, int):
            return "last dimension of the input unknown at load time"
        if last % 2:
            return f"odd last dimension {last}"
        return None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        import torch

        source, ir_text = split_gelu_source(name, node, ctx.dtype_of(node.inputs[0]))
        fn, path, cached = load_source(source, name, ctx)

        def run(x, bias):
            width = x.shape[-1]
            if bias.dim() != 1 or bias.shape[0] != width:
                raise ValueError(f"bias must be 1-D of the last dimension of the input "
                                 f"({width}), got shape {list(bias.shape)}")
            if width % 2:
                raise ValueError(f"the last dimension of X ({width}) must be even")
            half = width // 2
            out = torch.empty((*x.shape[:-1], half), dtype=x.dtype, device=ctx.torch_device)
            if out.numel() == 0:
                return (out,)
            rows = x.reshape(-1, width)  # a view unless x's leading dims are not mergeable
            numel = out.numel()
            launch(fn, numel, [rows, bias, out, numel, rows.shape[0], half, *rows.stride(),
                               bias.stride(0)])
            return (out,)

        return KernelSpec(name, run, [node.inputs[0], node.inputs[1]], ir_text, source, path,
                          cached)
