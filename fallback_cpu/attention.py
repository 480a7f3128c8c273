"""Attention-family kernels of the NumPy provider: Attention (23/24/25), RotaryEmbedding,
SwiGLU, LinearAttention and CausalConvWithState.

Attention computes in float32 (float64 for double inputs) and rounds once at the end.
Grouped-query heads are matched by reshaping Q into (B, H_kv, group, S, D), so K and V
are never repeated.
"""
from __future__ import annotations

import numpy as np

from tritort.dtypes import numpy_dtype
from tritort.runstate import check as check_terminate

from .nn_util import narrow, sigmoid, widen
from .registry import register


def _to_heads(x, heads):
    """(B, S, H*D) -> (B, H, S, D) view."""
    b, s, hd = x.shape
    return x.reshape(b, s, heads, hd // heads).transpose(0, 2, 1, 3)


def _allowed_bias(allowed, dtype):
    return np.where(allowed, dtype.type(0), dtype.type(-np.inf))


class _AttentionParams:
    def __init__(self, ctx):
        self.scale = ctx.attr("scale")
        self.is_causal = bool(ctx.attr("is_causal", 0))
        self.q_heads = ctx.attr("q_num_heads")
        self.kv_heads = ctx.attr("kv_num_heads")
        self.softcap = float(ctx.attr("softcap", 0.0))
        self.mode = int(ctx.attr("qk_matmul_output_mode", 0))
        precision = ctx.attr("softmax_precision")
        self.softmax_dtype = numpy_dtype(precision) if precision is not None else None
        self.left = int(ctx.attr("left_window_size", -1))
        self.right = int(ctx.attr("right_window_size", -1))
        self.want_qk = ctx.num_outputs > 3 and bool(ctx.output_names[3])

    def bias(self, mask, q_len, kv_len, past_len, nonpad, batch, dtype):
        """Additive (broadcastable to (B, H, q, kv)) bias from mask, causality, window, padding."""
        terms = []
        if mask is not None:
            short = kv_len - mask.shape[-1]
            if mask.dtype == np.bool_:
                bias = _allowed_bias(mask, dtype)
            else:
                bias = widen(mask).astype(dtype)
            if short > 0:  # a short mask covers the first keys; the rest is masked out
                bias = np.pad(bias, [(0, 0)] * (bias.ndim - 1) + [(0, short)],
                              constant_values=-np.inf)
            terms.append(bias)
        i = np.arange(q_len)[:, None]
        j = np.arange(kv_len)[None, :]
        # absolute query position offset: cached keys, or valid keys before the query block
        if nonpad is not None and past_len == 0:
            offset = (nonpad.astype(np.int64) - q_len).reshape(-1, 1, 1, 1)
        else:
            offset = past_len
        if self.is_causal:
            terms.append(_allowed_bias(j <= i + offset, dtype))
        if self.left >= 0 or self.right >= 0:
            diff = i + offset - j
            allowed = np.ones(np.shape(diff), dtype=bool)
            if self.left >= 0:
                allowed &= diff <= self.left
            if self.right >= 0:
                allowed &= -diff <= self.right
            terms.append(_allowed_bias(allowed, dtype))
        if nonpad is not None:
            valid = np.arange(kv_len)[None, :] < nonpad.astype(np.int64)[:, None]
            terms.append(_allowed_bias(valid.reshape(batch, 1, 1, kv_len), dtype))
        if not terms:
            return None
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    def run(self, q, k, v, mask=None, past_key=None, past_value=None, nonpad=None):
        out_dtype = q.dtype
        three_d = q.ndim == 3
        if three_d:
            q, k, v = _to_heads(q, self.q_heads), _to_heads(k, self.kv_heads), \
                _to_heads(v, self.kv_heads)
        present_key = k if past_key is None else np.concatenate((past_key, k), axis=2)
        present_value = v if past_value is None else np.concatenate((past_value, v), axis=2)
        wq, wk, wv = widen(q), widen(present_key), widen(present_value)
        work = wq.dtype
        # float16/bfloat16: round every step to the input type, as the op's function body does
        if work != out_dtype:
            def rnd(a):
                return a.astype(out_dtype).astype(work)
        else:
            def rnd(a):
                return a
        b, hq, q_len, d = wq.shape
        hkv, kv_len = wk.shape[1], wk.shape[2]
        group = hq // hkv
        scale = (1 / np.sqrt(d)) if self.scale is None else float(self.scale)
        root = rnd(np.asarray(np.sqrt(scale), dtype=work))  # the spec scales Q and K by sqrt
        # (B, Hkv, group, q, D) @ (B, Hkv, 1, D, kv): each K/V head serves its query group
        qg = rnd(wq * root).reshape(b, hkv, group, q_len, d)
        kt = rnd(wk * root)[:, :, None].transpose(0, 1, 2, 4, 3)
        scores = rnd(np.matmul(qg, kt)).reshape(b, hq, q_len, kv_len)
        raw = scores
        if self.softcap > 0:
            cap = work.type(self.softcap)
            scores = rnd(rnd(np.tanh(rnd(scores / cap))) * cap)
        past_len = 0 if past_key is None else past_key.shape[2]
        bias = self.bias(mask, q_len, kv_len, past_len, nonpad, b, work)
        biased = scores if bias is None else rnd(scores + rnd(bias))
        if self.softmax_dtype is not None:
            soft = np.dtype(self.softmax_dtype)
            logits = biased.astype(soft).astype(widen(np.zeros(0, soft)).dtype)
            low = soft if soft != logits.dtype else None
        else:
            logits, low = biased, (out_dtype if work != out_dtype else None)

        def srnd(a):
            return a if low is None else a.astype(low).astype(logits.dtype)
        row_max = np.max(logits, axis=-1, keepdims=True)
        dead = np.isneginf(row_max)  # fully masked rows give zeros, not NaN
        e = srnd(np.exp(srnd(logits - np.where(dead, 0, row_max))))
        if low is None:
            total = np.sum(e, axis=-1, keepdims=True)
        else:  # summed in the low type itself, rounding at each add like the function body
            total = np.sum(e.astype(low), axis=-1, keepdims=True).astype(logits.dtype)
        probs = srnd(e / np.where(total == 0, 1, total))
        if bias is not None:
            probs = np.where(np.isneginf(np.max(bias, axis=-1, keepdims=True)), 0, probs)
        probs = rnd(probs.astype(work))
        y = np.matmul(probs.reshape(b, hkv, group, q_len, kv_len), wv[:, :, None])
        y = y.reshape(b, hq, q_len, -1)
        if three_d:
            y = y.transpose(0, 2, 1, 3).reshape(b, q_len, -1)
        outputs = [narrow(np.ascontiguousarray(y), out_dtype), present_key, present_value]
        if self.want_qk:
            qk = {0: raw, 1: scores, 2: biased, 3: probs}.get(self.mode, raw)
            outputs.append(narrow(np.ascontiguousarray(qk), out_dtype))
        return tuple(outputs)


@register("Attention", since=[23, 24, 25])
def attention(ctx):
    p = _AttentionParams(ctx)
    if ctx.since_version == 23:  # no nonpad_kv_seqlen input before 24
        return lambda q, k, v, mask=None, pk=None, pv=None: p.run(q, k, v, mask, pk, pv)
    return p.run


@register("RotaryEmbedding", since=[23])
def rotary_embedding(ctx):
    interleaved = bool(ctx.attr("interleaved", 0))
    num_heads = int(ctx.attr("num_heads", 0))
    rot_dim_attr = int(ctx.attr("rotary_embedding_dim", 0))

    def run(x, cos, sin, position_ids=None):
        four_d = x.ndim == 4
        wx = widen(x)
        # work as (B, S, H, D)
        if four_d:
            work = wx.transpose(0, 2, 1, 3)
        else:
            b, s, hidden = wx.shape
            work = wx.reshape(b, s, num_heads, hidden // num_heads)
        rot = rot_dim_attr or work.shape[-1]
        wc, ws = widen(cos), widen(sin)
        if position_ids is not None:
            wc, ws = wc[position_ids], ws[position_ids]
        wc, ws = wc[:, :, None, :], ws[:, :, None, :]  # (B, S, 1, rot/2)
        part = work[..., :rot]
        if interleaved:
            x1, x2 = part[..., 0::2], part[..., 1::2]
        else:
            x1, x2 = part[..., :rot // 2], part[..., rot // 2:]
        real = wc * x1 - ws * x2
        imag = ws * x1 + wc * x2
        out = work.copy()
        if interleaved:
            out[..., 0:rot:2], out[..., 1:rot:2] = real, imag
        else:
            out[..., :rot // 2], out[..., rot // 2:rot] = real, imag
        out = out.transpose(0, 2, 1, 3) if four_d else out.reshape(x.shape)
        return (narrow(np.ascontiguousarray(out), x.dtype),)

    return run


@register("SwiGLU", since=[28])
def swiglu(ctx):
    alpha = float(ctx.attr("alpha", 1.0))

    def run(a, b):
        wa = widen(a)
        return (narrow(wa * sigmoid(wa * wa.dtype.type(alpha)) * widen(b), a.dtype),)

    return run


@register("LinearAttention", since=[27])
def linear_attention(ctx):
    rule = ctx.attr("update_rule", "gated_delta")
    q_heads = int(ctx.attr("q_num_heads"))
    kv_heads = int(ctx.attr("kv_num_heads"))
    scale_attr = float(ctx.attr("scale", 0.0))
    gated = rule in ("gated", "gated_delta")
    delta = rule in ("delta", "gated_delta")

    def run(query, key, value, past_state=None, decay=None, beta=None):
        b, t, _ = query.shape
        q4 = _to_heads(query.astype(np.float32), q_heads)
        k4 = _to_heads(key.astype(np.float32), kv_heads)
        v4 = _to_heads(value.astype(np.float32), kv_heads)
        d_k, d_v = q4.shape[-1], v4.shape[-1]
        group = q_heads // kv_heads
        if gated:  # (B, Hkv, T, 1 or d_k), log-space decay
            g = decay.astype(np.float32)
            g4 = (g.reshape(b, t, kv_heads, 1).transpose(0, 2, 1, 3) if g.shape[-1] == kv_heads
                  else _to_heads(g, kv_heads))
            decay_factor = np.exp(g4)
        if delta:
            be = beta.astype(np.float32)
            beta4 = be.reshape(b, t, be.shape[-1], 1).transpose(0, 2, 1, 3)
        state = (np.zeros((b, kv_heads, d_k, d_v), dtype=np.float32) if past_state is None
                 else past_state.astype(np.float32))
        scale = scale_attr if scale_attr != 0.0 else 1 / np.sqrt(d_k)
        out = np.empty((b, kv_heads, group, t, d_v), dtype=np.float32)
        qg = q4.reshape(b, kv_heads, group, t, d_k)
        for step in range(t):  # the recurrence is sequential in time
            check_terminate()
            k_t, v_t = k4[:, :, step], v4[:, :, step]
            if gated:
                state = state * decay_factor[:, :, step][..., None]
            if delta:
                recalled = np.matmul(k_t[:, :, None, :], state)[:, :, 0]  # S^T k
                v_t = beta4[:, :, step] * (v_t - recalled)
            state = state + k_t[..., :, None] * v_t[..., None, :]
            out[:, :, :, step] = np.matmul(qg[:, :, :, step], state) * scale
        y = out.reshape(b, q_heads, t, d_v).transpose(0, 2, 1, 3).reshape(b, t, q_heads * d_v)
        state_dtype = past_state.dtype if past_state is not None else query.dtype
        return narrow(y, query.dtype), narrow(state, state_dtype)

    return run


@register("CausalConvWithState", since=[27])
def causal_conv_with_state(ctx):
    activation = ctx.attr("activation", "none")

    def run(x, weight, bias=None, past_state=None):
        b, c, _ = x.shape
        k = weight.shape[2]
        pad = (np.zeros((b, c, k - 1), dtype=x.dtype) if past_state is None else past_state)
        padded = np.concatenate([pad, x], axis=2)
        wp = widen(padded)
        ww = widen(weight)[:, 0, :]  # (C, k)
        length = x.shape[2]
        y = np.zeros((b, c, length), dtype=wp.dtype)
        for tap in range(k):  # depthwise: one multiply-add per tap
            y += wp[:, :, tap:tap + length] * ww[None, :, tap:tap + 1]
        if bias is not None:
            y += widen(bias)[None, :, None]
        if activation in ("silu", "swish"):
            y = narrow(y, x.dtype)
            yf = y.astype(np.float32)
            y = yf * sigmoid(yf)
        state = padded[:, :, padded.shape[2] - (k - 1):]
        return narrow(y, x.dtype), np.ascontiguousarray(state)

    return run
