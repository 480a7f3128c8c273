"""Random kernels of the NumPy provider.

As in onnxruntime, each node owns one generator, created at session creation: seeded
from the ``seed`` attribute when given (so a new session replays the same stream), from
fresh entropy otherwise. Successive runs continue the stream. Values are drawn in
float64 and rounded once to the output dtype (float16/bfloat16 included).
"""
from __future__ import annotations

import struct
import threading

import numpy as np

from tritort.dtypes import numpy_dtype

from .registry import NodeContext, register


_default_seeds: np.random.SeedSequence | None = None
_default_lock = threading.Lock()


def set_seed(seed: int) -> None:
    """Make the generators of unseeded nodes, in sessions created from now on, reproducible."""
    global _default_seeds
    with _default_lock:
        _default_seeds = np.random.SeedSequence(seed)


def _unseeded_rng() -> np.random.Generator:
    with _default_lock:
        if _default_seeds is None:
            return np.random.default_rng()
        return np.random.default_rng(_default_seeds.spawn(1)[0])


class _Stream:
    """A per-node generator that concurrent runs of the session may share."""

    def __init__(self, seed: float | None) -> None:
        if seed is None:
            self._rng = _unseeded_rng()
        else:  # the float attribute's bits, so 0.5 and 0.25 give different streams
            self._rng = np.random.default_rng(struct.unpack("<I", struct.pack("<f", seed))[0])
        self._lock = threading.Lock()

    def uniform(self, shape, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        with self._lock:
            return self._rng.uniform(low, high, size=shape)

    def normal(self, shape, mean: float, scale: float) -> np.ndarray:
        with self._lock:
            return self._rng.normal(mean, scale, size=shape)


def _out_dtype(ctx: NodeContext, like: np.ndarray | None, default: int = 1) -> np.dtype:
    dtype_attr = ctx.attr("dtype")
    if dtype_attr is not None:
        return numpy_dtype(dtype_attr)
    return like.dtype if like is not None else numpy_dtype(default)


@register("RandomUniform", since=[1, 22])
def random_uniform(ctx: NodeContext):
    stream = _Stream(ctx.attr("seed"))
    shape = tuple(ctx.attr("shape"))
    low, high = ctx.attr("low", 0.0), ctx.attr("high", 1.0)
    dtype = _out_dtype(ctx, None)
    return lambda: (stream.uniform(shape, low, high).astype(dtype),)


@register("RandomNormal", since=[1, 22])
def random_normal(ctx: NodeContext):
    stream = _Stream(ctx.attr("seed"))
    shape = tuple(ctx.attr("shape"))
    mean, scale = ctx.attr("mean", 0.0), ctx.attr("scale", 1.0)
    dtype = _out_dtype(ctx, None)
    return lambda: (stream.normal(shape, mean, scale).astype(dtype),)


@register("RandomUniformLike", since=[1, 22])
def random_uniform_like(ctx: NodeContext):
    stream = _Stream(ctx.attr("seed"))
    low, high = ctx.attr("low", 0.0), ctx.attr("high", 1.0)
    return lambda x: (stream.uniform(x.shape, low, high).astype(_out_dtype(ctx, x)),)


@register("RandomNormalLike", since=[1, 22])
def random_normal_like(ctx: NodeContext):
    stream = _Stream(ctx.attr("seed"))
    mean, scale = ctx.attr("mean", 0.0), ctx.attr("scale", 1.0)
    return lambda x: (stream.normal(x.shape, mean, scale).astype(_out_dtype(ctx, x)),)


@register("Bernoulli", since=[15, 22])
def bernoulli(ctx: NodeContext):
    stream = _Stream(ctx.attr("seed"))

    def run(p):
        draws = stream.uniform(p.shape) < p.astype(np.float64)
        return (draws.astype(_out_dtype(ctx, p)),)

    return run


@register("Multinomial", since=[7, 22])
def multinomial(ctx: NodeContext):
    stream = _Stream(ctx.attr("seed"))
    samples = ctx.attr("sample_size", 1)
    dtype = numpy_dtype(ctx.attr("dtype", 6))  # int32 unless told otherwise

    def run(logits):
        lf = logits.astype(np.float64)
        p = np.exp(lf - lf.max(axis=1, keepdims=True))
        cdf = np.cumsum(p, axis=1)
        cdf /= cdf[:, -1:]
        u = stream.uniform((lf.shape[0], samples))
        # The class is the number of cumulative probabilities at or below the draw.
        classes = (u[:, :, None] >= cdf[:, None, :]).sum(axis=2)
        return (np.minimum(classes, lf.shape[1] - 1).astype(dtype),)

    return run
