"""int8 GEMMs: DequantizeLinear operands of a MatMul / Gemm, and MatMulInteger.

``MatMul(DQ(a8, sa, za), DQ(b8, sb, zb))`` is one launch of the GEMM template: the operand
prologues read the int8 / uint8 tiles as stored (the weights stay 8-bit in device memory),
``tl.dot`` multiplies them as int8 with int32 accumulation, and the epilogue applies the zero
points and scales before any fused epilogue (a QuantizeLinear after it, say). The algebra:
uint8 values are shifted by 128 into int8 (``x = x' + o``, o = 128 or 0), so with
``ca = o_a - za`` and ``cb = o_b - zb``

    sum_k (a - za)(b - zb) = sum_k a'b' + cb * rowsum(a') + ca * colsum(b') + K * ca * cb

exact in int32 (|terms| <= K * 255**2). A's scale and zero point are per tensor; B's per
tensor or per column (the DequantizeLinear's axis is B's N dim). MatMulInteger is the same
kernel without scales, its int32 result stored as is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .gemm import Epilogue, MatMulLauncher, _built
from .keys import contrib
from .templates import KernelSpec, Template, template

INT8 = ("int8", "uint8")
OUTPUTS = ("float", "float16", "bfloat16")


@dataclass(frozen=True)
class QuantOperand:
    """One int8 operand: its stored values, scale and zero point (None: 0 / 1)."""

    source: str
    scale: str | None
    zero: str | None
    unsigned: bool
    per_column: bool  # B only: the scale / zero point is a vector over N


def _per_tensor(shape) -> bool:
    return shape is not None and (len(shape) == 0 or (len(shape) == 1 and shape[0] == 1))


def quant_operand(node, ctx, anchor, index: int) -> QuantOperand | None:
    """The DequantizeLinear ``node`` computing operand ``index`` of ``anchor`` (MatMul or
    Gemm) as an int8 operand, or None if its form does not factor out of the dot."""
    if node.op_type != "DequantizeLinear" or node.domain != "" or len(node.inputs) < 2 or \
            node.attrs.get("block_size", 0) or anchor is None or index not in (0, 1):
        return None
    x, scale = node.inputs[0], node.inputs[1]
    zero = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    x_dt, out_dt = ctx.dtype_of(x), ctx.dtype_of(node.outputs[0])
    if x_dt not in INT8 or out_dt not in OUTPUTS or \
            (zero is not None and ctx.dtype_of(zero) != x_dt):
        return None
    s_shape, x_shape = ctx.shape_of(scale), ctx.shape_of(x)
    if s_shape is None or x_shape is None or len(x_shape) < 1:
        return None
    if _per_tensor(s_shape):
        return QuantOperand(x, scale, zero, x_dt == "uint8", False)
    if index != 1 or len(s_shape) != 1 or len(x_shape) < 2:
        return None  # A per row of K (or per batch) does not factor out of the dot
    axis = node.attrs.get("axis", 1)
    axis = axis + len(x_shape) if axis < 0 else axis
    trans_b = anchor.op_type == "Gemm" and bool(anchor.attrs.get("transB", 0))
    n_axis = 0 if trans_b else len(x_shape) - 1
    if axis != n_axis:
        return None
    return QuantOperand(x, scale, zero, x_dt == "uint8", True)


def quant_pair(anchor, ctx, producer) -> tuple[QuantOperand, QuantOperand] | None:
    """Both operands of ``anchor`` as int8 operands (``producer(value)``: its node), or None."""
    if anchor.op_type not in ("MatMul", "Gemm") or anchor.domain != "":
        return None
    sides = []
    for index, value in enumerate(anchor.inputs[:2]):
        node = producer(value)
        side = quant_operand(node, ctx, anchor, index) if node is not None else None
        if side is None:
            return None
        sides.append(side)
    if ctx.dtype_of(anchor.inputs[0]) != ctx.dtype_of(anchor.inputs[1]):
        return None
    return sides[0], sides[1]


# ------------------------------------------------------------------ kernel pieces


def tile_lines(side: QuantOperand | None, index: int, unsigned: bool,
               sums: bool) -> tuple[str, str]:
    """(the load's ``other``, the prologue lines on tile ``{t}``): uint8 shifted into int8,
    and the running row sums of A / column sums of B the zero points need."""
    lines = ["{t} = ({t}.to(tl.int16) - 128).to(tl.int8)"] if unsigned else []
    if sums:
        name, axis = ("a_rowsum", 1) if index == 0 else ("b_colsum", 0)
        lines.append(f"{name} += tl.sum({{t}}.to(tl.int32), axis={axis})")
    return ("128" if unsigned else "0"), "\n".join(lines)


def epilogue(a: QuantOperand | None, b: QuantOperand | None, a_unsigned: bool,
             b_unsigned: bool, a_zero: bool, b_zero: bool, scaled: bool
             ) -> tuple[Epilogue, bool, bool]:
    """The zero-point correction (and with ``scaled`` the scales) on the int32 accumulator;
    and whether the kernel keeps A's row sums / B's column sums."""
    ep = Epilogue()
    a_off, b_off = 128 if a_unsigned else 0, 128 if b_unsigned else 0
    b_vec = b is not None and b.per_column
    if a_zero:
        ep.params.append("a_zero")
        ep.lines.append(f"ca = {a_off} - tl.load(a_zero).to(tl.int32)")
    else:
        ep.lines.append(f"ca = {a_off}")
    if b_zero:
        ep.params.append("b_zero")
        where = "b_zero + cols, mask=cols < N, other=0" if b_vec else "b_zero"
        ep.lines.append(f"cb = {b_off} - tl.load({where}).to(tl.int32)")
    else:
        ep.lines.append(f"cb = {b_off}")
    rowsums, colsums = b_zero or b_unsigned, a_zero or a_unsigned
    if rowsums:
        ep.lines.append("acc = acc + cb * a_rowsum[:, None]")
    if colsums:
        ep.lines.append("acc = acc + ca * b_colsum[None, :]")
    if rowsums and colsums:
        ep.lines.append("acc = acc + K * ca * cb")
    ep.text.append("int32 dot of int8 tiles; zero points by row / column sums")
    if scaled:
        ep.params += ["a_scale", "b_scale"]
        b_scale = "tl.load(b_scale + cols, mask=cols < N, other=0)" if b_vec else \
            "tl.load(b_scale)"
        ep.lines.append(f"acc = acc.to(tl.float32) * tl.load(a_scale).to(tl.float32) * "
                        f"{b_scale}.to(tl.float32)")
        ep.text.append(f"* a_scale * b_scale ({'per column' if b_vec else 'per tensor'})")
    return ep, rowsums, colsums


def quant_inputs(a: QuantOperand, b: QuantOperand) -> list[str]:
    """The kernel's own tensors, in the epilogue's parameter order."""
    return [v for v in (a.zero, b.zero, a.scale, b.scale) if v]


class QuantLauncher:
    """Node inputs (a8, b8, quantization tensors, [C], fused epilogue inputs) -> the GEMM
    launcher, the quantization tensors leading the template's own epilogue args."""

    def __init__(self, inner, count: int) -> None:
        self.inner, self.count = inner, count

    def __call__(self, a, b, *rest) -> tuple:
        lead, rest = rest[:self.count], rest[self.count:]
        return self.inner(a, b, *rest, lead=tuple(lead))


# ------------------------------------------------------------------ MatMulInteger


@template("MatMulInteger")
class MatMulInteger(Template):
    kind = "tiled"
    epilogue = True  # the Cast and scale a dynamic quantization puts after it

    def claim(self, node, ctx) -> str | None:
        a, b = node.inputs[:2]
        for value in (a, b):
            if ctx.dtype_of(value) not in INT8:
                return f"MatMulInteger of {ctx.dtype_of(value)} ('{value}')"
            if not ctx.rank_of(value):
                return f"MatMulInteger of a 0-d or unknown-rank tensor ('{value}')"
        for i, value in enumerate(node.inputs[2:4]):
            if not value:
                continue
            shape = ctx.shape_of(value)
            if shape is None:
                return f"shape of '{value}' unknown at load time"
            if not _per_tensor(shape) and (i == 0 or len(shape) != 1 or
                                           ctx.rank_of(b) != 2):
                return f"MatMulInteger zero point '{value}' per row (or batch) runs on the CPU"
        return None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        a, b = node.inputs[:2]
        za = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
        zb = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
        ra, rb = ctx.rank_of(a), ctx.rank_of(b)
        batch_rank = max(ra, rb, 2) - 2
        side_b = QuantOperand(b, None, zb, ctx.dtype_of(b) == "uint8",
                              zb is not None and not _per_tensor(ctx.shape_of(zb)))
        a_u, b_u = ctx.dtype_of(a) == "uint8", side_b.unsigned
        ep, rowsums, colsums = epilogue(None, side_b, a_u, b_u, za is not None,
                                        zb is not None, False)
        prologues, others = {}, {}
        for index, unsigned, sums in ((0, a_u, rowsums), (1, b_u, colsums)):
            others[index], prologues[index] = tile_lines(None, index, unsigned, sums)
        ir_text = (f"kernel {name} MatMulInteger node={node.name!r}\n"
                   f"A: {a} {ctx.dtype_of(a)}[rank {ra}] x B: {b} {ctx.dtype_of(b)}"
                   f"[rank {rb}] -> {node.outputs[0]} int32\n" + "; ".join(ep.text))
        inputs = [a, b] + [v for v in (za, zb) if v]
        count = len(inputs) - 2
        return _built(name, node, ctx, ir_text, batch_rank, "int8", ep,
                      lambda fn, out_dt, fused: QuantLauncher(
                          MatMulLauncher(fn, batch_rank, out_dt, ctx, fused), count),
                      inputs, fusion, "int32", None, int8=(prologues, others, rowsums, colsums))


def sums_setup(rowsums: bool, colsums: bool) -> list[str]:
    lines = []
    if rowsums:
        lines.append("    a_rowsum = tl.zeros([BLOCK_M], dtype=tl.int32)")
    if colsums:
        lines.append("    b_colsum = tl.zeros([BLOCK_N], dtype=tl.int32)")
    return lines


def describe(sides: Sequence[QuantOperand]) -> str:
    return ", ".join(f"{'AB'[i]}: {s.source} ({'uint8' if s.unsigned else 'int8'}, scale "
                     f"{'per column' if s.per_column else 'per tensor'})"
                     for i, s in enumerate(sides))


# ------------------------------------------------------------------ QGemm, QLinearMatMul

_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


def _requantize_lines(acc: str, zero: bool, out_dt: str) -> list[str]:
    """``acc`` (already divided by y's scale) rounded half to even, plus y's zero point,
    saturated to ``out_dt``'s range."""
    lo, hi = _RANGES[out_dt]
    lines = ["q_floor = tl.floor(acc)",
             "q_frac = acc - q_floor",
             "q_even = tl.floor(q_floor * 0.5) == q_floor * 0.5",
             "q_up = tl.where(q_even, q_floor, q_floor + 1.0)",
             "acc = tl.where(q_frac > 0.5, q_floor + 1.0, tl.where(q_frac < 0.5, q_floor, q_up))"]
    if zero:
        lines.append("acc = acc + tl.load(y_zero).to(tl.float32)")
    lines.append(f"acc = tl.minimum(tl.maximum(acc, {float(lo)!r}), {float(hi)!r})")
    return [line.replace("acc", acc) for line in lines]


def _param_reason(op: str, ctx, ins: Sequence[str], n, b_params=(4, 5)) -> str | None:
    """Scales and zero points: per tensor, B's (``b_params``) also per column (``n``)."""
    for i, value in enumerate(ins):
        if i in (0, 3) or not value:
            continue
        shape = ctx.shape_of(value)
        if shape is None:
            return f"shape of '{value}' unknown at load time"
        if _per_tensor(shape):
            continue
        if i not in b_params or len(shape) != 1 or shape[0] != n:
            return f"{op} parameter '{value}' of shape {list(shape)}: A's and Y's are per " \
                   f"tensor here, B's per tensor or per column"
    zb = ins[b_params[1]] if len(ins) > b_params[1] else ""
    if zb and _per_tensor(ctx.shape_of(ins[b_params[0]])) != _per_tensor(ctx.shape_of(zb)):
        return f"{op}'s b_scale and b_zero_point: one per tensor, the other per column"
    return None


def _operands_reason(op: str, ctx, a: str, b: str, ranks) -> str | None:
    for value in (a, b):
        if ctx.dtype_of(value) not in INT8:
            return f"{op} of {ctx.dtype_of(value)} ('{value}')"
        if ctx.rank_of(value) not in ranks:
            return f"{op} input '{value}' of rank {ctx.rank_of(value)}"
    return None


def _quant_spec(node, ctx, name, ins: Sequence[str], c_in: str, y_scale: str, y_zero: str,
                alpha: float, batch_rank: int, launcher_for, header: str,
                fusion=None) -> KernelSpec:
    """The int8 GEMM of ``ins`` (A, a_scale, a_zp, B, b_scale, b_zp; '' where omitted): the
    int32 accumulator, zero points by row / column sums, + C, then the scales; with
    ``y_scale`` requantized to the output's 8-bit type (QLinearMatMul's order: one float32
    multiplier a_scale * b_scale / y_scale; QGemm's: the scales and alpha, then / y_scale)."""
    from .gemm import gemm_epilogue

    a_in, b_in = ins[0], ins[3]
    a = QuantOperand(a_in, ins[1], ins[2] or None, ctx.dtype_of(a_in) == "uint8", False)
    b = QuantOperand(b_in, ins[4], ins[5] or None, ctx.dtype_of(b_in) == "uint8",
                     not _per_tensor(ctx.shape_of(ins[4])))
    out_dt = ctx.dtype_of(node.outputs[0])
    ep, rowsums, colsums = epilogue(a, b, a.unsigned, b.unsigned, a.zero is not None,
                                    b.zero is not None, False)
    lead = [v for v in (a.zero, b.zero, a.scale, b.scale) if v]
    ep.params += ["a_scale", "b_scale"]
    c_ep = gemm_epilogue("acc", 1.0, 1.0, bool(c_in))
    if c_in:
        ep.lines += c_ep.lines
        ep.text.append("+ C (int32)")
    b_scale = "tl.load(b_scale + cols, mask=cols < N, other=0).to(tl.float32)" if \
        b.per_column else "tl.load(b_scale).to(tl.float32)"
    scale = f"tl.load(a_scale).to(tl.float32) * {b_scale}"
    if y_scale:
        ep.params.append("y_scale")
        lead.append(y_scale)
        if y_zero:
            ep.params.append("y_zero")
            lead.append(y_zero)
        y_s = "tl.load(y_scale).to(tl.float32)"
        if node.op_type == "QLinearMatMul":
            ep.lines.append(f"acc = acc.to(tl.float32) * (({scale}) / {y_s})")
            ep.text.append("* (a_scale * b_scale / y_scale)")
        else:
            ep.lines.append(f"acc = (acc.to(tl.float32) * ({scale} * {alpha!r})) / {y_s}")
            ep.text.append(f"* a_scale * b_scale * alpha ({alpha!r}) / y_scale")
        ep.lines += _requantize_lines("acc", bool(y_zero), out_dt)
        ep.text.append("rounded half to even, + y_zero_point, saturated")
    else:
        ep.lines.append(f"acc = acc.to(tl.float32) * ({scale} * {alpha!r})")
        ep.text.append(f"* a_scale * b_scale * alpha ({alpha!r})")
    ep.params += c_ep.params if c_in else []
    prologues, others = {}, {}
    for index, side, sums in ((0, a, rowsums), (1, b, colsums)):
        others[index], prologues[index] = tile_lines(side, index, side.unsigned, sums)
    ir_text = f"{header} -> {node.outputs[0]} {out_dt}\n{describe([a, b])}; " + " ".join(ep.text)
    inputs = [a_in, b_in] + lead + ([c_in] if c_in else [])
    count = len(lead)
    return _built(name, node, ctx, ir_text, batch_rank, "int8", ep,
                  lambda fn, dt, fused: QuantLauncher(launcher_for(fn, dt, fused), count),
                  inputs, fusion, out_dt, None, int8=(prologues, others, rowsums, colsums))


@template(contrib("QGemm"))
class QGemm(Template):
    """onnxruntime's ``alpha * a_scale * b_scale * ((A - a_zp) @ (B - b_zp) + C)``,
    requantized when ``y_scale`` is given; transA / transB as strides."""

    kind = "tiled"
    epilogue = True  # the QLinear ops after it, on the output codes

    def claim(self, node, ctx) -> str | None:
        ins = list(node.inputs) + [""] * (9 - len(node.inputs))
        reason = _operands_reason("QGemm", ctx, ins[0], ins[3], (2,))
        if reason:
            return reason
        out = ctx.dtype_of(node.outputs[0])
        if out not in ("float",) + INT8 or bool(ins[7]) != (out in INT8):
            return f"QGemm output '{node.outputs[0]}' of type {out}: float without y_scale, " \
                   f"int8 / uint8 with it"
        n = ctx.shape_of(ins[3])[0 if node.attrs.get("transB", 0) else 1]
        reason = _param_reason("QGemm", ctx, ins[:6] + [""] + ins[7:], n)
        if reason:
            return reason
        if ins[6]:
            c = ctx.shape_of(ins[6])
            if ctx.dtype_of(ins[6]) != "int32" or c is None or len(c) > 2:
                return f"QGemm's C '{ins[6]}' must be int32 of rank <= 2 and known shape"
        return None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        from .gemm import GemmLauncher

        ins = list(node.inputs) + [""] * (9 - len(node.inputs))
        trans_a = bool(node.attrs.get("transA", 0))
        trans_b = bool(node.attrs.get("transB", 0))
        header = (f"kernel {name} QGemm node={node.name!r}\n"
                  f"A: {ins[0]}{'^T' if trans_a else ''} x B: {ins[3]}{'^T' if trans_b else ''}")
        return _quant_spec(node, ctx, name, ins[:6], ins[6], ins[7], ins[8],
                           float(node.attrs.get("alpha", 1.0)), 0,
                           lambda fn, dt, fused: GemmLauncher(fn, trans_a, trans_b,
                                                              bool(ins[6]), dt, ctx, fused),
                           header, fusion)


@template("QLinearMatMul")
class QLinearMatMul(Template):
    """``Q(DQ(A) @ DQ(B))`` as numpy.matmul (batch dims broadcast): int32 products, one
    float32 multiplier ``a_scale * b_scale / y_scale``, rounded half to even."""

    kind = "tiled"
    epilogue = True

    def claim(self, node, ctx) -> str | None:
        ins = list(node.inputs) + [""] * (8 - len(node.inputs))
        reason = _operands_reason("QLinearMatMul", ctx, ins[0], ins[3], range(2, 9))
        if reason:
            return reason
        out = ctx.dtype_of(node.outputs[0])
        if out not in INT8:
            return f"QLinearMatMul output of {out} (float8 runs on the CPU)"
        return _param_reason("QLinearMatMul", ctx, ins[:8], ctx.shape_of(ins[3])[-1])

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        from .gemm import MatMulLauncher

        ins = list(node.inputs) + [""] * (8 - len(node.inputs))
        batch_rank = max(ctx.rank_of(ins[0]), ctx.rank_of(ins[3])) - 2
        header = f"kernel {name} QLinearMatMul node={node.name!r}\nA: {ins[0]} x B: {ins[3]}"
        return _quant_spec(node, ctx, name, ins[:6], "", ins[6], ins[7], 1.0, batch_rank,
                           lambda fn, dt, fused: MatMulLauncher(fn, batch_rank, dt, ctx,
                                                                fused), header, fusion)


# ------------------------------------------------------------------ ConvInteger (1x1)


def _pointwise_conv_reason(node, ctx) -> str | None:
    """Why a ConvInteger is not a plain GEMM ``w[M, C] @ x[n][C, H*W]`` (spatial windows,
    strides, pads, groups and per-channel zero points take the int8 Conv template)."""
    x, w = node.inputs[:2]
    xs, ws = ctx.shape_of(x), ctx.shape_of(w)
    if xs is None or ws is None or len(xs) < 3 or len(ws) != len(xs):
        return "ConvInteger input or weight shape unknown at load time (or rank < 3)"
    if any(d != 1 for d in ws[2:]) or node.attrs.get("group", 1) != 1 or \
            any(s != 1 for s in node.attrs.get("strides", [])) or \
            any(p != 0 for p in node.attrs.get("pads", [])) or \
            node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return "not a 1x1 ConvInteger without strides, pads or groups (the int8 Conv " \
               "template takes it)"
    for value in (x, w):
        if ctx.dtype_of(value) not in INT8:
            return f"ConvInteger of {ctx.dtype_of(value)} ('{value}')"
    for value in node.inputs[2:4]:
        if value and not _per_tensor(ctx.shape_of(value)):
            return f"ConvInteger zero point '{value}' per channel runs on the CPU"
    return None


class _PointwiseConvLauncher:
    """x [N, C, *S], w [M, C, 1...] -> the GEMM w[M, C] @ x[N, C, prod(S)], viewed back."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, w, x, *rest) -> tuple:
        n, m = x.shape[0], w.shape[0]
        x = x if x.is_contiguous() else x.contiguous()
        (y,) = self.inner(w.reshape(m, w.shape[1]), x.view(n, x.shape[1], -1), *rest)
        return (y.view((n, m) + tuple(x.shape[2:])),)


@template("ConvInteger")
class ConvInteger(Template):
    """A 1x1 ConvInteger as MatMulInteger's kernel: A = the weights, B = each image's
    [C, H*W] (the output comes out as [N, M, H*W], NCHW already); x's zero point is B's,
    w's A's, both per tensor. Every other form: the int8 Conv template
    (:mod:`tritort.codegen.int8_conv`)."""

    kind = "tiled"

    def claim(self, node, ctx) -> str | None:
        if _pointwise_conv_reason(node, ctx) is None:
            return None
        from .int8_conv import quant_conv

        q = quant_conv(node, ctx)
        return q if isinstance(q, str) else None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        if _pointwise_conv_reason(node, ctx) is not None:
            from .int8_conv import build_quant_conv

            return build_quant_conv(node, ctx, name)  # the int8 Conv template
        x, w = node.inputs[:2]
        zx = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
        zw = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
        a_u, b_u = ctx.dtype_of(w) == "uint8", ctx.dtype_of(x) == "uint8"
        ep, rowsums, colsums = epilogue(None, None, a_u, b_u, zw is not None,
                                        zx is not None, False)
        prologues, others = {}, {}
        for index, unsigned, sums in ((0, a_u, rowsums), (1, b_u, colsums)):
            others[index], prologues[index] = tile_lines(None, index, unsigned, sums)
        ir_text = (f"kernel {name} ConvInteger (1x1) node={node.name!r}\n"
                   f"A: {w} {ctx.dtype_of(w)}[M, C] x B: {x} {ctx.dtype_of(x)}[N, C, H*W] -> "
                   f"{node.outputs[0]} int32\n" + "; ".join(ep.text))
        inputs = [w, x] + [v for v in (zw, zx) if v]
        count = len(inputs) - 2
        return _built(name, node, ctx, ir_text, 1, "int8", ep,
                      lambda fn, out_dt, fused: _PointwiseConvLauncher(QuantLauncher(
                          MatMulLauncher(fn, 1, out_dt, ctx, fused), count)),
                      inputs, None, "int32", None, int8=(prologues, others, rowsums, colsums))


from . import int8_conv  # noqa: E402,F401  (registers QLinearConv; it reads the helpers above)
