"""onnxruntime's normalizations as row-wise tile kernels, with :mod:`.norms`' machinery.

- ``com.microsoft`` SkipLayerNormalization / SkipSimplifiedLayerNormalization: the sum
  ``s = input + skip (+ bias)`` normalized over the last axis, times gamma (plus beta); the
  skip (B, S, H), (1, S, H) or (S, H) and the (H,) parameters are loaded with broadcast
  strides. Outputs y, mean (zeros for the simplified form, as onnxruntime reports), inv_std_var
  and the sum, each only where the node names it.
- default-domain SimplifiedLayerNormalization (onnxruntime registers it there): RMS
  normalization over ``axis``..end, scaled in the statistics' type and stored in the scale's.

Statistics are float32 (float64 for double). A float16/bfloat16 sum is rounded to its type
before it is normalized, as onnxruntime stores it first; y is rounded once.
"""
from __future__ import annotations

from tritort.dtypes import FLOAT_TYPES

from .emit import acc_type
from .keys import contrib
from .norms import LayerNorm, built, row_shape, row_statistics, stats_type, trailing_axes
from .rowwise import Layout, TileSource, check_dtypes, torch_dtype
from .templates import KernelSpec, Template, template

SKIP_EPSILON = 1e-12  # the contrib schemas' default


def _simplified(node) -> bool:
    return node.op_type != "SkipLayerNormalization"


def _skip_params(node) -> dict[str, str]:
    """Short tensor name -> the node's input, for the inputs present."""
    names = ["x", "skip", "gamma", "bias"] if node.op_type == "SkipSimplifiedLayerNormalization" \
        else ["x", "skip", "gamma", "beta", "bias"]
    return {t: v for t, v in zip(names, node.inputs) if v}


@template(contrib("SkipLayerNormalization"), contrib("SkipSimplifiedLayerNormalization"))
class SkipLayerNorm(Template):
    kind = "rowwise"
    passes = 3  # mean, variance, output (the simplified form skips the mean)
    epilogue = True  # on each element of y (nodes with y only)
    per_element_epilogue = True

    def claim(self, node, ctx) -> str | None:
        params = _skip_params(node)
        if any(t not in params for t in ("x", "skip", "gamma")):
            return "input, skip and gamma are required"
        why = check_dtypes(ctx, list(params.values()), FLOAT_TYPES, node.op_type)
        if why:
            return why
        x_shape, skip_shape = ctx.shape_of(params["x"]), ctx.shape_of(params["skip"])
        if x_shape is None or skip_shape is None:
            return "shapes of input and skip unknown at load time"
        rank = len(x_shape)
        if rank < 2 or len(skip_shape) not in (rank, rank - 1):
            return f"input of rank {rank} with a skip of rank {len(skip_shape)}"
        # (1, S, H) broadcasts along the batch only: a 1 elsewhere is an error on the CPU
        lead = 1 if len(skip_shape) == rank else 0
        for d, xd in zip(skip_shape[lead:], x_shape[rank - len(skip_shape) + lead:]):
            if d == 1 and xd != 1:
                return f"skip of shape {list(skip_shape)} for input {list(x_shape)}"
        for t in ("gamma", "beta", "bias"):
            if t in params and ctx.rank_of(params[t]) != 1:
                return f"{t} is not 1-D"
        return None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        params = _skip_params(node)
        x = params["x"]
        rank = ctx.rank_of(x)
        dt = ctx.dtype_of(x)
        simplified = _simplified(node)
        eps = float(node.attrs.get("epsilon", SKIP_EPSILON))
        st = "tl.float64" if dt == "double" else "tl.float32"
        outputs = list(node.outputs) + [""] * (4 - len(node.outputs))
        stats = {t: ctx.dtype_of(o) or "float"
                 for t, o in zip(["mean_out", "inv_out"], outputs[1:3]) if o}
        full = {t: ctx.dtype_of(v) for t, v in params.items()}
        full["y"] = dt
        if outputs[3]:
            full["sum_out"] = dt
        axes = (rank - 1,)
        k = TileSource(name, node, Layout.reducing(rank, axes), full, stats, fusion)
        total = f"{k.load('x', st)} + {k.load('skip', st)}"
        if "bias" in params:
            total += f" + {k.load('bias', st)}"
        # the sum as stored (rounded to the input's type), in st
        summed = lambda: k.round_to(total, dt)  # noqa: E731
        loaded = ("x", "skip") + (("bias",) if "bias" in params else ())
        row_statistics(k, st, eps, simplified, summed, loaded)
        if "mean_out" in stats:
            k.store_row("mean_out", "tl.zeros([BLOCK_M], dtype=tl.float32)" if simplified
                        else "mean")
        if "inv_out" in stats:
            k.store_row("inv_out", "inv_std")
        with k.columns(*params, *k.outputs(), *(["sum_out"] if outputs[3] else [])):
            k.line(f"s = {summed()}")
            centred = "s" if simplified else "(s - mean[:, None])"
            y = f"{centred} * inv_std[:, None] * {k.load('gamma', st)}"
            if "beta" in params:
                y += f" + {k.load('beta', st)}"
            k.finish_full(y)
            if "sum_out" in full:
                k.store_full("sum_out", "s")
        full_outs = [torch_dtype(dt), torch_dtype(dt) if outputs[3] else None]
        row_outs = [(torch_dtype(stats[t]) if t in stats else None, row_shape(axes))
                    for t in ["mean_out", "inv_out"]]
        fused = f"\n{fusion.text()}" if fusion else ""
        spec = built(name, node, ctx, k, k.launch_inputs(x, list(params.values())[1:]),
                     f"statistics in {st}, epsilon={eps!r}{fused}", full=full_outs,
                     rows=row_outs)
        if fusion:  # y only: the launcher returns the epilogue's outputs
            return spec
        launch, n_outputs = spec.fn, len(node.outputs)
        # the launcher returns (y, sum, mean, inv_std); the node orders (y, mean, inv_std, sum)
        spec.fn = lambda *inputs: _node_order(launch(*inputs))[:n_outputs]
        return spec


