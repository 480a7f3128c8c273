"""onnxruntime's normalization operators (the ``com.microsoft`` contrib set, and the two it
registers in the default domain) on the NumPy provider.

- ``com.microsoft`` SkipLayerNormalization / SkipSimplifiedLayerNormalization:
  ``s = input + skip (+ bias)`` normalized over the last axis (mean and variance, or the
  root mean square only), times ``gamma`` (plus ``beta``). ``skip`` may be (B, S, H),
  (1, S, H) or (S, H); outputs: y, mean, inv_std_var (float32, shape (..., 1); the
  simplified form has no mean and reports zeros, as onnxruntime does) and the sum ``s``.
- ``com.microsoft`` EmbedLayerNormalization: BERT's embedding block, word + position
  (+ segment) embeddings, layer-normalized; ``mask_index`` counts each row's nonzero mask
  entries (zeros without a mask); ``embedding_sum`` is the sum before normalization.
- default domain SimplifiedLayerNormalization (RMS normalization over ``axis``..end, scale in
  the scale's type, ``inv_std_var`` in the stash type) and LayerNormalization since 1
  (onnxruntime's pre-opset-17 form: the same computation as ONNX's LayerNormalization-17).
  onnx's checker knows neither at those versions; see the loader note in the README.

Statistics are computed in float32 (float64 for double inputs) and the result rounded to the
input's type once; float16/bfloat16 sums are rounded to the type before they are normalized,
as onnxruntime stores the sum first.
"""
from __future__ import annotations

import math

import numpy as np

from tritort.dtypes import numpy_dtype

from . import norm
from .nn_util import narrow, widen
from .registry import register

MS_DOMAIN = "com.microsoft"
_SKIP_EPSILON = 1e-12  # the contrib schemas' default (SkipLayerNorm, EmbedLayerNorm)


def _work_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def normalize_rows(s: np.ndarray, gamma, beta, eps: float, simplified: bool):
    """Normalize the last axis of ``s`` (already in its work dtype); returns
    (y, mean or None, inv_std) with statistics of shape (..., 1). ``y`` is a fresh array."""
    cols = s.shape[-1] if s.ndim else 1
    rows = s.reshape(-1, cols)
    t = s.dtype.type
    if simplified:
        mean = None
        y = rows.copy()
    else:
        mean = rows.mean(axis=1, keepdims=True)
        y = rows - mean
    var = np.einsum("ij,ij->i", y, y)[:, None]
    var *= t(1.0 / cols) if cols else t(np.nan)
    var += t(eps)
    inv_std = np.reciprocal(np.sqrt(var, out=var), out=var)
    y *= inv_std
    y = y.reshape(s.shape)
    y *= gamma
    if beta is not None:
        y += beta
    stat_shape = s.shape[:-1] + (1,)
    return (y, None if mean is None else mean.reshape(stat_shape), inv_std.reshape(stat_shape))


def _skip_norm(ctx, simplified: bool):
    eps = float(ctx.attr("epsilon", _SKIP_EPSILON))
    want = [bool(n) for n in ctx.output_names] + [False] * 4

    def run(x, skip, gamma, beta=None, bias=None):
        if simplified:  # (input, skip, gamma, bias): no beta
            beta, bias = None, beta
        hidden = x.shape[-1]
        for name, p in (("gamma", gamma), ("beta", beta), ("bias", bias)):
            if p is not None and p.shape != (hidden,):
                raise ValueError(f"{name} must have shape ({hidden},) (the hidden size), got "
                                 f"{list(p.shape)}")
        if skip.shape != x.shape and skip.shape != x.shape[-skip.ndim:] and \
                skip.shape != (1,) + x.shape[1:]:
            raise ValueError(f"skip of shape {list(skip.shape)} does not fit input "
                             f"{list(x.shape)}: it must be (B, S, H), (1, S, H) or (S, H)")
        work = _work_dtype(x.dtype)
        s = np.add(widen(x), widen(skip), dtype=work)
        if bias is not None:
            s += widen(bias)
        total = narrow(s, x.dtype)
        if total.dtype != work:  # the stored sum is what gets normalized
            s = total.astype(work)
        y, mean, inv_std = normalize_rows(
            s, widen(gamma).astype(work, copy=False),
            None if beta is None else widen(beta).astype(work, copy=False), eps, simplified)
        outputs = [narrow(y, x.dtype), None, None, None]
        if want[1]:
            outputs[1] = (np.zeros(inv_std.shape, np.float32) if mean is None
                          else mean.astype(np.float32, copy=False))
        if want[2]:
            outputs[2] = inv_std.astype(np.float32, copy=False)
        if want[3]:
            outputs[3] = total
        return tuple(outputs)

    return run


