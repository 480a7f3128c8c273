"""onnxruntime's ``com.microsoft`` activations and fused linear operators on the NumPy
provider: Gelu, BiasGelu, FastGelu, QuickGelu, BiasAdd, BiasSplitGelu, FusedMatMul, FusedConv.

- Gelu / BiasGelu: ``0.5 x (1 + erf(x / sqrt 2))`` of ``x`` (``A + B`` for BiasGelu, B a 1-D
  bias along the last axis).
- FastGelu: the tanh form ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, ``x`` plus the
  optional bias.
- QuickGelu: ``x sigmoid(alpha x)`` (alpha defaults to 1.702).
- BiasAdd: ``X + bias + skip``; BiasSplitGelu: ``X + bias`` split in halves along the last
  axis, ``left * Gelu(right)``.
- FusedMatMul: ``alpha * op(A) @ op(B)``, numpy matmul broadcasting; ``transA``/``transB``
  swap the last two axes; ``transBatchA``/``transBatchB`` move the first axis behind the batch
  axes (a (d0, d1, .., dk, n) operand is read as (d1, .., dk, d0, n), transposed after that
  when trans is set too).
- FusedConv: Conv, plus the optional ``Z`` added to its result, then ``activation``
  (Relu, Tanh, Sigmoid, LeakyRelu, Clip, HardSigmoid, with ``activation_params``; none
  when absent).

float16 and bfloat16 compute in float32 and round once; double stays double.
"""
from __future__ import annotations

import math

import numpy as np

from .nn import ConvParams, conv_nd
from .nn_util import narrow, widen
from .numeric import erf, expit, float_kernel
from .registry import register

MS_DOMAIN = "com.microsoft"
_SQRT_HALF = 1 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu(x: np.ndarray) -> np.ndarray:
    if x.ndim == 0:  # the float32 erf writes into arrays: no 0-d scalars
        return _gelu(x.reshape(1)).reshape(())
    t = x.dtype.type
    return t(0.5) * x * (t(1) + erf(x * t(_SQRT_HALF)))


def _fast_gelu(x: np.ndarray) -> np.ndarray:
    t = x.dtype.type
    return t(0.5) * x * (t(1) + np.tanh(x * (t(_SQRT_2_OVER_PI) + t(_SQRT_2_OVER_PI * 0.044715)
                                             * x * x)))


def _check_bias(x, bias, name="bias"):
    if bias.ndim != 1 or (x.ndim and bias.shape[0] != x.shape[-1]):
        raise ValueError(f"{name} must be 1-D of the last dimension of the input "
                         f"({x.shape[-1] if x.ndim else 1}), got shape {list(bias.shape)}")


@register("Gelu", since=1, domain=MS_DOMAIN)
def gelu(ctx):
    kernel = float_kernel(_gelu)
    return lambda x: (kernel(x),)


@register("BiasGelu", since=1, domain=MS_DOMAIN)
def bias_gelu(ctx):
    kernel = float_kernel(lambda a, b: _gelu(a + b))

    def run(a, b):
        _check_bias(a, b)
        return (kernel(a, b),)

    return run


@register("FastGelu", since=1, domain=MS_DOMAIN)
def fast_gelu(ctx):
    plain = float_kernel(_fast_gelu)
    biased = float_kernel(lambda x, b: _fast_gelu(x + b))

    def run(x, bias=None):
        if bias is None:
            return (plain(x),)
        _check_bias(x, bias)
        return (biased(x, bias),)

    return run


@register("QuickGelu", since=1, domain=MS_DOMAIN)
def quick_gelu(ctx):
    alpha = float(ctx.attr("alpha", 1.702))
    kernel = float_kernel(lambda x: x * expit(x * x.dtype.type(alpha)))
    return lambda x: (kernel(x),)


@register("BiasAdd", since=1, domain=MS_DOMAIN)
def bias_add(ctx):
    kernel = float_kernel(lambda x, b, s: x + b + s)

    def run(x, bias, skip):
        _check_bias(x, bias)
        if skip.shape != x.shape:
            raise ValueError(f"skip must have the input's shape {list(x.shape)}, got "
                             f"{list(skip.shape)}")
        return (kernel(x, bias, skip),)

    return run


