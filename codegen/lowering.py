"""ONNX -> tile IR, one row per op. The same table tells partitioning what Triton can take.

A row's builder gets the node's attributes, its input expressions (None where omitted)
and output dtypes, and returns one expression per output. Composite ops decompose into
the primitives of :mod:`tritort.codegen.ir` here, so the emitter only knows primitives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tritort.dtypes import FLOAT8_OCP_TYPES, FLOAT_TYPES, INT_TYPES

from .ir import Cast, Const, Expr, Op

NUMERIC = FLOAT_TYPES | INT_TYPES
ALL = NUMERIC | {"bool"}

Builder = Callable[[dict, Sequence[Expr | None], Sequence[str]], list[Expr]]


@dataclass(frozen=True)
class Lowering:
    build: Builder
    dtypes: frozenset  # accepted element types of every tensor input and output
    min_inputs: int = 1
    # (attrs, input dtypes) -> why this form stays on the CPU, or None
    refuses: Callable[[dict, Sequence[str]], str | None] | None = None
    # (attrs, input shapes, None where unknown) -> why this form stays on the CPU, or None
    refuses_shapes: Callable[[dict, Sequence[tuple | None]], str | None] | None = None
    # (attrs, input ranks) -> {input index: output dims after the one it lies along}: a 1-D
    # input laid along one axis (a per-axis scale), not numpy-broadcast from the right
    aligned: Callable[[dict, Sequence[int | None]], dict[int, int]] | None = None


LOWERINGS: dict[str, Lowering] = {}


def lowering(op_types: str | Sequence[str], dtypes=NUMERIC, min_inputs: int = 1, refuses=None,
             refuses_shapes=None, aligned=None):
    names = [op_types] if isinstance(op_types, str) else list(op_types)

    def wrap(build: Builder) -> Builder:
        for name in names:
            LOWERINGS[name] = Lowering(build, frozenset(dtypes), min_inputs, refuses,
                                       refuses_shapes, aligned)
        return build

    return wrap


def aligned_inputs(key: str | None, attrs: dict, ranks: Sequence[int | None]) -> dict[int, int]:
    """The row's axis-aligned inputs (see ``Lowering.aligned``) for these input ranks."""
    row = LOWERINGS.get(key)
    if row is None or row.aligned is None:
        return {}
    return {i: t for i, t in row.aligned(attrs, ranks).items() if t > 0}


def c(value, like: Expr) -> Const:
    return Const(like.dtype, value)


def op(name: str, *args: Expr, dtype: str | None = None) -> Op:
    # a where's value is its branches', not its condition's (bool)
    like = args[1] if name == "where" else args[0]
    return Op(dtype or like.dtype, name, tuple(args))


def _is_float(e: Expr) -> bool:
    return e.dtype in FLOAT_TYPES


# ------------------------------------------------------------------ arithmetic and math

_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul"}
for _name, _prim in _BINARY.items():
    lowering(_name)(lambda attrs, xs, outs, _p=_prim: [op(_p, xs[0], xs[1])])


@lowering("Div")
def _div(attrs, xs, outs):
    return [op("fdiv" if _is_float(xs[0]) else "idiv", xs[0], xs[1])]


_FLOAT_UNARY = {"Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Ceil": "ceil", "Floor": "floor",
                "Sin": "sin", "Cos": "cos", "Sigmoid": "sigmoid", "Erf": "erf", "Tanh": "tanh"}
for _name, _prim in _FLOAT_UNARY.items():
    lowering(_name, FLOAT_TYPES)(lambda attrs, xs, outs, _p=_prim: [op(_p, xs[0])])

# --- math that Triton has no primitive for, composed from exp/log/sqrt/sin/cos/floor

def _half(x: Expr) -> Const:
    return c(0.5, x)


def _sinh(x: Expr) -> Expr:
    return op("mul", _half(x), op("sub", op("exp", x), op("exp", op("neg", x))))


