"""Kernels for the ops the optimizer writes when it fuses a pattern (domain ``ai.tritort``).

ScaledDotProductAttention replaces the exporters' ``MatMul(Q, KT) -> Mul/Div(scale) ->
Add(mask) -> Softmax(-1) -> MatMul(V)`` chain:

    Y = softmax(scale * (Q @ KT) + mask [+ causal -inf], axis=-1) @ V

with Q [B, H, Sq, D], KT [B, Hk, D, Sk] (the key already transposed), V [B, Hk, Sk, Dv],
an optional additive float mask broadcastable to [B, H, Sq, Sk] and H a multiple of Hk
(query head h reads kv head h // (H // Hk)); batch and head dims of size 1 broadcast, as they
do in the unfused MatMuls. ``is_causal=1`` lets query i see keys j <= i
(upper-left alignment, ai.onnx Attention's rule without a cache). A row whose scores are all
-inf gives NaN, as the unfused graph does in onnxruntime (its Softmax divides 0 by 0 there).

The work is a handful of whole-tensor numpy calls and no Python loop over batch or heads:
one batched matmul writes the scores into a float32 buffer (float64 for double inputs) that
each thread keeps between calls; grouped heads stack along Q's rows ([B, Hk, H/Hk*Sq, D]), so
K and V are never repeated; the scale goes into whichever of Q, KT or the scores is smallest;
the mask and the causal -inf are applied in place; the softmax runs in place, shifted by each
head's max (numpy's per-row max along a short last axis costs more than the exp), summed by
BLAS, with the rare rows far below their head's max redone exactly; its division is applied
to the smaller of the probabilities and the output.
"""
from __future__ import annotations

import functools
import math
import threading

import numpy as np

from tritort.contracts import INTERNAL_DOMAIN
from tritort.contracts import attention_shapes

from .nn_util import narrow
from .registry import register


def _work_dtype(x: np.ndarray) -> np.dtype:
    return np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)


class _Scratch(threading.local):
    """Work buffers per thread, kept between calls and grown as needed: a fresh array of
    scores costs its page faults on every call (measured at BERT-base sizes: more than the
    whole softmax)."""

    def __init__(self) -> None:
        self.slots: dict[str, np.ndarray] = {}

    def get(self, slot: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        size = math.prod(shape)
        buf = self.slots.get(slot)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = self.slots[slot] = np.empty(max(size, 1), dtype=dtype)
        return buf[:size].reshape(shape)


_SCRATCH = _Scratch()


def _as_work(x: np.ndarray, slot: str, work: np.dtype, factor: float | None) -> np.ndarray:
    """``x`` in the work dtype, times ``factor`` if given: ``x`` itself when nothing changes,
    else one pass into the thread's scratch buffer ``slot``."""
    if factor is None and x.dtype == work:
        return x
    out = _SCRATCH.get(slot, x.shape, work)
    if x.dtype == np.float16 and work == np.float32:
        # a table lookup of the 2**16 bit patterns: about twice numpy's float16 cast
        np.take(_HALF_TO_FLOAT, x.view(np.uint16), out=out)
        if factor is not None:
            out *= work.type(factor)
    elif factor is None:
        np.copyto(out, x, casting="unsafe")
    else:
        np.multiply(x, work.type(factor), out=out, dtype=work, casting="unsafe")
    return out


_HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16) \
    .astype(np.float32)


class _CausalMasks:
    """The strictly-upper triangle [Sq, Sk] per size, built once: keys j > i are hidden."""

    def __init__(self) -> None:
        self._masks: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def get(self, sq: int, sk: int) -> np.ndarray:
        with self._lock:
            mask = self._masks.get((sq, sk))
            if mask is None:
                mask = np.triu(np.ones((sq, sk), dtype=bool), k=1)
                self._masks[(sq, sk)] = mask
            return mask


def _shapes(q, kt, v) -> tuple[int, ...]:
    if q.ndim != 4 or kt.ndim != 4 or v.ndim != 4:
        raise ValueError(f"ScaledDotProductAttention: Q, KT and V must be 4-D, got ranks "
                         f"{q.ndim}, {kt.ndim}, {v.ndim}")
    fit = attention_shapes(q.shape, kt.shape, v.shape)
    if fit is None:
        raise ValueError(f"ScaledDotProductAttention: Q {list(q.shape)}, KT {list(kt.shape)} "
                         f"and V {list(v.shape)} do not fit [B, H, Sq, D], [B, Hk, D, Sk] and "
                         f"[B, Hk, Sk, Dv] (H a multiple of Hk; size-1 batch and head dims "
                         f"broadcast)")
    return (*fit, q.shape[2], q.shape[3], kt.shape[3], v.shape[3])


@register("ScaledDotProductAttention", since=1, domain=INTERNAL_DOMAIN)
def scaled_dot_product_attention(ctx):
    return _Sdpa(float(ctx.attr("scale", 1.0)), bool(ctx.attr("is_causal", 0)))


