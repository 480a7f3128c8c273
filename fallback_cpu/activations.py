"""Activation kernels (Relu, Sigmoid, Gelu, ...).

Multi-step formulas run in float32 for float16 and the ml_dtypes floats and round back once.
"""
from __future__ import annotations

import math

import numpy as np
from .numeric import erf, expit, fits_into, float_kernel, with_inplace
from .registry import NodeContext, register

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _activation(op_type: str, since, include_half: bool = True, inplace=None):
    """Decorator: ``make(ctx) -> fn(x)`` becomes a registered factory; fn sees upcast x.
    ``inplace(x, out)``: the same for float32/64 x, written into ``out``."""

    def wrap(make):
        @register(op_type, since)
        def factory(ctx: NodeContext):
            kernel = float_kernel(make(ctx), include_half)
            run = lambda x: (kernel(x),)  # noqa: E731
            if inplace is None:
                return run

            def into(pos, x):
                if not fits_into(x):
                    return (kernel(x),)
                with np.errstate(all="ignore"):
                    return (inplace(x, x),)

            return with_inplace(run, into)

        return make

    return wrap


def _sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return expit(x, out=out)  # one overflow-safe pass, in x's own precision


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(x.dtype.type(0), x)


def _relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    if x.dtype.kind == "f" and x.size > 16384:
        # clip with two bounds has a SIMD loop, 3x faster than maximum(x, 0)'s scalar path,
        # but a few microseconds of Python wrapping that small tensors would notice
        t = x.dtype.type
        return np.clip(x, t(0), t(np.inf), out=out)
    return np.maximum(x, x.dtype.type(0), out=out)


@register("Relu", [1, 6, 13, 14])
def relu(ctx):
    kernel = float_kernel(_relu, include_half=False)  # the ml_dtypes floats, through float32

    def run(x):
        # no FP exceptions to silence: native types skip float_kernel's errstate
        return (_relu(x),) if x.dtype.kind in "fiu" else (kernel(x),)

    def into(pos, x):
        return (_relu(x, out=x),) if fits_into(x) else run(x)

    return with_inplace(run, into)


@_activation("LeakyRelu", [1, 6, 16])
def leaky_relu(ctx):
    alpha = ctx.attr("alpha", 0.01)
    return lambda x: np.where(x >= 0, x, x * x.dtype.type(alpha))


@_activation("Elu", [1, 6, 22])
def elu(ctx):
    alpha = ctx.attr("alpha", 1.0)
    return lambda x: np.where(x >= 0, x, x.dtype.type(alpha) * np.expm1(x))


@_activation("Selu", [1, 6, 22])
def selu(ctx):
    alpha = ctx.attr("alpha", 1.67326319217681884765625)
    gamma = ctx.attr("gamma", 1.05070102214813232421875)

    def run(x):
        t = x.dtype.type
        return t(gamma) * np.where(x > 0, x, t(alpha) * np.expm1(x))

    return run


@_activation("Celu", [12, 28])
def celu(ctx):
    alpha = ctx.attr("alpha", 1.0)

    def run(x):
        a = x.dtype.type(alpha)
        return np.maximum(x, 0) + np.minimum(0, a * np.expm1(x / a))

    return run


@_activation("Sigmoid", [1, 6, 13], inplace=_sigmoid)
def sigmoid(ctx):
    return _sigmoid


@_activation("HardSigmoid", [1, 6, 22])
def hard_sigmoid(ctx):
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)

    def run(x):
        t = x.dtype.type
        return np.clip(t(alpha) * x + t(beta), t(0), t(1))

    return run


@_activation("HardSwish", [14, 22])
def hard_swish(ctx):
    def run(x):
        t = x.dtype.type
        return x * np.clip(x * t(1 / 6) + t(0.5), t(0), t(1))

    return run


@_activation("Softplus", [1, 22])
def softplus(ctx):
    return _softplus


@_activation("Softsign", [1, 22])
def softsign(ctx):
    return lambda x: x / (1 + np.abs(x))


@_activation("Tanh", [1, 6, 13], include_half=False, inplace=np.tanh)
def tanh(ctx):
    return np.tanh


@_activation("Mish", [18, 22])
def mish(ctx):
    return lambda x: x * np.tanh(_softplus(x))


@_activation("Gelu", [20])
def gelu(ctx):
    if ctx.attr("approximate", "none") == "tanh":
        def run(x):
            t = x.dtype.type
            inner = t(_SQRT_2_OVER_PI) * (x + t(0.044715) * x * x * x)
            return t(0.5) * x * (1 + np.tanh(inner))
        return run

    def exact(x):
        t = x.dtype.type
        return t(0.5) * x * (1 + erf(x * t(1 / math.sqrt(2.0))))

    return exact


@_activation("ThresholdedRelu", [10, 22])
def thresholded_relu(ctx):
    alpha = ctx.attr("alpha", 1.0)
    return lambda x: np.where(x > x.dtype.type(alpha), x, x.dtype.type(0))


@_activation("Shrink", [9])
def shrink(ctx):
    bias, lambd = ctx.attr("bias", 0.0), ctx.attr("lambd", 0.5)

    def run(x):
        if x.dtype.kind != "f":
            # integer tensors too: compute in float64 and cast back
            return run(x.astype(np.float64)).astype(x.dtype)
        t = x.dtype.type
        return np.where(x < -lambd, x + t(bias), np.where(x > lambd, x - t(bias), t(0)))

    return run


@_activation("Swish", [24])
def swish(ctx):
    alpha = ctx.attr("alpha", 1.0)
    return lambda x: x * _sigmoid(x * x.dtype.type(alpha))