def _node_order(outputs: tuple) -> tuple:
    y, total, mean, inv_std = outputs
    return y, mean, inv_std, total


@template("SimplifiedLayerNormalization")
class SimplifiedLayerNorm(Template):
    """onnxruntime's default-domain RMS normalization (T5, LLaMA)."""

    kind = "rowwise"
    passes = 2  # the mean square, then the output
    prologue = True  # a residual Add computed in both passes, its sum stored once
    epilogue = True  # on each element of the result (single-output nodes)
    per_element_epilogue = True

    def memory_passes(self, node, shape) -> int:
        return LayerNorm.memory_passes(self, node, shape)

    def claim(self, node, ctx) -> str | None:
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        if not rank:
            return f"rank of '{x}' unknown at load time" if rank is None else "0-d input"
        if len(node.inputs) < 2 or not node.inputs[1]:
            return "scale is required"
        why = check_dtypes(ctx, node.inputs[:2], FLOAT_TYPES, node.op_type)
        if why:
            return why
        if stats_type(node, ctx) is None:
            return f"stash_type {node.attrs.get('stash_type')}"
        if ctx.rank_of(node.inputs[1]) is None or ctx.rank_of(node.inputs[1]) > rank:
            return f"rank of '{node.inputs[1]}' unknown or above the input's"
        axes = trailing_axes(rank, node.attrs.get("axis", -1))
        return axes if isinstance(axes, str) else None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        x, scale = node.inputs[:2]
        rank = ctx.rank_of(x)
        dt, yt = ctx.dtype_of(x), ctx.dtype_of(scale)
        axes = trailing_axes(rank, node.attrs.get("axis", -1))
        eps = float(node.attrs.get("epsilon", 1e-5))
        st = stats_type(node, ctx)
        outputs = list(node.outputs) + [""]
        stash = "double" if st == "tl.float64" else "float"
        stats = {"inv_out": ctx.dtype_of(outputs[1]) or stash} if outputs[1] else {}
        full = {"x": dt, "scale": yt, "y": yt}
        k = TileSource(name, node, Layout.reducing(rank, axes), full, stats, fusion)
        row_statistics(k, st, eps, True, lambda: k.data(st), k.data_tensors)
        if stats:
            k.store_row("inv_out", "inv_std")
        with k.columns(*k.data_tensors, "scale", *k.outputs()):
            k.finish_full(f"{k.data(st)} * inv_std[:, None] * {k.load('scale', st)}")
        row_outs = [(torch_dtype(stats["inv_out"]), row_shape(axes))] if stats else []
        fused = f"\n{fusion.text()}" if fusion else ""
        return built(name, node, ctx, k, k.launch_inputs(x, [scale]),
                     f"statistics in {st}, epsilon={eps!r}, scaled in {acc_type(dt)}{fused}",
                     full=[torch_dtype(yt)], rows=row_outs)
