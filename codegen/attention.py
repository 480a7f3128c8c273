"""Attention templates: one flash-attention kernel for tritort's fused op and ai.onnx Attention.

``Y = softmax(scale * (Q @ K^T) [softcapped] + mask, axis=-1) @ V``, never materializing the
scores: a program owns BLOCK_M query rows of one (batch, head) and walks the keys BLOCK_N at
a time, keeping a running row max ``m``, a running sum ``l`` of ``exp(s - m)`` and the
unnormalized output in fp32 (fp64 for double). When the max grows, both are rescaled by
``exp(m_old - m_new)``; the output is divided by ``l`` once at the end and rounded once on
store. A row that is all -inf shifts by 0 instead of its max (``-inf - -inf`` is NaN).

Everything is read through strides: tritort's fused op hands K already transposed (KT
[B, Hk, D, Sk]), which becomes a K [B, Hk, Sk, D] view with swapped strides; 3-D Attention
inputs [B, S, H*D] become [B, H, S, D] views; masks broadcast through zero strides. Grouped
query heads read kv head ``h // (H // Hk)``. Causal attention (query i sees keys j <= i:
upper-left, as ai.onnx Attention without a cache) and sliding windows stop the key loop at
the last block a row can see, and start it at the first.

Rows with no visible key: tritort's fused op gives NaN, as the unfused MatMul/Softmax graph
does in onnxruntime; ai.onnx Attention gives zeros, as its spec says.

Block sizes: the tuning database's config for the launch's kernel and shape key, else
:func:`tritort.codegen.attention_configs.pick_config`'s size heuristic; the tuner's candidates and
pruning rules are :data:`tritort.codegen.attention_configs.TUNING`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tritort import dtypes
from tritort.contracts import INTERNAL_DOMAIN
from tritort.contracts import attention_shapes

from .launch import launch_kernel
from .attention_configs import (_MIN_BLOCK, TUNING, AttentionConfig, kernel_key, pick_config,
                                problem_of)
from .cache import KERNEL
from .emit import compute_type, helper_source, store
from .rowwise import check_dtypes, torch_dtype
from .templates import KernelSpec, Template, kernel_signature, load_source, template
from .tuning import choose

MASK_TYPES = dtypes.FLOAT_TYPES | {"bool"}

# ------------------------------------------------------------------ kernel source


@dataclass(frozen=True)
class Variant:
    """What one kernel is specialized on (everything else is a runtime argument)."""

    dtype: str  # of Q, K, V and Y
    mask: str | None  # None, "additive" or "bool"
    causal: bool
    left: int = -1  # sliding window: keys i - left .. i + right (-1: unbounded)
    right: int = -1
    softcap: float = 0.0
    empty_rows: str = "nan"  # what a row with no visible key gives: "nan" or "zero"
    precision: str = "ieee"  # a float32 dot's input_precision ("tf32": the use_tf32 option)

    def text(self) -> str:
        parts = [f"{self.dtype}", f"mask={self.mask or 'none'}", f"causal={int(self.causal)}"]
        if self.left >= 0 or self.right >= 0:
            parts.append(f"window=({self.left}, {self.right})")
        if self.softcap > 0:
            parts.append(f"softcap={self.softcap!r}")
        parts.append(f"rows with no visible key -> {self.empty_rows}")
        return ", ".join(parts)


def _dot(a: str, b: str, acc: str, dtype: str, precision: str = "ieee") -> str:
    if dtype in ("float", "double"):  # ieee: float32 results match onnxruntime's CPU ones
        mode = precision if dtype == "float" else "ieee"
        return f'tl.dot({a}, {b}, {acc}, input_precision="{mode}")'
    return f"tl.dot({a}, {b}, {acc})"


def _operand(var: str, dtype: str, interpreted: bool) -> list[str]:
    """bf16 in the interpreter: upcast before tl.dot (it would multiply the bit patterns as
    integers); bf16 products are exact in fp32, so this is what a bf16 MMA computes."""
    if dtype == "bfloat16" and interpreted:
        return [f"{var} = {var}.to(tl.float32)"]
    return []


@dataclass(frozen=True)
class Hooks:
    """What a template built on this kernel adds to it (:mod:`.attention_contrib`): runtime
    ``params`` (after the mask's), ``setup`` lines once per program (``b``, ``h``, ``hk``
    known; with ``offset`` they define ``q_off``, the position of query row 0, and
    ``kv_len``, the keys this program may read, in place of 0 and ``Sk``), lines after the
    ``q_tile``, ``k_tile`` ([D, N]) and ``v_tile`` loads, after the running max / sum are
    initialized (``init``), and on the scores ``s`` / ``visible`` of each key block."""

    params: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    offset: bool = False
    q_tile: tuple[str, ...] = ()
    k_tile: tuple[str, ...] = ()
    v_tile: tuple[str, ...] = ()
    init: tuple[str, ...] = ()
    scores: tuple[str, ...] = ()


def _key_range(v: Variant, offset: bool = False) -> list[str]:
    """``lo``/``hi``: the keys any row of this block may see (causal / window bounds)."""
    lines = ["lo = 0", f"hi = {'kv_len' if offset else 'Sk'}"]
    end = "(pid_m + 1) * BLOCK_M" + (" + q_off" if offset else "")  # one past the last row
    if v.causal:
        lines.append(f"hi = tl.minimum(hi, {end})")
    if v.right >= 0:
        lines.append(f"hi = tl.minimum(hi, {end} + {v.right})")
    if v.left >= 0:  # block-aligned start: loads stay aligned
        first = "pid_m * BLOCK_M" + (" + q_off" if offset else "")
        lines += [f"lo = tl.maximum({first} - {v.left}, 0)",
                  "lo = (lo // BLOCK_N) * BLOCK_N"]
    return lines


def _visible(v: Variant, offset: bool = False) -> list[str]:
    """``visible`` [BLOCK_M, BLOCK_N]: which keys of the current block each row may see."""
    pos = "q_pos" if offset else "offs_m"
    lines = ["visible = in_n[None, :] & in_m[:, None]"]
    if v.causal:
        lines.append(f"visible = visible & (cols[None, :] <= {pos}[:, None])")
    if v.left >= 0 or v.right >= 0:
        lines.append(f"behind = {pos}[:, None] - cols[None, :]")
        if v.left >= 0:
            lines.append(f"visible = visible & (behind <= {v.left})")
        if v.right >= 0:
            lines.append(f"visible = visible & (behind >= {-v.right})")
    return lines


def attention_source(name: str, header: Sequence[str], v: Variant, interpreted: bool,
                     hooks: Hooks | None = None) -> str:
    ct = compute_type(v.dtype)
    hooks = hooks or Hooks()
    offset = hooks.offset
    params = ["q", "k", "vals", "y"] + (["mask"] if v.mask else []) + [
        "Sq", "Sk", "H", "G", "D", "DV", "scale", *(["scale_lo"] if v.dtype == "double" else []),
        "sqb", "sqh", "sqm", "sqd", "skb", "skh", "skn", "skd",
        "svb", "svh", "svn", "svd", "syb", "syh", "sym", "syd"]
    if v.mask:
        params += ["mask_len", "smb", "smh", "smm", "smn"]
    params += [*hooks.params, "BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr",
               "BLOCK_D: tl.constexpr", "BLOCK_DV: tl.constexpr"]
    body = [
        "pid_m = tl.program_id(0)",
        "bh = tl.program_id(1)",
        "# int64 offsets: batch and head strides may span more than 2**31 elements",
        "b = (bh // H).to(tl.int64)",
        "h = bh % H",
        "hk = (h // G).to(tl.int64)  # grouped query heads share kv head h // G",
        "h = h.to(tl.int64)",
        *hooks.setup,
        "offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
        *(["q_pos = offs_m + q_off"] if offset else []),
        "offs_d = tl.arange(0, BLOCK_D)",
        "offs_dv = tl.arange(0, BLOCK_DV)",
        "in_m = offs_m < Sq",
        "in_d = offs_d < D",
        "in_dv = offs_dv < DV",
        "rows = offs_m.to(tl.int64)",
        "q_tile = tl.load(q + (b * sqb + h * sqh + rows[:, None] * sqm + offs_d[None, :] * sqd),",
        "                 mask=in_m[:, None] & in_d[None, :], other=0.0)",
        *hooks.q_tile,
        *_operand("q_tile", v.dtype, interpreted),
        "k_head = k + (b * skb + hk * skh)",
        "v_head = vals + (b * svb + hk * svh)",
    ]
    if v.mask:
        body.append("mask_rows = mask + (b * smb + h * smh + rows[:, None] * smm)")
    body += [
        f"m_i = tl.full([BLOCK_M], float('-inf'), {ct})",
        f"l_i = tl.zeros([BLOCK_M], dtype={ct})",
        f"acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype={ct})",
        *hooks.init,
        *_key_range(v, offset),
        "for start in range(lo, hi, BLOCK_N):",
    ]
    loop = [
        "cols = start + tl.arange(0, BLOCK_N)",
        f"in_n = cols < {'kv_len' if offset else 'Sk'}",
        "keys = cols.to(tl.int64)",
        "k_tile = tl.load(k_head + (keys[None, :] * skn + offs_d[:, None] * skd),",
        "                 mask=in_d[:, None] & in_n[None, :], other=0.0)",
        *hooks.k_tile,
        *_operand("k_tile", v.dtype, interpreted),
        f"s = {_dot('q_tile', 'k_tile', f'tl.zeros([BLOCK_M, BLOCK_N], dtype={ct})', v.dtype, v.precision)}",
    ]
    # float arguments arrive as fp32: double takes the scale as two fp32 halves
    loop.append("s = s * scale + s * scale_lo" if v.dtype == "double" else "s = s * scale")
    if v.softcap > 0:  # tanh(x) = 2 * sigmoid(2x) - 1
        loop.append(f"s = {v.softcap!r} * (2.0 * tl.sigmoid(s * {2.0 / v.softcap!r}) - 1.0)")
    loop += _visible(v, offset)
    if v.mask:
        # keys past the mask's length are masked out (ai.onnx Attention pads short masks)
        load = ("tl.load(mask_rows + keys[None, :] * smn, "
                "mask=visible & (cols[None, :] < mask_len), other=0)")
        if v.mask == "bool":
            loop += [f"visible = visible & ({load} != 0)"]
        else:
            loop += [f"s = s + {load}.to({ct})",
                     "visible = visible & (cols[None, :] < mask_len)"]
    loop += list(hooks.scores)
    loop += [
        "s = tl.where(visible, s, float('-inf'))",
        "m_new = tl.maximum(m_i, tl.max(s, axis=1))",
        "# a row with nothing visible yet shifts by 0: -inf - -inf would be NaN",
        "shift = tl.where(m_new == float('-inf'), 0.0, m_new)",
        "alpha = tl.exp(m_i - shift)",
        "p = tl.exp(s - shift[:, None])",
        "l_i = l_i * alpha + tl.sum(p, axis=1)",
        "v_tile = tl.load(v_head + (keys[:, None] * svn + offs_dv[None, :] * svd),",
        "                 mask=in_n[:, None] & in_dv[None, :], other=0.0)",
        *hooks.v_tile,
    ]
    if v.dtype == "float16" or (v.dtype == "bfloat16" and not interpreted):
        loop.append("p = p.to(v_tile.dtype)  # the tensor-core product takes both in 16 bits")
    loop += [*_operand("v_tile", v.dtype, interpreted),
             f"acc = {_dot('p', 'v_tile', 'acc * alpha[:, None]', v.dtype, v.precision)}",
             "m_i = m_new"]
    body += ["    " + line for line in loop]
    if v.empty_rows == "zero":
        body.append("l_i = tl.where(l_i == 0.0, 1.0, l_i)  # no visible key: zeros")
    else:
        body.append("l_i = tl.where(in_m, l_i, 1.0)  # no visible key: 0 / 0, NaN")
    body.append("out = acc / l_i[:, None]")
    body += [
        "y_ptrs = y + (b * syb + h * syh + rows[:, None] * sym + offs_dv[None, :] * syd)",
        store("y_ptrs", "out", v.dtype, "in_m[:, None] & in_dv[None, :]"),
    ]
    lines = ["# tritort attention kernel", *[f"# {h}" for h in header],
             "import triton", "import triton.language as tl"]
    helpers = helper_source("\n".join(body))
    if helpers:
        lines.append(helpers.rstrip("\n"))
    lines += ["", "", "@triton.jit", *kernel_signature(name, params), *["    " + b for b in body]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ launching


@dataclass(frozen=True)
class Kernel:
    """A compiled attention kernel and what it is specialized on (its tuning key reads it)."""

    fn: Any  # the @triton.jit function
    variant: Variant


def _block(n: int) -> int:
    return max(_MIN_BLOCK, 1 << max(n - 1, 0).bit_length())


def launch(kernel: Kernel, q: Any, k: Any, v: Any, y: Any, mask: Any, scale: float,
           interpreted: bool, table: Any, extra: tuple = ()) -> None:
    """``q`` [B, H, Sq, D], ``k`` [B, Hk, Sk, D], ``v`` [B, Hk, Sk, Dv], ``y`` [B, H, Sq, Dv]
    and ``mask`` [B, H, Sq, mask_len] (or None): torch views, any strides; ``extra``: the
    values of the kernel's :class:`Hooks` params. The config: ``table``'s (a
    codegen.tuning.TuningTable, or None) for this kernel key and shape, else the
    heuristic's."""
    b, h, sq, d = q.shape
    sk, dv = k.shape[2], v.shape[3]
    if y.numel() == 0:
        return
    block_d, block_dv = _block(d), _block(dv)
    head_block = max(block_d, block_dv)
    itemsize = q.element_size()
    problem = problem_of(b * h, sq, sk, block_d, block_dv, itemsize)
    var = kernel.variant
    key = kernel_key(str(q.dtype).removeprefix("torch."), head_block, var.causal,
                     var.left >= 0 or var.right >= 0, var.mask)
    args = (q, k, v, y) + (() if mask is None else (mask,))
    cfg = choose(table, TUNING, key, problem,
                 lambda: pick_config(sq, sk, b * h, head_block, itemsize, interpreted,
                                     itemsize == 4 and var.precision == "ieee"),
                 args, functools.partial(_run, kernel.fn, scale=scale, extra=extra))
    _run(kernel.fn, cfg, *args, scale=scale, extra=extra)


