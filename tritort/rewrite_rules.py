"""The attention rules :mod:`tritort.rewrites` runs (onnxscript's pattern rewriter; imported
only when a graph may hold attention, since onnxscript takes a while to import).

Both rules write ``ai.tritort::ScaledDotProductAttention(Q, KT, V[, mask])``. Their shared
check is the internal op's contract: rank-4 Q, Kᵀ and V, scalar constant scales, a mask that
does not broadcast the scores to a bigger shape. The IsNaN/Where guard after Softmax only
matters for rows with every key hidden (their probabilities are NaN without it): without a
mask, or with a causal one, no row is; with another mask the guard moves to the output
(``Where(IsNaN(Y), 0, Y)``: the same zeros for such rows).
"""
from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import _ir_utils, pattern
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.ort_fusions.sdpa import SDPA

from .contracts import ATTENTION_OP, INTERNAL_DOMAIN

# Fill values at or below this hide a key exactly (exp underflows to 0 in every float type).
_HIDDEN = float(np.finfo(np.float16).min)
_KEY_TRANSPOSE = {"BHSd": [0, 1, 3, 2], "BSHd": [0, 2, 3, 1]}


def apply_attention_rules(model: ir.Model) -> int:
    """Run the rules on ``model``; returns how many matches were rewritten."""
    global _RULES
    with _LOCK:  # a rule keeps its match's values between check and rewrite
        if _RULES is None:
            # onnxscript's SDPA first; ours takes what it leaves
            _RULES = pattern.RewriteRuleSet([ExactScaleSDPA.rule(), GivenKeyAttention.rule()])
        return _RULES.apply_to_model(model)


_RULES: pattern.RewriteRuleSet | None = None  # code, not data: nothing here goes stale
_LOCK = threading.Lock()


def _scale(bindings: dict, tag: str, name: str) -> float | None:
    kind = bindings.get(tag, "None")
    if kind == "None":
        return 1.0
    value = _ir_utils.get_singleton_value(bindings.get(name))
    if not isinstance(value, float) or value == 0.0:
        return None
    return value if kind == "Mul" else 1.0 / value


def _rank(v: ir.Value | None) -> int | None:
    return None if v is None or v.shape is None else len(v.shape)


def _known(dim) -> bool:
    return isinstance(dim, int) or (isinstance(dim, ir.SymbolicDim) and dim.value is not None)


def _same_dim(a, b) -> bool:
    return _known(a) and _known(b) and a == b


def _widens(mask: ir.Value, scores: ir.Value) -> bool:
    """The mask may make the scores bigger (the fused op takes only masks that broadcast to
    them; both engines refuse others at run time with an error naming the op, so only what
    the shapes known now prove is refused here)."""
    if _rank(mask) is None or _rank(mask) > 4:
        return True
    if scores.shape is None:
        return False
    return any(isinstance(m, int) and m > 1 and isinstance(s, int) and s == 1
               for m, s in zip(reversed(mask.shape), reversed(scores.shape)))


class _Attention:
    """What both rules share: the check against the internal op's contract, and the rewrite."""

    def _check(self, context, query, key_t_rank_ok: bool, value, mask, bindings) -> MatchResult:
        result = MatchResult()
        if _rank(query) != 4 or not key_t_rank_ok or _rank(value) != 4:
            return result.fail("Q, K and V must be rank 4")
        scales = [_scale(bindings, f"{w}_scaling", f"{w}_scale") for w in ("query", "key", "qk")]
        if any(s is None for s in scales):
            return result.fail("a scale is not a nonzero scalar constant")
        self._exact_scale = scales[0] * scales[1] * scales[2]
        if not math.isfinite(self._exact_scale):
            return result.fail("scale is not finite")
        nodes = list(context.nodes)
        scores = next(n for n in nodes if n.op_type == "MatMul" and
                      n.outputs[0] is not context.output_values[0])
        if mask is not None and _widens(mask, scores.outputs[0]):
            return result.fail("the mask broadcasts the scores to a bigger shape")
        self._guarded = any(n.op_type == "IsNaN" for n in nodes)
        self._output = context.output_values[0]
        return result

    def _emit(self, op, query, key_t, value, mask, causal: bool):
        inputs = [query, key_t, value] + ([mask] if mask is not None and not causal else [])
        y = getattr(op, ATTENTION_OP)(*inputs, scale=float(self._exact_scale),
                                      is_causal=int(causal), _domain=INTERNAL_DOMAIN,
                                      _version=1)
        y.shape, y.type = self._output.shape, self._output.type
        if not self._guarded or len(inputs) == 3:
            return y
        zero = op.Constant(value=ir.tensor(np.zeros((), query.dtype.numpy())))
        nan = op.IsNaN(y)
        nan.type, nan.shape = ir.TensorType(ir.DataType.BOOL), y.shape
        guarded = op.Where(nan, zero, y)
        guarded.type, guarded.shape = y.type, y.shape
        return guarded


