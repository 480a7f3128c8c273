"""onnxruntime's com.microsoft QLinearGlobalAveragePool as a row-wise template.

One row per (N, C) pair, columns over the spatial axes (channels_last: the input is
(N, *spatial, C), the rows are still (N, C)). As the NumPy kernel and onnxruntime do: the
8-bit values summed exactly in int32, the zero point times the count taken off, then one
float32 scaling ``total * (x_scale / count)``, divided by y_scale, rounded half to even, plus
y's zero point, saturated. Scales and zero points are per tensor (one element each).
"""
from __future__ import annotations

from .cache import KERNEL
from .keys import contrib
from .rowwise import Layout, TileLauncher, TileSource, torch_dtype
from .templates import KernelSpec, Template, load_source, template

_INT8 = ("int8", "uint8")
_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


def _per_tensor(shape) -> bool:
    return shape is not None and all(d == 1 for d in shape)


@template(contrib("QLinearGlobalAveragePool"))
class QLinearGlobalAveragePool(Template):
    kind = "rowwise"

    def claim(self, node, ctx) -> str | None:
        if len(node.inputs) < 5 or not all(node.inputs[:5]):
            return "QLinearGlobalAveragePool takes x, x_scale, x_zero_point, y_scale and " \
                   "y_zero_point"
        x = node.inputs[0]
        rank = ctx.rank_of(x)
        if rank is None or rank < 3:
            return f"QLinearGlobalAveragePool of a rank-{rank} input (needs N, C and a " \
                   f"spatial axis)"
        if ctx.dtype_of(x) not in _INT8 or ctx.dtype_of(node.outputs[0]) not in _INT8:
            return f"QLinearGlobalAveragePool of {ctx.dtype_of(x)} to " \
                   f"{ctx.dtype_of(node.outputs[0])}"
        for value in node.inputs[1:5]:
            if not _per_tensor(ctx.shape_of(value)):
                return f"QLinearGlobalAveragePool parameter '{value}' not per tensor (or " \
                       f"its shape unknown at load time)"
        return None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        x, xs, xz, ys, yz = node.inputs[:5]
        rank = ctx.rank_of(x)
        dt, out = ctx.dtype_of(x), ctx.dtype_of(node.outputs[0])
        channels_last = bool(node.attrs.get("channels_last", 0))
        spatial = range(1, rank - 1) if channels_last else range(2, rank)
        layout = Layout.reducing(rank, spatial)
        k = TileSource(name, node, layout, {"x": dt, "xs": "float", "xz": dt, "ys": "float",
                                            "yz": out}, {"y": out})
        k.line("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)")
        with k.columns("x"):
            k.line(f"acc += tl.where(mask, {k.load('x', 'tl.int32')}, 0)")

        def param(t: str) -> str:
            return f"tl.load({t}_ptr + {t}_row, mask=row_mask, other=1).to(tl.float32)"

        lo, hi = _RANGES[out]
        k.line(f"total = tl.sum(acc, axis=1) - {param('xz')}.to(tl.int32) * N")
        k.line(f"q = total.to(tl.float32) * ({param('xs')} / (N * 1.0)) / {param('ys')}")
        k.line("q_floor = tl.floor(q)")
        k.line("q_frac = q - q_floor")
        k.line("q_up = tl.where(tl.floor(q_floor * 0.5) == q_floor * 0.5, q_floor, q_floor + 1.0)")
        k.line("q = tl.where(q_frac > 0.5, q_floor + 1.0, tl.where(q_frac < 0.5, q_floor, q_up))")
        k.line(f"q = tl.minimum(tl.maximum(q + {param('yz')}, {float(lo)!r}), {float(hi)!r})")
        k.store_row("y", "q")
        source = k.render()
        fn, path, cached = load_source(source, KERNEL, ctx)

        def pooled(s):
            return tuple(1 if a in layout.reduced else d for a, d in enumerate(s))

        launcher = TileLauncher(fn, layout, ctx.torch_device, ctx.interpreted,
                                rows=[(torch_dtype(out), pooled)])
        ir_text = (f"kernel {name} QLinearGlobalAveragePool node={node.name!r}\n"
                   f"  in: {x} {dt}[rank {rank}]{' channels_last' if channels_last else ''}, "
                   f"{layout.text()}\n  exact int32 sums - x_zero_point * count, "
                   f"* x_scale / count / y_scale, rounded half to even, + y_zero_point, "
                   f"saturated\n  out: {node.outputs[0]} {out}")
        return KernelSpec(name, launcher, [x, xs, xz, ys, yz], ir_text, source, path, cached)
