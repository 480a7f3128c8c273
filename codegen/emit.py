"""Tile IR -> readable Triton source: one ``@triton.jit`` kernel per fused group.

Values are held in a compute type while the kernel runs (fp32 for fp16/bf16/fp8, the type
itself otherwise) and rounded once when stored. Rounding casts inside the group
(Cast to float16, say) round in place so later ops see the rounded value.
"""
from __future__ import annotations

import math

import ml_dtypes

from tritort import dtypes

from .cache import KERNEL
from .ir import Cast, Const, Expr, Load, PointwiseKernel

_COMPUTE = {"float": "tl.float32", "float16": "tl.float32", "bfloat16": "tl.float32",
            "float8e4m3fn": "tl.float32", "float8e5m2": "tl.float32", "double": "tl.float64",
            "bool": "tl.int1"}
_LOW_FLOATS = {"float16", "bfloat16"} | dtypes.FLOAT8_OCP_TYPES
_FLOAT8_NAN_TEST = {"float8e4m3fn": "({raw} & 0x7F) == 0x7F",
                    "float8e5m2": "({raw} & 0x7F) > 0x7C"}
# mantissa bits, smallest normal exponent, what overflow becomes without saturation
_FLOAT8_FORMATS = {"float8e4m3fn": (3, -6, "float('nan')"),
                   "float8e5m2": (2, -14, "tl.where({v}r > 0, float('inf'), float('-inf'))")}
_NAN_ALL = "propagate_nan=tl.PropagateNan.ALL"

_TEMPLATES = {
    "add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}", "fdiv": "{0} / {1}",
    "idiv": "{0} // {1}", "neg": "-{0}", "abs": "tl.abs({0})", "sqrt": "tl.sqrt({0})",
    "exp": "tl.exp({0})", "log": "tl.log({0})", "ceil": "tl.ceil({0})",
    "floor": "tl.floor({0})", "sin": "tl.sin({0})", "cos": "tl.cos({0})",
    "sigmoid": "tl.sigmoid({0})", "erf": "tl.erf({0})",
    "tanh": "2.0 * tl.sigmoid(2.0 * {0}) - 1.0",
    "where": "tl.where({0}, {1}, {2})", "eq": "{0} == {1}", "ne": "{0} != {1}",
    "lt": "{0} < {1}", "gt": "{0} > {1}", "le": "{0} <= {1}", "ge": "{0} >= {1}",
    "and": "{0} & {1}", "or": "{0} | {1}", "xor": "{0} ^ {1}", "not": "{0} == 0",
    "invert": "~{0}", "shl": "{0} << {1}", "shr": "{0} >> {1}",
    "sign": "tl.where({0} > 0, 1.0, tl.where({0} < 0, -1.0, 0.0))",
}


# A jitted helper that generated sources append when they store or cast to bf16.
ROUND_BF16_SOURCE = '''

@triton.jit
def _round_bf16(x):
    # fp32 -> nearest bf16 (ties to even), spelled out so every backend rounds alike (the
    # interpreter's conversion truncates)
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
'''


def compute_type(dtype: str) -> str:
    return _COMPUTE.get(dtype, f"tl.{dtypes.BY_NAME[dtype].triton}")


def storage_type(dtype: str) -> str:
    return f"tl.{dtypes.BY_NAME[dtype].triton}"


def acc_type(dtype: str) -> str:
    """The type a template accumulates ``dtype`` in (sums, products, dot products, extremes).

    Floats as they compute (fp32, fp64 for double). Bools and integers narrower than int32
    widen to int32: ONNX keeps an integer reduction in its input type with wraparound, and
    sums and products agree with the narrow type's modulo its width, so the store's
    truncation gives exactly the wrapped result. (Integer GEMMs are MatMulInteger, which no
    template takes.)"""
    if dtype == "bool" or dtype in dtypes.NARROW_INT_TYPES:
        return "tl.int32"
    return compute_type(dtype)


def round_bf16(value: str) -> str:
    """``value`` rounded to the nearest bf16 (ties to even), held in fp32; spelled out by
    the ``_round_bf16`` helper because the interpreter's conversion truncates."""
    return f"_round_bf16(({value}).to(tl.float32))"


