"""Indexing kernels of the NumPy provider: gathers, scatters, selection and sorting."""
from __future__ import annotations

import numpy as np

from tritort.errors import InvalidArgument

from .registry import NodeContext, register
from .shape import norm_axis

# ------------------------------------------------------------------ helpers


def _low_precision(dtype: np.dtype) -> bool:
    """ml_dtypes floats (bfloat16, float8...) that numpy ufuncs cannot reduce natively."""
    return dtype.kind == "V"


def _positive(indices: np.ndarray, dim) -> np.ndarray:
    indices = indices.astype(np.int64, copy=False)
    return np.where(indices < 0, indices + dim, indices)


def _element_index(indices: np.ndarray, axis: int, axis_dim: int) -> tuple:
    """A fancy-index tuple that addresses data[.., indices[i..], ..] along ``axis``."""
    grids = list(np.ogrid[tuple(slice(0, d) for d in indices.shape)])
    grids[axis] = _positive(indices, axis_dim)
    return tuple(grids)


_REDUCERS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(data: np.ndarray, index: tuple, updates: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        out = data.copy()
        out[index] = updates  # numpy keeps the last write for duplicate indices
        return out
    work_dtype = np.float32 if _low_precision(data.dtype) else data.dtype
    out = data.astype(work_dtype, copy=True)
    _REDUCERS[reduction].at(out, index, updates.astype(work_dtype, copy=False))
    return out.astype(data.dtype, copy=False)


# ------------------------------------------------------------------ gathers


@register("Gather", since=[1, 11, 13])
def gather(ctx: NodeContext):
    axis = ctx.attr("axis", 0)

    def run(x, indices):
        # np.take accepts negative indices in [-dim, dim) and raises outside it.
        a = norm_axis(axis, x.ndim)
        try:
            return (np.take(x, indices, axis=a),)
        except IndexError:
            dim = x.shape[a]
            bad = indices[(indices < -dim) | (indices >= dim)].reshape(-1)[:1]
            raise InvalidArgument(  # ORT's class and wording
                f"indices element out of data bounds, idx={int(bad[0]) if bad.size else '?'} "
                f"must be within the inclusive range [{-dim},{dim - 1}] (axis {a} of data "
                f"shape {list(x.shape)})") from None

    return run


@register("GatherElements", since=[11, 13])
def gather_elements(ctx: NodeContext):
    axis = ctx.attr("axis", 0)

    def run(x, indices):
        a = norm_axis(axis, x.ndim)
        return (x[_element_index(indices, a, x.shape[a])],)

    return run


@register("GatherND", since=[11, 12, 13])
def gather_nd(ctx: NodeContext):
    batch_dims = ctx.attr("batch_dims", 0)

    def run(x, indices):
        batch_shape = x.shape[:batch_dims]
        k = indices.shape[-1]
        nbatch = int(np.prod(batch_shape, dtype=np.int64))
        data = x.reshape((nbatch,) + x.shape[batch_dims:])
        idx = indices.reshape(nbatch, -1, k)
        idx = _positive(idx, np.array(x.shape[batch_dims:batch_dims + k], dtype=np.int64))
        index = (np.arange(nbatch)[:, None],) + tuple(idx[..., i] for i in range(k))
        out = data[index]
        out_shape = indices.shape[:-1] + x.shape[batch_dims + k:]
        return (out.reshape(out_shape),)

    return run


# ----------------------------------------------------------------- scatters


def _scatter_elements_factory(ctx: NodeContext):
    axis = ctx.attr("axis", 0)
    reduction = ctx.attr("reduction", "none")

    def run(x, indices, updates):
        a = norm_axis(axis, x.ndim)
        return (_scatter(x, _element_index(indices, a, x.shape[a]), updates, reduction),)

    return run


register("Scatter", since=[9, 11])(_scatter_elements_factory)
register("ScatterElements", since=[11, 13, 16, 18])(_scatter_elements_factory)


@register("ScatterND", since=[11, 13, 16, 18])
def scatter_nd(ctx: NodeContext):
    reduction = ctx.attr("reduction", "none")

    def run(x, indices, updates):
        k = indices.shape[-1]
        idx = _positive(indices, np.array(x.shape[:k], dtype=np.int64))
        index = tuple(idx[..., i] for i in range(k))
        return (_scatter(x, index, updates, reduction),)

    return run


@register("TensorScatter", since=[24])
def tensor_scatter(ctx: NodeContext):
    axis = ctx.attr("axis", -2)
    circular = ctx.attr("mode", "linear") == "circular"

    def run(past, update, write_indices=None):
        a = norm_axis(axis, past.ndim)
        max_len, seq_len = past.shape[a], update.shape[a]
        starts = (np.zeros(past.shape[0], np.int64) if write_indices is None
                  else write_indices.astype(np.int64).reshape(-1))
        out = past.copy()
        for b in range(past.shape[0]):  # loop over the batch only
            pos = starts[b] + np.arange(seq_len)
            if circular:
                pos %= max_len
            # Sequence axis first: a lone advanced index then lands where we expect.
            np.moveaxis(out[b], a - 1, 0)[pos] = np.moveaxis(update[b], a - 1, 0)
        return (out,)

    return run


# ------------------------------------------------------------- selection


@register("OneHot", since=[9, 11, 28])
def one_hot(ctx: NodeContext):
    axis = ctx.attr("axis", -1)

    def run(indices, depth, values):
        depth = int(np.asarray(depth).reshape(-1)[0])
        idx = indices.astype(np.int64) if indices.dtype.kind != "f" else \
            np.trunc(indices).astype(np.int64)
        idx = np.where(idx < 0, idx + depth, idx)
        a = norm_axis(axis, idx.ndim + 1)
        classes_shape = [1] * (idx.ndim + 1)
        classes_shape[a] = depth
        hot = np.expand_dims(idx, a) == np.arange(depth).reshape(classes_shape)
        off, on = values.reshape(-1)[0], values.reshape(-1)[1]
        out = np.where(hot, on, off)
        return (out.astype(values.dtype, copy=False),)

    return run


@register("NonZero", since=[9, 13])
def non_zero(ctx: NodeContext):
    def run(x):
        if x.ndim == 0:  # numpy refuses 0-d nonzero; a scalar has no coordinates
            return (np.zeros((0, int(bool(x))), dtype=np.int64),)
        mask = x != "" if x.dtype == object else x.astype(bool)
        return (np.array(np.nonzero(mask), dtype=np.int64).reshape(x.ndim, -1),)

    return run


@register("Compress", since=[9, 11, 28])
def compress(ctx: NodeContext):
    axis = ctx.attr("axis")

    def run(x, condition):
        cond = condition.astype(bool).reshape(-1)
        if axis is None:
            return (np.compress(cond, x.reshape(-1)),)
        return (np.compress(cond, x, axis=norm_axis(axis, x.ndim)),)

    return run


# ---------------------------------------------------------------- sorting


def _sort_key(x: np.ndarray, largest: bool) -> np.ndarray:
    """Keys whose stable ascending sort ranks ``x`` as TopK wants."""
    if _low_precision(x.dtype) or x.dtype == np.float16:
        x = x.astype(np.float32)
    if not largest:
        return x
    if x.dtype.kind in "iu":
        return ~x  # order-reversing without overflow, for signed and unsigned ints
    return -x


def top_k(x: np.ndarray, k: int, axis: int, largest: bool) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(_sort_key(x, largest), axis=axis, kind="stable")
    indices = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, indices, axis=axis), indices.astype(np.int64, copy=False)


