"""onnxruntime's ``com.microsoft`` GroupQueryAttention on the NumPy provider.

Per batch entry b the cache holds ``T = seqlens_k[b] + 1`` tokens after the step; the chunk's
first ``Q = query_seqlens[b]`` rows are valid (default ``min(S, T)``), so ``P = T - Q`` tokens
were cached before it: the first prompt of a right-padded batch has ``P = 0``, a decode step
``Q = 1``. The new K/V rows (all S of them without ``query_seqlens``, as onnxruntime writes
them, else the Q valid ones) go to rows ``P ..`` of ``present_key``/``present_value``
(B, N_kv, max(past buffer, total_sequence_length), H), after the first P rows of the past
(when past and present share one buffer, the past's other rows are kept too; rows past T are
unspecified by the operator). Query row s sits at position ``P + s``: with ``causal`` it sees
keys ``j <= P + s`` (and ``j < T``), with ``local_window_size`` W only keys ``j > P + s - W``.

Also: packed QKV (query (B, S, (N + 2 N_kv) H) without key/value), ``do_rotary`` (RoPE on Q and
K with the cos/sin caches, position ``P + s`` or ``position_ids``, of which the first prompt
reads only the first column as onnxruntime does; partial rotation when the caches are
narrower than H / 2; ``rotary_interleaved``), ``softcap`` (``c tanh(scores / c)`` after the
scale), ``attention_bias`` (B or 1, N or 1, S, total_sequence_length), ``head_sink`` or
``smooth_softmax`` (an extra logit per head, 0 for smooth softmax, in each softmax
denominator), ``q_norm_weight``/``k_norm_weight`` (per-head RMS normalization of Q and K
before the rotation), ``output_qk`` (``qk_output`` 1: the scores before the softmax, 2: the
probabilities; 0 at keys a row does not see). A row with no visible key (only a padding row
can have one) gives zeros.

Quantized caches (``k_quant_type``/``v_quant_type`` PER_TENSOR or PER_CHANNEL with
``k_scale``/``v_scale``, ``kv_cache_bit_width`` 8: int8 caches, 4: packed uint8) are stored
and read as :mod:`.contrib_kv_quant` describes; float8 caches are refused.

``sliding_window_cache``: the past/present buffers hold C >= ``local_window_size`` rows; after
a step of an entry with T tokens, rows [0, L(T)) hold its most recent L(T) positions in order
(L(T) = T while T <= C, else T - G * ceil((T - C) / G) with G = C - W + 1), which is the
layout onnxruntime's CPU kernel writes; ``attention_bias`` columns stay absolute positions.
"""
from __future__ import annotations

import numpy as np

from .contrib_attention import attend, cache_rows, rotate, work_dtype
from .contrib_kv_quant import check_cache_type, check_modes, codec
from .nn_util import narrow, widen
from .registry import register

MS_DOMAIN = "com.microsoft"