class ExactScaleSDPA(_Attention, SDPA):
    """onnxscript's SDPA pattern, checked against the internal op's contract and rewritten to
    it with the exact scale (the parent rounds a default-looking scale away)."""

    def check(self, context, query, key, value, mask, key_format, **bindings):
        result = self._check(context, query, _rank(key) == 4, value, mask, bindings)
        if result:
            self._causal = mask is not None and causal_mask(mask, query, _key_length(
                key, key_format))
        return result

    def rewrite(self, op, query, key, value, mask, key_format, **_):
        perm = _KEY_TRANSPOSE[key_format]
        key_t = op.Transpose(key, perm=perm)
        key_t.type = key.type  # later stages read types and ranks from the graph
        if key.shape is not None:
            key_t.shape = ir.Shape([key.shape[i] for i in perm])
        return self._emit(op, query, key_t, value, mask, self._causal)


def _key_length(key: ir.Value, key_format: str):
    if key.shape is None or len(key.shape) != 4:
        return None
    return key.shape[2] if key_format == "BHSd" else key.shape[1]


class GivenKeyAttention(_Attention, pattern.RewriteRuleClassBase):
    """The same computation with Kᵀ taken as it comes (a graph input, or a transpose the SDPA
    rule does not know), and masks written ``Where(condition, scores, fill)``, which the SDPA
    rule does not match."""

    def pattern(self, op, query, key_t, value, mask, condition, fill, query_scale, key_scale,
                qk_scale, zero, bias):
        def scaled(x, s, tag):  # the scale on either side of a Mul
            return pattern.OrValue([op.Mul(x, s), op.Mul(s, x), op.Div(x, s), x], tag_var=tag,
                                   tag_values=["Mul", "Mul", "Div", "None"])

        scores = op.MatMul(scaled(query, query_scale, "query_scaling"),
                           scaled(key_t, key_scale, "key_scaling"))
        scores = scaled(scores, qk_scale, "qk_scaling")
        # two additive terms (T5: the relative-position bias, then the padding mask) sum
        # into one mask
        scores = pattern.OrValue(
            [op.Add(scores, mask), op.Add(mask, scores), op.Add(op.Add(scores, bias), mask),
             op.Add(op.Add(bias, scores), mask), op.Add(mask, op.Add(scores, bias)),
             op.Where(condition, scores, fill), op.Where(condition, fill, scores), scores],
            tag_var="masking", tag_values=["Add", "Add", "Add2", "Add2", "Add2", "keep", "drop",
                                           "None"])
        weights = op.Softmax(scores, axis=-1)
        guarded = op.Where(op.IsNaN(weights), zero, weights)  # a [1] zero too (TorchScript)
        # Casts to the probabilities' own type (the legacy exporter's upcast in LLaMA's
        # attention, float32 already) change nothing; check() makes sure of the type
        probs = pattern.OrValue([guarded, weights, op.Cast(weights), op.Cast(op.Cast(weights))])
        return op.MatMul(probs, value)

    def check(self, context, query, key_t, value, mask, condition, fill, masking, zero=None,
              bias=None, **bindings):
        if zero is not None and _ir_utils.get_singleton_value(zero) != 0:
            return MatchResult().fail("the NaN guard does not write zeros")
        softmax = next(n for n in context.nodes if n.op_type == "Softmax")
        dtype = softmax.outputs[0].dtype
        if any(n.op_type == "Cast" and (dtype is None or n.attributes.get_int("to") !=
                                        dtype.value) for n in context.nodes):
            return MatchResult().fail("a Cast after Softmax changes the type")
        if masking == "Add2" and _widens(bias, next(
                n for n in context.nodes if n.op_type == "MatMul" and
                n.outputs[0] is not context.output_values[0]).outputs[0]):
            return MatchResult().fail("the bias broadcasts the scores to a bigger shape")
        if masking in ("keep", "drop"):
            mask = condition
            fill_value = _ir_utils.get_singleton_value(fill)
            if not isinstance(fill_value, float) or _rank(condition) is None:
                return MatchResult().fail("Where's fill is not a scalar constant")
        result = self._check(context, query, _rank(key_t) == 4, value, mask, bindings)
        if result:
            key_len = None if _rank(key_t) != 4 else key_t.shape[3]
            self._causal = masking == "Add" and causal_mask(mask, query, key_len)
        return result

    def rewrite(self, op, query, key_t, value, mask, condition, fill, masking, bias=None,
                **_):  # noqa
        if masking == "Add2":
            total = op.Add(bias, mask)
            total.type, total.shape = mask.type, _broadcast_shape(bias.shape, mask.shape)
            mask = total
        if masking in ("keep", "drop"):  # scores + Where(condition, 0, fill), the same
            zero = op.Constant(value=ir.tensor(np.zeros((), query.dtype.numpy())))
            fill = op.CastLike(fill, zero)
            fill.type, fill.shape = query.type, ir.Shape([])
            branches = [zero, fill] if masking == "keep" else [fill, zero]
            mask = op.Where(condition, *branches)
            mask.type, mask.shape = query.type, condition.shape
        return self._emit(op, query, key_t, value, mask, self._causal)