@register("TopK", since=[1, 10, 11, 24])
def topk(ctx: NodeContext):
    axis = ctx.attr("axis", -1)
    largest = bool(ctx.attr("largest", 1))  # 'sorted' = 0 leaves order open: we sort anyway
    if ctx.since_version < 10:
        k_attr = ctx.attr("k")
        return lambda x: top_k(x, k_attr, norm_axis(axis, x.ndim), largest)
    return lambda x, k: top_k(x, int(np.asarray(k).reshape(-1)[0]), norm_axis(axis, x.ndim),
                              largest)


@register("Unique", since=[11, 28])
def unique(ctx: NodeContext):
    axis = ctx.attr("axis")
    sort = bool(ctx.attr("sorted", 1))

    def run(x):
        if axis is None:
            values, first, inverse, counts = np.unique(
                x.reshape(-1), return_index=True, return_inverse=True, return_counts=True)
            a = 0
        else:
            a = norm_axis(axis, x.ndim)
            values, first, inverse, counts = np.unique(
                x, return_index=True, return_inverse=True, return_counts=True, axis=a)
        inverse = inverse.reshape(-1)
        if not sort:  # order by first occurrence instead
            order = np.argsort(first, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(order.size)
            values = np.take(values, order, axis=a)
            first, counts, inverse = first[order], counts[order], rank[inverse]
        return (values, first.astype(np.int64), inverse.astype(np.int64),
                counts.astype(np.int64))

    return run


# ------------------------------------------------------- NonMaxSuppression


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """[N, 4] boxes as (y_min, x_min, y_max, x_max)."""
    if center_point_box:
        xc, yc, w, h = boxes.T
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)
    y1, x1, y2, x2 = boxes.T
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2),
                     np.maximum(x1, x2)], axis=1)


def _iou_exceeds(box: np.ndarray, others: np.ndarray, threshold: float) -> np.ndarray:
    ih = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    iw = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.where((ih > 0) & (iw > 0), ih * iw, 0.0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    valid = (inter > 0) & (area > 0) & (areas > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return valid & (inter / np.where(union > 0, union, 1) > threshold)


@register("NonMaxSuppression", since=[10, 11])
def non_max_suppression(ctx: NodeContext):
    center_point_box = ctx.attr("center_point_box", 0)

    def run(boxes, scores, max_output=None, iou_threshold=None, score_threshold=None):
        limit = 0 if max_output is None or max_output.size == 0 else \
            max(int(max_output.reshape(-1)[0]), 0)
        iou_t = 0.0 if iou_threshold is None or iou_threshold.size == 0 else \
            float(iou_threshold.reshape(-1)[0])
        has_score_t = score_threshold is not None and score_threshold.size > 0
        selected = []
        for b in range(boxes.shape[0]):
            corners = _corners(boxes[b].astype(np.float64), center_point_box)
            for c in range(scores.shape[1]):
                s = scores[b, c]
                candidates = np.flatnonzero(s > score_threshold.reshape(-1)[0]) if has_score_t \
                    else np.arange(s.shape[0])
                # Highest score first; ties keep the lower box index first.
                candidates = candidates[np.argsort(-s[candidates].astype(np.float64),
                                                   kind="stable")]
                alive = np.ones(candidates.size, dtype=bool)
                kept = 0
                cand_boxes = corners[candidates]
                while kept < limit:
                    live = np.flatnonzero(alive)
                    if live.size == 0:
                        break
                    i = live[0]
                    selected.append((b, c, candidates[i]))
                    kept += 1
                    alive[i] = False
                    alive[live[1:]] &= ~_iou_exceeds(cand_boxes[i], cand_boxes[live[1:]], iou_t)
        return (np.array(selected, dtype=np.int64).reshape(-1, 3),)

    return run
