"""The int8 path of the Conv template: ConvInteger and QLinearConv.

The implicit GEMM of :mod:`tritort.codegen.conv` on the int8 / uint8 tensors as stored:
uint8 tiles are shifted by 128 into int8 (``x = x' + o``, o = 128 or 0), ``tl.dot`` multiplies
int8 tiles with int32 accumulation, and with ``cx = o_x - x_zp``, ``cw = o_w - w_zp[m]``

    sum_k (x - x_zp)(w - w_zp) = sum_k x'w' + cw * rowsum(x') + cx * colsum(w') + K * cx * cw

exact in int32. A padded position must be zero in the dequantized domain, so its A value is
``x_zp - o_x`` (``x' + cx = 0``); lanes past K are 0 in both tiles, so they add nothing to the
dot or the sums. Depthwise convs (one input channel per group) take the ``direct`` variant: one
int32 multiply-add per tap of ``(x - x_zp) * (w - w_zp)``, padded lanes 0.

ConvInteger stores the int32 result. QLinearConv adds its int32 bias, multiplies by one
float32 ``x_scale * w_scale[m] / y_scale`` (per output channel or per tensor), rounds half to
even, adds y's zero point and saturates, as onnxruntime's kernel does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from . import conv
from .cache import KERNEL
from .conv import ConvLauncher, ConvSpec, launch, tap_indices, window_spec
from .gemm import Epilogue
from .int8_gemm import INT8, _per_tensor, _requantize_lines
from .rowwise import torch_dtype
from .templates import KernelSpec, Template, load_source, template


@dataclass(frozen=True)
class QuantConv:
    """A ConvInteger / QLinearConv: geometry, operand types and where its tensors are."""

    spec: ConvSpec
    x_unsigned: bool
    w_unsigned: bool
    x_zero: str  # '' where omitted
    w_zero: str
    w_zero_per_channel: bool
    scales: tuple[str, str, str] | None  # x, w, y (QLinearConv; y '' for a float output)
    w_scale_per_channel: bool
    y_zero: str
    out_dtype: str  # int32, or QLinearConv's 8-bit type

    @property
    def ints(self) -> list[str]:
        """The epilogue's tensors after y, in the kernel's parameter order."""
        return [v for v in (self.x_zero, self.w_zero) if v] + \
            [v for v in (self.scales or ()) if v] + ([self.y_zero] if self.y_zero else [])


def _per_channel(ctx, value: str, channels) -> bool | str:
    """False per tensor, True for one value per output channel, or why neither."""
    shape = ctx.shape_of(value)
    if shape is None:
        return f"shape of '{value}' unknown at load time"
    if _per_tensor(shape):
        return False
    if len(shape) == 1 and shape[0] == channels:
        return True
    return f"'{value}' of shape {list(shape)} is neither per tensor nor per output channel"


def quant_conv(node, ctx) -> QuantConv | str:
    """The node's QuantConv, or why the int8 conv template declines it."""
    ins = list(node.inputs) + [""] * 9
    if node.op_type == "ConvInteger":
        x, w, x_zero, w_zero, b = ins[0], ins[1], ins[2], ins[3], ""
        scales, y_zero, out_dt = None, "", "int32"
    else:  # QLinearConv
        x, w, b = ins[0], ins[3], ins[8]
        x_zero, w_zero, y_zero = ins[2], ins[5], ins[7]
        scales = (ins[1], ins[4], ins[6])
        out_dt = ctx.dtype_of(node.outputs[0])
        if out_dt not in INT8:
            return f"{node.op_type} output of {out_dt}"
        if b and ctx.dtype_of(b) != "int32":
            return f"{node.op_type} bias '{b}' of {ctx.dtype_of(b)} (int32 expected)"
        for s in scales:
            if ctx.dtype_of(s) != "float":
                return f"{node.op_type} scale '{s}' of {ctx.dtype_of(s)}"
    for value in (x, w):
        if ctx.dtype_of(value) not in INT8:
            return f"{node.op_type} of {ctx.dtype_of(value)} ('{value}')"
    spec = window_spec(node, ctx, x, w, b, ctx.dtype_of(x))
    if isinstance(spec, str):
        return spec
    channels = ctx.shape_of(w)[0]
    flags = {}
    for what, value, may_vary in (("x zero point", x_zero, False), ("w zero point", w_zero, True),
                                  ("y zero point", y_zero, False),
                                  ("w scale", scales[1] if scales else "", True),
                                  ("x scale", scales[0] if scales else "", False),
                                  ("y scale", scales[2] if scales else "", False)):
        if not value:
            flags[what] = False
            continue
        per = _per_channel(ctx, value, channels)
        if isinstance(per, str):
            return per
        if per and not may_vary:
            return f"{node.op_type} {what} '{value}' per channel (per tensor only)"
        flags[what] = per
    return QuantConv(spec, ctx.dtype_of(x) == "uint8", ctx.dtype_of(w) == "uint8", x_zero,
                     w_zero, flags["w zero point"], scales, flags["w scale"], y_zero, out_dt)