@register("BiasSplitGelu", since=1, domain=MS_DOMAIN)
def bias_split_gelu(ctx):
    def split(x, b):
        y = x + b
        half = y.shape[-1] // 2
        return y[..., :half] * _gelu(y[..., half:])

    kernel = float_kernel(split)

    def run(x, bias):
        _check_bias(x, bias)
        if x.shape[-1] % 2:
            raise ValueError(f"the last dimension of X ({x.shape[-1]}) must be even")
        return (kernel(x, bias),)

    return run


def _fused_operand(x: np.ndarray, trans: bool, trans_batch: bool) -> np.ndarray:
    """The operand as FusedMatMul reads it: a view, no copy."""
    if trans_batch and x.ndim > 2:
        x = np.moveaxis(x, 0, -2)
    if trans and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    return x


@register("FusedMatMul", since=1, domain=MS_DOMAIN)
def fused_matmul(ctx):
    alpha = float(ctx.attr("alpha", 1.0))
    trans_a, trans_b = bool(ctx.attr("transA", 0)), bool(ctx.attr("transB", 0))
    batch_a, batch_b = bool(ctx.attr("transBatchA", 0)), bool(ctx.attr("transBatchB", 0))

    def run(a, b):
        if (batch_a or batch_b) and (a.ndim < 3 or a.ndim != b.ndim):
            raise ValueError(f"transBatchA/transBatchB need A and B of the same rank, at least "
                             f"3; got shapes {list(a.shape)} and {list(b.shape)}")
        wa = _fused_operand(widen(a), trans_a, batch_a)
        wb = _fused_operand(widen(b), trans_b, batch_b)
        y = np.asarray(np.matmul(wa, wb))
        if alpha != 1.0:
            y *= y.dtype.type(alpha)
        return (narrow(y, a.dtype),)

    return run


def _activation(name: str, params: list[float]):
    """``fn(y)`` applying FusedConv's activation in place to a float32/64 array."""
    if name in (None, "", "Identity"):
        return lambda y: y
    if name == "Relu":
        return lambda y: np.maximum(y, 0, out=y)
    if name == "Tanh":
        return lambda y: np.tanh(y, out=y)
    if name == "Sigmoid":
        return lambda y: expit(y, out=y)
    if name == "LeakyRelu":
        alpha = params[0] if params else 0.01
        return lambda y: np.where(y >= 0, y, y * y.dtype.type(alpha))
    if name == "Clip":
        lo = params[0] if len(params) > 0 else -np.inf
        hi = params[1] if len(params) > 1 else np.inf
        return lambda y: np.clip(y, y.dtype.type(lo), y.dtype.type(hi), out=y)
    if name == "HardSigmoid":
        alpha = params[0] if len(params) > 0 else 0.2
        beta = params[1] if len(params) > 1 else 0.5
        return lambda y: np.clip(y * y.dtype.type(alpha) + y.dtype.type(beta), 0, 1)
    raise ValueError(f"FusedConv: unsupported activation '{name}' (supported: Relu, Tanh, "
                     f"Sigmoid, LeakyRelu, Clip, HardSigmoid)")


@register("FusedConv", since=1, domain=MS_DOMAIN)
def fused_conv(ctx):
    p = ConvParams(ctx)
    act = _activation(ctx.attr("activation"), [float(v) for v in ctx.attr("activation_params")
                                               or []])

    def run(x, w, b=None, z=None):
        _, strides, dilations, pads = p.resolve(x.shape, w.shape)
        y = conv_nd(widen(x), widen(w), None if b is None else widen(b), p.group, strides,
                    dilations, pads)
        if z is not None:
            y = y + widen(z)
        with np.errstate(over="ignore"):
            y = act(y)
        return (narrow(np.asarray(y), x.dtype),)

    return run