def _atan(x: Expr) -> Expr:
    """|x| > 1 reflects to 1/|x|; two half-angle steps bring the argument under 0.2,
    where eight series terms reach fp32 precision."""
    a = op("abs", x)
    invert = op("gt", a, c(1.0, x), dtype="bool")
    t = op("where", invert, op("fdiv", c(1.0, x), a), a)
    for _ in range(2):
        t = op("fdiv", t, op("add", c(1.0, x), op("sqrt", op("add", c(1.0, x), op("mul", t, t)))))
    s = op("mul", t, t)
    coefficients = [(-1) ** k / (2 * k + 1) for k in range(8)]  # 1, -1/3, 1/5, ...
    series = c(coefficients[-1], x)
    for coefficient in reversed(coefficients[:-1]):
        series = op("add", c(coefficient, x), op("mul", s, series))
    r = op("mul", c(4.0, x), op("mul", t, series))
    r = op("where", invert, op("sub", c(math.pi / 2, x), r), r)
    return op("where", op("lt", x, c(0.0, x), dtype="bool"), op("neg", r), r)


def _asin(x: Expr) -> Expr:
    return _atan(op("fdiv", x, op("sqrt", op("sub", c(1.0, x), op("mul", x, x)))))


_COMPOSED = {
    "Tan": lambda x: op("fdiv", op("sin", x), op("cos", x)),
    "Sinh": _sinh,
    "Cosh": lambda x: op("mul", _half(x), op("add", op("exp", x), op("exp", op("neg", x)))),
    "Asinh": lambda x: op("mul", op("sign", x), op("log", op("add", op("abs", x), op(
        "sqrt", op("add", op("mul", x, x), c(1.0, x)))))),
    "Acosh": lambda x: op("log", op("add", x, op("sqrt", op("sub", op("mul", x, x), c(1.0, x))))),
    "Atanh": lambda x: op("mul", _half(x), op("log", op("fdiv", op("add", c(1.0, x), x),
                                                      op("sub", c(1.0, x), x)))),
    "Atan": _atan,
    "Asin": _asin,
    "Acos": lambda x: op("sub", c(math.pi / 2, x), _asin(x)),
}
for _name, _build in _COMPOSED.items():
    lowering(_name, FLOAT_TYPES)(lambda attrs, xs, outs, _b=_build: [_b(xs[0])])


@lowering("Round", FLOAT_TYPES)
def _round(attrs, xs, outs):
    """Half to even, exactly: ties go to the even neighbour."""
    x = xs[0]
    f = op("floor", x)
    d = op("sub", x, f)
    f_even = op("eq", op("floor", op("mul", f, _half(x))), op("mul", f, _half(x)), dtype="bool")
    tie = op("where", f_even, f, op("add", f, c(1.0, x)))
    up = op("where", op("gt", d, _half(x), dtype="bool"), op("add", f, c(1.0, x)), f)
    return [op("where", op("eq", d, _half(x), dtype="bool"), tie, up)]


@lowering("Pow", FLOAT_TYPES, min_inputs=2)
def _pow(attrs, xs, outs):
    """exp(b log|a|), with the sign of a negative base for integer exponents (NaN otherwise)."""
    a, b = xs
    if b.dtype != a.dtype:
        b = Cast(a.dtype, b)
    mag = op("exp", op("mul", b, op("log", op("abs", a))))
    is_int = op("eq", op("floor", b), b, dtype="bool")
    half_b = op("mul", b, _half(b))
    odd = op("and", is_int, op("ne", op("floor", half_b), half_b, dtype="bool"))
    negative = op("where", is_int, op("where", odd, op("neg", mag), mag), c(math.nan, a))
    signed = op("where", op("lt", a, c(0.0, a), dtype="bool"), negative, mag)
    return [op("where", op("eq", b, c(0.0, b), dtype="bool"), c(1.0, a), signed)]