# ------------------------------------------------------------------ kernel source


def _zero_setup(q: QuantConv) -> list[str]:
    """xz / wz: the zero points as int32 (wz per output channel m where it is a vector)."""
    lines = ["    xz = " + ("tl.load(x_zero).to(tl.int32)" if q.x_zero else "0")]
    if not q.w_zero:
        lines.append("    wz = 0")
    elif q.w_zero_per_channel:
        lines.append("    wz = tl.load(w_zero + m, mask=col_in, other=0).to(tl.int32)")
    else:
        lines.append("    wz = tl.load(w_zero).to(tl.int32)")
    return lines


def _needs_sums(q: QuantConv) -> tuple[bool, bool]:
    """(A's row sums, W's column sums): needed where cw, resp. cx, can be nonzero."""
    return bool(q.w_zero) or q.w_unsigned, bool(q.x_zero) or q.x_unsigned


def _shift(tile: str, unsigned: bool) -> list[str]:
    return [f"{tile} = ({tile}.to(tl.int16) - 128).to(tl.int8)"] if unsigned else []


def _gemm_body(q: QuantConv) -> list[str]:
    """The implicit-GEMM loop on int8 tiles, ``acc`` int32, plus the row / column sums."""
    spec = q.spec
    win, r = spec.window, spec.window.rank
    rowsums, colsums = _needs_sums(q)
    x_off = 128 if q.x_unsigned else 0
    lines = [
        *conv.dot_program(win),
        *_zero_setup(q),
        "    # a padded position is x's zero point: zero once dequantized",
        f"    x_pad = (xz - {x_off}).to(tl.int8)" if q.x_zero else
        f"    x_pad = tl.full([1], {-x_off}, tl.int8)",
        "    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)",
        "    a_rowsum = tl.zeros([BLOCK_M], dtype=tl.int32)",
        "    b_colsum = tl.zeros([BLOCK_N], dtype=tl.int32)",
    ]
    t = tap_indices("tap", win.kernel)
    if spec.variant == "tap_major":
        ind = "            "
        lines += [f"    for tap in range(0, {win.taps}):"]
        lines += [f"        t{j} = {t[j]}" for j in range(r)]
        lines += [f"        i{j} = h{j} + {conv.scaled(f't{j}', d)}"
                  for j, d in enumerate(win.dilations)]
        lines += [f"        inside = {conv._in_bounds(r)}",
                  f"        a_rows = x_rows + ({conv._spatial('i', 'sx', r)})",
                  f"        b_cols = w_cols + ({conv._spatial('t', 'sw', r)})",
                  "        for cb in range(0, CG, BLOCK_K):",
                  "            c = cb + tl.arange(0, BLOCK_K)",
                  "            c_in = c < CG",
                  "            c64 = c.to(tl.int64)",
                  "            k_ok = c_in[None, :]",
                  "            a_in = (row_in & inside)[:, None] & k_ok",
                  "            a_tile = tl.load(a_rows[:, None] + c64[None, :] * sx1, mask=a_in, "
                  "other=0)",
                  "            b_tile = tl.load(b_cols[None, :] + c64[:, None] * sw1,",
                  "                             mask=c_in[:, None] & col_in[None, :], other=0)",
                  "            w_ok = c_in[:, None]"]
    else:
        ind = "        "
        lines += [f"    K = CG * {win.taps}",
                  "    for kb in range(0, tl.cdiv(K, BLOCK_K)):",
                  "        k = kb * BLOCK_K + tl.arange(0, BLOCK_K)",
                  "        k_in = k < K",
                  f"        c = (k // {win.taps}).to(tl.int64)",
                  f"        tap = k % {win.taps}"]
        lines += [f"        t{j} = {t[j]}" for j in range(r)]
        lines += [f"        i{j} = h{j}[:, None] + {conv.scaled(f't{j}[None, :]', d)}"
                  for j, d in enumerate(win.dilations)]
        lines += ["        k_ok = k_in[None, :]",
                  f"        a_in = row_in[:, None] & k_ok & {conv._in_bounds(r)}",
                  f"        a_tile = tl.load(x_rows[:, None] + (c[None, :] * sx1 + "
                  f"{conv._spatial('i', 'sx', r)}), mask=a_in, other=0)",
                  f"        b_tile = tl.load(w_cols[None, :] + (c * sw1 + "
                  f"{conv._spatial('t', 'sw', r)})[:, None],",
                  "                         mask=k_in[:, None] & col_in[None, :], other=0)",
                  "        w_ok = k_in[:, None]"]
    step = [*_shift("a_tile", q.x_unsigned), *_shift("b_tile", q.w_unsigned),
            "a_tile = tl.where(a_in, a_tile, tl.where(k_ok, x_pad, 0).to(tl.int8))",
            "b_tile = tl.where(w_ok, b_tile, 0).to(tl.int8)"]
    if rowsums:
        step.append("a_rowsum += tl.sum(a_tile.to(tl.int32), axis=1)")
    if colsums:
        step.append("b_colsum += tl.sum(b_tile.to(tl.int32), axis=0)")
    step.append("acc = tl.dot(a_tile, b_tile, acc)")
    lines += [ind + s for s in step]
    w_off = 128 if q.w_unsigned else 0
    lines += [f"    cx = {x_off} - xz", f"    cw = {w_off} - wz"]
    if rowsums:
        lines.append("    acc = acc + cw * a_rowsum[:, None]")
    if colsums:
        lines.append("    acc = acc + cx * b_colsum[None, :]")
    if rowsums and colsums:
        lines.append(f"    acc = acc + (CG * {win.taps}) * cx * cw")
    return lines