def _run(fn: Any, cfg: AttentionConfig, q: Any, k: Any, v: Any, y: Any, *mask: Any,
         scale: float, extra: tuple = ()) -> None:
    """One launch with ``cfg`` (the tuner relaunches through here with other configs);
    ``mask``: empty or the one mask view."""
    b, h, sq, d = q.shape
    hk, sk, dv = k.shape[1], k.shape[2], v.shape[3]
    mask_args = (mask[0].shape[3], *mask[0].stride()) if mask else ()
    scales = (scale,)
    if q.element_size() == 8:  # double: fp32 high part + the rest, ~48 bits together
        high = float(np.float32(scale))
        scales = (high, float(np.float32(scale - high)))
    grid = (math.ceil(sq / cfg.block_m), b * h)
    launch_kernel(fn, grid, q, k, v, y, *mask, sq, sk, h, h // hk, d, dv, *scales, *q.stride(),
           *k.stride(), *v.stride(), *y.stride(), *mask_args, *extra, BLOCK_M=cfg.block_m,
           BLOCK_N=cfg.block_n, BLOCK_D=_block(d), BLOCK_DV=_block(dv),
           num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _check_heads(op: str, q, k, v) -> None:
    b, h, _, d = q.shape
    if k.shape[0] != b or v.shape[0] != b or k.shape[3] != d or k.shape[1] == 0 or \
            h % k.shape[1] or tuple(v.shape[1:3]) != tuple(k.shape[1:3]):
        raise ValueError(f"{op}: key {list(k.shape)} / value {list(v.shape)} (as [B, Hk, S, D]) "
                         f"do not fit the query {list(q.shape)} (as [B, H, S, D], H a multiple "
                         f"of Hk)")


def _mask_view(op: str, mask, shape: Sequence[int]):
    """``mask`` broadcast to ``shape`` (numpy rules, zero strides), or a clear error."""
    full = (1,) * (4 - mask.dim()) + tuple(mask.shape)
    try:
        return mask.reshape(full).expand(*shape)
    except RuntimeError:
        raise ValueError(f"{op}: mask {list(mask.shape)} does not broadcast to "
                         f"{list(shape)}") from None


class SdpaLauncher:
    """tritort's ScaledDotProductAttention: Q [B, H, Sq, D], KT [B, Hk, D, Sk],
    V [B, Hk, Sk, Dv] (size-1 batch / head dims broadcast), mask broadcastable to
    [B, H, Sq, Sk]."""

    op = "ScaledDotProductAttention"

    def __init__(self, kernel: Kernel, dtype: str, scale: float, ctx, rope=None):
        self.kernel, self.dtype, self.scale, self.rope = kernel, torch_dtype(dtype), scale, rope
        self.device, self.interpreted, self.table = ctx.torch_device, ctx.interpreted, \
            ctx.tuning

    def __call__(self, q, kt, v, mask=None, *rope_values) -> tuple:
        import torch

        if q.dim() != 4 or kt.dim() != 4 or v.dim() != 4:
            raise ValueError(f"{self.op}: Q, KT and V must be 4-D, got ranks {q.dim()}, "
                             f"{kt.dim()}, {v.dim()}")
        fit = attention_shapes(tuple(q.shape), tuple(kt.shape), tuple(v.shape))
        if fit is None:
            raise ValueError(f"{self.op}: Q {list(q.shape)}, KT {list(kt.shape)} and V "
                             f"{list(v.shape)} do not fit [B, H, Sq, D], [B, Hk, D, Sk] and "
                             f"[B, Hk, Sk, Dv] (H a multiple of Hk; size-1 batch and head "
                             f"dims broadcast)")
        b, h, hk = fit
        sq, d, sk, dv = q.shape[2], q.shape[3], kt.shape[3], v.shape[3]
        if sk == 0 or hk == 0:  # empty rows times an empty V: zeros, as the unfused graph
            return (torch.zeros((b, h, sq, dv), dtype=self.dtype, device=self.device),)
        extra = ()
        if self.rope is not None:  # a RotaryEmbedding's (B or 1, H or 1, Sq, D) on Q tiles
            from .attention_rotary import side_args

            extra = side_args(self.rope, rope_values, q.shape[0], sq, d,
                              batch_broadcast=q.shape[0] != b)
        # views only: KT read through swapped strides, size-1 dims through zero strides
        q = q.expand(b, h, sq, d)
        k = kt.transpose(2, 3).expand(b, hk, sk, d)
        v = v.expand(b, hk, sk, dv)
        # [B, H, Sq, Dv] laid out as [B, Sq, H, Dv]: the heads are merged next (a Transpose
        # then a Reshape to [B, Sq, H*Dv] in every transformer export), which is then a view
        y = torch.empty((b, sq, h, dv), dtype=self.dtype, device=self.device).transpose(1, 2)
        if mask is not None:
            mask = _mask_view(self.op, mask, (b, h, sq, sk))
        launch(self.kernel, q, k, v, y, mask, self.scale, self.interpreted, self.table, extra)
        return (y,)


def _heads_view(x, heads: int, op: str, what: str):
    """[B, S, heads * D] -> a [B, heads, S, D] view (a copy only if the strides forbid it)."""
    b, s, hidden = x.shape
    if heads <= 0 or hidden % heads:
        raise ValueError(f"{op}: {what} hidden size {hidden} is not a multiple of its "
                         f"{heads} heads")
    return x.reshape(b, s, heads, hidden // heads).permute(0, 2, 1, 3)


class AttentionLauncher:
    """ai.onnx Attention without a KV cache: 4-D inputs, or 3-D with q/kv_num_heads."""

    op = "Attention"

    def __init__(self, kernel: Kernel, dtype: str, scale: float | None, q_heads: int | None,
                 kv_heads: int | None, ctx):
        self.kernel, self.dtype, self.np_dtype = kernel, torch_dtype(dtype), dtype
        self.scale, self.q_heads, self.kv_heads = scale, q_heads, kv_heads
        self.device, self.interpreted, self.table = ctx.torch_device, ctx.interpreted, \
            ctx.tuning

    def _scale(self, head_dim: int) -> float:
        """The spec scales Q and K each by sqrt(scale) rounded to their type: the product of
        the two rounded factors, so low-precision results match the reference's."""
        scale = self.scale if self.scale is not None else 1 / math.sqrt(max(head_dim, 1))
        root = float(np.asarray(math.sqrt(scale), dtype=dtypes.BY_NAME[self.np_dtype].numpy))
        return root * root

    def __call__(self, q, k, v, mask=None) -> tuple:
        import torch

        three_d = q.dim() == 3
        if three_d:
            b, sq = q.shape[:2]
            q = _heads_view(q, self.q_heads, self.op, "Q")
            k = _heads_view(k, self.kv_heads, self.op, "K")
            v = _heads_view(v, self.kv_heads, self.op, "V")
        _check_heads(self.op, q, k, v)
        b, h, sq, d = q.shape
        sk, dv = k.shape[2], v.shape[3]
        if three_d:  # [B, Sq, H * Dv] written through a [B, H, Sq, Dv] view
            out = torch.empty((b, sq, h * dv), dtype=self.dtype, device=self.device)
            y = out.view(b, sq, h, dv).permute(0, 2, 1, 3)
        else:
            out = y = torch.empty((b, h, sq, dv), dtype=self.dtype, device=self.device)
        if mask is not None:
            mask_len = mask.shape[-1] if mask.dim() else 1
            if mask_len > sk:
                raise ValueError(f"{self.op}: attn_mask covers {mask_len} keys, more than the "
                                 f"{sk} keys given")
            mask = _mask_view(self.op, mask, (b, h, sq, mask_len))
        launch(self.kernel, q, k, v, y, mask, self._scale(d), self.interpreted, self.table)
        return (out,)


# ------------------------------------------------------------------ templates


def _same_dtype_reason(ctx, values: Sequence[str], op: str) -> str | None:
    kinds = {ctx.dtype_of(v) for v in values}
    return None if len(kinds) == 1 else f"{op}: Q, K and V differ in element type {sorted(kinds)}"


def _mask_rank_reason(ctx, mask: str) -> str | None:
    rank = ctx.rank_of(mask)
    if rank is None:
        return f"rank of '{mask}' unknown at load time"
    return None if 1 <= rank <= 4 else f"mask '{mask}' has rank {rank} (1 to 4 handled)"


def _built(name, node, ctx, variant: Variant, ir_text: str, launcher_for,
           inputs, hooks: Hooks | None = None) -> KernelSpec:
    header = [f"ONNX node: {node.name} ({node.op_type})", *ir_text.splitlines()[1:]]
    source = attention_source(KERNEL, header, variant, ctx.interpreted, hooks)
    fn, path, cached = load_source(source, KERNEL, ctx)
    return KernelSpec(name, launcher_for(Kernel(fn, variant)), inputs, ir_text, source, path,
                      cached)


def _optional(values: Sequence[str], index: int) -> str:
    return values[index] if len(values) > index else ""


@template("ScaledDotProductAttention")
class ScaledDotProductAttention(Template):
    kind = "attention"
    operand_prologues = True  # a RotaryEmbedding on Q (KT reaches it through a Transpose)
    operand_inputs = (0,)

    def takes_operand(self, producer, ctx, node, index, made_by) -> bool:
        from .attention_rotary import takes_rotary

        shape = ctx.shape_of(node.inputs[0])
        return shape is not None and takes_rotary(producer, ctx, shape[1], (4,))

    def claim(self, node, ctx) -> str | None:
        if node.domain != INTERNAL_DOMAIN:
            return f"no Triton template for {node.op_type} in domain '{node.domain}'"
        q, kt, v = node.inputs[:3]
        for value in (q, kt, v):
            rank = ctx.rank_of(value)
            if rank != 4:
                return f"rank of '{value}' unknown at load time" if rank is None else \
                    f"'{value}' has rank {rank}, not 4"
        why = check_dtypes(ctx, [q, kt, v], dtypes.FLOAT_TYPES, node.op_type) or \
            _same_dtype_reason(ctx, [q, kt, v], node.op_type)
        mask = _optional(node.inputs, 3)
        if why or not mask:
            return why
        return _mask_rank_reason(ctx, mask) or \
            check_dtypes(ctx, [mask], dtypes.FLOAT_TYPES, node.op_type + " mask")

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        q, kt, v = node.inputs[:3]
        mask = _optional(node.inputs, 3)
        dt = ctx.dtype_of(q)
        scale = float(node.attrs.get("scale", 1.0))
        variant = Variant(dt, "additive" if mask else None,
                          bool(node.attrs.get("is_causal", 0)), empty_rows="nan",
                          precision=ctx.dot_precision(dt) or "ieee")
        from . import attention_rotary

        rope, _ = attention_rotary.ropes(fusion)
        hooks = None if rope is None else Hooks(
            tuple(attention_rotary.params("qr_", rope)),
            q_tile=tuple(attention_rotary.q_tile_lines(rope, dt)))
        ir_text = (f"kernel {name} ScaledDotProductAttention node={node.name!r}\n"
                   f"Q: {q}{f' (rotated on its tiles as {rope.text()})' if rope else ''} x "
                   f"KT: {kt} (read as K through swapped strides) x V: {v}"
                   f"{f' + mask: {mask}' if mask else ''} -> {node.outputs[0]}\n"
                   f"flash attention, online softmax in {compute_type(dt)}; scale={scale!r}; "
                   f"{variant.text()}")
        inputs = [q, kt, v] + ([mask] if mask else [])
        if rope is not None:  # the rotary node's input and tensors in place of its output
            inputs = [rope.source, kt, v, mask] + rope.inputs
        return _built(name, node, ctx, variant, ir_text,
                      lambda kernel: SdpaLauncher(kernel, dt, scale, ctx, rope), inputs, hooks)


@template("Attention")
class Attention(Template):
    kind = "attention"

    def claim(self, node, ctx) -> str | None:
        if node.domain != "":
            return f"no Triton template for {node.op_type} in domain '{node.domain}'"
        for index, what in ((4, "past_key"), (5, "past_value")):
            if _optional(node.inputs, index):
                return f"{what} input (KV cache concatenation) runs on the CPU"
        if _optional(node.inputs, 6):
            return "nonpad_kv_seqlen input (external KV cache) runs on the CPU"
        for index, what in ((1, "present_key"), (2, "present_value"), (3, "qk_matmul_output")):
            if _optional(node.outputs, index):
                return f"{what} output runs on the CPU"
        q, k, v = node.inputs[:3]
        ranks = {ctx.rank_of(x) for x in (q, k, v)}
        if None in ranks:
            return "rank of Q, K or V unknown at load time"
        if len(ranks) != 1 or ranks.pop() not in (3, 4):
            return f"Q, K, V ranks {[ctx.rank_of(x) for x in (q, k, v)]} (3-D or 4-D alike)"
        if ctx.rank_of(q) == 3 and (not node.attrs.get("q_num_heads")
                                    or not node.attrs.get("kv_num_heads")):
            return "3-D inputs without q_num_heads / kv_num_heads"
        why = check_dtypes(ctx, [q, k, v], dtypes.FLOAT_TYPES, node.op_type) or \
            _same_dtype_reason(ctx, [q, k, v], node.op_type)
        if why:
            return why
        mask = _optional(node.inputs, 3)
        if not mask:
            return None
        return _mask_rank_reason(ctx, mask) or \
            check_dtypes(ctx, [mask], MASK_TYPES, node.op_type + " attn_mask")

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        q, k, v = node.inputs[:3]
        mask = _optional(node.inputs, 3)
        dt = ctx.dtype_of(q)
        attrs = node.attrs
        mask_kind = None
        if mask:
            mask_kind = "bool" if ctx.dtype_of(mask) == "bool" else "additive"
        # softmax_precision asks for at least that precision; the kernel's fp32 (fp64 for
        # double) softmax gives it for every float type the attribute may name
        variant = Variant(dt, mask_kind, bool(attrs.get("is_causal", 0)),
                          int(attrs.get("left_window_size", -1)),
                          int(attrs.get("right_window_size", -1)),
                          float(attrs.get("softcap", 0.0)), empty_rows="zero",
                          precision=ctx.dot_precision(dt) or "ieee")
        scale = attrs.get("scale")
        scale = None if scale is None else float(scale)
        three_d = ctx.rank_of(q) == 3
        q_heads = attrs.get("q_num_heads") if three_d else None
        kv_heads = attrs.get("kv_num_heads") if three_d else None
        layout = f"3-D, {q_heads} / {kv_heads} heads" if three_d else "4-D"
        ir_text = (f"kernel {name} Attention node={node.name!r}\n"
                   f"Q: {q} x K: {k} x V: {v}{f' + attn_mask: {mask}' if mask else ''} -> "
                   f"{node.outputs[0]} ({layout})\n"
                   f"flash attention, online softmax in {compute_type(dt)}; "
                   f"scale={'1/sqrt(D)' if scale is None else repr(scale)}; {variant.text()}")
        return _built(name, node, ctx, variant, ir_text,
                      lambda kernel: AttentionLauncher(kernel, dt, scale, q_heads, kv_heads, ctx),
                      [q, k, v] + ([mask] if mask else []))


# com.microsoft MultiHeadAttention / GroupQueryAttention: templates on this kernel's hooks
from . import attention_contrib  # noqa: E402,F401