@register("SkipLayerNormalization", since=1, domain=MS_DOMAIN)
def skip_layer_normalization(ctx):
    return _skip_norm(ctx, simplified=False)


@register("SkipSimplifiedLayerNormalization", since=1, domain=MS_DOMAIN)
def skip_simplified_layer_normalization(ctx):
    return _skip_norm(ctx, simplified=True)


@register("SimplifiedLayerNormalization", since=1)
def simplified_layer_normalization(ctx):
    axis = int(ctx.attr("axis", -1))
    eps = float(ctx.attr("epsilon", 1e-5))
    stash_type = int(ctx.attr("stash_type", 1))
    stat_dtype = np.dtype(numpy_dtype(ctx.output_elem_type(1) or stash_type))

    def run(x, scale):
        a = axis % x.ndim if x.ndim else 0
        stash = np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(
            numpy_dtype(stash_type))
        lead = x.shape[:a]
        cols = math.prod(x.shape[a:])
        xs = x.astype(stash, copy=False).reshape(lead + (cols,))
        y, _, inv_std = normalize_rows(xs, 1, None, eps, True)  # y is a fresh array
        y = y.reshape(x.shape)
        y *= widen(scale).astype(stash, copy=False)
        inv_std = narrow(inv_std.reshape(lead + (1,) * (x.ndim - a)), stat_dtype)
        return narrow(y, scale.dtype), inv_std

    return run


# onnxruntime's LayerNormalization before ONNX defined one (opset 17): the same computation
register("LayerNormalization", since=1)(norm.layer_normalization)


@register("EmbedLayerNormalization", since=1, domain=MS_DOMAIN)
def embed_layer_normalization(ctx):
    eps = float(ctx.attr("epsilon", _SKIP_EPSILON))
    want = [bool(n) for n in ctx.output_names] + [False] * 3

    def lookup(table, ids, what):
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
            bad = ids[(ids < 0) | (ids >= table.shape[0])].ravel()[0]
            raise ValueError(f"{what} {bad} is out of range for a table of {table.shape[0]} "
                             f"rows")
        return widen(table)[ids]

    def run(input_ids, segment_ids, word_embedding, position_embedding,
            segment_embedding=None, gamma=None, beta=None, mask=None, position_ids=None):
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be 2-D (batch, sequence), got "
                             f"{list(input_ids.shape)}")
        b, s = input_ids.shape
        dtype = word_embedding.dtype
        work = _work_dtype(dtype)
        total = lookup(word_embedding, input_ids, "input id").astype(work, copy=False)
        if position_ids is None:
            position_ids = np.arange(s)[None, :]
        elif position_ids.shape not in ((b, s), (1, s)):
            raise ValueError(f"position_ids must have shape ({b}, {s}) or (1, {s}), got "
                             f"{list(position_ids.shape)}")
        total = total + lookup(position_embedding, position_ids, "position id")
        if segment_ids is not None and segment_embedding is not None:
            total += lookup(segment_embedding, segment_ids, "segment id")
        stored = narrow(total, dtype)
        if stored.dtype != work:
            total = stored.astype(work)
        y, _, _ = normalize_rows(total, widen(gamma).astype(work, copy=False),
                                 widen(beta).astype(work, copy=False), eps, False)
        outputs = [narrow(y, dtype), None, None]
        if want[1]:
            outputs[1] = (np.zeros(b, np.int32) if mask is None else
                          (mask == 1).sum(axis=1, dtype=np.int32))  # as onnxruntime counts
        if want[2]:
            outputs[2] = stored
        return tuple(outputs)

    return run