def _python_float_mod(attrs, in_dtypes):
    if not attrs.get("fmod", 0) and in_dtypes and in_dtypes[0] in FLOAT_TYPES:
        return "float Mod with fmod=0 (signed zeros and infinities follow numpy) runs on the CPU"
    return None


@lowering("Mod", NUMERIC, min_inputs=2, refuses=_python_float_mod)
def _mod(attrs, xs, outs):
    """fmod=1 keeps the dividend's sign (C's fmod/%), fmod=0 the divisor's (Python's %)."""
    a, b = xs
    if _is_float(a):
        q = op("fdiv", a, b)
        trunc = op("where", op("lt", q, c(0.0, q), dtype="bool"), op("ceil", q), op("floor", q))
        r = op("sub", a, op("mul", b, trunc))
    else:
        r = op("sub", a, op("mul", b, op("idiv", a, b)))  # Triton's // truncates, as C does
    if attrs.get("fmod", 0):
        return [r]
    wrong_sign = op("and", op("ne", r, c(0, r), dtype="bool"),
                    op("ne", op("lt", r, c(0, r), dtype="bool"),
                       op("lt", b, c(0, b), dtype="bool"), dtype="bool"))
    return [op("where", wrong_sign, op("add", r, b), r)]


for _name, _prim in {"BitwiseAnd": "and", "BitwiseOr": "or", "BitwiseXor": "xor"}.items():
    lowering(_name, INT_TYPES)(lambda attrs, xs, outs, _p=_prim: [op(_p, xs[0], xs[1])])
lowering("BitwiseNot", INT_TYPES)(lambda attrs, xs, outs: [op("invert", xs[0])])


@lowering("BitShift", {"uint8", "uint16", "uint32", "uint64"}, min_inputs=2)
def _bit_shift(attrs, xs, outs):
    return [op("shl" if attrs.get("direction") == "LEFT" else "shr", xs[0], xs[1])]


lowering("Neg")(lambda attrs, xs, outs: [op("neg", xs[0])])
lowering("Abs")(lambda attrs, xs, outs: [op("abs", xs[0])])
lowering("Identity", ALL)(lambda attrs, xs, outs: [xs[0]])
lowering("Reciprocal", FLOAT_TYPES)(lambda attrs, xs, outs: [op("fdiv", c(1.0, xs[0]), xs[0])])
lowering("Relu")(lambda attrs, xs, outs: [op("max", xs[0], c(0, xs[0]))])


@lowering("Sign")
def _sign(attrs, xs, outs):
    x = xs[0]
    pos = op("where", op("gt", x, c(0, x), dtype="bool"), c(1, x), c(0, x))
    return [op("where", op("lt", x, c(0, x), dtype="bool"), c(-1, x), pos)]


def _variadic(prim: str, mean: bool = False) -> Builder:
    def build(attrs, xs, outs):
        acc = xs[0]
        for x in xs[1:]:
            acc = op(prim, acc, x)
        if mean:
            acc = op("fdiv", acc, c(float(len(xs)), acc))
        return [acc]

    return build


LOWERINGS["Max"] = Lowering(_variadic("max"), NUMERIC)
LOWERINGS["Min"] = Lowering(_variadic("min"), NUMERIC)
LOWERINGS["Sum"] = Lowering(_variadic("add"), NUMERIC)
LOWERINGS["Mean"] = Lowering(_variadic("add", mean=True), FLOAT_TYPES)


@lowering("Clip")
def _clip(attrs, xs, outs):
    x = xs[0]
    lo = xs[1] if len(xs) > 1 and xs[1] is not None else None
    hi = xs[2] if len(xs) > 2 and xs[2] is not None else None
    if "min" in attrs:  # opset 6 form
        lo = c(attrs["min"], x)
    if "max" in attrs:
        hi = c(attrs["max"], x)
    if lo is not None:
        x = op("max", x, lo)
    if hi is not None:
        x = op("min", x, hi)
    return [x]