def _direct_body(q: QuantConv) -> list[str]:
    """Depthwise: ``(x - xz) * (w - wz)`` in int32, one tap at a time; padded lanes 0."""
    spec = q.spec
    win, r = spec.window, spec.window.rank
    t = tap_indices("tap", win.kernel)
    loop = "tl.static_range" if win.taps <= 32 else "range"
    lines = [
        *conv.direct_program(win),
        *_zero_setup(q),
        "    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)",
        f"    for tap in {loop}(0, {win.taps}):",
    ]
    lines += [f"        t{j} = {t[j]}" for j in range(r)]
    lines += [f"        i{j} = h{j} + {conv.scaled(f't{j}', d)}"
              for j, d in enumerate(win.dilations)]
    lines += [f"        valid = row_in & {conv._in_bounds(r)}",
              f"        xv = tl.load(x_tile + ({conv._spatial('i', 'sx', r)})[:, None],",
              "                     mask=valid[:, None] & col_in[None, :], other=0)",
              "        xv = tl.where(valid[:, None], xv.to(tl.int32) - xz, 0)",
              f"        wv = tl.load(w_cols + ({conv._spatial('t', 'sw', r)}), mask=col_in, "
              "other=0)",
              "        acc += xv * (wv.to(tl.int32) - wz)[None, :]"]
    return lines


