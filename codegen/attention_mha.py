"""onnxruntime's com.microsoft MultiHeadAttention on the flash kernel (see
:mod:`.attention_contrib` for the shared KV-append kernel and the semantics).

One flash launch; where the node has a past or present K/V, the append kernel first writes
present = past + the new rows (bias added) and the flash launch reads it. Without a cache,
K and V are read where they are, their bias added on each loaded tile. The query's bias is
added on its tile; key_padding_mask adds ``mask_filter_value`` at masked keys (a row whose
keys are all masked still averages V, as onnxruntime does), attention_bias is the kernel's
additive mask; unidirectional rows see keys ``j <= past + s``.

With past_sequence_length, past_key/past_value are one shared (B, N, M, H) buffer: the append
writes the new rows at that offset, read on the device (no host sync, so a bound plan replays
the step), and present is the whole buffer, as onnxruntime's kernels return it; the flash
launch reads keys ``j < past + L`` of it. Rows past M are dropped there, where the NumPy
kernel raises (the offset is never read on the host). cache_indirection (beam search, on a
shared buffer): in a one-token step, query row ``b * beam + j`` reads cached key ``t < past``
from row ``b * beam + cache_indirection[b, j, t]`` (the flash launch's K/V tiles load
through it; present keeps each row's own cache, as onnxruntime's does); beam indices are
clamped to [0, beam) where the NumPy kernel raises.
"""
from __future__ import annotations

import math

from . import attention as flash
from . import attention_rotary as rope_lines
from .attention_contrib import (FLOATS, MASK_FILTER, _append_kernel, _bias_hook,
                                _flash_kernel, _heads, _input, _output, _outputs_typed, _scale)
from .emit import compute_type
from .keys import contrib
from .rowwise import check_dtypes, torch_dtype
from .templates import KernelSpec, Template, template

_MASK_INTS = ("int32", "int64")


def _padding_hooks(rank: int, filter_value: float) -> tuple[list, list, list]:
    """(params, setup, score lines) of key_padding_mask: (B) key lengths (also the first B
    entries of the (3B + 2) form) or (2B) ends then starts, (B, T), or (B, S, T); masked keys
    get ``filter_value`` added."""
    if rank == 1:
        params = ["kpm", "kp_two"]
        setup = ["kp_end = tl.load(kpm + b)",
                 "kp_start = tl.load(kpm + (kp_two + b), mask=kp_two > 0, other=0)"]
        allowed = ["allowed = (cols[None, :] < kp_end) & (cols[None, :] >= kp_start)"]
    elif rank == 2:
        # kp_len: the mask's width (a shared buffer's T is known on the device only); keys it
        # does not cover are masked, keys past kv_len are not visible anyway
        params, setup = ["kpm", "kp_len", "kp_sb", "kp_sk"], []
        allowed = ["allowed = tl.load(kpm + (b * kp_sb + keys[None, :] * kp_sk), "
                   "mask=in_n[None, :] & (cols[None, :] < kp_len), other=0) != 0"]
    else:
        params, setup = ["kpm", "kp_len", "kp_sb", "kp_sq", "kp_sk"], []
        allowed = ["allowed = tl.load(kpm + (b * kp_sb + rows[:, None] * kp_sq + "
                   "keys[None, :] * kp_sk), mask=in_m[:, None] & in_n[None, :] & "
                   "(cols[None, :] < kp_len), other=0) != 0"]
    return params, setup, allowed + [f"s = s + tl.where(allowed, 0.0, {filter_value!r})"]


def _padding_args(op: str, kpm, b: int, s: int, t: int, shared: bool) -> tuple:
    """The kernel's key_padding_mask arguments; ``t`` the keys (with ``shared`` the buffer's
    capacity, which the mask's T = past + L may not exceed)."""
    shape = tuple(kpm.shape)
    # (3B + 2): key lengths, then a packed batch's offsets, of which only the lengths count
    if kpm.dim() == 1 and shape[0] in (b, 2 * b, 3 * b + 2):
        return kpm, b if shape[0] == 2 * b else 0
    width = shape[-1]
    fits = width <= t if shared else width == t
    if fits and (kpm.dim() == 2 and shape[0] == b or kpm.dim() == 3 and shape[:2] == (b, s)):
        return (kpm, width, *kpm.stride())
    raise ValueError(f"{op}: key_padding_mask of shape {list(shape)} fits none of the forms "
                     f"(B={b}), (2B), (3B + 2), (B, T{' <= ' if shared else '='}{t}), "
                     f"(B, S={s}, T)")


