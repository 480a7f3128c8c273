"""String kernels of the NumPy provider. Strings are numpy object arrays of Python str.

numpy has no vectorized operations for object-dtype strings, so these kernels map
Python's str methods over the flattened elements.
"""
from __future__ import annotations

import re

import numpy as np

from .registry import NodeContext, register


def _strings(values, shape) -> np.ndarray:
    """An object array of the given shape holding ``values`` (a flat list of str)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(shape)


def _as_str(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == object else x.astype(str).astype(object)


@register("StringConcat", since=[20])
def string_concat(ctx: NodeContext):
    def run(x, y):
        out = np.add(_as_str(x), _as_str(y), dtype=object)
        return (np.asarray(out, dtype=object),)

    return run


@register("RegexFullMatch", since=[20])
def regex_full_match(ctx: NodeContext):
    # Python's re accepts the RE2 subset ONNX models use.
    regex = re.compile(ctx.attr("pattern", ""))

    def run(x):
        flat = [regex.fullmatch(s) is not None for s in x.reshape(-1).tolist()]
        return (np.array(flat, dtype=bool).reshape(x.shape),)

    return run


@register("StringSplit", since=[20])
def string_split(ctx: NodeContext):
    delimiter = ctx.attr("delimiter") or None  # "" means: split on whitespace runs
    maxsplit = ctx.attr("maxsplit")
    maxsplit = -1 if maxsplit is None else maxsplit

    def run(x):
        # An empty string has no substrings (as in onnxruntime), whatever the delimiter.
        parts = [s.split(delimiter, maxsplit) if s else [] for s in x.reshape(-1).tolist()]
        counts = np.array([len(p) for p in parts], dtype=np.int64)
        width = int(counts.max(initial=0))
        padded = [p + [""] * (width - len(p)) for p in parts]
        flat = [s for p in padded for s in p]
        return _strings(flat, x.shape + (width,)), counts.reshape(x.shape)

    return run


@register("StringNormalizer", since=[10])
def string_normalizer(ctx: NodeContext):
    action = ctx.attr("case_change_action", "NONE")
    case_sensitive = bool(ctx.attr("is_case_sensitive", 0))
    stopwords = ctx.attr("stopwords") or []
    stops = set(stopwords) if case_sensitive else {w.lower() for w in stopwords}
    change = {"LOWER": str.lower, "UPPER": str.upper}.get(action)

    def run(x):
        words = x.reshape(-1).tolist()
        # Stopwords remove whole elements, compared case-insensitively unless told not to.
        kept = [w for w in words if (w if case_sensitive else w.lower()) not in stops]
        if change is not None:
            kept = [change(w) for w in kept]
        if not kept:
            kept = [""]
        shape = (1, len(kept)) if x.ndim == 2 else (len(kept),)
        return (_strings(kept, shape),)

    return run
