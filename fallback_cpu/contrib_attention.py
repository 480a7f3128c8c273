"""onnxruntime's ``com.microsoft`` attention operators on the NumPy provider: Attention
(BERT/GPT-2's fused block, with its input projection), MultiHeadAttention and RotaryEmbedding.
GroupQueryAttention, which shares the core here, is in :mod:`.contrib_gqa`.

Common core (:func:`attend`): ``softmax(scale * Q K^T [softcap] + bias) V`` over heads in
(B, N, S, H) layout, key/value heads shared by ``N / N_kv`` query heads (K and V are never
repeated: grouped query heads stack along the rows), float32 (float64 for double inputs) and
rounded to the input type once.

Masks follow onnxruntime's CPU kernels: a masked key gets ``mask_filter_value`` (default
-10000) *instead of* its mask entry, then the scores get that mask and ``attention_bias``
added; a row whose keys are all masked therefore still averages V with the softmax of its raw
scores (as onnxruntime does), it is not NaN. Causal (``unidirectional``) attention lets query
``s`` see keys ``j <= past + s``.

Attention ``mask_index`` forms: (B) key lengths (right padding), (2B) end positions then start
positions (left padding), (3B + 2) key lengths then packed-batch offsets (only the lengths are
read, as onnxruntime's CPU kernels do), (B, T) or (B, S, T) 0/1 masks, (B, 1, M, M) (rows ``past ..
past + S`` and columns ``0 .. T`` are read: onnxruntime's CUDA form; its CPU kernel refuses
it). ``past`` (2, B, N, P, H) is concatenated with the new K and V into ``present``; with
``past_present_share_buffer`` it is a (2, B, N, M, H) buffer whose first
``past_sequence_length`` rows are valid, and ``present`` is that buffer with the new rows
written after them. ``do_rotary`` (+ ``rotary_embedding_dim``) rotates the new Q and K rows as
onnxruntime's CUDA kernel does (see :func:`rotary_heads`; its CPU kernel refuses the
attribute).

MultiHeadAttention: query (B, S, D) or packed QKV (B, S, N, 3, H); key (B, L, D), packed KV
(B, L, N, 2, H) or already in heads (B, N, L, H) (cross attention: no bias, no past added);
``bias`` (D + D + Dv) for the projections; ``key_padding_mask`` (B), (B, T) or (B, S, T);
``attention_bias`` broadcastable to (B, N, S, T); past/present key and value (B, N, *, H);
output ``qk``: the scores that enter the softmax. With ``past_sequence_length`` past_key and
past_value are one shared (B, N, M, H) buffer whose first rows are valid: the new rows are
written after them and ``present_*`` is that whole buffer. ``cache_indirection`` (beam search,
(batch, beam_width, M) with B = batch * beam_width) makes a decoding step's query row
``b * beam + j`` read cached position t from beam ``cache_indirection[b, j, t]``'s row; as in
onnxruntime's CPU kernel it is not read when S > 1, and it is refused together with
``attention_bias`` (whose rows that kernel reads inconsistently).

RotaryEmbedding: (B, S, N*H) or (B, N, S, H) input; ``position_ids`` (B, S) positions or a
one-element offset (position ``offset + s``); caches (max_positions, R / 2) with R the rotated
width (``rotary_embedding_dim``, else the head size; ``num_heads`` gives the head size of 3-D
input, else it is 2 * the caches' width); halves (default) or interleaved pairs.
``is_packed_batching`` (a ragged batch in the same layout) changes nothing on the CPU.
"""
from __future__ import annotations

import numpy as np

from .nn_util import narrow, widen
from .registry import register

MS_DOMAIN = "com.microsoft"
MASK_FILTER = -10000.0