# ------------------------------------------------------------------------- activations

def _softplus(x: Expr) -> Expr:
    # max(x, 0) + log(1 + exp(-|x|)): no overflow for large |x|
    return op("add", op("max", x, c(0.0, x)),
              op("log", op("add", c(1.0, x), op("exp", op("neg", op("abs", x))))))


@lowering("Shrink", NUMERIC)
def _shrink(attrs, xs, outs):
    x = xs[0]
    lambd, bias = attrs.get("lambd", 0.5), attrs.get("bias", 0.0)
    below = op("lt", x, c(-lambd, x), dtype="bool")
    above = op("gt", x, c(lambd, x), dtype="bool")
    return [op("where", below, op("add", x, c(bias, x)),
               op("where", above, op("sub", x, c(bias, x)), c(0, x)))]


@lowering("LeakyRelu", FLOAT_TYPES)
def _leaky_relu(attrs, xs, outs):
    x = xs[0]
    return [op("where", op("ge", x, c(0.0, x), dtype="bool"), x,
               op("mul", x, c(attrs.get("alpha", 0.01), x)))]


@lowering("PRelu", FLOAT_TYPES, min_inputs=2)
def _prelu(attrs, xs, outs):
    x, slope = xs
    return [op("where", op("lt", x, c(0.0, x), dtype="bool"), op("mul", x, slope), x)]


def _elu_core(x: Expr, alpha: float) -> Expr:
    neg = op("mul", c(alpha, x), op("sub", op("exp", x), c(1.0, x)))
    return op("where", op("gt", x, c(0.0, x), dtype="bool"), x, neg)


lowering("Elu", FLOAT_TYPES)(lambda attrs, xs, outs: [_elu_core(xs[0], attrs.get("alpha", 1.0))])


@lowering("Selu", FLOAT_TYPES)
def _selu(attrs, xs, outs):
    alpha = attrs.get("alpha", 1.67326319217681884765625)
    gamma = attrs.get("gamma", 1.05070102214813232421875)
    return [op("mul", c(gamma, xs[0]), _elu_core(xs[0], alpha))]


@lowering("Celu", FLOAT_TYPES)
def _celu(attrs, xs, outs):
    x, alpha = xs[0], attrs.get("alpha", 1.0)
    neg = op("mul", c(alpha, x), op("sub", op("exp", op("fdiv", x, c(alpha, x))), c(1.0, x)))
    return [op("add", op("max", x, c(0.0, x)), op("min", c(0.0, x), neg))]


@lowering("HardSigmoid", FLOAT_TYPES)
def _hard_sigmoid(attrs, xs, outs):
    x = xs[0]
    y = op("add", op("mul", x, c(attrs.get("alpha", 0.2), x)), c(attrs.get("beta", 0.5), x))
    return [op("min", op("max", y, c(0.0, x)), c(1.0, x))]


@lowering("HardSwish", FLOAT_TYPES)
def _hard_swish(attrs, xs, outs):
    x = xs[0]
    gate = op("min", op("max", op("add", op("mul", x, c(1 / 6, x)), c(0.5, x)), c(0.0, x)),
              c(1.0, x))
    return [op("mul", x, gate)]


lowering("Softplus", FLOAT_TYPES)(lambda attrs, xs, outs: [_softplus(xs[0])])
lowering("Softsign", FLOAT_TYPES)(
    lambda attrs, xs, outs: [op("fdiv", xs[0], op("add", c(1.0, xs[0]), op("abs", xs[0])))])
lowering("Mish", FLOAT_TYPES)(
    lambda attrs, xs, outs: [op("mul", xs[0], op("tanh", _softplus(xs[0])))])


@lowering("Swish", FLOAT_TYPES)
def _swish(attrs, xs, outs):
    x = xs[0]
    return [op("mul", x, op("sigmoid", op("mul", x, c(attrs.get("alpha", 1.0), x))))]