def _rms(x4: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(x4 * x4, axis=-1, keepdims=True)
    return x4 / np.sqrt(ms + x4.dtype.type(eps)) * weight


def resident(total: int, capacity: int, window: int) -> int:
    """How many of a window cache's ``total`` positions stay in its rows: all while they fit,
    then eviction frees ``capacity - window + 1`` rows at once."""
    if total <= capacity:
        return total
    freed = capacity - window + 1
    return total - freed * -(-(total - capacity) // freed)


def _by_position(cache: np.ndarray, past: np.ndarray, capacity: int, window: int):
    """A window cache (rows [0, L) holding positions P - L .. P - 1) as a cache indexed by
    absolute position; evicted positions are zeros (outside every query's window)."""
    full = np.zeros(cache.shape[:2] + (max(int(past.max()), 0),) + cache.shape[3:], cache.dtype)
    for i, p in enumerate(past.tolist()):
        kept = resident(p, capacity, window)
        full[i, :, p - kept:p] = cache[i, :, :kept]
    return full


def _to_window(full: np.ndarray, totals: np.ndarray, capacity: int, window: int):
    """The present window cache: the most recent ``resident(T)`` positions at rows 0 .. (the
    rows after them are unspecified by the operator: zeros here)."""
    out = np.zeros(full.shape[:2] + (capacity,) + full.shape[3:], full.dtype)
    for i, t in enumerate(totals.tolist()):
        kept = resident(t, capacity, window)
        out[i, :, :kept] = full[i, :, t - kept:t]
    return out


@register("GroupQueryAttention", since=1, domain=MS_DOMAIN)
def group_query_attention(ctx):
    n = int(ctx.attr("num_heads"))
    nk = int(ctx.attr("kv_num_heads"))
    scale_attr = ctx.attr("scale")
    softcap = float(ctx.attr("softcap", 0.0))
    window = int(ctx.attr("local_window_size", -1))
    rotary = bool(ctx.attr("do_rotary", 0))
    interleaved = bool(ctx.attr("rotary_interleaved", 0))
    causal = bool(ctx.attr("causal", 1))
    qk_mode = int(ctx.attr("qk_output", 0))
    smooth = int(ctx.attr("smooth_softmax", -1)) == 1
    eps = float(ctx.attr("qk_norm_epsilon", 1e-6))
    q_eps = float(ctx.attr("q_norm_epsilon", eps))
    k_eps = float(ctx.attr("k_norm_epsilon", eps))
    windowed = bool(ctx.attr("sliding_window_cache", 0))
    if windowed and (window <= 0 or not causal):
        raise ValueError("sliding_window_cache needs causal attention and local_window_size > 0")
    bits = int(ctx.attr("kv_cache_bit_width", 8) or 8)
    k_codec = codec(str(ctx.attr("k_quant_type", "NONE")), bits, "k")
    v_codec = codec(str(ctx.attr("v_quant_type", "NONE")), bits, "v")
    check_modes(k_codec, v_codec)
    if n % max(nk, 1) or nk <= 0:
        raise ValueError(f"num_heads {n} must be a positive multiple of kv_num_heads {nk}")
    if not causal and window >= 0:
        raise ValueError("local_window_size must be -1 when causal is 0")
    names = list(ctx.output_names) + [""] * 4
    want = [bool(x) for x in names]

    def run(query, key=None, value=None, past_key=None, past_value=None, seqlens_k=None,
            total_sequence_length=None, cos_cache=None, sin_cache=None, position_ids=None,
            attention_bias=None, head_sink=None, k_scale=None, v_scale=None,
            q_norm_weight=None, k_norm_weight=None, query_seqlens=None):
        dtype = query.dtype
        work = work_dtype(dtype)
        b, s = query.shape[:2]
        if key is None:  # packed QKV
            if value is not None:
                raise ValueError("packed QKV query takes no key or value")
            width = query.shape[2]
            if width % (n + 2 * nk):
                raise ValueError(f"packed QKV width {width} is not a multiple of num_heads + 2 "
                                 f"* kv_num_heads = {n + 2 * nk}")
            h = width // (n + 2 * nk)
            q, k, v = (query[..., :n * h], query[..., n * h:(n + nk) * h],
                       query[..., (n + nk) * h:])
        else:
            if value is None:
                raise ValueError("key needs value")
            q, k, v = query, key, value
            h = q.shape[2] // n
            if q.shape[2] % n or k.shape[2] != nk * h or v.shape[2] % nk:
                raise ValueError(f"query {list(q.shape)}, key {list(k.shape)} and value "
                                 f"{list(v.shape)} do not fit {n} query and {nk} key/value "
                                 f"heads")
            if k.shape[1] != s:
                raise ValueError("key and value must have the query's sequence length")
        q4 = widen(q).astype(work, copy=False).reshape(b, s, n, h)
        k4 = widen(k).astype(work, copy=False).reshape(b, s, nk, h)
        v4 = widen(v).astype(work, copy=False).reshape(b, s, nk, -1)
        if q_norm_weight is not None or k_norm_weight is not None:
            if q_norm_weight is None or k_norm_weight is None:
                raise ValueError("q_norm_weight and k_norm_weight go together")
            q4 = _rms(q4, widen(q_norm_weight).astype(work), q_eps)
            k4 = _rms(k4, widen(k_norm_weight).astype(work), k_eps)
        totals = np.asarray(seqlens_k).reshape(-1).astype(np.int64) + 1
        if totals.shape != (b,):
            raise ValueError(f"seqlens_k must have shape ({b},), got "
                             f"{list(np.shape(seqlens_k))}")
        if query_seqlens is not None:
            valid = np.asarray(query_seqlens).reshape(-1).astype(np.int64)
            if valid.shape != (b,) or (valid < 0).any() or (valid > np.minimum(s, totals)).any():
                raise ValueError(f"query_seqlens {valid.tolist()} must lie in [0, min(S, "
                                 f"seqlens_k + 1)] per batch entry")
        else:
            valid = np.minimum(s, totals)
        if (totals < 1).any():
            raise ValueError(f"seqlens_k {(totals - 1).tolist()} must be >= 0")
        past = totals - valid
        capacity = None
        if windowed:  # rebuild the caches by absolute position; the window never reads past them
            if past_key is None or past_value is None:
                raise ValueError("sliding_window_cache needs past_key and past_value")
            capacity = past_key.shape[2]
            if capacity < window:
                raise ValueError(f"the window cache holds {capacity} positions, fewer than "
                                 f"local_window_size {window}")
            past_key, past_value = (_by_position(x, past, capacity, window)
                                    for x in (past_key, past_value))
        total_len = int(np.asarray(total_sequence_length).reshape(-1)[0])
        buf = 0 if past_key is None else past_key.shape[2]
        if (past > buf).any():
            raise ValueError(f"the past buffers hold {buf} positions but seqlens_k asks for "
                             f"{int(past.max())} cached ones")
        if rotary:
            if cos_cache is None or sin_cache is None:
                raise ValueError("do_rotary needs cos_cache and sin_cache")
            if position_ids is not None:
                pos = np.asarray(position_ids).astype(np.int64)
                if pos.shape != (b, s):
                    raise ValueError(f"position_ids must have shape ({b}, {s})")
                if not past.any():  # the first prompt: onnxruntime reads the first entry
                    pos = np.broadcast_to(pos[0, 0] + np.arange(s)[None, :], (b, s))
            else:
                pos = past[:, None] + np.arange(s)[None, :]
            cos, sin = cache_rows(cos_cache, pos, work), cache_rows(sin_cache, pos, work)
            q4, k4 = rotate(q4, cos, sin, interleaved), rotate(k4, cos, sin, interleaved)
        quantized = k_codec or v_codec
        if quantized and (past_key is None or past_value is None):
            raise ValueError("quantized caches need past_key and past_value (the presents take "
                             "their element type)")
        cache_dtype = past_key.dtype if past_key is not None else dtype
        check_cache_type(k_codec, cache_dtype)
        present_len = max(buf, total_len, int(totals.max()))
        t = int(totals.max())
        outs_kv, reads = [], []
        for past_x, new, cc, scale, what in ((past_key, k4, k_codec, k_scale, "k_scale"),
                                             (past_value, v4, v_codec, v_scale, "v_scale")):
            rows = new.transpose(0, 2, 1, 3)  # (B, N_kv, S, H)
            width = new.shape[-1] if cc is None else cc.row_width(new.shape[-1])
            rows = narrow(rows, cache_dtype) if cc is None else cc.encode(rows, scale, what)
            present = np.zeros((b, nk, present_len, width), dtype=cache_dtype)
            if past_x is not None:
                present[:, :, :buf] = past_x
            for i in range(b):
                count = s if query_seqlens is None else int(valid[i])
                count = min(count, present_len - int(past[i]))
                present[i, :, past[i]:past[i] + count] = rows[i, :, :count]
            outs_kv.append(present)
            # attention reads the cache as stored: quantized caches dequantized, new rows too
            reads.append(widen(present[:, :, :t]).astype(work, copy=False) if cc is None
                         else cc.decode(present[:, :, :t], scale, what, work))
        keys, vals = reads
        if windowed:
            outs_kv = [_to_window(x, totals, capacity, window) for x in outs_kv]
        j = np.arange(t)[None, None, :]
        at = past[:, None, None] + np.arange(s)[None, :, None]  # (B, S, 1) query positions
        seen = j < totals[:, None, None]
        if causal:
            seen = seen & (j <= at)
        if window > 0:
            seen = seen & (j > at - window)
        bias = np.where(seen, work.type(0), work.type(-np.inf))[:, None]  # (B, 1, S, T)
        if attention_bias is not None:
            ab = widen(attention_bias).astype(work, copy=False)
            if ab.ndim != 4 or ab.shape[-1] < t:
                raise ValueError(f"attention_bias must be (B or 1, N or 1, S, total) with at "
                                 f"least {t} columns, got {list(ab.shape)}")
            bias = bias + ab[..., :t]
        sink = None
        if head_sink is not None:
            sink = widen(head_sink).astype(work, copy=False).reshape(n)
        elif smooth:
            sink = np.zeros(n, work)
        scale = 1 / np.sqrt(h) if scale_attr is None else float(scale_attr)
        y, raw, probs = attend(q4.transpose(0, 2, 1, 3), keys, vals, scale, bias, softcap,
                               sink, want_scores=want[3] and qk_mode == 1)
        y[np.isnan(y)] = 0
        out = [narrow(np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(b, s, -1), dtype),
               outs_kv[0], outs_kv[1], None]
        if want[3]:
            full = np.zeros((b, n, s, max(total_len, t)), dtype=work)
            picked = raw if qk_mode == 1 else probs
            full[..., :t] = np.where(seen[:, None], picked, 0)
            out[3] = narrow(full, dtype)
        return tuple(out)

    return run
