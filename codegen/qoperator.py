"""onnxruntime's com.microsoft QLinearGlobalAveragePool and QLinearSoftmax as row-wise
templates (:mod:`tritort.codegen.rowwise`), and QLinearConcat. Scales and zero points are per tensor (one
element each); results are divided by y_scale, rounded half to even, offset by y's zero point
and saturated to the 8-bit output type, as the NumPy kernels do.

QLinearGlobalAveragePool: one row per (N, C) pair, columns over the spatial axes
(channels_last: the input is (N, *spatial, C), the rows still (N, C)); the 8-bit values summed
exactly in int32, the zero point times the count taken off, then one float32 scaling
``total * (x_scale / count)``, as onnxruntime.

QLinearSoftmax: rows as Softmax's (from ``opset`` 13 the one ``axis``, before that every axis
from ``axis`` on); ``exp((x - row max) * x_scale)`` in float32 (x's zero point cancels), the
row sum, then each value over it. onnxruntime reads the exponentials from a float table: one
code apart at most where a value sits on a rounding boundary.

QLinearAveragePool: AveragePool's window kernel (:mod:`tritort.codegen.pool`) reading the
8-bit codes, its window means (exact sums, one float32 division) stored as float32, then a
requantizing launch: ``(mean - x_zero_point) * x_scale / y_scale``. onnxruntime takes the
means' scaling in other float steps: one code apart at most, where a mean sits half way
between two codes. channels_last inputs are read through a transposed view.
count_include_pad with pads stays on the CPU: its pads count as x's zero point.

QLinearConcat: per input, a requantizing pointwise launch (skipped where the input shares
y's scale and zero point values and type) and Concat's strided copy into the output at its
offset along ``axis``.
"""
from __future__ import annotations

from .cache import KERNEL
from .keys import contrib
from .rowwise import Layout, TileSource, torch_dtype
from .rowwise_launch import TileLauncher
from .templates import KernelSpec, Template, load_source, template

_INT8 = ("int8", "uint8")
_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


def _per_tensor(shape) -> bool:
    return shape is not None and all(d == 1 for d in shape)


def _param(t: str) -> str:
    """A per-tensor parameter, one per row (its strides are 0), in float32."""
    return f"tl.load({t}_ptr + {t}_row, mask=row_mask, other=1).to(tl.float32)"


def _requantize(k: TileSource, value: str, zero: str | None, out: str) -> str:
    """Lines leaving ``value`` (already divided by y_scale) quantized in ``q``; returns 'q'."""
    lo, hi = _RANGES[out]
    k.line(f"q = {value}")
    k.line("q_floor = tl.floor(q)")
    k.line("q_frac = q - q_floor")
    k.line("q_up = tl.where(tl.floor(q_floor * 0.5) == q_floor * 0.5, q_floor, q_floor + 1.0)")
    k.line("q = tl.where(q_frac > 0.5, q_floor + 1.0, tl.where(q_frac < 0.5, q_floor, q_up))")
    if zero is not None:
        k.line(f"q = q + {zero}")
    k.line(f"q = tl.minimum(tl.maximum(q, {float(lo)!r}), {float(hi)!r})")
    return "q"


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

        k.line(f"total = tl.sum(acc, axis=1) - {_param('xz')}.to(tl.int32) * N")
        _requantize(k, f"total.to(tl.float32) * ({_param('xs')} / (N * 1.0)) / {_param('ys')}",
                    _param("yz"), out)
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