def _beam_hooks() -> tuple[list, list, list, list]:
    """(params, setup, K-tile lines, V-tile lines) of cache_indirection: the tiles load again
    from each key's source row (the first loads are dead code for the compiler)."""
    params = ["ci", "ci_beam", "ci_b", "ci_j", "ci_t", "ci_len"]
    setup = ["beam_j = b % ci_beam", "ci_row = ci + ((b // ci_beam) * ci_b + beam_j * ci_j)"]
    k_lines = ["gathered = in_n & (cols < q_off) & (cols < ci_len)",
               "src_beam = tl.load(ci_row + keys * ci_t, mask=gathered, other=0)",
               "src_beam = tl.minimum(tl.maximum(src_beam, 0), ci_beam - 1)",
               "src_b = tl.where(gathered, b - beam_j + src_beam, b)",
               "k_tile = tl.load(k + (src_b[None, :] * skb + hk * skh + keys[None, :] * skn + "
               "offs_d[:, None] * skd), mask=in_d[:, None] & in_n[None, :], other=0.0)"]
    v_lines = ["v_tile = tl.load(vals + (src_b[:, None] * svb + hk * svh + keys[:, None] * svn "
               "+ offs_dv[None, :] * svd), mask=in_n[:, None] & in_dv[None, :], other=0.0)"]
    return params, setup, k_lines, v_lines


def _beam_args(op: str, ci, b: int, s: int) -> tuple:
    """The kernel's cache_indirection arguments; ``ci_len`` 0 (nothing gathered) unless the
    step has one query token."""
    if ci.dim() != 3 or ci.shape[0] * ci.shape[1] != b:
        raise ValueError(f"{op}: cache_indirection must be (batch, beam_width, "
                         f"max_sequence_length) with batch * beam_width = {b} query rows, got "
                         f"{list(ci.shape)}")
    return (ci, ci.shape[1], *ci.stride(), ci.shape[2] if s == 1 else 0)


def _bias_mask(op: str, bias, b: int, n: int, s: int, t: int, shared: bool):
    """attention_bias broadcast to (B, N, S, T) through zero strides; with ``shared`` T is
    the bias's own width (past + L, known on the device only), at most the capacity ``t``."""
    width = bias.shape[-1]
    if width not in (1, t) and not (shared and width < t):
        raise ValueError(f"{op}: attention_bias {list(bias.shape)} does not broadcast to "
                         f"{[b, n, s, t]}")
    return flash._mask_view(op, bias, (b, n, s, t if width == 1 else width))