def _broadcast_shape(a: ir.Shape | None, b: ir.Shape | None) -> ir.Shape | None:
    """Numpy broadcast of two shapes: a size above 1 wins over an unknown dim (which must be 1
    or that size); two unknown dims that may differ get a name of their own, so the result's
    rank stays known to the templates (they take only named or sized dims)."""
    if a is None or b is None:
        return None
    dims = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == 1 or y == 1:
            dims.append(y if x == 1 else x)
        elif isinstance(x, int) or (x == y and _known(x)):
            dims.append(x)
        elif isinstance(y, int):
            dims.append(y)
        else:
            dims.append(ir.SymbolicDim(f"tritort_mask_{next(_FRESH_DIMS)}"))
    return ir.Shape(dims[::-1])


_FRESH_DIMS = itertools.count()  # unique within the process, so within any graph


# ------------------------------------------------------------------ causal masks


def causal_mask(mask: ir.Value, query: ir.Value, key_len) -> bool:
    """True when ``mask`` is, for every sequence length, 0 where key j <= query i and hides
    the other keys: Q's and the keys' lengths must be its last two dims."""
    rows = query.shape[2] if _rank(query) == 4 else None
    if not (_known(rows) and _known(key_len)):
        return False
    v = _strip_leading(mask)
    const = _ir_utils.get_numpy_value(v)
    if const is not None:
        m = const.reshape(const.shape[-2:]) if const.ndim >= 2 and \
            all(d == 1 for d in const.shape[:-2]) else None
        if m is None or not (isinstance(rows, int) and isinstance(key_len, int)) or \
                m.shape != (rows, key_len):
            return False
        lower = np.tril(np.ones(m.shape, bool))
        return bool(np.all(m[lower] == 0) and np.all(m[~lower] <= _HIDDEN))
    node = v.producer()
    if node is None or node.op_type != "Where" or node.domain != "":
        return False
    a, b = (_ir_utils.get_singleton_value(x) for x in node.inputs[1:])
    if not isinstance(a, float) or not isinstance(b, float):
        return False
    kind = _triangle(node.inputs[0], rows, key_len, v)
    return (kind == "keep" and a == 0 and b <= _HIDDEN) or \
        (kind == "hide" and b == 0 and a <= _HIDDEN)


def _strip_leading(v: ir.Value) -> ir.Value:
    """Through Unsqueeze (leading axes) and Cast between float types."""
    while (node := v.producer()) is not None and node.domain == "":
        if node.op_type == "Cast" and v.dtype is not None and v.dtype.is_floating_point():
            v = node.inputs[0]
            continue
        axes = _ir_utils.get_numpy_value(node.inputs[1]) if node.op_type == "Unsqueeze" and \
            len(node.inputs) > 1 else None
        rank = _rank(v)
        if axes is None or rank is None:
            break
        added = len(axes.reshape(-1))
        if any((a % rank) >= added for a in axes.reshape(-1).tolist()):
            break
        v = node.inputs[0]
    return v