def _softmax_axes(node, rank: int) -> tuple[int, ...] | None:
    opset = int(node.attrs.get("opset", 0))
    axis = int(node.attrs.get("axis", -1 if opset >= 13 else 1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        return None
    return (axis,) if opset >= 13 else tuple(range(axis, rank))


@template(contrib("QLinearSoftmax"))
class QLinearSoftmax(Template):
    kind = "rowwise"
    passes = 3  # the row max, the sum of exponentials, then every element

    def claim(self, node, ctx) -> str | None:
        ins = list(node.inputs) + [""] * (5 - len(node.inputs))
        x = ins[0]
        rank = ctx.rank_of(x)
        if "opset" not in node.attrs:
            return "QLinearSoftmax without its opset attribute"
        if not ins[3]:
            return "QLinearSoftmax without y_scale"
        if not rank or _softmax_axes(node, rank) is None:
            return f"QLinearSoftmax of a rank-{rank} input along axis {node.attrs.get('axis')}"
        out = ctx.dtype_of(node.outputs[0])
        if ctx.dtype_of(x) not in _INT8 or out not in _INT8:
            return f"QLinearSoftmax of {ctx.dtype_of(x)} to {out}"
        for value in ins[1:5]:
            if value and not _per_tensor(ctx.shape_of(value)):
                return f"QLinearSoftmax parameter '{value}' not per tensor (or its shape " \
                       f"unknown at load time)"
        return None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        ins = list(node.inputs) + [""] * (5 - len(node.inputs))
        x, xs, ys, yz = ins[0], ins[1], ins[3], ins[4]
        rank = ctx.rank_of(x)
        dt, out = ctx.dtype_of(x), ctx.dtype_of(node.outputs[0])
        layout = Layout.reducing(rank, _softmax_axes(node, rank))
        full = {"x": dt, "xs": "float", "ys": "float", **({"yz": out} if yz else {}), "y": out}
        k = TileSource(name, node, layout, full, {})
        k.line("top = tl.full([BLOCK_M], float('-inf'), tl.float32)")
        with k.columns("x"):
            k.line(f"top = tl.maximum(top, tl.max(tl.where(mask, {k.load('x', 'tl.float32')}, "
                   f"float('-inf')), axis=1))")
        k.line(f"x_scale = {_param('xs')}")
        k.line("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
        with k.columns("x"):
            k.line(f"e = tl.exp(({k.load('x', 'tl.float32')} - top[:, None]) * x_scale[:, None])")
            k.line("acc += tl.where(mask, e, 0.0)")
        k.line("total = tl.sum(acc, axis=1)")
        k.line(f"y_scale = {_param('ys')}")
        if yz:
            k.line(f"y_zero = {_param('yz')}")
        with k.columns("x", "y"):
            k.line(f"e = tl.exp(({k.load('x', 'tl.float32')} - top[:, None]) * x_scale[:, None])")
            q = _requantize(k, "(e / total[:, None]) / y_scale[:, None]",
                            "y_zero[:, None]" if yz else None, out)
            k.store_full("y", q)
        source = k.render()
        fn, path, cached = load_source(source, KERNEL, ctx)
        launcher = TileLauncher(fn, layout, ctx.torch_device, ctx.interpreted,
                                full=[torch_dtype(out)])
        inputs = [x, xs, ys] + ([yz] if yz else [])
        ir_text = (f"kernel {name} QLinearSoftmax node={node.name!r}\n"
                   f"  in: {x} {dt}[rank {rank}], {layout.text()}\n"
                   f"  exp((x - row max) * x_scale) in float32, / row sum / y_scale, rounded "
                   f"half to even, + y_zero_point, saturated\n  out: {node.outputs[0]} {out}")
        return KernelSpec(name, launcher, inputs, ir_text, source, path, cached)


_REQUANTIZE = """import triton
import triton.language as tl


@triton.jit
def kernel(x, xs, xz, ys, yz, y, lo, hi, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    v = (tl.load(x + offs, mask=mask, other=0).to(tl.float32) - tl.load(xz).to(tl.float32)) \\
        * tl.load(xs).to(tl.float32)
    q = v / tl.load(ys).to(tl.float32)
    q_floor = tl.floor(q)
    q_frac = q - q_floor
    q_up = tl.where(tl.floor(q_floor * 0.5) == q_floor * 0.5, q_floor, q_floor + 1.0)
    q = tl.where(q_frac > 0.5, q_floor + 1.0, tl.where(q_frac < 0.5, q_floor, q_up))
    q = tl.minimum(tl.maximum(q + tl.load(yz).to(tl.float32), lo), hi)
    tl.store(y + offs, q.to(y.dtype.element_ty), mask=mask)
"""


@template(contrib("QLinearConcat"))
class QLinearConcat(Template):
    kind = "movement"

    def claim(self, node, ctx) -> str | None:
        ins = list(node.inputs)
        if len(ins) < 5 or (len(ins) - 2) % 3 or not all(ins):
            return "QLinearConcat takes y_scale, y_zero_point and (x, scale, zero point) " \
                   "triples, none omitted"
        out = ctx.dtype_of(node.outputs[0])
        if out not in _INT8:
            return f"QLinearConcat output of {out}"
        rank = ctx.rank_of(ins[2])
        axis = node.attrs.get("axis")
        if rank is None or not rank or axis is None or not -rank <= axis < rank:
            return f"QLinearConcat of rank {rank} along axis {axis}"
        for i in range(2, len(ins), 3):
            if ctx.dtype_of(ins[i]) not in _INT8 or ctx.rank_of(ins[i]) != rank:
                return f"QLinearConcat input '{ins[i]}' of {ctx.dtype_of(ins[i])}, rank " \
                       f"{ctx.rank_of(ins[i])}"
        for value in ins[:2] + [v for i, v in enumerate(ins[2:]) if i % 3]:
            if not _per_tensor(ctx.shape_of(value)):
                return f"QLinearConcat parameter '{value}' not per tensor (or its shape " \
                       f"unknown at load time)"
        return None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        import torch

        from .movement import CopyKernel, launch, strided_copy

        ins = list(node.inputs)
        out = ctx.dtype_of(node.outputs[0])
        rank = ctx.rank_of(ins[2])
        axis = node.attrs["axis"] % rank
        triples = [ins[i:i + 3] for i in range(2, len(ins), 3)]
        constant = lambda v: ctx.constant_of(v)  # noqa: E731
        same = []  # inputs already in y's quantization: copied as they are
        for x, s, z in triples:
            values = [constant(v) for v in (s, z, ins[0], ins[1])]
            same.append(ctx.dtype_of(x) == out and (
                (s, z) == (ins[0], ins[1]) or (all(v is not None for v in values) and
                                               float(values[0].reshape(-1)[0]) ==
                                               float(values[2].reshape(-1)[0]) and
                                               int(values[1].reshape(-1)[0]) ==
                                               int(values[3].reshape(-1)[0]))))
        kernel = CopyKernel(name, node, rank, f"per input: requantized to y's scale and zero "
                            f"point (unless shared), then copied into the output at its "
                            f"offset along axis {axis}", ctx)
        requantize, _, _ = load_source(_REQUANTIZE, KERNEL, ctx)
        lo, hi = (float(v) for v in _RANGES[out])
        out_dtype = torch_dtype(out)

        def run(y_scale, y_zero, *flat):
            xs = flat[0::3]
            first = list(xs[0].shape)
            shape = first[:axis] + [sum(x.shape[axis] for x in xs)] + first[axis + 1:]
            y = torch.empty(shape, dtype=out_dtype, device=kernel.device)
            offset = 0
            for i, x in enumerate(xs):
                part = y.narrow(axis, offset, x.shape[axis])
                offset += x.shape[axis]
                if not same[i]:
                    x = x if x.is_contiguous() else kernel.contiguous(x)
                    q = torch.empty(x.shape, dtype=out_dtype, device=kernel.device)
                    launch(requantize, x.numel(), [x, flat[3 * i + 1], flat[3 * i + 2],
                                                   y_scale, y_zero, q, lo, hi, x.numel()])
                    x = q
                strided_copy(kernel.fn, x, 0, x.stride(), part, x.shape)
            return (y,)

        what = ", ".join("copied" if s else "requantized" for s in same)
        return kernel.compiled(run, ins, f"{kernel.ir_text}\ninputs: {what}")


@template(contrib("QLinearAveragePool"))
class QLinearAveragePool(Template):
    kind = "window"

    def claim(self, node, ctx) -> str | None:
        from . import conv

        ins = list(node.inputs) + [""] * (5 - len(node.inputs))
        if not all(ins[:5]):
            return "QLinearAveragePool with an omitted scale or zero point (runs on the CPU)"
        x, out = ins[0], ctx.dtype_of(node.outputs[0])
        rank = ctx.rank_of(x)
        if rank is None or not 3 <= rank <= 2 + conv.MAX_SPATIAL_RANK:
            return f"QLinearAveragePool of rank {rank}"
        if ctx.dtype_of(x) not in _INT8 or out not in _INT8:
            return f"QLinearAveragePool of {ctx.dtype_of(x)} to {out}"
        for value in ins[1:5]:
            if not _per_tensor(ctx.shape_of(value)):
                return f"QLinearAveragePool parameter '{value}' not per tensor (or its shape " \
                       f"unknown at load time)"
        if "kernel_shape" not in node.attrs:
            return "kernel_shape missing"
        padded = any(node.attrs.get("pads", [])) or \
            node.attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER")
        if node.attrs.get("count_include_pad", 0) and padded:
            return "QLinearAveragePool with count_include_pad and pads: they count as x's " \
                   "zero point, which the pool kernel's zero padding is not (runs on the CPU)"
        window = conv.window_from_attrs(node.attrs, rank - 2, None,
                                        bool(node.attrs.get("ceil_mode", 0)))
        return window if isinstance(window, str) else None

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        import torch

        from . import conv
        from .movement import launch
        from .pool import PoolLauncher, pool_source

        x = node.inputs[0]
        rank = ctx.rank_of(x)
        out = ctx.dtype_of(node.outputs[0])
        channels_last = bool(node.attrs.get("channels_last", 0))
        window = conv.window_from_attrs(node.attrs, rank - 2, None,
                                        bool(node.attrs.get("ceil_mode", 0)))
        include_pad = False  # claim: no pads to count where count_include_pad is set
        ir_text = (f"kernel {name} QLinearAveragePool node={node.name!r}\n"
                   f"X: {x} {ctx.dtype_of(x)}[N, {'*spatial, C' if channels_last else 'C, *spatial'}]"
                   f" -> {node.outputs[0]} {out}\n{window.text()}\nwindow means of the codes "
                   f"in float32 (count_include_pad={int(include_pad)}), then "
                   f"(mean - x_zero_point) * x_scale / y_scale rounded half to even, "
                   f"+ y_zero_point, saturated")
        header = [f"ONNX node: {node.name} ({node.op_type})", *ir_text.splitlines()[1:]]
        source = pool_source(KERNEL, header, "AveragePool", window, "float", include_pad)
        fn, path, cached = load_source(source, KERNEL, ctx)
        pool = PoolLauncher(fn, window, torch.float32, False, ctx.torch_device,
                            ctx.interpreted, node.name, node.op_type)
        requantize, _, _ = load_source(_REQUANTIZE, KERNEL, ctx)
        lo, hi = (float(v) for v in _RANGES[out])
        out_dtype = torch_dtype(out)

        def run(xt, xs, xz, ys, yz):
            (means,) = pool(xt.movedim(-1, 1) if channels_last else xt)
            q = torch.empty(means.shape, dtype=out_dtype, device=means.device)
            launch(requantize, q.numel(), [means, xs, xz, ys, yz, q, lo, hi, q.numel()])
            return (q.movedim(1, -1) if channels_last else q,)

        return KernelSpec(name, run, list(node.inputs[:5]), ir_text, source, path, cached)
