"""Operand prologues: the node computing a GEMM or Conv operand that the kernel applies to
each tile it loads (a Cast between float types, a Mul / Div by a scalar constant, an int8
DequantizeLinear pair), so the converted operand is never written. The fusion planner asks
:func:`operand_prologue` which producers qualify; the templates render the lines.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tritort import dtypes

from .emit import stored


@dataclass(frozen=True)
class OperandPrologue:
    """A node computing a GEMM operand that the kernel applies to each tile it loads."""

    source: str  # the value the kernel reads instead of the operand
    line: str  # ``{t} = ...`` on the loaded tile named t, rounded to the operand's type
    text: str
    quant: Any = None  # an int8 operand (codegen.int8_gemm.QuantOperand): no line, int dot


def operand_prologue(node, ctx, anchor=None, index: int | None = None,
                     producer=None) -> OperandPrologue | None:
    """A Cast between float types, or a Mul / Div by a scalar constant, as a tile prologue;
    None for anything else. The result is rounded to the operand's type as the graph does.
    A DequantizeLinear of int8 / uint8 is one when both of ``anchor``'s operands are
    (``producer(value)``: the node making a value): the GEMM then multiplies int8 tiles; a
    Conv anchor takes only such a pair (codegen.int8_conv.dq_conv)."""
    if node.domain != "" or not node.inputs or not node.outputs:
        return None
    if anchor is not None and anchor.op_type == "Conv":
        from .int8_conv import conv_operand

        return conv_operand(node, ctx, anchor, index, producer)
    if node.op_type == "DequantizeLinear":
        from .int8_gemm import quant_pair

        pair = quant_pair(anchor, ctx, producer) if anchor is not None and producer else None
        if pair is None or pair[index].source != node.inputs[0]:
            return None
        side = pair[index]
        return OperandPrologue(side.source, "", f"int8 operand of {node.name}", side)
    out_dt = ctx.dtype_of(node.outputs[0])
    if out_dt not in dtypes.FLOAT_TYPES:
        return None
    if node.op_type == "Cast":
        src_dt = ctx.dtype_of(node.inputs[0])
        if src_dt not in dtypes.FLOAT_TYPES:
            return None
        return OperandPrologue(node.inputs[0], "{t} = " + stored("{t}", out_dt),
                               f"cast {src_dt} -> {out_dt}")
    if node.op_type not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    for i in (0, 1):
        c = ctx.constant_of(node.inputs[1 - i])
        if c is None or c.size != 1 or (node.op_type == "Div" and i == 1):
            continue
        if ctx.dtype_of(node.inputs[i]) != out_dt:
            return None
        scalar = float(c.reshape(-1)[0])
        compute = "tl.float64" if out_dt == "double" else "tl.float32"
        op = "*" if node.op_type == "Mul" else "/"
        return OperandPrologue(node.inputs[i],
                               "{t} = " + stored(f"{{t}}.to({compute}) {op} {scalar!r}", out_dt),
                               f"{op} {scalar!r}")
    return None