class _Sdpa:
    """The kernel of one node: ``__call__(q, kt, v, mask=None) -> (y,)``."""

    def __init__(self, scale: float, causal: bool):
        self.scale, self.causal = scale, causal
        self.triangles = _CausalMasks()

    def __call__(self, q, kt, v, mask=None):
        b, h, hk, sq, d, sk, dv = _shapes(q, kt, v)
        work = _work_dtype(q)
        if sk == 0 or hk == 0:  # empty softmax rows times an empty V: zeros, as unfused
            return (np.zeros((b, h, sq, dv), dtype=q.dtype),)
        # size-1 batch / head dims as zero-stride views (Q's grouping below copies those)
        q = np.broadcast_to(q, (b, h, sq, d))
        kt, v = np.broadcast_to(kt, (b, hk, d, sk)), np.broadcast_to(v, (b, hk, sk, dv))
        group = h // hk
        # the scale multiplies the smallest of Q, KT and the scores
        where_scale = None
        if self.scale != 1.0:
            where_scale = min((q.size, "q"), (kt.size, "k"), (b * h * sq * sk, "s"))[1]
        qw = _as_work(q, "q", work, self.scale if where_scale == "q" else None)
        kw = _as_work(kt, "k", work, self.scale if where_scale == "k" else None)
        if mask is not None:
            mask = mask.astype(work, copy=False)
        # grouped heads: the query heads of one kv head stack along the rows
        scores = _SCRATCH.get("scores", (b, hk, group * sq, sk), work)
        np.matmul(qw.reshape(b, hk, group * sq, d), kw, out=scores)
        rows = scores.reshape(b, h, sq, sk)
        if where_scale == "s":
            rows *= work.type(self.scale)
        if mask is not None:
            try:
                np.add(rows, mask, out=rows)
            except ValueError:
                raise ValueError(f"ScaledDotProductAttention: mask {list(mask.shape)} does not "
                                 f"broadcast to the scores [{b}, {h}, {sq}, {sk}]") from None
        if self.causal:
            np.copyto(rows, work.type(-np.inf), where=self.triangles.get(sq, sk))
        total = _exp_shifted(rows)
        low = total[..., 0] < _safe_total(work, sk)  # also NaN: recompute those rows exactly
        if low.any():
            self._exact_rows(np.nonzero(low), rows, total, qw, kw, mask, where_scale, group)
        vw = _as_work(v, "v", work, None)
        if dv > sk:  # normalize whichever is smaller: the probabilities or the output
            np.divide(rows, total, out=rows)
        y = np.matmul(scores, vw).reshape(b, h, sq, dv)
        if dv <= sk:
            np.divide(y, total, out=y)
        return (narrow(y, q.dtype),)

    def _exact_rows(self, index, rows, total, qw, kw, mask, where_scale, group):
        """Softmax numerators and sums of the rows ``index`` (b, h, i) from their scores
        again, shifted by each row's own max: rows far below their head's max, and rows that
        are all -inf (these become NaN, as in onnxruntime)."""
        bi, hi, ii = index
        b, h, sq, sk = rows.shape
        d = qw.shape[-1]
        step = max(1, _GATHER_LIMIT // max(1, d * sk))  # rows per chunk: bounded gathers
        full_mask = None if mask is None else np.broadcast_to(mask, rows.shape)
        keys = np.arange(sk)
        for start in range(0, len(bi), step):
            cb, ch, ci = (a[start:start + step] for a in (bi, hi, ii))
            s = np.matmul(qw[cb, ch, ci][:, None, :], kw[cb, ch // group])[:, 0]
            if where_scale == "s":
                s *= s.dtype.type(self.scale)
            if full_mask is not None:
                s += full_mask[cb, ch, ci]
            if self.causal:
                s[keys[None, :] > ci[:, None]] = -np.inf
            with np.errstate(invalid="ignore"):
                e = np.exp(s - s.max(axis=-1, keepdims=True))
            rows[cb, ch, ci] = e
            total[cb, ch, ci, 0] = e.sum(axis=-1)


_GATHER_LIMIT = 1 << 22  # elements of K gathered at once while recomputing rows


def _exp_shifted(rows: np.ndarray) -> np.ndarray:
    """``rows = exp(rows - head_max)`` in place; returns the row sums [..., 1].

    A softmax may shift a row by any constant; the exact row max costs a slow reduction along
    the short last axis, so every row of a head is shifted by the head's max (a reduction
    over one contiguous block). Rows whose own max lies far below it lose their precision
    to underflow; the caller finds them by their small sum and redoes them."""
    b, h, sq, sk = rows.shape
    heads = rows.reshape(b * h, sq * sk)
    if heads.size:
        top = heads.max(axis=1).reshape(b, h, 1, 1)
        with np.errstate(invalid="ignore"):  # -inf - -inf: NaN rows are redone
            np.subtract(rows, top, out=rows)
    np.exp(rows, out=rows)
    # the sums by BLAS (a matrix-vector product): numpy's last-axis sum is several times slower
    return np.matmul(rows, np.ones((sk, 1), dtype=rows.dtype))


@functools.lru_cache(maxsize=64)
def _safe_total(work: np.dtype, sk: int) -> float:
    """Below this sum a row's max may lie so far under the shift that values which still
    count at the work type's precision were lost to underflow (the max's own term is at
    least sum / sk)."""
    info = np.finfo(work)
    margin = -np.log(info.eps) + 4
    return float(sk * info.tiny * np.exp(margin))