class MhaLauncher:
    op = "MultiHeadAttention"

    def __init__(self, kernel, append, dtype: str, heads: int, scale, kv_bias_in_flash: bool,
                 kv_bias_in_append: bool, causal_past: bool, shared: bool, wants: tuple, ctx,
                 ropes: tuple = (None, None)):
        self.kernel, self.append, self.dtype = kernel, append, torch_dtype(dtype)
        self.heads, self.scale = heads, scale
        self.kv_bias_in_flash, self.kv_bias_in_append = kv_bias_in_flash, kv_bias_in_append
        self.causal_past, self.shared, self.wants = causal_past, shared, wants
        self.ropes = ropes
        self.device, self.interpreted, self.table = ctx.torch_device, ctx.interpreted, \
            ctx.tuning

    def __call__(self, query, key=None, value=None, bias=None, kpm=None, attn_bias=None,
                 past_k=None, past_v=None, past_len=None, beams=None, *rope_values) -> tuple:
        import torch

        n, op = self.heads, self.op
        if query.dim() == 5:  # packed QKV (B, S, N, 3, H)
            q4, k4, v4 = query[:, :, :, 0], query[:, :, :, 1], query[:, :, :, 2]
        else:
            q4 = _heads(query, n, op, "query")
            if key.dim() == 5:  # packed KV (B, L, N, 2, H)
                k4, v4 = key[:, :, :, 0], key[:, :, :, 1]
            elif key.dim() == 4:  # in heads (B, N, L, H)
                k4, v4 = key.permute(0, 2, 1, 3), value.permute(0, 2, 1, 3)
            else:
                k4, v4 = _heads(key, n, op, "key"), _heads(value, n, op, "value")
        b, s, _, h = q4.shape
        length, hv = k4.shape[1], v4.shape[3]
        if q4.shape[2] != n or tuple(k4.shape) != (b, length, n, h) or \
                tuple(v4.shape[:3]) != (b, length, n):
            raise ValueError(f"{op}: query {list(query.shape)}, key "
                             f"{None if key is None else list(key.shape)} and value "
                             f"{None if value is None else list(value.shape)} do not fit "
                             f"{n} heads")
        extra: tuple = ()
        if bias is not None:
            d = n * h
            if bias.shape[0] != 2 * d + n * hv:
                raise ValueError(f"{op}: bias of {bias.shape[0]} entries, not "
                                 f"{2 * d + n * hv} (Q, K and V hidden sizes)")
            extra = (bias[:d],)
            kv_bias = (bias[d:2 * d], bias[2 * d:])
            if self.kv_bias_in_flash:
                extra += kv_bias
        past = None if past_k is None else (past_k, past_v)
        offsets = None
        if self.shared:  # one (B, N, M, H) buffer: present is all of it, M keys at most
            _check_buffer(op, past_k, past_v, b, n, h, hv)
            p, t = None, past_k.shape[2]
            offsets = past_len.reshape(-1)
        else:
            p = 0 if past is None else past_k.shape[2]
            t = p + length
        rope_q, rope_k = self.ropes  # RotaryEmbedding nodes on the query and the key
        k_rope = rope_lines.side_args(rope_k, rope_values[3:], b, length, h)
        if self.append is not None:
            kf, vf = self.append(k4, v4, past, t, offsets,
                                 bias=kv_bias if self.kv_bias_in_append else None,
                                 rotary=k_rope)
            k_rope = ()
        else:
            kf, vf = k4.permute(0, 2, 1, 3), v4.permute(0, 2, 1, 3)
        if kpm is not None:
            extra += _padding_args(op, kpm, b, s, t, self.shared)
        if self.shared:
            extra += (offsets, length)
            if beams is not None:
                extra += _beam_args(op, beams, b, s)
        elif self.causal_past:
            extra += (p,)
        extra += rope_lines.side_args(rope_q, rope_values[:3], b, s, h) + k_rope
        out = torch.empty((b, s, n * hv), dtype=self.dtype, device=self.device)
        y = out.view(b, s, n, hv).permute(0, 2, 1, 3)
        mask = None if attn_bias is None else _bias_mask(op, attn_bias, b, n, s, t,
                                                         self.shared)
        scale = self.scale if self.scale is not None else 1 / math.sqrt(h)
        flash.launch(self.kernel, q4.permute(0, 2, 1, 3), kf, vf, y, mask, scale,
                     self.interpreted, self.table, extra)
        present_k, present_v = self.wants
        return out, kf if present_k else None, vf if present_v else None


def _check_buffer(op: str, past_k, past_v, b: int, n: int, h: int, hv: int) -> None:
    m = past_k.shape[2] if past_k.dim() == 4 else None
    if tuple(past_k.shape) != (b, n, m, h) or tuple(past_v.shape) != (b, n, m, hv):
        raise ValueError(f"{op}: the shared past/present buffers {list(past_k.shape)} and "
                         f"{list(past_v.shape)} are not (B={b}, N={n}, M, H) alike")


