"""Kernels of the ai.onnx.ml domain: LabelEncoder, Binarizer, ArrayFeatureExtractor, TreeEnsemble."""
from __future__ import annotations

import numpy as np

from tritort.errors import Fail

from .registry import ML_DOMAIN, NodeContext, register

# ------------------------------------------------------------- LabelEncoder


def _object_array(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


class _Lookup:
    """Maps each element of a tensor through parallel key/value arrays, else a default.

    Numeric keys use a sorted search (vectorized); string keys a dict. A repeated key
    maps to its last value, and a NaN key matches every NaN input.
    """

    def __init__(self, keys: np.ndarray, values: np.ndarray, default, out_dtype) -> None:
        self.out_dtype = np.dtype(out_dtype)
        self.default = default
        self.string_keys = keys.dtype == object
        if self.string_keys:
            self.table = dict(zip(keys.tolist(), values.tolist()))
            return
        nan = np.isnan(keys) if keys.dtype.kind == "f" else np.zeros(keys.shape, bool)
        self.nan_value = values[nan][-1] if nan.any() else None
        order = np.argsort(keys[~nan], kind="stable")
        self.keys = keys[~nan][order]
        self.values = values[~nan][order]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.string_keys:
            flat = [self.table.get(v, self.default) for v in x.reshape(-1).tolist()]
            out = np.array(flat, dtype=self.out_dtype) if self.out_dtype != object \
                else _object_array(flat)
            return out.reshape(x.shape)
        pos = np.searchsorted(self.keys, x, side="right") - 1  # last of repeated keys
        safe = np.clip(pos, 0, max(self.keys.size - 1, 0))
        found = (pos >= 0) & (self.keys[safe] == x) if self.keys.size else \
            np.zeros(x.shape, bool)
        out = np.full(x.shape, self.default, dtype=self.out_dtype)
        if self.keys.size:
            out[found] = self.values[safe[found]]
        if self.nan_value is not None:
            out[np.isnan(x)] = self.nan_value
        return out


def _tensor_default(values: np.ndarray):
    """default_tensor's fallback: the per-type defaults of the older attributes."""
    if values.dtype == object:
        return "_Unused"
    return values.dtype.type(-1 if values.dtype.kind in "iu" else -0.0)


@register("LabelEncoder", since=[1, 2, 4], domain=ML_DOMAIN)
def label_encoder(ctx: NodeContext):
    a = ctx.attrs
    if ctx.since_version < 2:
        classes = _object_array(a.get("classes_strings", []))
        to_int = _Lookup(classes, np.arange(len(classes), dtype=np.int64),
                         a.get("default_int64", -1), np.int64)
        default_string = a.get("default_string", "_Unused")

        def run_v1(x):
            if x.dtype == object:
                return (to_int(x),)
            idx = x.astype(np.int64)
            ok = (idx >= 0) & (idx < len(classes))
            out = np.full(x.shape, default_string, dtype=object)
            out[ok] = classes[idx[ok]]
            return (out,)

        return run_v1

    if "keys_tensor" in a:
        keys = np.asarray(a["keys_tensor"]).reshape(-1)
    elif "keys_strings" in a:
        keys = _object_array(a["keys_strings"])
    elif "keys_int64s" in a:
        keys = np.array(a["keys_int64s"], dtype=np.int64)
    else:
        keys = np.array(a.get("keys_floats", []), dtype=np.float32)

    if "values_tensor" in a:
        values = np.asarray(a["values_tensor"]).reshape(-1)
        default = (np.asarray(a["default_tensor"]).reshape(-1)[0] if "default_tensor" in a
                   else _tensor_default(values))
    elif "values_strings" in a:
        values, default = _object_array(a["values_strings"]), a.get("default_string",
                                                                    "_Unused")
    elif "values_int64s" in a:
        values = np.array(a["values_int64s"], dtype=np.int64)
        default = a.get("default_int64", -1)
    else:
        values = np.array(a.get("values_floats", []), dtype=np.float32)
        default = a.get("default_float", -0.0)
    lookup = _Lookup(keys, values, default, values.dtype)
    return lambda x: (lookup(x),)


@register("Binarizer", since=[1], domain=ML_DOMAIN)
def binarizer(ctx: NodeContext):
    threshold = ctx.attr("threshold", 0.0)
    return lambda x: ((x > threshold).astype(x.dtype),)


@register("ArrayFeatureExtractor", since=[1], domain=ML_DOMAIN)
def array_feature_extractor(ctx: NodeContext):
    def run(x, indices):
        idx = indices.astype(np.int64).reshape(-1)
        out = np.take(x, idx, axis=-1)
        # A 1-D input gives a [1, K] matrix, as onnxruntime does.
        return (out.reshape(1, -1) if x.ndim == 1 else out,)

    return run


# ------------------------------------------------------------- TreeEnsemble

_LEQ, _LT, _GTE, _GT, _EQ, _NEQ, _MEMBER = range(7)


def post_transform(scores: np.ndarray, kind: int) -> np.ndarray:
    """ai.onnx.ml post transforms on float64 scores [N, targets]."""
    if kind == 1:  # SOFTMAX
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if kind == 2:  # LOGISTIC
        return 1 / (1 + np.exp(-scores))
    if kind == 3:  # SOFTMAX_ZERO: zeros stay zero and take no part
        nonzero = scores != 0
        shifted = np.where(nonzero, scores, -np.inf)
        top = np.max(shifted, axis=1, keepdims=True)
        e = np.where(nonzero, np.exp(shifted - np.where(np.isfinite(top), top, 0)), 0.0)
        total = e.sum(axis=1, keepdims=True)
        return np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    if kind == 4:  # PROBIT
        from scipy.special import erfinv
        return np.sqrt(2) * erfinv(2 * scores - 1)
    return scores


def check_tree_links(where: str, children: list[list[int]], roots, leaves: int | None = None,
                     leaf_links: list[list[int]] | None = None) -> None:
    """Trees must be trees: every branch's children exist and no path comes back to a node
    it left (a cycle would walk for ever). ``children[i]`` lists the branch nodes node ``i``
    leads to; ``leaf_links`` the leaves, which must be below ``leaves``."""
    n = len(children)
    for i, kids in enumerate(children):
        bad = [k for k in kids if not 0 <= k < n]
        if bad:
            raise Fail(f"{where}: node {i} links to node {bad[0]}, outside the {n} nodes")
    for i, kids in enumerate(leaf_links or []):
        bad = [k for k in kids if leaves is not None and not 0 <= k < leaves]
        if bad:
            raise Fail(f"{where}: node {i} links to leaf {bad[0]}, outside the {leaves} leaves")
    bad_roots = [r for r in roots if not 0 <= r < n]
    if bad_roots:
        raise Fail(f"{where}: tree root {bad_roots[0]} is outside the {n} nodes")
    state = [0] * n  # 0 unseen, 1 on the current path, 2 done
    for root in range(n):
        if state[root]:
            continue
        stack = [(root, iter(children[root]))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            child = next(it, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state[child] == 1:
                raise Fail(f"{where}: the node links form a cycle through node {child}; each "
                           "tree must lead from its root to leaves")
            elif state[child] == 0:
                state[child] = 1
                stack.append((child, iter(children[child])))


@register("TreeEnsemble", since=[5], domain=ML_DOMAIN)
def tree_ensemble(ctx: NodeContext):
    a = ctx.attrs
    modes = np.asarray(a["nodes_modes"]).astype(np.int64).reshape(-1)
    splits = np.asarray(a["nodes_splits"]).astype(np.float64).reshape(-1)
    features = np.asarray(a["nodes_featureids"], dtype=np.int64)
    true_ids = np.asarray(a["nodes_truenodeids"], dtype=np.int64)
    false_ids = np.asarray(a["nodes_falsenodeids"], dtype=np.int64)
    true_leaf = np.asarray(a["nodes_trueleafs"], dtype=bool)
    false_leaf = np.asarray(a["nodes_falseleafs"], dtype=bool)
    missing_true = np.asarray(a.get("nodes_missing_value_tracks_true") or
                              [0] * modes.size, dtype=bool)
    leaf_targets = np.asarray(a["leaf_targetids"], dtype=np.int64)
    leaf_weights = np.asarray(a["leaf_weights"]).astype(np.float64).reshape(-1)
    roots = np.asarray(a["tree_roots"], dtype=np.int64)
    n_targets = int(a["n_targets"])
    links = [((int(true_ids[i]), true_leaf[i]), (int(false_ids[i]), false_leaf[i]))
             for i in range(modes.size)]
    check_tree_links(f"TreeEnsemble node '{ctx.name}'",
                     [[c for c, leaf in pair if not leaf] for pair in links], roots.tolist(),
                     leaf_targets.size, [[c for c, leaf in pair if leaf] for pair in links])
    aggregate = a.get("aggregate_function", 1)
    transform = a.get("post_transform", 0)

    # Each BRANCH_MEMBER node, in order, owns the next NaN-delimited run of members.
    members: dict[int, np.ndarray] = {}
    if "membership_values" in a:
        groups, current = [], []
        for v in np.asarray(a["membership_values"], dtype=np.float64).reshape(-1):
            if np.isnan(v):
                groups.append(np.array(current))
                current = []
            else:
                current.append(v)
        if current:
            groups.append(np.array(current))
        members = dict(zip(np.flatnonzero(modes == _MEMBER).tolist(), groups))

    def branch(node: np.ndarray, value: np.ndarray) -> np.ndarray:
        mode, split = modes[node], splits[node]
        cond = np.select(
            [mode == _LEQ, mode == _LT, mode == _GTE, mode == _GT, mode == _EQ, mode == _NEQ],
            [value <= split, value < split, value >= split, value > split, value == split,
             value != split], default=False)
        for member_node in np.unique(node[mode == _MEMBER]).tolist():
            at = node == member_node
            cond[at] = np.isin(value[at], members.get(member_node, ()))
        return cond | (missing_true[node] & np.isnan(value))

    def run(x):
        xf = x.astype(np.float64).reshape(x.shape[0], -1)
        n, n_trees = xf.shape[0], roots.size
        node = np.broadcast_to(roots, (n, n_trees)).copy()
        leaf = np.full((n, n_trees), -1, dtype=np.int64)
        rows = np.broadcast_to(np.arange(n)[:, None], (n, n_trees))
        active = np.ones((n, n_trees), dtype=bool)
        while active.any():  # one step down every unfinished tree per iteration
            cur, r = node[active], rows[active]
            cond = branch(cur, xf[r, features[cur]])
            nxt = np.where(cond, true_ids[cur], false_ids[cur])
            done = np.where(cond, true_leaf[cur], false_leaf[cur])
            idx = np.flatnonzero(active)
            node.flat[idx] = nxt
            leaf.flat[idx[done]] = nxt[done]
            active.flat[idx[done]] = False
        weights, targets = leaf_weights[leaf], leaf_targets[leaf]
        if aggregate in (0, 1):
            scores = np.zeros((n, n_targets))
            np.add.at(scores, (rows, targets), weights)
            if aggregate == 0:
                scores /= n_trees
        else:
            bound = np.finfo(x.dtype).max if aggregate == 2 else np.finfo(x.dtype).min
            scores = np.full((n, n_targets), float(bound))
            (np.minimum if aggregate == 2 else np.maximum).at(scores, (rows, targets), weights)
        return (post_transform(scores, transform).astype(x.dtype),)

    return run