def stored(value: str, dtype: str) -> str:
    """``value`` converted for a store of ``dtype`` (to bf16: rounded once, to nearest even)."""
    if dtype == "bfloat16":
        return f"{round_bf16(value)}.to(tl.bfloat16)"
    return f"({value}).to({storage_type(dtype)})"


def store(address: str, value: str, dtype: str, mask: str) -> str:
    """The statement storing ``value`` as ``dtype`` at ``address``."""
    return f"tl.store({address}, {stored(value, dtype)}, mask={mask})"


def helper_source(body: str) -> str:
    """The jitted helpers a kernel's ``body`` calls (``_round_bf16``), as source to add."""
    return ROUND_BF16_SOURCE if "_round_bf16(" in body else ""


def _const(e: Const) -> str:
    if e.dtype == "bool":
        return "1" if e.value else "0"
    if e.dtype in dtypes.FLOAT_TYPES or isinstance(e.value, float):
        v = float(e.value)
        if math.isinf(v):
            return "float('inf')" if v > 0 else "float('-inf')"
        if math.isnan(v):
            return "float('nan')"
        return repr(v)
    return str(int(e.value))


class ExprEmitter:
    """Renders tile-IR expressions as SSA lines; ``render`` makes a whole pointwise kernel.

    Templates reuse it for their prologues and epilogues."""

    def __init__(self, kernel: PointwiseKernel | None) -> None:
        self.k = kernel
        self.lines: list[str] = []
        self.names: dict[Expr, str] = {}

    def value(self, e: Expr) -> str:
        if isinstance(e, Const):
            return _const(e)
        if isinstance(e, Load):
            return f"x{e.arg}"
        if e in self.names:
            return self.names[e]
        if isinstance(e, Cast):
            text = self._cast(e)
        else:
            args = [self.value(a) for a in e.args]
            if e.op in ("max", "min"):
                fn = "tl.maximum" if e.op == "max" else "tl.minimum"
                nan = f", {_NAN_ALL}" if e.dtype in _COMPUTE and e.dtype != "bool" else ""
                text = f"{fn}({args[0]}, {args[1]}{nan})"
            else:
                text = _TEMPLATES[e.op].format(*args)
        name = f"t{len(self.names)}"
        self.names[e] = name
        self.lines.append(f"    {name} = {text}")
        return name

    def _cast(self, e: Cast) -> str:
        x = self.value(e.x)
        src, dst = e.x.dtype, e.dtype
        if dst == "bool":
            return f"{x} != 0"
        if src == dst:
            return x
        if dst in _FLOAT8_FORMATS:
            return self._round_fp8(f"({x}).to(tl.float32)", dst, e.saturate)
        if dst == "bfloat16":
            return round_bf16(x)
        if dst in _LOW_FLOATS:  # float16: the hardware conversion rounds to nearest even
            return f"{x}.to({storage_type(dst)}).to(tl.float32)"
        return f"{x}.to({compute_type(dst)})"

    def _round_fp8(self, x: str, dst: str, saturate: bool) -> str:
        """fp32 -> nearest float8 value (ties to even), held in fp32.

        Scale by the value's quantum (a power of two, so exact), round half to even, scale
        back; then saturate to +-max, or overflow to NaN (e4m3fn) / inf (e5m2) as ONNX says.
        """
        mantissa, min_exp, overflow = _FLOAT8_FORMATS[dst]
        v = f"v{len(self.lines)}"
        overflow = overflow.replace("{v}", v)
        hi = float(ml_dtypes.finfo(dtypes.BY_NAME[dst].numpy).max)
        add = self.lines.append
        add(f"    {v}s = {x}")
        add(f"    {v}x = tl.abs({v}s)")  # round the magnitude; the sign bit comes back at the end
        add(f"    {v}e = (({v}x.to(tl.uint32, bitcast=True) >> 23) & 0xFF).to(tl.int32) - 127")
        add(f"    {v}q = ((tl.maximum({v}e, {min_exp}) - {mantissa} + 127) << 23)"
            ".to(tl.float32, bitcast=True)")
        add(f"    {v}y = {v}x / {v}q")
        add(f"    {v}f = tl.floor({v}y)")
        add(f"    {v}d = {v}y - {v}f")
        add(f"    {v}u = tl.where(tl.floor({v}f * 0.5) == {v}f * 0.5, {v}f, {v}f + 1.0)")
        add(f"    {v}m = tl.where({v}d > 0.5, {v}f + 1.0, tl.where({v}d < 0.5, {v}f, {v}u))"
            f" * {v}q")
        add(f"    {v}r = tl.where(({v}s.to(tl.uint32, bitcast=True) >> 31) == 1, -{v}m, {v}m)")
        if saturate:
            limit = f"tl.minimum(tl.maximum({v}r, -{hi}), {hi})"
        else:
            limit = f"tl.where(tl.abs({v}r) > {hi}, {overflow}, {v}r)"
        return f"tl.where({v}s != {v}s, {v}s, {limit})"

    def render(self) -> str:
        k = self.k
        r = k.rank
        ins = [f"in{i}" for i in range(len(k.inputs))]
        outs = [f"out{i}" for i in range(len(k.outputs))]
        dims = [f"d{j}" for j in range(r)]
        strides = [f"s{i}_{j}" for i in range(len(k.inputs)) for j in range(r)]
        params = ins + outs + ["numel"] + dims + strides + ["BLOCK: tl.constexpr"]
        body = ["    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
                "    mask = offs < numel"]
        if r > 1:
            body.append("    rem = offs")
            for j in range(r - 1, 0, -1):
                body.append(f"    i{j} = rem % d{j}")
                body.append(f"    rem = rem // d{j}")
            body.append("    i0 = rem")
        else:
            body.append("    i0 = offs")
        for i, p in enumerate(k.inputs):
            offset = " + ".join(f"i{j} * s{i}_{j}" for j in range(r))
            load = f"tl.load(in{i} + ({offset}), mask=mask)"
            if compute_type(p.dtype) != storage_type(p.dtype):
                load += f".to({compute_type(p.dtype)})"
            body.append(f"    x{i} = {load}")
            if p.dtype in _FLOAT8_NAN_TEST:
                # special values read from their bits: not every backend converts them
                raw = (f"tl.load(in{i}.to(tl.pointer_type(tl.uint8), bitcast=True) + ({offset}), "
                       "mask=mask)")
                nan_test = _FLOAT8_NAN_TEST[p.dtype].format(raw=f"x{i}b")
                body.append(f"    x{i}b = {raw}")
                body.append(f"    x{i} = tl.where({nan_test}, float('nan'), x{i})")
                if p.dtype == "float8e5m2":  # and infinities
                    body.append(f"    x{i} = tl.where((x{i}b & 0x7F) == 0x7C, tl.where("
                                f"x{i}b >= 0x80, float('-inf'), float('inf')), x{i})")
        self.lines = []
        results = []
        for p, e in k.outputs:
            v = self.value(e)
            if p.dtype == "bfloat16" and not (isinstance(e, Cast) and e.dtype == "bfloat16"):
                v = round_bf16(v)
            results.append(v)
        body += self.lines
        for i, ((p, _), v) in enumerate(zip(k.outputs, results)):
            body.append(f"    tl.store(out{i} + offs, ({v}).to({storage_type(p.dtype)}), "
                        "mask=mask)")
            if p.dtype == "float8e4m3fn":
                # NaN's bits written directly: not every backend converts NaN to e4m3fn
                body.append(f"    tl.store(out{i}.to(tl.pointer_type(tl.uint8), bitcast=True) + "
                            f"offs, tl.full([BLOCK], 0x7F, tl.uint8), mask=mask & ({v} != {v}))")
        header = [f"# tritort fused kernel {k.name}",
                  f"# ONNX nodes: {', '.join(f'{n} ({o})' for n, o in zip(k.nodes, k.node_ops))}",
                  "import triton", "import triton.language as tl", "", "",
                  "@triton.jit", f"def {KERNEL}({', '.join(params)}):"]
        source = "\n".join(header + body) + "\n"
        return source + helper_source(source)


def emit(kernel: PointwiseKernel) -> str:
    return ExprEmitter(kernel).render()