def _shape_reason(node, ctx) -> str | None:
    query, key, value = node.inputs[0], _input(node, 1), _input(node, 2)
    rq = ctx.rank_of(query)
    if rq == 5:
        return "packed QKV query takes no key or value" if key or value else None
    if rq != 3:
        return f"query of rank {rq} (3-D, or packed QKV 5-D)"
    if not key:
        return "3-D query without key"
    rk, rv = ctx.rank_of(key), ctx.rank_of(value) if value else None
    if rk == 5:
        return "packed KV key takes no value" if value else None
    if rk not in (3, 4) or rv != rk:
        return f"key of rank {rk} with value of rank {rv} (3-D or 4-D alike, or packed KV)"
    if rk == 4 and _input(node, 6):
        return "past_key with key/value already in heads (B, N, L, H)"
    return None


@template(contrib("MultiHeadAttention"))
class MultiHeadAttention(Template):
    kind = "attention"
    operand_prologues = True  # RotaryEmbedding nodes on the query and the key
    operand_inputs = (0, 1)

    def takes_operand(self, producer, ctx, node, index, made_by) -> bool:
        if ctx.rank_of(node.inputs[0]) != 3:
            return False
        rank = ctx.rank_of(node.inputs[index])
        if index == 1 and (rank not in (3, 4) or not _input(node, 2)):
            return False  # packed KV
        return rope_lines.takes_rotary(producer, ctx, int(node.attrs["num_heads"]), (rank,))

    def claim(self, node, ctx) -> str | None:
        if _output(node, 3):
            return "the qk output runs on the CPU"
        if int(node.attrs.get("num_heads", 0)) <= 0:
            return "num_heads missing"
        why = _shape_reason(node, ctx)
        if why:
            return why
        past_k, past_v = _input(node, 6), _input(node, 7)
        if bool(past_k) != bool(past_v):
            return "past_key without past_value (or the reverse)"
        if past_k and (ctx.rank_of(past_k) != 4 or ctx.rank_of(past_v) != 4):
            return "past_key / past_value must be 4-D (B, N, P, H)"
        shared = _input(node, 8)
        if shared:
            if not past_k:
                return "past_sequence_length without past_key / past_value"
            why = check_dtypes(ctx, [shared], ("int32",), node.op_type +
                               " past_sequence_length")
            if why:
                return why
        beams = _input(node, 9)
        if beams:  # the NumPy kernel's errors for these
            if not shared:
                return "cache_indirection without past_sequence_length"
            if _input(node, 5):
                return "attention_bias with cache_indirection runs on the CPU"
            why = check_dtypes(ctx, [beams], ("int32",), node.op_type + " cache_indirection")
            if why:
                return why
        floats = [node.inputs[0], _input(node, 1), _input(node, 2), _input(node, 3), past_k,
                  past_v, _input(node, 5)]
        why = check_dtypes(ctx, floats, FLOATS, node.op_type)
        if why:
            return why
        if len({ctx.dtype_of(v) for v in floats if v}) != 1:
            return "query, key, value, bias, attention_bias and the past differ in element type"
        kpm = _input(node, 4)
        if kpm:
            why = check_dtypes(ctx, [kpm], _MASK_INTS, node.op_type + " key_padding_mask")
            if why:
                return why
            if ctx.rank_of(kpm) not in (1, 2, 3):
                return f"key_padding_mask of rank {ctx.rank_of(kpm)} ((B, 1, M, M) runs on " \
                       f"the CPU)"
        if _input(node, 5) and ctx.rank_of(_input(node, 5)) != 4:
            return "attention_bias must be 4-D"
        return _outputs_typed(node, ctx)

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        a = node.attrs
        dt = ctx.dtype_of(node.inputs[0])
        heads = int(a["num_heads"])
        causal = bool(a.get("unidirectional", 0))
        filter_value = float(a.get("mask_filter_value", MASK_FILTER))
        key = _input(node, 1)
        in_heads = bool(key) and ctx.rank_of(key) == 4
        bias, kpm, attn_bias = _input(node, 3), _input(node, 4), _input(node, 5)
        past = bool(_input(node, 6))
        shared = bool(_input(node, 8))
        wants = (bool(_output(node, 1)), bool(_output(node, 2)))
        cache = past or any(wants)
        kv_bias = bool(bias) and not in_heads
        params, setup, q_lines, k_lines, v_lines, scores = [], [], [], [], [], []
        if bias:
            params.append("qbias")
            q_lines.append(_bias_hook("q_tile", "qbias", "h", "D", "offs_d", "in_d",
                                      "[None, :]", dt))
            if kv_bias and not cache:
                params += ["kbias", "vbias"]
                k_lines.append(_bias_hook("k_tile", "kbias", "hk", "D", "offs_d", "in_d",
                                          "[:, None]", dt))
                v_lines.append(_bias_hook("v_tile", "vbias", "hk", "DV", "offs_dv", "in_dv",
                                          "[None, :]", dt))
        if kpm:
            kp_params, setup, scores = _padding_hooks(ctx.rank_of(kpm), filter_value)
            params += kp_params
        causal_past = causal and past
        beams = bool(_input(node, 9))
        rope_q, rope_k = rope_lines.ropes(fusion)
        if shared:  # the offset on the device; keys past + L of the buffer's M
            params += ["psl", "new_len"]
            setup += ["q_off = tl.load(psl)", "kv_len = tl.minimum(q_off + new_len, Sk)"]
            if beams:
                beam_params, beam_setup, k_lines, v_lines = _beam_hooks()
                params += beam_params
                setup += beam_setup
        elif causal_past:
            params.append("past_len")
            setup += ["q_off = past_len", "kv_len = Sk"]
        # rotated before the bias is added: the rotary node's output is the attention's input
        if rope_q:
            params += rope_lines.params("qr_", rope_q)
            q_lines[:0] = rope_lines.q_tile_lines(rope_q, dt)
        if rope_k and not cache:  # else the append kernel rotates K
            params += rope_lines.params("kr_", rope_k)
            k_lines[:0] = rope_lines.k_tile_lines(rope_k, dt)
        hooks = flash.Hooks(tuple(params), tuple(setup), shared or causal_past, tuple(q_lines),
                            tuple(k_lines), tuple(v_lines), scores=tuple(scores))
        variant = flash.Variant(dt, "additive" if attn_bias else None, causal,
                                empty_rows="zero", precision=ctx.dot_precision(dt) or "ieee")
        append, append_line = None, ""
        if cache:
            append, append_ir, append_path = _append_kernel(node, ctx, "kv_append", dt, False,
                                                            past, kv_bias, None, False, shared,
                                                            rope_k)
            append_line = f"1. {append_ir} (kernel {append_path.stem})\n2. "
        scale = _scale(a.get("scale"))
        key_form = "in heads" if in_heads else f"rank {ctx.rank_of(key)}" if key else "packed"
        ir_text = (f"kernel {name} MultiHeadAttention node={node.name!r}\n"
                   f"{heads} heads; query rank {ctx.rank_of(node.inputs[0])}, key {key_form}"
                   f"{'; bias' if bias else ''}"
                   f"{'; key_padding_mask rank ' + str(ctx.rank_of(kpm)) if kpm else ''}"
                   f"{'; shared KV buffer at past_sequence_length' if shared else ''}"
                   f"{', K/V read through cache_indirection' if beams else ''}"
                   f"{'; Q rotated as ' + rope_q.text() if rope_q else ''}"
                   f"{'; K rotated as ' + rope_k.text() if rope_k else ''}\n"
                   f"{append_line}flash attention, online softmax in {compute_type(dt)}; "
                   f"scale={'1/sqrt(H)' if scale is None else repr(scale)}; {variant.text()}")
        kernel, source, path, cached = _flash_kernel(node, ctx, variant, hooks, ir_text)
        launcher = MhaLauncher(kernel, append, dt, heads, scale, kv_bias and not cache,
                               kv_bias and cache, causal_past, shared, wants, ctx,
                               (rope_q, rope_k))
        inputs = rope_lines.node_inputs([_input(node, i) for i in range(10)], rope_q, rope_k)
        return KernelSpec(name, launcher, inputs, ir_text, source, path, cached)

