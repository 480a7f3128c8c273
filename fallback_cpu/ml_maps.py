"""ai.onnx.ml ops on maps and categories: ZipMap, CategoryMapper, CastMap.

Maps are Python dicts; ZipMap's output is a list of dicts, one per row, as onnxruntime
returns it.
"""
from __future__ import annotations

import numpy as np

from tritort.errors import InvalidArgument

from .registry import ML_DOMAIN, NodeContext, register


@register("ZipMap", domain=ML_DOMAIN)
def zip_map(ctx: NodeContext):
    labels = ctx.attr("classlabels_int64s") or ctx.attr("classlabels_strings")
    if not labels:
        raise ValueError("ZipMap needs classlabels_int64s or classlabels_strings")

    def run(x):
        rows = x.reshape(1, -1) if x.ndim == 1 else x
        if rows.shape[1] != len(labels):
            raise ValueError(f"ZipMap: {rows.shape[1]} scores per row but {len(labels)} labels")
        return ([dict(zip(labels, row)) for row in rows.astype(np.float32).tolist()],)

    return run


@register("CategoryMapper", domain=ML_DOMAIN)
def category_mapper(ctx: NodeContext):
    strings = ctx.attr("cats_strings", [])
    ints = ctx.attr("cats_int64s", [])
    to_int = dict(zip(strings, ints))
    to_str = dict(zip(ints, strings))
    default_int = ctx.attr("default_int64", -1)
    default_str = ctx.attr("default_string", "_Unused")

    def run(x):
        flat = x.reshape(-1).tolist()
        if x.dtype == object:
            return (np.array([to_int.get(v, default_int) for v in flat],
                             dtype=np.int64).reshape(x.shape),)
        out = np.empty(len(flat), dtype=object)
        out[:] = [to_str.get(v, default_str) for v in flat]
        return (out.reshape(x.shape),)

    return run


@register("CastMap", domain=ML_DOMAIN)
def cast_map(ctx: NodeContext):
    cast_to = ctx.attr("cast_to", "TO_FLOAT")
    dense = ctx.attr("map_form", "DENSE") == "DENSE"
    max_map = ctx.attr("max_map", 1)
    dtype = {"TO_FLOAT": np.float32, "TO_INT64": np.int64, "TO_STRING": object}[cast_to]

    def run(m):
        keys = sorted(m)
        if dense:
            values = [m[k] for k in keys]
        else:  # sparse: positions 0..max_map-1, missing keys are 0 (filled at numpy speed:
            # max_map comes from the model, and may be absurd)
            if max_map < 0:
                raise InvalidArgument(f"CastMap '{ctx.name}': max_map is {max_map}; a sparse "
                                      "map needs max_map >= 0")
            out = np.full(max_map, "0" if dtype is object else 0, dtype=dtype)
            for k in keys:
                if 0 <= k < max_map:
                    v = m[k]
                    out[k] = str(v) if dtype is object else \
                        float(v) if dtype is np.float32 else int(float(v))
            return (out.reshape(1, -1),)
        if dtype is object:
            out = np.empty(len(values), dtype=object)
            out[:] = [str(v) for v in values]
        else:
            out = np.asarray([float(v) if dtype is np.float32 else int(float(v)) for v in values],
                             dtype=dtype)
        return (out.reshape(1, -1),)

    return run