def _epilogue(q: QuantConv) -> Epilogue:
    """The kernel's quantization parameters and, for QLinearConv, the requantization."""
    ep = Epilogue()
    ep.params += [p for p, v in (("x_zero", q.x_zero), ("w_zero", q.w_zero)) if v]
    ep.text.append("int32 dot of int8 tiles; zero points by row / column sums, padding "
                   "at x's zero point" if q.spec.variant != "direct" else
                   "int32 multiply-adds of (x - x_zp) * (w - w_zp)")
    if q.scales is None:
        return ep
    if not q.scales[2]:  # dequantized operands: the scaling is the body's last step
        ep.params += ["x_scale", "w_scale"]
        ep.text.append(f"* x_scale * w_scale{' per channel' if q.w_scale_per_channel else ''} "
                       "in float32, then the float bias")
        return ep
    ep.params += ["x_scale", "w_scale", "y_scale"] + (["y_zero"] if q.y_zero else [])
    w_scale = "tl.load(w_scale + m, mask=col_in, other=0)[None, :]" if \
        q.w_scale_per_channel else "tl.load(w_scale)"
    ep.lines.append(f"acc = acc.to(tl.float32) * (tl.load(x_scale) * {w_scale} / "
                    "tl.load(y_scale))")
    ep.lines += _requantize_lines("acc", bool(q.y_zero), q.out_dtype)
    ep.text.append(f"* (x_scale * w_scale{' per channel' if q.w_scale_per_channel else ''} "
                   "/ y_scale), rounded half to even, + y_zero_point, saturated")
    return ep


# ------------------------------------------------------------------ launching


class QuantConvLauncher(ConvLauncher):
    """Node inputs -> x, w, bias and the quantization tensors in the kernel's order."""

    def __init__(self, fn: Any, q: QuantConv, ctx, node_name: str, order: Sequence[int],
                 bias: int | None) -> None:
        super().__init__(fn, q.spec, torch_dtype(q.out_dtype), ctx, node_name)
        self.tf32 = False
        self.order, self.bias = tuple(order), bias

    def __call__(self, *args: Any) -> tuple:
        import torch

        x, w = args[0], args[1]
        b = args[self.bias] if self.bias is not None else None
        self._check(x, w, b)
        outs, _, _ = self.spec.window.resolve(tuple(x.shape[2:]))
        y = torch.empty((x.shape[0], w.shape[0], *outs), dtype=self.out_dtype,
                        device=self.device)
        extra = [args[i] for i in self.order]
        launch(self.fn, self.spec, x, w, b, y, extra, self.interpreted, self.table, False)
        return (y,)


def build_quant_conv(node, ctx, name: str) -> KernelSpec:
    q = quant_conv(node, ctx)
    if isinstance(q, str):
        raise ValueError(f"{node.op_type} node '{node.name}': {q}")
    ins = list(node.inputs) + [""] * 9
    x, w = (ins[0], ins[1]) if q.scales is None else (ins[0], ins[3])
    b = ins[8] if q.spec.with_bias else ""
    extra = q.ints
    inputs = [x, w] + extra + ([b] if b else [])
    order = list(range(2, 2 + len(extra)))
    bias = len(inputs) - 1 if b else None
    ep = _epilogue(q)
    body = _direct_body(q) if q.spec.variant == "direct" else _gemm_body(q)
    ir_text = (f"kernel {name} {node.op_type} node={node.name!r}\n"
               f"X: {x} {ctx.dtype_of(x)} * W: {w} {ctx.dtype_of(w)}"
               f"{f' + B: {b} int32' if b else ''} -> {node.outputs[0]} {q.out_dtype}\n"
               f"{q.spec.text()}\n" + "; ".join(ep.text))
    header = [f"ONNX node: {node.name} ({node.op_type})", *ir_text.splitlines()[1:]]
    source = conv.conv_source(KERNEL, header, q.spec, q.out_dtype, ctx.interpreted, ep,
                              body=body)
    fn, path, cached = load_source(source, KERNEL, ctx)
    launcher = QuantConvLauncher(fn, q, ctx, node.name, order, bias)
    return KernelSpec(name, launcher, inputs, ir_text, source, path, cached)