@lowering("ThresholdedRelu", FLOAT_TYPES)
def _thresholded_relu(attrs, xs, outs):
    x = xs[0]
    return [op("where", op("gt", x, c(attrs.get("alpha", 1.0), x), dtype="bool"), x,
               c(0.0, x))]


def erf_gelu(x: Expr) -> Expr:
    """0.5 x (1 + erf(x / sqrt 2))."""
    return op("mul", op("mul", c(0.5, x), x),
              op("add", c(1.0, x), op("erf", op("mul", x, c(1 / math.sqrt(2), x)))))


def tanh_gelu(x: Expr) -> Expr:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    cube = op("mul", op("mul", x, x), x)
    inner = op("mul", c(math.sqrt(2 / math.pi), x), op("add", x, op("mul", c(0.044715, x), cube)))
    return op("mul", op("mul", c(0.5, x), x), op("add", c(1.0, x), op("tanh", inner)))


@lowering("Gelu", FLOAT_TYPES)
def _gelu(attrs, xs, outs):
    return [tanh_gelu(xs[0]) if attrs.get("approximate", "none") == "tanh" else erf_gelu(xs[0])]


# ---------------------------------------------------------------- comparisons and logic

_COMPARE = {"Equal": "eq", "Less": "lt", "Greater": "gt", "LessOrEqual": "le",
            "GreaterOrEqual": "ge"}
for _name, _prim in _COMPARE.items():
    lowering(_name, ALL)(lambda attrs, xs, outs, _p=_prim: [op(_p, xs[0], xs[1], dtype="bool")])

for _name, _prim in {"And": "and", "Or": "or", "Xor": "xor"}.items():
    lowering(_name, {"bool"})(lambda attrs, xs, outs, _p=_prim: [op(_p, xs[0], xs[1])])
lowering("Not", {"bool"})(lambda attrs, xs, outs: [op("not", xs[0])])
lowering("IsNaN", FLOAT_TYPES | {"bool"})(
    lambda attrs, xs, outs: [op("ne", xs[0], xs[0], dtype="bool")])


@lowering("IsInf", FLOAT_TYPES | {"bool"})
def _is_inf(attrs, xs, outs):
    x = xs[0]
    pos = op("eq", x, c(math.inf, x), dtype="bool")
    neg = op("eq", x, c(-math.inf, x), dtype="bool")
    want_pos, want_neg = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)
    if want_pos and want_neg:
        return [op("or", pos, neg)]
    if want_pos:
        return [pos]
    if want_neg:
        return [neg]
    return [op("and", pos, neg)]  # detects nothing: always false


lowering("Where", ALL, min_inputs=3)(lambda attrs, xs, outs: [op("where", *xs, dtype=xs[1].dtype)])


# ---------------------------------------------------------------------------- casts

# float8 values are loaded and stored (Cast only); arithmetic on them falls back
@lowering("Cast", ALL | FLOAT8_OCP_TYPES)
def _cast(attrs, xs, outs):
    return [Cast(outs[0], xs[0], bool(attrs.get("saturate", 1)))]


@lowering("CastLike", ALL | FLOAT8_OCP_TYPES, min_inputs=2)
def _cast_like(attrs, xs, outs):
    return [Cast(outs[0], xs[0], bool(attrs.get("saturate", 1)))]


# QuantizeLinear / DequantizeLinear rows register themselves (a module of their own)
from . import lowering_quant  # noqa: E402,F401


def lower_node(op_type: str, attrs: dict[str, Any], inputs: Sequence[Expr | None],
               out_dtypes: Sequence[str]) -> list[Expr]:
    return LOWERINGS[op_type].build(attrs, inputs, out_dtypes)


# com.microsoft's rows register on import; they need the names above to exist first.
from . import lowering_contrib  # noqa: E402,F401
