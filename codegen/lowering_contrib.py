"""onnxruntime's ``com.microsoft`` activations as tile IR: Gelu, BiasGelu, FastGelu (with or
without bias), QuickGelu, BiasAdd. Pointwise, so fusion merges them into their neighbours'
kernels (a GEMM's epilogue, say) like the ai.onnx activations.

A bias is 1-D along the last axis; the kernel broadcasts it as numpy would. BiasSplitGelu is
not here: it halves the last axis, so its output does not share its input's iteration space.
"""
from __future__ import annotations

from tritort.dtypes import FLOAT_TYPES

from .ir import Expr
from .keys import contrib
from .lowering import c, erf_gelu, lowering, op, tanh_gelu


def _biased(xs) -> Expr:
    return xs[0] if len(xs) < 2 or xs[1] is None else op("add", xs[0], xs[1])


lowering(contrib("Gelu"), FLOAT_TYPES)(lambda attrs, xs, outs: [erf_gelu(xs[0])])
lowering(contrib("BiasGelu"), FLOAT_TYPES, min_inputs=2)(
    lambda attrs, xs, outs: [erf_gelu(_biased(xs))])
lowering(contrib("FastGelu"), FLOAT_TYPES)(lambda attrs, xs, outs: [tanh_gelu(_biased(xs))])
lowering(contrib("BiasAdd"), FLOAT_TYPES, min_inputs=3)(
    lambda attrs, xs, outs: [op("add", op("add", xs[0], xs[1]), xs[2])])


@lowering(contrib("QuickGelu"), FLOAT_TYPES)
def _quick_gelu(attrs, xs, outs):
    x = xs[0]
    return [op("mul", x, op("sigmoid", op("mul", x, c(attrs.get("alpha", 1.702), x))))]