def work_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def to_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(B, S, N*H) -> (B, N, S, H), a view."""
    b, s, hidden = x.shape
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} is not a multiple of num_heads {heads}")
    return x.reshape(b, s, heads, hidden // heads).transpose(0, 2, 1, 3)


def from_heads(y: np.ndarray) -> np.ndarray:
    """(B, N, S, H) -> (B, S, N*H), contiguous."""
    b, n, s, h = y.shape
    return np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(b, s, n * h)


def attend(q, k, v, scale, bias=None, softcap=0.0, sink=None, want_scores=False):
    """Attention of work-dtype heads: q (B, N, S, H), k (B, Nk, T, H), v (B, Nk, T, Hv), N a
    multiple of Nk; ``bias`` additive, broadcastable to (B, N, S, T) (-inf hides a key
    outright); ``sink`` (N,) extra logits in each row's softmax denominator.
    Returns (y (B, N, S, Hv), scores before the softmax or None, probabilities)."""
    b, n, s, h = q.shape
    nk, t = k.shape[1], k.shape[2]
    if n % nk:
        raise ValueError(f"{n} query heads cannot share {nk} key/value heads")
    group = n // nk
    work = q.dtype.type
    scores = np.matmul(q.reshape(b, nk, group * s, h), np.swapaxes(k, -1, -2))
    scores = scores.reshape(b, n, s, t)
    scores *= work(scale)
    if softcap > 0:
        scores /= work(softcap)
        np.tanh(scores, out=scores)
        scores *= work(softcap)
    if bias is not None:
        scores += bias
    raw = scores.copy() if want_scores else None
    top = scores.max(axis=-1, keepdims=True) if t else np.zeros(scores.shape[:-1] + (1,), work)
    if sink is not None:
        top = np.maximum(top, sink.reshape(1, n, 1, 1))
    top = np.where(np.isneginf(top), work(0), top)
    scores -= top
    np.exp(scores, out=scores)
    total = scores.sum(axis=-1, keepdims=True)
    if sink is not None:
        total += np.exp(sink.reshape(1, n, 1, 1) - top)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores /= total
    y = np.matmul(scores.reshape(b, nk, group * s, t), v).reshape(b, n, s, v.shape[-1])
    return y, raw, scores


def _mask(allowed, causal: bool, s: int, t: int, past: int, filter_value: float,
          attention_bias, work) -> np.ndarray | None:
    """The additive mask of Attention / MultiHeadAttention: ``filter_value`` at keys the
    mask hides, -inf at keys after the query (causal: those are never computed), plus
    ``attention_bias``."""
    terms = []
    if allowed is not None:
        terms.append(np.where(allowed, work.type(0), work.type(filter_value)))
    if causal:
        later = np.arange(t)[None, :] > past + np.arange(s)[:, None]
        terms.append(np.where(later, work.type(-np.inf), work.type(0)))
    if attention_bias is not None:
        terms.append(widen(attention_bias).astype(work, copy=False))
    if not terms:
        return None
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _key_mask(mask: np.ndarray, b: int, s: int, t: int, past: int, what: str) -> np.ndarray:
    """Allowed keys (bool, broadcastable to (B, 1, S, T)) from an Attention mask_index or a
    MultiHeadAttention key_padding_mask."""
    keys = np.arange(t)
    if mask.ndim == 1 and mask.shape[0] == 3 * b + 2:
        # key lengths, then the query and key start offsets of a packed (varlen) batch: the
        # batch here is padded, so as in onnxruntime's CPU kernels only the lengths count
        mask = mask[:b]
    if mask.ndim == 1 and mask.shape[0] == b:
        return (keys[None, :] < mask[:, None]).reshape(b, 1, 1, t)
    if mask.ndim == 1 and mask.shape[0] == 2 * b:
        end, start = mask[:b, None], mask[b:, None]
        return ((keys[None, :] < end) & (keys[None, :] >= start)).reshape(b, 1, 1, t)
    if mask.ndim == 2 and mask.shape == (b, t):
        return (mask > 0).reshape(b, 1, 1, t)
    if mask.ndim == 3 and mask.shape == (b, s, t):
        return (mask > 0).reshape(b, 1, s, t)
    if mask.ndim == 4 and mask.shape[:2] == (b, 1) and mask.shape[2] >= past + s and \
            mask.shape[3] >= t:
        return mask[:, :, past:past + s, :t] > 0
    raise ValueError(f"{what} of shape {list(mask.shape)} fits none of the forms (B={b}), "
                     f"(2B), (3B + 2), (B, T={t}), (B, S={s}, T) or (B, 1, M, M)")


def _append(past, new, past_len):
    """(present, attended part): ``past`` + ``new`` along the sequence axis (axis 2), or
    with a shared buffer (``past_len`` given) the buffer with ``new`` written at past_len."""
    if past is None:
        return new, new
    if past_len is None:
        present = np.concatenate((past.astype(new.dtype, copy=False), new), axis=2)
        return present, present
    end = past_len + new.shape[2]
    if end > past.shape[2]:
        raise ValueError(f"the shared past/present buffer holds {past.shape[2]} positions; "
                         f"{past_len} past and {new.shape[2]} new ones do not fit")
    present = past.astype(new.dtype, copy=True)
    present[:, :, past_len:end] = new
    return present, present[:, :, :end]


@register("Attention", since=1, domain=MS_DOMAIN)
def attention(ctx):
    heads = int(ctx.attr("num_heads"))
    sizes = ctx.attr("qkv_hidden_sizes")
    causal = bool(ctx.attr("unidirectional", 0))
    scale_attr = ctx.attr("scale")
    filter_value = float(ctx.attr("mask_filter_value", MASK_FILTER))
    share = bool(ctx.attr("past_present_share_buffer", 0))
    rotary = bool(ctx.attr("do_rotary", 0))
    rotary_dim = int(ctx.attr("rotary_embedding_dim", 0))
    want_present = ctx.num_outputs > 1 and bool(ctx.output_names[1])

    def run(x, weights, bias=None, mask_index=None, past=None, attention_bias=None,
            past_sequence_length=None):
        dtype = x.dtype
        work = work_dtype(dtype)
        qh, kh, vh = (int(v) for v in sizes) if sizes else (weights.shape[1] // 3,) * 3
        if qh + kh + vh != weights.shape[1] or qh != kh:
            raise ValueError(f"qkv_hidden_sizes {[qh, kh, vh]} do not fit weights of shape "
                             f"{list(weights.shape)} (Q and K sizes must be equal, the sum the "
                             f"weights' second dimension)")
        proj = np.matmul(widen(x).astype(work, copy=False), widen(weights).astype(work,
                                                                                  copy=False))
        if bias is not None:
            proj += widen(bias).astype(work, copy=False)
        b, s = x.shape[:2]
        q = to_heads(proj[..., :qh], heads)
        k = np.ascontiguousarray(to_heads(proj[..., qh:qh + kh], heads))
        v = np.ascontiguousarray(to_heads(proj[..., qh + kh:], heads))
        past_len = None
        if past is not None:
            if share:
                if past_sequence_length is None:
                    raise ValueError("past_present_share_buffer needs past_sequence_length")
                past_len = int(np.asarray(past_sequence_length).reshape(-1)[0])
            elif past.shape[3] and sizes and qh != vh:
                raise ValueError("with past state, Q, K and V hidden sizes must be equal")
        pk = None if past is None else widen(past[0])
        pv = None if past is None else widen(past[1])
        p = 0 if past is None else (past_len if past_len is not None else past.shape[3])
        if rotary:  # on the new Q and K rows, before K joins the cache
            q, k = rotary_heads(q, p, rotary_dim), rotary_heads(k, p, rotary_dim)
        present_k, k_all = _append(pk, k, past_len)
        present_v, v_all = _append(pv, v, past_len)
        t = k_all.shape[2]
        allowed = None
        if mask_index is not None:
            allowed = _key_mask(mask_index, b, s, t, p, "mask_index")
        mask = _mask(allowed, causal, s, t, p, filter_value, attention_bias, work)
        scale = 1 / np.sqrt(q.shape[-1]) if scale_attr is None else float(scale_attr)
        y, _, _ = attend(q, k_all, v_all, scale, mask)
        out = [narrow(from_heads(y), dtype)]
        if want_present:
            out.append(narrow(np.stack((present_k, present_v)), dtype))
        return tuple(out)

    return run


def _beam_gather(k, v, indirection, past_len):
    """Beam search over a shared cache: query row ``i = b * beam + j`` reads cached position
    ``t < past_len`` from the row of beam ``indirection[b, j, t]`` of batch entry b; the new
    token's own row stays."""
    rows = k.shape[0]
    if indirection.ndim != 3 or indirection.shape[0] * indirection.shape[1] != rows:
        raise ValueError(f"cache_indirection must be (batch, beam_width, max_sequence_length) "
                         f"with batch * beam_width = {rows} query rows, got "
                         f"{list(indirection.shape)}")
    beam = indirection.shape[1]
    if indirection.shape[2] < past_len:
        raise ValueError(f"cache_indirection covers {indirection.shape[2]} positions, fewer "
                         f"than past_sequence_length {past_len}")
    idx = indirection[:, :, :past_len].astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= beam):
        raise ValueError(f"cache_indirection holds beam indices outside [0, {beam})")
    source = (np.arange(rows) // beam * beam)[:, None] + idx.reshape(rows, past_len)
    positions = np.arange(past_len)[None, :]
    k, v = k.copy(), v.copy()
    # fancy indexing moves the (rows, past_len) axes first: put heads back in front of them
    k[:, :, :past_len] = k[source, :, positions].transpose(0, 2, 1, 3)
    v[:, :, :past_len] = v[source, :, positions].transpose(0, 2, 1, 3)
    return k, v


def rotary_heads(x: np.ndarray, past: int, rotary_dim: int) -> np.ndarray:
    """Attention's ``do_rotary`` on (B, N, S, H) heads, as onnxruntime's CUDA kernel computes
    it (no caches): row s sits at position ``past + s``; channel pairs (i, i + R/2) of the
    first R = ``rotary_embedding_dim`` (default H) channels turn by ``position * 10000 **
    (-2i / R)``."""
    h = x.shape[-1]
    rot = rotary_dim or h
    if rot % 2 or rot > h:
        raise ValueError(f"rotary_embedding_dim {rot} must be even and at most the head size "
                         f"{h}")
    positions = past + np.arange(x.shape[2], dtype=np.float64)
    angles = positions[:, None] * 10000.0 ** (-np.arange(0, rot, 2, dtype=np.float64) / rot)
    cos = np.cos(angles).astype(x.dtype)[None]  # (1, S, R/2), broadcast over the batch
    sin = np.sin(angles).astype(x.dtype)[None]
    return rotate(x.transpose(0, 2, 1, 3), cos, sin, False).transpose(0, 2, 1, 3)


def _split_packed(x: np.ndarray, parts: int) -> list[np.ndarray]:
    """(B, S, N, parts, H) -> ``parts`` arrays (B, N, S, H)."""
    return [x[:, :, :, i].transpose(0, 2, 1, 3) for i in range(parts)]


def _add_bias(x4: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """x4 (B, N, S, H) plus a bias slice of N*H entries."""
    if bias is None:
        return x4
    n, h = x4.shape[1], x4.shape[3]
    return x4 + bias.reshape(1, n, 1, h)


@register("MultiHeadAttention", since=1, domain=MS_DOMAIN)
def multi_head_attention(ctx):
    heads = int(ctx.attr("num_heads"))
    causal = bool(ctx.attr("unidirectional", 0))
    scale_attr = ctx.attr("scale")
    filter_value = float(ctx.attr("mask_filter_value", MASK_FILTER))
    names = list(ctx.output_names) + [""] * 3
    want = [bool(n) for n in names]

    def run(query, key=None, value=None, bias=None, key_padding_mask=None,
            attention_bias=None, past_key=None, past_value=None, past_sequence_length=None,
            cache_indirection=None):
        dtype = query.dtype
        work = work_dtype(dtype)

        def w(a):
            return None if a is None else widen(a).astype(work, copy=False)

        wb = w(bias)
        cross_cached = False
        if query.ndim == 5:  # packed QKV (B, S, N, 3, H)
            if key is not None or value is not None:
                raise ValueError("packed QKV query takes no key or value")
            q, k, v = _split_packed(w(query), 3)
            d = heads * q.shape[-1]
            if wb is not None:
                q, k, v = _add_bias(q, wb[:d]), _add_bias(k, wb[d:2 * d]), _add_bias(v,
                                                                                    wb[2 * d:])
        else:
            if query.ndim != 3:
                raise ValueError(f"query must be (B, S, D) or packed (B, S, N, 3, H), got "
                                 f"shape {list(query.shape)}")
            d = query.shape[2]
            wq = w(query)
            q = to_heads(wq if wb is None else wq + wb[:d], heads)
            if key is None:
                raise ValueError("key is required unless query packs Q, K and V")
            if key.ndim == 5:  # packed KV (B, L, N, 2, H)
                if value is not None:
                    raise ValueError("packed KV key takes no value")
                k, v = _split_packed(w(key), 2)
                if wb is not None:
                    k, v = _add_bias(k, wb[d:2 * d]), _add_bias(v, wb[2 * d:])
            elif key.ndim == 4:  # already in heads (B, N, L, H): cross attention
                if value is None or value.ndim != 4:
                    raise ValueError("a key in heads (B, N, L, H) needs a value in heads")
                k, v = w(key), w(value)
                cross_cached = True
            else:
                if value is None:
                    raise ValueError("key (B, L, D) needs value (B, L, Dv)")
                wk, wv = w(key), w(value)
                if wb is not None:
                    wk, wv = wk + wb[d:2 * d], wv + wb[2 * d:]
                k, v = to_heads(wk, heads), to_heads(wv, heads)
        b, n, s, h = q.shape
        p = 0
        past_len = None
        if not cross_cached and (past_key is not None or past_value is not None):
            if past_key is None or past_value is None:
                raise ValueError("past_key and past_value go together")
            p = past_key.shape[2]
            if past_sequence_length is not None:  # one shared past/present buffer
                past_len = p = int(np.asarray(past_sequence_length).reshape(-1)[0])
        elif past_sequence_length is not None or cache_indirection is not None:
            raise ValueError("past_sequence_length and cache_indirection need past_key and "
                             "past_value of the shared (B, N, max_sequence_length, H) buffer")
        present_k, k = _append(None if cross_cached else w(past_key), k, past_len)
        present_v, v = _append(None if cross_cached else w(past_value), v, past_len)
        if cache_indirection is not None:
            if past_len is None:
                raise ValueError("cache_indirection needs past_sequence_length")
            if attention_bias is not None:
                raise ValueError("attention_bias with cache_indirection: onnxruntime's CPU "
                                 "kernel reads the bias rows of other beams; not supported")
            if s == 1:  # only a decoding step reads the cache through the beams' indices
                k, v = _beam_gather(k, v, np.asarray(cache_indirection), past_len)
        t = k.shape[2]
        allowed = None
        if key_padding_mask is not None:
            allowed = _key_mask(key_padding_mask, b, s, t, p, "key_padding_mask")
        mask = _mask(allowed, causal, s, t, p, filter_value, attention_bias, work)
        scale = 1 / np.sqrt(h) if scale_attr is None else float(scale_attr)
        y, raw, _ = attend(q, k, v, scale, mask, want_scores=want[3])
        out = [narrow(from_heads(y), dtype), None, None, None]
        if want[1]:
            out[1] = narrow(np.ascontiguousarray(present_k), dtype)
        if want[2]:
            out[2] = narrow(np.ascontiguousarray(present_v), dtype)
        if want[3]:
            out[3] = narrow(raw, dtype)
        return tuple(out)

    return run


def rotate(x4: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> np.ndarray:
    """RoPE on (B, S, N, H) work-dtype ``x4``: the first 2 * cos.shape[-1] channels of each
    head are rotated by angles whose cos/sin are ``cos``/``sin`` (B, S, R/2); a new array."""
    half = cos.shape[-1]
    rot = 2 * half
    if rot > x4.shape[-1]:
        raise ValueError(f"the rotary width {rot} exceeds the head size {x4.shape[-1]}")
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    part = x4[..., :rot]
    if interleaved:
        x1, x2 = part[..., 0::2], part[..., 1::2]
    else:
        x1, x2 = part[..., :half], part[..., half:]
    out = x4.copy()
    if interleaved:
        out[..., 0:rot:2] = x1 * c - x2 * s
        out[..., 1:rot:2] = x2 * c + x1 * s
    else:
        out[..., :half] = x1 * c - x2 * s
        out[..., half:rot] = x2 * c + x1 * s
    return out


def cache_rows(cache: np.ndarray, positions: np.ndarray, work) -> np.ndarray:
    positions = positions.astype(np.int64, copy=False)
    if positions.size and (positions.min() < 0 or positions.max() >= cache.shape[0]):
        raise ValueError(f"position {int(positions.max())} is outside the cos/sin caches "
                         f"[0, {cache.shape[0]})")
    return widen(cache).astype(work, copy=False)[positions]


@register("RotaryEmbedding", since=1, domain=MS_DOMAIN)
def rotary_embedding(ctx):
    interleaved = bool(ctx.attr("interleaved", 0))
    heads_attr = int(ctx.attr("num_heads", 0))
    rot_attr = int(ctx.attr("rotary_embedding_dim", 0))
    # ``scale`` and ``is_packed_batching`` change nothing in onnxruntime's CPU kernel (a
    # ragged batch there still comes as (B, S, ...) with per-row position_ids): ignored alike

    def run(x, position_ids, cos_cache, sin_cache):
        dtype = x.dtype
        work = work_dtype(dtype)
        wx = widen(x).astype(work, copy=False)
        half = cos_cache.shape[1]
        if rot_attr and rot_attr != 2 * half:
            raise ValueError(f"rotary_embedding_dim {rot_attr} does not match the caches' "
                             f"width {half} (half the rotated width)")
        if x.ndim == 4:  # (B, N, S, H)
            x4 = wx.transpose(0, 2, 1, 3)
        elif x.ndim == 3:
            b, s, hidden = x.shape
            if heads_attr:
                head = hidden // heads_attr
            elif rot_attr:
                raise ValueError("rotary_embedding_dim needs num_heads for 3-D input")
            else:
                head = 2 * half
            if head == 0 or hidden % head:
                raise ValueError(f"hidden size {hidden} is not a multiple of the head size "
                                 f"{head}")
            x4 = wx.reshape(b, s, hidden // head, head)
        else:
            raise ValueError(f"input must be 3-D or 4-D, got shape {list(x.shape)}")
        b, s = x4.shape[:2]
        pos = np.asarray(position_ids)
        if pos.size == 1 and pos.shape != (b, s):
            positions = int(pos.reshape(-1)[0]) + np.arange(s)[None, :].repeat(b, axis=0)
        elif pos.shape == (b, s):
            positions = pos
        else:
            raise ValueError(f"position_ids must have one element or shape ({b}, {s}), got "
                             f"{list(pos.shape)}")
        cos, sin = cache_rows(cos_cache, positions, work), cache_rows(sin_cache, positions,
                                                                       work)
        out = rotate(x4, cos, sin, interleaved)
        out = out.transpose(0, 2, 1, 3) if x.ndim == 4 else out.reshape(x.shape)
        return (narrow(np.ascontiguousarray(out), dtype),)

    return run