def _triangle(v: ir.Value, rows, cols, outer: ir.Value) -> str | None:
    """'keep' if v is True (or 1) exactly where j <= i, 'hide' exactly where j > i, over a
    [rows, cols] matrix; else None."""
    node = v.producer()
    const = _ir_utils.get_numpy_value(v)
    if const is not None:
        if const.ndim != 2:
            return None
        lower = np.tril(np.ones(const.shape, bool))
        if np.array_equal(const.astype(bool), lower) and np.all((const == 0) | (const == 1)):
            return "keep" if _dims(v, outer, rows, cols) else None
        if np.array_equal(const.astype(bool), ~lower) and np.all((const == 0) | (const == 1)):
            return "hide" if _dims(v, outer, rows, cols) else None
        return None
    if node is None or node.domain != "":
        return None
    if node.op_type == "Cast":
        return _triangle(node.inputs[0], rows, cols, outer)
    if node.op_type == "Not":
        kind = _triangle(node.inputs[0], rows, cols, outer)
        return {"keep": "hide", "hide": "keep"}.get(kind)
    if node.op_type == "Equal":
        if _ir_utils.get_singleton_value(node.inputs[1]) != 0:
            return None
        kind = _triangle(node.inputs[0], rows, cols, outer)
        return {"keep": "hide", "hide": "keep"}.get(kind)
    if node.op_type == "Slice":  # a top-left crop of a triangle is a triangle
        inner = _triangle_source(v)
        return inner if inner and _dims(v, outer, rows, cols) else None
    if node.op_type == "Trilu":
        k = node.inputs[1] if len(node.inputs) > 1 else None
        ones = node.inputs[0]
        if (k is not None and _ir_utils.get_singleton_value(k) != 0) or \
                node.attributes.get_int("upper", 1) != 0:
            return None
        src = ones.producer()
        if src is not None and src.op_type == "Expand" and \
                _ir_utils.get_singleton_value(src.inputs[0]) == 1:
            return "keep" if _dims(v, outer, rows, cols) or \
                _shape_from(src.inputs[1], rows, cols) else None
        return None
    return None


def _triangle_source(v: ir.Value) -> str | None:
    """'keep'/'hide' for a square triangular constant (or a crop chain of one)."""
    const = _ir_utils.get_numpy_value(v)
    node = v.producer()
    if const is None:
        if node is not None and node.op_type == "Slice" and node.domain == "" and \
                _top_left(node):
            return _triangle_source(node.inputs[0])
        return None
    if const.ndim != 2 or not np.all((const == 0) | (const == 1)):
        return None
    lower = np.tril(np.ones(const.shape, bool))
    if np.array_equal(const.astype(bool), lower):
        return "keep"
    return "hide" if np.array_equal(const.astype(bool), ~lower) else None


def _top_left(node: ir.Node) -> bool:
    """A Slice that starts at 0 with step 1 on every axis it cuts."""
    starts = _ir_utils.get_numpy_value(node.inputs[1])
    steps = node.inputs[4] if len(node.inputs) > 4 else None
    steps = None if steps is None else _ir_utils.get_numpy_value(steps)
    return starts is not None and bool(np.all(starts == 0)) and (
        len(node.inputs) < 5 or node.inputs[4] is None or
        (steps is not None and bool(np.all(steps == 1))))


def _dims(v: ir.Value, outer: ir.Value, rows, cols) -> bool:
    """v's (or the mask's) last two dims are known to be [rows, cols]."""
    for x in (v, outer):
        if x.shape is not None and len(x.shape) >= 2 and _same_dim(x.shape[-2], rows) and \
                _same_dim(x.shape[-1], cols):
            return True
    return False


def _shape_from(shape: ir.Value, rows, cols) -> bool:
    """``shape`` is Concat(dim rows of some tensor, dim cols of some tensor)."""
    node = shape.producer()
    if node is None or node.op_type != "Concat" or len(node.inputs) != 2:
        return False
    return all(_same_dim(_dim_of(x), want) for x, want in zip(node.inputs, (rows, cols)))


def _dim_of(v: ir.Value):
    """The dim a one-element value reads from a Shape: Shape(x, start=a, end=a+1), or a
    one-element Slice of Shape(x)."""
    node = v.producer()
    if node is None or node.domain != "":
        return None
    if node.op_type == "Slice":
        start = _ir_utils.get_numpy_value(node.inputs[1])
        end = _ir_utils.get_numpy_value(node.inputs[2])
        src = node.inputs[0].producer()
        if start is None or end is None or start.size != 1 or src is None or \
                src.op_type != "Shape" or src.attributes.get_int("start", 0) != 0 or \
                src.attributes.get_int("end", None) is not None:
            return None
        a, b = int(start.reshape(-1)[0]), int(end.reshape(-1)[0])
        x = src.inputs[0]
    elif node.op_type == "Shape":
        a = node.attributes.get_int("start", 0)
        b = node.attributes.get_int("end", a + 1)
        x = node.inputs[0]
    else:
        return None
    rank = _rank(x)
    if rank is None:
        return None
    a, b = a % rank if a < 0 else a, b + rank if b < 0 else b
    return x.shape[a] if b == a + 1 else None
