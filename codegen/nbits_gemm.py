"""com.microsoft MatMulNBits as one GEMM launch: ``Y = A @ dequant(B)^T + bias``.

B stays packed in device memory (N rows of ``k_blocks * block_size * bits / 8`` bytes, values
lowest bits first along K); the kernel's B load reads the bytes of its tile, unpacks them and
applies each block's scale and zero point (packed like B, or in A's type; default
``2^(bits - 1)``), so the dequantized weight is never written. The tiles multiply in float32
(the NumPy provider's exact product, whatever ``accuracy_level`` allows); the bias is the
template's own epilogue. 4- and 8-bit weights; 2-bit ones, ``g_idx`` and prepacked layouts
stay on the CPU.
"""
from __future__ import annotations

from .gemm import Epilogue, MatMulLauncher, _built
from .keys import contrib
from .templates import KernelSpec, Template, template

FLOATS = ("float", "float16")


def _attrs(node) -> tuple[int, int, int, int]:
    return (int(node.attrs.get("K", 0)), int(node.attrs.get("N", 0)),
            int(node.attrs.get("bits", 4)), int(node.attrs.get("block_size", 0)))


def _optional(node, index: int) -> str | None:
    return node.inputs[index] if len(node.inputs) > index and node.inputs[index] else None


def b_load_lines(bits: int, block: int, blocks: int, zero: str | None) -> list[str]:
    """``b_tile`` [BLOCK_K, BLOCK_N] dequantized from the packed bytes (``b_cols``: each
    column's row of bytes; ``zeros`` / ``scales`` params, one entry per (column, block))."""
    per = 8 // bits
    mask = "k_in[:, None] & mask_n"
    lines = [f"blk = (k_off // {block})[:, None]"]
    if bits == 8:
        lines.append(f"b_q = tl.load(b_cols + k_off[:, None], mask={mask}, other=0)"
                     ".to(tl.float32)")
    else:
        lines += [f"b_byte = tl.load(b_cols + k_off[:, None] // {per}, mask={mask}, other=0)",
                  f"b_q = ((b_byte.to(tl.int32) >> ((k_off[:, None] % {per}) * {bits}).to("
                  f"tl.int32)) & {(1 << bits) - 1}).to(tl.float32)"]
    if zero == "packed":
        row = -(-blocks * bits // 8)
        if bits == 8:
            lines.append(f"b_zp = tl.load(zeros + cols * {row} + blk, mask={mask}, other=0)"
                         ".to(tl.float32)")
        else:
            lines.append(f"b_zp = ((tl.load(zeros + cols * {row} + blk // {per}, mask={mask}, "
                         f"other=0).to(tl.int32) >> ((blk % {per}) * {bits}).to(tl.int32)) & "
                         f"{(1 << bits) - 1}).to(tl.float32)")
    elif zero == "float":
        lines.append(f"b_zp = tl.load(zeros + cols * {blocks} + blk, mask={mask}, other=0)"
                     ".to(tl.float32)")
    else:
        lines.append(f"b_zp = {float(1 << (bits - 1))!r}")
    lines += [f"b_scale = tl.load(scales + cols * {blocks} + blk, mask={mask}, other=0)"
              ".to(tl.float32)",
              "b_tile = (b_q - b_zp) * b_scale"]
    return lines


class NBitsLauncher:
    """Node inputs (A, packed B, scales, [zero points], [bias], fused epilogue inputs) -> the
    MatMul launcher, B seen as a [K, N] view whose column stride is a row of bytes."""

    def __init__(self, inner: MatMulLauncher, k: int, n: int, row_bytes: int,
                 count: int) -> None:
        self.inner, self.k, self.n, self.row_bytes, self.count = inner, k, n, row_bytes, count

    def __call__(self, a, b, *rest) -> tuple:
        own, fused = rest[:self.count], rest[self.count:]
        view = b.reshape(-1).as_strided((self.k, self.n), (0, self.row_bytes))
        return self.inner(a, view, *fused, extra=tuple(t.reshape(-1) for t in own))


@template(contrib("MatMulNBits"))
class MatMulNBits(Template):
    kind = "tiled"
    epilogue = True

    def claim(self, node, ctx) -> str | None:
        k, n, bits, block = _attrs(node)
        if bits not in (4, 8):
            return f"MatMulNBits with bits={bits} runs on the CPU (4 and 8 on Triton)"
        if block < 16 or block & (block - 1) or k <= 0 or n <= 0:
            return f"MatMulNBits block_size={block}, K={k}, N={n} (the CPU reports it)"
        if int(node.attrs.get("weight_prepacked", 0)):
            return "MatMulNBits weight_prepacked layouts run on the CPU"
        if _optional(node, 4):
            return "MatMulNBits g_idx (deprecated) runs on the CPU"
        a, b, scales = node.inputs[:3]
        dt = ctx.dtype_of(a)
        if dt not in FLOATS:
            return f"MatMulNBits of {dt} ('{a}')"
        if ctx.dtype_of(b) != "uint8" or ctx.dtype_of(scales) != dt:
            return "MatMulNBits B must be uint8 and scales of A's type"
        zero, bias = _optional(node, 3), _optional(node, 5)
        if zero and ctx.dtype_of(zero) not in ("uint8", dt):
            return f"MatMulNBits zero points of {ctx.dtype_of(zero)}"
        if bias and ctx.dtype_of(bias) != dt:
            return "MatMulNBits bias not of A's type"
        if not ctx.rank_of(a):
            return f"MatMulNBits of a 0-d or unknown-rank A ('{a}')"
        shape = ctx.shape_of(a)
        if isinstance(shape[-1], int) and shape[-1] != k:
            return f"MatMulNBits A's last dim {shape[-1]} is not K={k}"
        return None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        k, n, bits, block = _attrs(node)
        blocks = -(-k // block)
        a, b, scales = node.inputs[:3]
        zero, bias = _optional(node, 3), _optional(node, 5)
        dt = ctx.dtype_of(a)
        zero_kind = None if zero is None else \
            "packed" if ctx.dtype_of(zero) == "uint8" else "float"
        ep = Epilogue(["scales"] + (["zeros"] if zero else []) + (["bias"] if bias else []))
        if bias:
            ep.lines.append("acc = acc + tl.load(bias + cols, mask=cols < N, other=0)"
                            ".to(tl.float32)")
            ep.text.append("+ bias")
        batch_rank = max(ctx.rank_of(a), 2) - 2
        ir_text = (f"kernel {name} MatMulNBits node={node.name!r}\n"
                   f"A: {a} {dt} x B: {b} ({bits}-bit, blocks of {block} along K={k}, "
                   f"N={n}, zero points {zero_kind or 'default'}) -> {node.outputs[0]} {dt}\n"
                   f"B dequantized in its load; tl.dot in float32"
                   + (f"; epilogue: {' '.join(ep.text)}" if ep.text else ""))
        own = [scales] + [v for v in (zero, bias) if v]
        row_bytes = blocks * block * bits // 8
        return _built(name, node, ctx, ir_text, batch_rank, dt, ep,
                      lambda fn, out_dt, fused: NBitsLauncher(
                          MatMulLauncher(fn, batch_rank, out_dt, ctx, fused), k, n, row_bytes,
                          len(own)),
                      [a, b] + own, fusion, dt, "tl.float32",
                      b_load=b_load_lines(bits, block, blocks, zero_kind))
