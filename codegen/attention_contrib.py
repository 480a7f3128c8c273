"""onnxruntime's com.microsoft MultiHeadAttention and GroupQueryAttention on the flash kernel.

Each node is one flash-attention launch (:mod:`.attention`'s kernel with :class:`Hooks`),
preceded, where the node has a KV cache to write, by one copy kernel that builds
``present_key``/``present_value`` on the device: the past rows, then the new K/V rows (bias
added, RoPE applied to K) at their cache positions. The flash launch then reads K/V from the
present buffers; the query side (bias, RoPE) is computed on each loaded Q tile. Semantics
follow the NumPy kernels (fallback_cpu/contrib_attention.py, contrib_gqa.py):

- GroupQueryAttention, per batch entry b: ``T = seqlens_k[b] + 1`` keys after the step, the
  chunk's rows start at position ``P = T - min(S, T)``; the new rows go to present rows
  ``P ..``, the past's other rows are kept (a shared past/present buffer); causal rows see
  keys ``j <= P + s``, a local window W only ``j > P + s - W``; softcap, attention_bias,
  head_sink / smooth_softmax, packed QKV, do_rotary (positions ``P + s`` or position_ids);
  present's length is ``max(past buffer, total_sequence_length)`` (a host scalar, as
  onnxruntime's CUDA kernel reads it), seqlens_k stays on the device.
- MultiHeadAttention: query (B, S, D) or packed QKV (B, S, N, 3, H); key (B, L, D), packed
  KV (B, L, N, 2, H) or in heads (B, N, L, H); bias; key_padding_mask (B), (2B), (B, T),
  (B, S, T) as ``mask_filter_value`` added at masked keys; attention_bias; past/present
  (present = past + new rows; unidirectional rows see keys ``j <= past + s``); with
  past_sequence_length one shared (B, N, M, H) buffer: the new rows written at
  ``past_sequence_length``, read on the device like GQA's seqlens_k; cache_indirection
  (beam search) on it, the flash launch's K/V tiles loaded from each key's source beam.

A RotaryEmbedding node whose output only the attention reads as its query or key runs inside
the same launches, with the node's own semantics (:mod:`.attention_rotary`).

Refused with the attribute or input named (the node then runs on the CPU): quantized caches,
sliding_window_cache, qk outputs, q/k norm weights, query_seqlens, MHA's attention_bias with
cache_indirection, the (B, 1, M, M) key_padding_mask.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from tritort import dtypes

from . import attention as flash
from . import attention_rotary as rope_lines
from .cache import KERNEL
from .emit import acc_type, compute_type, helper_source, storage_type, stored
from .keys import contrib
from .movement import launch as launch_copy, render_kernel
from .rowwise import check_dtypes, torch_dtype
from .templates import KernelSpec, Template, load_source, template

FLOATS = dtypes.FLOAT_TYPES - {"bfloat16"}  # bf16 tiles need the interpreter's upcasts
MASK_FILTER = -10000.0


def _input(node, index: int) -> str:
    return node.inputs[index] if len(node.inputs) > index else ""


def _output(node, index: int) -> str:
    return node.outputs[index] if len(node.outputs) > index else ""


def _outputs_typed(node, ctx) -> str | None:
    for value in node.outputs:
        if value and ctx.dtype_of(value) is None:
            return f"element type of output '{value}' unknown at load time"
    return None


# ------------------------------------------------------------------ rotary lines


def _rotary_pair(d: str, interleaved: bool) -> list[str]:
    """``r_first`` (the channel takes ``x cos - partner sin``), ``r_col`` (its cache column),
    ``r_partner``; ``d`` the channel index, ``ROT`` the rotated width."""
    if interleaved:
        return [f"r_first = ({d} % 2) == 0", f"r_col = {d} // 2",
                f"r_partner = tl.where(r_first, {d} + 1, {d} - 1)"]
    return [f"r_first = {d} < ROT // 2", f"r_col = tl.where(r_first, {d}, {d} - ROT // 2)",
            f"r_partner = tl.where(r_first, {d} + ROT // 2, {d} - ROT // 2)"]


def _first_prompt(seqlens: str, batch: str, rows: str) -> list[str]:
    """``first_prompt``: no batch entry has cached tokens (GQA's position_ids then give one
    offset for all, their first entry, as onnxruntime reads them)."""
    return [f"grown = tl.load({seqlens}) + 1 - {rows}",
            f"for i in range(1, {batch}):",
            f"    grown = tl.maximum(grown, tl.load({seqlens} + i) + 1 - {rows})",
            "first_prompt = grown <= 0"]


ROTARY_PARAMS = ["cos", "sin", "cos_r", "cos_c", "sin_r", "sin_c", "max_pos", "ROT"]
POSITION_PARAMS = ["pids", "pid_b", "pid_s", "NB"]


def _rotary_args(cos, sin, pids, batch: int) -> tuple:
    args = (cos, sin, *cos.stride(), *sin.stride(), cos.shape[0], 2 * cos.shape[1])
    if pids is not None:
        args += (pids, *pids.stride(), batch)
    return args


# ------------------------------------------------------------------ the KV append kernel


def append_source(name: str, node, dtype: str, per_batch: bool, past: bool, bias: bool,
                  rotary: str | None, interleaved: bool, shared: bool = False,
                  rope: rope_lines.Rope | None = None) -> tuple[str, str]:
    """One launch over present [B, NK, L, max(HK, HV)] writing both caches: new rows (K/V
    read as [b, s, n, d] through strides, bias added, K rotated) at rows ``P ..`` (``P``
    from seqlens_k per batch entry, with ``shared`` the one value of a device tensor
    (MultiHeadAttention's past_sequence_length), or the past's length), past rows below /
    around them, zeros elsewhere. ``rotary``: None, "offsets" or "ids" (GroupQueryAttention's
    do_rotary); ``rope``: a RotaryEmbedding node computed on K here instead."""
    ct = acc_type(dtype)
    start = "seqlens_k[b] + 1 - min(S, seqlens_k[b] + 1)" if per_batch else \
        "past_sequence_length" if shared else "past length"
    ir_text = (f"{name}: KV cache append for '{node.name}' ({node.op_type}) into present "
               f"[B, NK, L, H]: rows P .. P + S from the new K/V"
               f"{' + bias' if bias else ''}{', K rotated' if rotary else ''}"
               f"{', K rotated as ' + rope.text() if rope else ''}"
               f"{', the past elsewhere' if past else ''}; P = {start}")
    params = ["knew", "vnew", "ko", "vo", "numel", "d0", "d1", "d2", "d3", "S", "BUF", "HK", "HV",
              "ks0", "ks1", "ks2", "ks3", "vs0", "vs1", "vs2", "vs3",
              "os0", "os1", "os2", "os3", "us0", "us1", "us2", "us3"]
    if past:
        params += ["pk", "pv", "ps0", "ps1", "ps2", "ps3", "qs0", "qs1", "qs2", "qs3"]
    if per_batch or shared:
        params += ["seq"]
    if bias:
        params += ["kbias", "vbias"]
    if rotary:
        params += ROTARY_PARAMS + (POSITION_PARAMS if rotary == "ids" else [])
    if rope:
        params += rope_lines.params("kr_", rope)
    body = ["kin = mask & (i3 < HK)", "vin = mask & (i3 < HV)"]
    if per_batch:
        body += ["t_b = tl.load(seq + i0, mask=mask, other=0) + 1",
                 "p_b = tl.maximum(t_b - S, 0)"]
    elif shared:  # the same offset for every entry, read on the device
        body += ["p_b = tl.load(seq)"]
    else:
        body += ["p_b = BUF"]
    body += ["r = i2 - p_b", "new = (r >= 0) & (r < S)", "rs = tl.where(new, r, 0)",
             "old = (i2 < BUF) & ((r < 0) | (r >= S))"]
    for which, src, dst, strides, out, inside, bias_ptr, width in (
            ("k", "knew", "ko", "ks", "os", "kin", "kbias", "HK"),
            ("v", "vnew", "vo", "vs", "us", "vin", "vbias", "HV")):
        at = f"i0 * {strides}0 + rs * {strides}1 + i1 * {strides}2"
        body += [f"x = tl.load({src} + ({at} + i3 * {strides}3), mask={inside} & new, "
                 f"other=0.0).to({ct})"]
        if rope and which == "k":  # the node's output, to which the attention adds its bias
            body += rope_lines.append_lines(rope, dtype, at)
        if bias:
            body += [f"x = x + tl.load({bias_ptr} + (i1 * {width} + i3), mask={inside} & new, "
                     f"other=0.0).to({ct})"]
        if rotary and which == "k":
            body += _rotary_pair("i3", interleaved)
            if rotary == "ids":
                body += _first_prompt("seq", "NB", "S")
                body += ["pid0 = tl.load(pids)",
                         "pos = tl.where(first_prompt, pid0 + r, tl.load(pids + (i0 * pid_b + "
                         "rs * pid_s), mask=mask & new, other=0))"]
            else:
                body += ["pos = p_b + r"]
            body += ["rot = kin & new & (i3 < ROT)",
                     "ok = rot & (pos >= 0) & (pos < max_pos)",
                     f"w = tl.load(knew + ({at} + r_partner * ks3), mask=rot, other=0.0)"
                     f".to({ct})"]
            if bias:
                body += [f"w = w + tl.load(kbias + (i1 * HK + r_partner), mask=rot, "
                         f"other=0.0).to({ct})"]
            body += [f"c = tl.load(cos + (pos * cos_r + r_col * cos_c), mask=ok, other=0.0)"
                     f".to({ct})",
                     f"sn = tl.load(sin + (pos * sin_r + r_col * sin_c), mask=ok, other=0.0)"
                     f".to({ct})",
                     "x = tl.where(i3 < ROT, tl.where(r_first, x * c - w * sn, x * c + w * sn), "
                     "x)"]
        if past:
            ps = "ps" if which == "k" else "qs"
            body += [f"x = tl.where(new, x, tl.load(p{which} + (i0 * {ps}0 + i1 * {ps}1 + "
                     f"i2 * {ps}2 + i3 * {ps}3), mask={inside} & old, other=0.0).to({ct}))"]
        else:
            body += ["x = tl.where(new, x, 0.0)"]
        body += [f"tl.store({dst} + (i0 * {out}0 + i1 * {out}1 + i2 * {out}2 + i3 * {out}3), "
                 f"{stored('x', dtype)}, mask={inside})"]
    source = render_kernel(name, node, ir_text, params, 4, ["    " + b for b in body])
    helper = helper_source(source)
    return source.replace("\n\n@triton.jit\n", helper + "\n\n@triton.jit\n", 1), ir_text


class Append:
    """Launches the append kernel: ``knew``/``vnew`` [B, S, NK, H] views, ``past`` a pair of
    [B, NK, BUF, H] tensors or None; returns the present pair [B, NK, L, H]. ``per_batch``:
    the kernel reads its start offsets from ``seqlens`` (per entry, or a shared buffer's one
    past_sequence_length)."""

    def __init__(self, fn, per_batch: bool, device):
        self.fn, self.per_batch, self.device = fn, per_batch, device

    def __call__(self, knew, vnew, past, length: int, seqlens=None, bias=None,
                 rotary: tuple = ()) -> tuple:
        import torch

        b, s, nk, hk = knew.shape
        hv = vnew.shape[3]
        ko = torch.empty((b, nk, length, hk), dtype=knew.dtype, device=self.device)
        vo = torch.empty((b, nk, length, hv), dtype=vnew.dtype, device=self.device)
        dims = (b, nk, length, max(hk, hv))
        numel = math.prod(dims)
        buf = 0 if past is None else past[0].shape[2]
        args = [knew, vnew, ko, vo, numel, *dims, s, buf, hk, hv, *knew.stride(),
                *vnew.stride(), *ko.stride(), *vo.stride()]
        if past is not None:
            args += [past[0], past[1], *past[0].stride(), *past[1].stride()]
        if self.per_batch:
            args.append(seqlens)
        if bias is not None:
            args += list(bias)
        args += list(rotary)
        launch_copy(self.fn, numel, args)
        return ko, vo


def _append_kernel(node, ctx, name: str, dtype: str, per_batch: bool, past: bool, bias: bool,
                   rotary: str | None, interleaved: bool, shared: bool = False,
                   rope: rope_lines.Rope | None = None):
    source, ir_text = append_source(name, node, dtype, per_batch, past, bias, rotary,
                                    interleaved, shared, rope)
    fn, path, _ = load_source(source, name, ctx)
    return Append(fn, per_batch or shared, ctx.torch_device), ir_text, path


# ------------------------------------------------------------------ flash hooks


def _q_rotary_lines(dtype: str, interleaved: bool, ids: bool) -> list[str]:
    """RoPE on the loaded Q tile, row ``s`` at ``q_pos`` (or position_ids)."""
    ct = acc_type(dtype)
    lines = _rotary_pair("offs_d", interleaved)
    if ids:
        lines += ["r_pos = tl.where(first_prompt, pid0 + offs_m, tl.load(pids + (b * pid_b + "
                  "rows * pid_s), mask=in_m, other=0))"]
    else:
        lines += ["r_pos = q_pos"]
    rotated = "(offs_d < ROT)[None, :]"
    lines += [f"r_in = in_m[:, None] & {rotated}",
              "r_ok = r_in & ((r_pos >= 0) & (r_pos < max_pos))[:, None]",
              "r_pair = tl.load(q + (b * sqb + h * sqh + rows[:, None] * sqm + "
              f"r_partner[None, :] * sqd), mask=r_in, other=0.0).to({ct})",
              "r_cos = tl.load(cos + (r_pos[:, None] * cos_r + r_col[None, :] * cos_c), "
              f"mask=r_ok, other=0.0).to({ct})",
              "r_sin = tl.load(sin + (r_pos[:, None] * sin_r + r_col[None, :] * sin_c), "
              f"mask=r_ok, other=0.0).to({ct})",
              f"r_x = q_tile.to({ct})",
              "r_y = tl.where(r_first[None, :], r_x * r_cos - r_pair * r_sin, "
              "r_x * r_cos + r_pair * r_sin)",
              f"q_tile = tl.where({rotated}, r_y, r_x).to({storage_type(dtype)})"]
    return lines


def _sink_lines(kind: str | None, dtype: str) -> tuple[list[str], list[str]]:
    """(params, init lines): an extra logit per head in each softmax denominator."""
    if kind is None:
        return [], []
    ct = compute_type(dtype)
    value = f"tl.load(sink + h).to({ct})" if kind == "head_sink" else "0.0"
    return (["sink"] if kind == "head_sink" else []), [
        f"m_i = tl.zeros([BLOCK_M], dtype={ct}) + {value}", "l_i = l_i + 1.0"]


def _flash_kernel(node, ctx, variant: flash.Variant, hooks: flash.Hooks, ir_text: str):
    header = [f"ONNX node: {node.name} ({node.op_type})", *ir_text.splitlines()[1:]]
    source = flash.attention_source(KERNEL, header, variant, ctx.interpreted, hooks)
    fn, path, cached = load_source(source, KERNEL, ctx)
    return flash.Kernel(fn, variant), source, path, cached


def _scale(attr: Any) -> float | None:
    return None if attr is None else float(attr)


def _bias_hook(tile: str, ptr: str, head: str, width: str, offs: str, inside: str,
               axis: str, dtype: str) -> str:
    """``tile`` plus a per-channel bias slice (head ``head`` of ``width`` channels)."""
    ct = acc_type(dtype)
    return (f"{tile} = ({tile}.to({ct}) + tl.load({ptr} + ({head} * {width} + {offs}), "
            f"mask={inside}, other=0.0).to({ct}){axis}).to({storage_type(dtype)})")


def _heads(x, heads: int, op: str, what: str):
    """[B, S, heads * H] -> a [B, S, heads, H] view."""
    if heads <= 0 or x.shape[2] % heads:
        raise ValueError(f"{op}: {what} width {x.shape[2]} is not a multiple of its {heads} "
                         f"heads")
    return x.unflatten(2, (heads, x.shape[2] // heads))


# ------------------------------------------------------------------ GroupQueryAttention

_GQA_REFUSED_INPUTS = {12: "k_scale (quantized KV cache)",
                       13: "v_scale (quantized KV cache)", 14: "q_norm_weight",
                       15: "k_norm_weight", 16: "query_seqlens (right-padded chunks)"}


class GqaLauncher:
    op = "GroupQueryAttention"

    def __init__(self, kernel, append, dtype: str, heads: int, kv_heads: int, scale, rotary,
                 sink: str | None, ctx, ropes: tuple = (None, None)):
        self.kernel, self.append, self.dtype = kernel, append, torch_dtype(dtype)
        self.heads, self.kv_heads, self.scale = heads, kv_heads, scale
        self.rotary, self.sink, self.ropes = rotary, sink, ropes
        self.device, self.interpreted, self.table = ctx.torch_device, ctx.interpreted, \
            ctx.tuning

    def __call__(self, query, key, value, past_k, past_v, seqlens, total, cos=None, sin=None,
                 pids=None, bias=None, sink=None, *rope_values) -> tuple:
        import torch

        n, nk, op = self.heads, self.kv_heads, self.op
        b, s = query.shape[:2]
        if key is None:  # packed QKV
            width = query.shape[2]
            if width % (n + 2 * nk):
                raise ValueError(f"{op}: packed QKV width {width} is not a multiple of "
                                 f"num_heads + 2 * kv_num_heads = {n + 2 * nk}")
            h = width // (n + 2 * nk)
            q, key, value = (query[..., :n * h], query[..., n * h:(n + nk) * h],
                             query[..., (n + nk) * h:])
        else:
            q = query
        q4, k4, v4 = _heads(q, n, op, "query"), _heads(key, nk, op, "key"), \
            _heads(value, nk, op, "value")
        h, hv = q4.shape[3], v4.shape[3]
        if k4.shape[3] != h or k4.shape[:2] != (b, s) or v4.shape[:2] != (b, s):
            raise ValueError(f"{op}: query {list(q.shape)}, key {list(key.shape)} and value "
                             f"{list(value.shape)} do not fit {n} query and {nk} key/value "
                             f"heads")
        seqlens = seqlens.reshape(-1)
        if seqlens.shape[0] != b:
            raise ValueError(f"{op}: seqlens_k must have shape ({b},), got "
                             f"{list(seqlens.shape)}")
        seqlens = seqlens.to(torch.int32).contiguous()
        past = None
        if past_k is not None:
            past = (past_k, past_v)
        buf = 0 if past is None else past_k.shape[2]
        length = max(buf, int(np.asarray(total).reshape(-1)[0]))
        rotary = ()
        if self.rotary:
            rotary = _rotary_args(cos, sin, pids, b)
            if 2 * cos.shape[1] > h:
                raise ValueError(f"{op}: the rotary width {2 * cos.shape[1]} does not fit "
                                 f"the head size {h}")
            if pids is not None and tuple(pids.shape) != (b, s):
                raise ValueError(f"{op}: position_ids must have shape ({b}, {s})")
        rope_q, rope_k = self.ropes  # RotaryEmbedding nodes on the query and the key
        if rope_k is not None:
            rotary = rope_lines.side_args(rope_k, rope_values[3:], b, s, h)
        present_k, present_v = self.append(k4, v4, past, length, seqlens, rotary=rotary)
        out = torch.empty((b, s, n * hv), dtype=self.dtype, device=self.device)
        y = out.view(b, s, n, hv).permute(0, 2, 1, 3)
        if bias is not None:
            if bias.dim() != 4:
                raise ValueError(f"{op}: attention_bias must be (B or 1, N or 1, S, total), "
                                 f"got {list(bias.shape)}")
            bias = flash._mask_view(op, bias, (b, n, s, bias.shape[3]))
        scale = self.scale if self.scale is not None else 1 / math.sqrt(h)
        extra = (seqlens, *(rotary if self.rotary else ())) + \
            ((sink.reshape(-1),) if self.sink == "head_sink" else ()) + \
            rope_lines.side_args(rope_q, rope_values[:3], b, s, h)
        flash.launch(self.kernel, q4.permute(0, 2, 1, 3), present_k, present_v, y, bias,
                     scale, self.interpreted, self.table, extra)
        return out, present_k, present_v


@template(contrib("GroupQueryAttention"))
class GroupQueryAttention(Template):
    kind = "attention"
    operand_prologues = True  # RotaryEmbedding nodes on the query and the key
    operand_inputs = (0, 1)

    def takes_operand(self, producer, ctx, node, index, made_by) -> bool:
        if node.attrs.get("do_rotary", 0) or not _input(node, 1):
            return False  # rotated twice, or a packed QKV
        heads = int(node.attrs["num_heads" if index == 0 else "kv_num_heads"])
        return rope_lines.takes_rotary(producer, ctx, heads, (3,))

    def claim(self, node, ctx) -> str | None:
        a = node.attrs
        if a.get("sliding_window_cache", 0):
            return "sliding_window_cache (window-sized KV buffers) runs on the CPU"
        for name in ("k_quant_type", "v_quant_type"):
            if a.get(name, "NONE") not in ("NONE", "", b"NONE", b""):
                return f"{name} (quantized KV cache) runs on the CPU"
        if a.get("qk_output", 0) or _output(node, 3):
            return "qk_output / output_qk runs on the CPU"
        n, nk = int(a.get("num_heads", 0)), int(a.get("kv_num_heads", 0))
        if nk <= 0 or n % nk:
            return f"num_heads {n} is not a positive multiple of kv_num_heads {nk}"
        if not a.get("causal", 1) and int(a.get("local_window_size", -1)) >= 0:
            return "local_window_size with causal=0"
        for index, what in _GQA_REFUSED_INPUTS.items():
            if _input(node, index):
                return f"{what} input runs on the CPU"
        query, key, value = node.inputs[0], _input(node, 1), _input(node, 2)
        if bool(key) != bool(value):
            return "key without value (or value without key)"
        past_k, past_v = _input(node, 3), _input(node, 4)
        if bool(past_k) != bool(past_v):
            return "past_key without past_value (or the reverse)"
        seqlens, total = _input(node, 5), _input(node, 6)
        if not seqlens or not total:
            return "seqlens_k and total_sequence_length are required"
        if ctx.rank_of(query) != 3 or (key and (ctx.rank_of(key) != 3 or
                                                ctx.rank_of(value) != 3)):
            return "query, key and value must be 3-D (B, S, hidden)"
        if past_k and (ctx.rank_of(past_k) != 4 or ctx.rank_of(past_v) != 4):
            return "past_key / past_value must be 4-D (B, N_kv, L, H)"
        floats = [query, key, value, past_k, past_v]
        why = check_dtypes(ctx, floats, FLOATS, node.op_type)
        if why:
            return why
        if len({ctx.dtype_of(v) for v in floats if v}) != 1:
            return "query, key, value and the past caches differ in element type"
        why = check_dtypes(ctx, [seqlens, total], ("int32",), node.op_type + " lengths")
        if why:
            return why
        if a.get("do_rotary", 0):
            cos, sin = _input(node, 7), _input(node, 8)
            if not cos or not sin:
                return "do_rotary without cos_cache / sin_cache"
            why = check_dtypes(ctx, [cos, sin], FLOATS, node.op_type + " cos/sin caches")
            if why:
                return why
            pids = _input(node, 9)
            if pids and ctx.dtype_of(pids) not in ("int64", "int32"):
                return f"position_ids of type {ctx.dtype_of(pids)}"
        bias = _input(node, 10)
        if bias:
            why = check_dtypes(ctx, [bias], FLOATS, node.op_type + " attention_bias")
            if why or ctx.rank_of(bias) != 4:
                return why or "attention_bias must be 4-D"
        if _input(node, 11):
            why = check_dtypes(ctx, [_input(node, 11)], FLOATS, node.op_type + " head_sink")
            if why:
                return why
        return _outputs_typed(node, ctx)

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        a = node.attrs
        dt = ctx.dtype_of(node.inputs[0])
        n, nk = int(a["num_heads"]), int(a["kv_num_heads"])
        window = int(a.get("local_window_size", -1))
        causal = bool(a.get("causal", 1))
        softcap = float(a.get("softcap", 0.0))
        rotary = bool(a.get("do_rotary", 0))
        interleaved = bool(a.get("rotary_interleaved", 0))
        pids = rotary and bool(_input(node, 9))
        sink = "head_sink" if _input(node, 11) else \
            "smooth" if int(a.get("smooth_softmax", -1)) == 1 else None
        bias = _input(node, 10)
        past = bool(_input(node, 3))
        rope_q, rope_k = rope_lines.ropes(fusion)
        variant = flash.Variant(dt, "additive" if bias else None, causal,
                                window - 1 if window > 0 else -1, -1, softcap,
                                empty_rows="zero", precision=ctx.dot_precision(dt) or "ieee")
        params = ["seqlens"]
        setup = ["t_b = tl.load(seqlens + b) + 1", "q_off = tl.maximum(t_b - Sq, 0)",
                 "kv_len = tl.minimum(t_b, Sk)"]
        q_lines: list[str] = []
        if rotary:
            params += ROTARY_PARAMS + (POSITION_PARAMS if pids else [])
            if pids:
                setup += _first_prompt("seqlens", "NB", "Sq") + ["pid0 = tl.load(pids)"]
            q_lines = _q_rotary_lines(dt, interleaved, pids)
        sink_params, init = _sink_lines(sink, dt)
        if rope_q:
            params_q = rope_lines.params("qr_", rope_q)
            q_lines += rope_lines.q_tile_lines(rope_q, dt)
        hooks = flash.Hooks(tuple(params + sink_params + (params_q if rope_q else [])),
                            tuple(setup), True, tuple(q_lines), init=tuple(init))
        append, append_ir, append_path = _append_kernel(
            node, ctx, "kv_append", dt, True, past, False,
            ("ids" if pids else "offsets") if rotary else None, interleaved, rope=rope_k)
        scale = _scale(a.get("scale"))
        rope = f"RoPE on Q tiles ({'interleaved' if interleaved else 'halves'})" if rotary \
            else f"Q tiles rotated as {rope_q.text()}" if rope_q else "no RoPE"
        ir_text = (f"kernel {name} GroupQueryAttention node={node.name!r}\n"
                   f"{n} query / {nk} kv heads{', packed QKV' if not _input(node, 1) else ''}"
                   f"{', past cache' if past else ''}; seqlens_k per batch entry; "
                   f"{rope}"
                   f"{'; ' + sink if sink else ''}\n"
                   f"1. {append_ir} (kernel {append_path.stem})\n"
                   f"2. flash attention over present, online softmax in {compute_type(dt)}; "
                   f"scale={'1/sqrt(H)' if scale is None else repr(scale)}; {variant.text()}")
        kernel, source, path, cached = _flash_kernel(node, ctx, variant, hooks, ir_text)
        launcher = GqaLauncher(kernel, append, dt, n, nk, scale, rotary, sink, ctx,
                               (rope_q, rope_k))
        inputs = rope_lines.node_inputs([_input(node, i) for i in range(12)], rope_q, rope_k)
        return KernelSpec(name, launcher, inputs, ir_text, source, path, cached,
                          host_inputs=(inputs[6],))


# MultiHeadAttention's template, on the helpers above
from . import attention_mha  # noqa: E402,F401
