"""DynamicQuantizeLinear: float x to uint8 codes with a scale and zero point of x's own range.

Two launches and no host synchronization: the range stays on the device. The first reduces
x's chunks to partial minima and maxima (masked lanes load 0, which the range includes
anyway); the second has each program fold those partials into the range, derive

    scale = (max(0, max x) - min(0, min x)) / 255      (1 where the range is empty: x all 0)
    zero_point = saturate(round(-min / scale))
    y = saturate(round(x / scale) + zero_point)

in float32, rounding half to even, as fallback_cpu's kernel and onnxruntime do; program 0
also stores the scale and the zero point. A bounded partial count (``PARTS``) keeps that
fold short for every program.
"""
from __future__ import annotations

from .cache import KERNEL
from .launch import launch_kernel
from .pointwise import _block_size
from . import target
from .templates import KernelSpec, Template, load_source, template

RANGE_BLOCK = 4096  # the reduction's step: its chunks loop over steps this long
PARTS = 256  # at most this many partial ranges, so each program's fold reads 2 * PARTS floats

_RANGES = """import triton
import triton.language as tl


@triton.jit
def kernel(x, part, numel, chunk, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * chunk
    lo = tl.zeros([BLOCK], dtype=tl.float32)
    hi = tl.zeros([BLOCK], dtype=tl.float32)
    for step in range(0, chunk, BLOCK):
        offs = start + step + tl.arange(0, BLOCK)
        v = tl.load(x + offs, mask=offs < numel, other=0).to(tl.float32)
        lo = tl.minimum(lo, v)
        hi = tl.maximum(hi, v)
    tl.store(part + pid, tl.min(lo, axis=0))
    tl.store(part + PARTS + pid, tl.max(hi, axis=0))
""".replace("PARTS", str(PARTS))

_QUANTIZE = """import triton
import triton.language as tl


@triton.jit
def kernel(x, part, y, y_scale, y_zero, numel, parts, BLOCK: tl.constexpr):
    p = tl.arange(0, PARTS)
    lo = tl.min(tl.load(part + p, mask=p < parts, other=0), axis=0)
    hi = tl.max(tl.load(part + PARTS + p, mask=p < parts, other=0), axis=0)
    lo = tl.minimum(lo, 0.0)
    hi = tl.maximum(hi, 0.0)
    scale = (hi - lo) / 255.0
    scale = tl.where(scale == 0.0, 1.0, scale)
    zero = tl.minimum(tl.maximum(_round_half_even((0.0 - lo) / scale), 0.0), 255.0)
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    v = tl.load(x + offs, mask=mask, other=0).to(tl.float32)
    q = tl.minimum(tl.maximum(_round_half_even(v / scale) + zero, 0.0), 255.0)
    tl.store(y + offs, q.to(tl.uint8), mask=mask)
    if pid == 0:
        tl.store(y_scale, scale)
        tl.store(y_zero, zero.to(tl.uint8))


@triton.jit
def _round_half_even(q):
    q_floor = tl.floor(q)
    q_frac = q - q_floor
    q_up = tl.where(tl.floor(q_floor * 0.5) == q_floor * 0.5, q_floor, q_floor + 1.0)
    return tl.where(q_frac > 0.5, q_floor + 1.0, tl.where(q_frac < 0.5, q_floor, q_up))
""".replace("PARTS", str(PARTS))



@template("DynamicQuantizeLinear")
class DynamicQuantizeLinear(Template):
    kind = "rowwise"

    def claim(self, node, ctx) -> str | None:
        if ctx.dtype_of(node.inputs[0]) != "float":
            return f"DynamicQuantizeLinear of {ctx.dtype_of(node.inputs[0])} (takes float)"
        if ctx.shape_of(node.inputs[0]) is None:
            return "DynamicQuantizeLinear of an input whose rank is unknown at load time"
        return None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        import torch

        ranges = load_source(_RANGES, KERNEL, ctx).fn
        loaded = load_source(_QUANTIZE, KERNEL, ctx)
        device = ctx.torch_device
        ir_text = (f"{name}: DynamicQuantizeLinear '{node.name}'\n"
                   f"launch 1: partial min / max of x over <= {PARTS} chunks\n"
                   "launch 2: range incl. 0 -> scale, zero point; y = saturate(round(x / "
                   "scale) + zero point), uint8")

        def run(x):
            x = x if x.is_contiguous() else x.contiguous()
            numel = x.numel()
            y = torch.empty(x.shape, dtype=torch.uint8, device=device)
            y_scale = torch.empty((), dtype=torch.float32, device=device)
            y_zero = torch.empty((), dtype=torch.uint8, device=device)
            part = torch.zeros(2 * PARTS, dtype=torch.float32, device=device)
            block, warps = _block_size(max(numel, 1), target.interpreted())
            step = min(block, RANGE_BLOCK)
            parts = min(PARTS, max(1, -(-numel // step)))
            chunk = -(-(-(-numel // parts)) // step) * step
            if numel:
                launch_kernel(ranges, (parts,), x, part, numel, chunk, BLOCK=step,
                              num_warps=warps)
            launch_kernel(loaded.fn, (max(1, -(-numel // block)),), x, part, y, y_scale,
                          y_zero, numel, parts, BLOCK=block, num_warps=warps)
            return y, y_scale, y_zero

        return KernelSpec(name, run, [node.inputs[0]], ir_text, _QUANTIZE, loaded.path,
                          loaded.hit)
