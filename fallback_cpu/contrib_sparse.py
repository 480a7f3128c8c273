"""com.microsoft SparseToDenseMatMul: Y = alpha * op(A) @ op(B) with A sparse.

A arrives as the session's SparseTensor (COO with linear or coordinate indices, or CSR), read
through its public methods, or as a dense array (a sparse initializer is densified at load).
"""
from __future__ import annotations

import numpy as np

from .registry import NodeContext, register

MS_DOMAIN = "com.microsoft"


def dense(a) -> np.ndarray:
    """A sparse tensor's dense array (a dense array as it is)."""
    if isinstance(a, np.ndarray):
        return a
    shape, values = a.dense_shape(), a.values()
    out = np.zeros(shape, dtype=values.dtype)
    if a.format().name == "ORT_SPARSE_CSRC":
        view = a.as_csrc_view()
        outer = view.outer()
        rows = np.repeat(np.arange(len(outer) - 1), np.diff(outer))
        out[rows, view.inner()] = values
        return out
    indices = a.as_coo_view().indices()
    if indices.ndim == 1:  # linear positions in the dense array
        out.reshape(-1)[indices] = values
    else:  # one row of coordinates per value
        out[tuple(indices.reshape(len(values), len(shape)).T)] = values
    return out


@register("SparseToDenseMatMul", since=1, domain=MS_DOMAIN)
def sparse_to_dense_matmul(ctx: NodeContext):
    alpha = float(ctx.attr("alpha", 1.0))
    trans_a, trans_b = bool(ctx.attr("transA", 0)), bool(ctx.attr("transB", 0))

    def run(a, b):
        a = dense(a)
        a, b = (a.T if trans_a else a), (b.T if trans_b else b)
        y = np.matmul(a, b)
        return ((y * y.dtype.type(alpha)) if alpha != 1.0 else y,)

    return run