# ------------------------------------------------------------------ DequantizeLinear operands


def _dq_side(node, ctx, weights: bool) -> tuple[str, str, str, bool] | None:
    """(int8 source, scale, zero point or '', per output channel) of a DequantizeLinear
    feeding a Conv's x (per tensor) or w (per tensor or along axis 0), or None."""
    if node is None or node.op_type != "DequantizeLinear" or node.domain != "" or \
            len(node.inputs) < 2 or node.attrs.get("block_size", 0):
        return None
    src, scale = node.inputs[0], node.inputs[1]
    zero = node.inputs[2] if len(node.inputs) > 2 else ""
    if ctx.dtype_of(src) not in INT8 or ctx.dtype_of(scale) != "float" or \
            (zero and ctx.dtype_of(zero) != ctx.dtype_of(src)):
        return None
    s_shape, src_shape = ctx.shape_of(scale), ctx.shape_of(src)
    if s_shape is None or not src_shape:
        return None
    if _per_tensor(s_shape) and (not zero or _per_tensor(ctx.shape_of(zero))):
        return src, scale, zero, False
    axis = node.attrs.get("axis", 1)
    if not weights or (axis + len(src_shape) if axis < 0 else axis) != 0 or \
            len(s_shape) != 1 or s_shape[0] != src_shape[0]:
        return None
    return src, scale, zero, True


def dq_conv(anchor, ctx, producer) -> QuantConv | None:
    """``Conv(DQ(x8), DQ(w8)[, b])`` (``producer(value)``: the node making a value) as the
    int8 conv with a float output: x's scale and zero point per tensor, w's per tensor or
    per output channel; None for any other form."""
    if anchor is None or anchor.op_type != "Conv" or anchor.domain != "" or \
            len(anchor.inputs) < 2:
        return None
    x = _dq_side(producer(anchor.inputs[0]), ctx, False)
    w = _dq_side(producer(anchor.inputs[1]), ctx, True)
    out_dt = ctx.dtype_of(anchor.outputs[0])
    b = anchor.inputs[2] if len(anchor.inputs) > 2 else ""
    if x is None or w is None or out_dt != "float" or \
            {ctx.dtype_of(v) for v in anchor.inputs[:3] if v} != {out_dt}:
        return None
    spec = window_spec(anchor, ctx, x[0], w[0], b, ctx.dtype_of(x[0]))
    if isinstance(spec, str):
        return None
    # DequantizeLinear's zero point has its scale's shape
    return QuantConv(spec, ctx.dtype_of(x[0]) == "uint8", ctx.dtype_of(w[0]) == "uint8",
                     x[2], w[2], bool(w[2]) and w[3], (x[1], w[1], ""), w[3], "", out_dt)


def conv_operand(node, ctx, anchor, index, producer):
    """``node`` as operand ``index`` of a Conv's int8 pair (prologues.operand_prologue's rule for
    a Conv anchor: its x and w DequantizeLinear only), or None."""
    from .prologues import OperandPrologue

    q = dq_conv(anchor, ctx, producer) if producer and index in (0, 1) else None
    if q is None or producer(anchor.inputs[index]) is not node:
        return None
    return OperandPrologue(node.inputs[0], "", f"int8 operand of {node.name}", q)


def _scale_lines(q: QuantConv) -> list[str]:
    """The int32 accumulator times x_scale * w_scale (before the float bias)."""
    w_scale = "tl.load(w_scale + m, mask=col_in, other=0)[None, :]" if \
        q.w_scale_per_channel else "tl.load(w_scale)"
    return [f"    acc = acc.to(tl.float32) * (tl.load(x_scale) * {w_scale})"]


class DequantConvLauncher(ConvLauncher):
    """(x8, w8, quantization tensors, [bias], fused epilogue inputs) -> one launch."""

    def __init__(self, fn: Any, q: QuantConv, out_dtype: str, ctx, node_name: str,
                 count: int, fused: Any) -> None:
        super().__init__(fn, q.spec, torch_dtype(out_dtype), ctx, node_name, fused)
        self.tf32, self.count = False, count

    def __call__(self, x: Any, w: Any, *rest: Any) -> tuple:
        import numpy as np
        import torch

        lead, rest = list(rest[:self.count]), rest[self.count:]
        b, epilogue_inputs = (rest[0], rest[1:]) if self.spec.with_bias else (None, rest)
        self._check(x, w, b)
        outs, _, _ = self.spec.window.resolve(tuple(x.shape[2:]))
        y = torch.empty((x.shape[0], w.shape[0], *outs), dtype=self.out_dtype,
                        device=self.device)
        if self.fused is None:
            launch(self.fn, self.spec, x, w, b, y, lead, self.interpreted, self.table, False)
            return (y,)
        from .epilogue import launch_args

        args, outputs = launch_args(self.fused, epilogue_inputs, y.shape, y.shape, y.device)
        with np.errstate(all="ignore"):  # the interpreter computes masked lanes too
            launch(self.fn, self.spec, x, w, b, y, lead + list(args), self.interpreted,
                   self.table, False)
        return (y, *outputs) if self.fused.result_stored else (*outputs, y)


def build_dq_conv(node, ctx, name: str, q: QuantConv, fusion: Any) -> KernelSpec:
    """The Conv of two DequantizeLinear operands (``fusion.operands``) on their int8 values:
    scaled in float32, the float bias added, then ``fusion``'s epilogue (a QuantizeLinear)."""
    b = node.inputs[2] if q.spec.with_bias else ""
    inputs = [fusion.operands[0].inputs[0], fusion.operands[1].inputs[0]] + \
        q.ints + ([b] if b else [])
    ep, out_dt, fused = _epilogue(q), q.out_dtype, None
    if fusion.epilogue is not None:
        from .epilogue import build

        fused = build(fusion, q.out_dtype, q.spec.window.rank + 2)
        ep = Epilogue(ep.params + fused.epilogue.params, ep.lines + fused.epilogue.lines,
                      ep.text + fused.epilogue.text)
        out_dt = fused.out_dtype
        inputs += fused.inputs
    body = _direct_body(q) if q.spec.variant == "direct" else _gemm_body(q)
    ir_text = (f"kernel {name} Conv node={node.name!r}\n"
               f"X: {inputs[0]} {ctx.dtype_of(inputs[0])} * W: {inputs[1]} "
               f"{ctx.dtype_of(inputs[1])}{f' + B: {b} float' if b else ''} -> "
               f"{node.outputs[0]} {q.out_dtype}\n{q.spec.text()}\n" + "; ".join(ep.text) +
               f"\n{fusion.text()}")
    header = [f"ONNX node: {node.name} (Conv)", *ir_text.splitlines()[1:]]
    source = conv.conv_source(KERNEL, header, q.spec, out_dt, ctx.interpreted, ep,
                              body=body + _scale_lines(q))
    fn, path, cached = load_source(source, KERNEL, ctx)
    launcher = DequantConvLauncher(fn, q, out_dt, ctx, node.name, len(q.ints), fused)
    return KernelSpec(name, launcher, inputs, ir_text, source, path, cached)


@template("QLinearConv")
class QLinearConv(Template):
    kind = "tiled"

    def claim(self, node, ctx) -> str | None:
        q = quant_conv(node, ctx)
        return q if isinstance(q, str) else None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        return build_quant_conv(node, ctx, name)
