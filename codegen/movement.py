"""Data-movement kernel templates: views as strides, copies as index math.

Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Expand and Slice only re-describe memory:
their launchers return torch views (permute / view / expand / as_strided), and the kernels
downstream read those through strides, so no data moves. Where a view cannot express the
result (a negative Slice step, a Reshape of memory whose strides do not allow it), a Triton
copy kernel maps each flat output index to an N-d index and that to a source offset.
Concat, Gather, Pad and Tile move data and Split is narrowed views; they live in
:mod:`tritort.codegen.index_kernels`.

This module also holds what both share: declining a node, reading constant inputs, and
rendering / launching the index-math kernels.
"""
from __future__ import annotations

import abc
import math
from typing import Any, Callable, Sequence

import numpy as np

from tritort import dtypes
from tritort.graph import Node

from . import target
from .launch import launch_kernel
from .pointwise import _block_size
from .templates import KernelSpec, Template, TemplateContext, load_source, template


class Decline(Exception):
    """Raised while reading a node's parameters: the node runs on the CPU, for this reason."""


# ------------------------------------------------------------------ claiming helpers


def dtype_reason(ctx: TemplateContext, values: Sequence[str]) -> str | None:
    """Why these tensors' element types cannot be moved by a Triton kernel, or None."""
    for value in values:
        if not value:
            continue
        dt = ctx.dtype_of(value)
        if dt is None:
            return f"element type or rank of '{value}' unknown at load time"
        if dt.startswith("float8"):
            return f"float8 data ('{value}') stays on the CPU"
        row = dtypes.BY_NAME[dt]
        if row.triton is None or row.torch is None:
            return f"Triton has no {dt} type ('{value}')"
    return None


def input_name(node: Node, index: int) -> str:
    return node.inputs[index] if index < len(node.inputs) else ""


def constant_ints(node: Node, ctx: TemplateContext, index: int, what: str) -> list[int] | None:
    """An optional constant input as ints: None when absent, Decline when not a constant."""
    name = input_name(node, index)
    if not name:
        return None
    value = ctx.constant_of(name)
    if value is None:
        raise Decline(f"{node.op_type}'s {what} input '{name}' is not a constant initializer")
    return [int(v) for v in np.asarray(value).reshape(-1)]


def known_rank(ctx: TemplateContext, value: str) -> int:
    rank = ctx.rank_of(value)
    if rank is None:
        raise Decline(f"rank of '{value}' unknown at load time")
    return rank


def norm_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < max(rank, 1):
        raise Decline(f"{what} {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def torch_dtype(ctx: TemplateContext, value: str):
    import torch

    return getattr(torch, dtypes.BY_NAME[ctx.dtype_of(value)].torch)


class MovementTemplate(Template):
    """Claims a node when its data types move and ``params`` can read its parameters."""

    kind = "movement"

    def moved_values(self, node: Node) -> list[str]:
        """The inputs whose element type the kernel moves (outputs have the same type)."""
        return [node.inputs[0]]

    def claim(self, node: Node, ctx: TemplateContext) -> str | None:
        reason = dtype_reason(ctx, self.moved_values(node))
        if reason:
            return reason
        try:
            self.params(node, ctx)
        except Decline as e:
            return str(e)
        return None

    @abc.abstractmethod
    def params(self, node: Node, ctx: TemplateContext) -> Any:
        """The node's compile-time parameters; raises Decline when it cannot run here."""


def view_template(name: str, node: Node, describe: str, fn: Callable,
                  host_inputs: Sequence[str] = ()) -> KernelSpec:
    """A node that becomes a torch view: no kernel, no cache file. ``host_inputs`` follow the
    data input: values ``fn`` reads in host memory (runtime starts and ends, say)."""
    ir_text = f"{name}: {node.op_type} '{node.name}' -> view: {describe}"
    source = f"# tritort view {name}: {node.op_type} node '{node.name}'\n# {describe}\n"
    return KernelSpec(name, fn, [node.inputs[0], *host_inputs], ir_text, source, None,
                            False, tuple(host_inputs))


# ------------------------------------------------------------------ kernel source


def index_names(rank: int, prefix: str = "i") -> list[str]:
    return [f"{prefix}{j}" for j in range(rank)]


def offset_expr(indices: Sequence[str], strides: Sequence[str]) -> str:
    terms = [f"{i} * {s}" for i, s in zip(indices, strides)]
    return " + ".join(terms) if terms else "0"


def render_kernel(name: str, node: Node, ir_text: str, params: Sequence[str], rank: int,
                  body: Sequence[str]) -> str:
    """One kernel over the flat output index: ``offs`` is split into i0..i{rank-1} over the
    runtime output dims d0..d{rank-1}, then ``body`` loads and stores."""
    lines = [f"# tritort {node.op_type} kernel {name}",
             f"# ONNX node: {node.name} ({node.op_type})"]
    lines += [f"# {line}" for line in ir_text.splitlines()[1:]]
    lines += ["import triton", "import triton.language as tl", "", "", "@triton.jit",
              f"def {name}({', '.join([*params, 'BLOCK: tl.constexpr'])}):",
              "    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
              "    mask = offs < numel"]
    if rank > 1:
        lines.append("    rem = offs")
        for j in range(rank - 1, 0, -1):
            lines += [f"    i{j} = rem % d{j}", f"    rem = rem // d{j}"]
        lines.append("    i0 = rem")
    else:
        lines.append("    i0 = offs")
    return "\n".join(lines + list(body)) + "\n"


def launch(fn: Any, numel: int, args: Sequence[Any]) -> None:
    """One launch over ``numel`` output elements; ``args`` follow the kernel's parameters
    up to BLOCK, numel included."""
    if numel == 0:
        return
    block, warps = _block_size(numel, target.interpreted())
    launch_kernel(fn, ((numel + block - 1) // block,), *args, BLOCK=block, num_warps=warps)


# ------------------------------------------------------------------ strided copy


def copy_kernel_source(name: str, node: Node, rank: int, what: str) -> tuple[str, str]:
    """(source, ir_text) of ``dst[i] = src[src_start + i . src_strides]``, both sides strided.

    Strides may be negative (a reversed Slice), so the start is an explicit element offset.
    """
    rank = max(rank, 1)
    ir_text = (f"{name}: {node.op_type} '{node.name}' -> strided copy, rank {rank}\n"
               f"{what}\n"
               "dst[i . dst_strides] = src[src_start + i . src_strides]")
    idx = index_names(rank)
    src = [f"ss{j}" for j in range(rank)]
    dst = [f"ds{j}" for j in range(rank)]
    params = ["src", "dst", "numel", *[f"d{j}" for j in range(rank)], "src_start", *src, *dst]
    body = [f"    v = tl.load(src + (src_start + {offset_expr(idx, src)}), mask=mask)",
            f"    tl.store(dst + ({offset_expr(idx, dst)}), v, mask=mask)"]
    return render_kernel(name, node, ir_text, params, rank, body), ir_text


def strided_copy(fn: Any, src: Any, src_start: int, src_strides: Sequence[int], dst: Any,
                 shape: Sequence[int]) -> None:
    """Copy ``shape`` elements read at (src_start, src_strides) from ``src`` into ``dst``."""
    shape, src_strides, dst_strides = list(shape), list(src_strides), list(dst.stride())
    if not shape:  # 0-d: one element
        shape, src_strides, dst_strides = [1], [0], [0]
    launch(fn, math.prod(shape), [src, dst, math.prod(shape), *shape, src_start, *src_strides,
                                  *dst_strides])


class CopyKernel:
    """A compiled strided-copy kernel that makes contiguous copies on demand."""

    def __init__(self, name: str, node: Node, rank: int, what: str, ctx: TemplateContext):
        self.name = name
        self.source, self.ir_text = copy_kernel_source(name, node, rank, what)
        self.fn, self.path, self.cached = load_source(self.source, name, ctx)
        self.device = ctx.torch_device

    def contiguous(self, x: Any) -> Any:
        import torch

        out = torch.empty(x.shape, dtype=x.dtype, device=self.device)
        strided_copy(self.fn, x, 0, x.stride(), out, x.shape)
        return out

    def compiled(self, fn: Callable, inputs: list[str], ir_text: str,
                 host_inputs: tuple[str, ...] = ()) -> KernelSpec:
        return KernelSpec(self.name, fn, inputs, ir_text, self.source, self.path,
                                self.cached, host_inputs)


def view_or_copy(x: Any, shape: Sequence[int], kernel: CopyKernel) -> Any:
    """``x`` viewed as ``shape`` when its strides allow that, else a contiguous copy viewed."""
    try:
        return x.view(list(shape))
    except RuntimeError:  # torch: strides incompatible with the new shape
        return kernel.contiguous(x).view(list(shape))


# ------------------------------------------------------------------ views


@template("Transpose")
class Transpose(MovementTemplate):
    def params(self, node, ctx):
        perm = node.attrs.get("perm")
        rank = ctx.rank_of(node.inputs[0])
        if perm is not None and rank is not None and sorted(perm) != list(range(rank)):
            raise Decline(f"perm {perm} is not a permutation of rank {rank}")
        return perm

    def build(self, node, ctx, name, fusion=None):
        perm = self.params(node, ctx)

        def run(x):
            return (x.permute(perm if perm is not None else list(range(x.dim()))[::-1]),)

        describe = f"permute({', '.join(map(str, perm))})" if perm is not None else \
            "permute(reversed)"
        return view_template(name, node, describe, run)


def reshape_dims(in_shape: Sequence[int], shape: Sequence[int], allowzero: bool) -> list[int]:
    """ONNX Reshape's target: 0 copies the input's dim (unless allowzero), -1 is inferred."""
    dims = [int(in_shape[i]) if s == 0 and not allowzero else int(s) for i, s in enumerate(shape)]
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims[dims.index(-1)] = math.prod(in_shape) // known if known else 0
    if math.prod(dims) != math.prod(in_shape):
        raise ValueError(f"cannot reshape {list(in_shape)} to {list(shape)}")
    return dims


@template("Reshape")
class Reshape(MovementTemplate):
    def params(self, node, ctx):
        if ctx.opset < 5:
            shape = node.attrs.get("shape")
            if shape is None:
                raise Decline("Reshape-1 without a shape attribute")
        else:
            if not input_name(node, 1):
                raise Decline("Reshape without a shape input")
            if ctx.constant_of(node.inputs[1]) is None:  # read on the host at run time
                return None, bool(node.attrs.get("allowzero", 0)), \
                    known_rank(ctx, node.inputs[0])
            shape = constant_ints(node, ctx, 1, "shape")
        allowzero = bool(node.attrs.get("allowzero", 0))
        if shape.count(-1) > 1 or any(s < -1 for s in shape):
            raise Decline(f"invalid Reshape shape {shape}")
        if allowzero and -1 in shape and 0 in shape:
            raise Decline("Reshape with allowzero=1 takes 0 and -1 together")
        return shape, allowzero, known_rank(ctx, node.inputs[0])

    def build(self, node, ctx, name, fusion=None):
        shape, allowzero, rank = self.params(node, ctx)
        kernel = CopyKernel(name, node, rank, "copies the input contiguously when its strides "
                            "do not allow a view", ctx)

        if shape is None:  # the shape is a value: the plan hands it over in host memory
            def run(x, target):
                dims = reshape_dims(x.shape, [int(v) for v in target.tolist()], allowzero)
                return (view_or_copy(x, dims, kernel),)

            ir_text = (f"{name}: Reshape '{node.name}' -> view: reshape to the host value "
                       f"'{node.inputs[1]}'{' allowzero' if allowzero else ''}; copy kernel "
                       f"{name} (rank {rank}) when the input's strides do not allow a view")
            return kernel.compiled(run, node.inputs[:2], ir_text, (node.inputs[1],))

        def run(x):
            return (view_or_copy(x, reshape_dims(x.shape, shape, allowzero), kernel),)

        ir_text = (f"{name}: Reshape '{node.name}' -> view: reshape to {shape}"
                   f"{' allowzero' if allowzero else ''}; copy kernel {name} (rank {rank}) "
                   "when the input's strides do not allow a view")
        return kernel.compiled(run, [node.inputs[0]], ir_text)


@template("Flatten")
class Flatten(MovementTemplate):
    def params(self, node, ctx):
        rank = known_rank(ctx, node.inputs[0])
        axis = node.attrs.get("axis", 1)
        if not -rank <= axis <= rank:
            raise Decline(f"Flatten axis {axis} out of range for rank {rank}")
        return (axis + rank if axis < 0 else axis), rank

    def build(self, node, ctx, name, fusion=None):
        axis, rank = self.params(node, ctx)
        kernel = CopyKernel(name, node, rank, "copies the input contiguously when its strides "
                            "do not allow a view", ctx)

        def run(x):
            dims = [math.prod(x.shape[:axis]), math.prod(x.shape[axis:])]
            return (view_or_copy(x, dims, kernel),)

        ir_text = (f"{name}: Flatten '{node.name}' -> view: reshape to [prod(dims[:{axis}]), "
                   f"prod(dims[{axis}:])]; copy kernel {name} (rank {rank}) when the input's "
                   "strides do not allow a view")
        return kernel.compiled(run, [node.inputs[0]], ir_text)


def _axes(node: Node, ctx: TemplateContext) -> list[int] | None:
    """Squeeze/Unsqueeze axes: an attribute before opset 13, a constant input since."""
    if ctx.opset < 13:
        return node.attrs.get("axes")
    return constant_ints(node, ctx, 1, "axes")


@template("Squeeze")
class Squeeze(MovementTemplate):
    def params(self, node, ctx):
        return _axes(node, ctx)

    def build(self, node, ctx, name, fusion=None):
        axes = self.params(node, ctx)

        def run(x):
            if not axes:  # no axes: every dim of size 1
                return (x.view([d for d in x.shape if d != 1]),)
            dims = {a + x.dim() if a < 0 else a for a in axes}
            if any(not 0 <= a < x.dim() or x.shape[a] != 1 for a in dims):
                raise ValueError(f"Squeeze axes {axes} do not name dims of size 1 in "
                                 f"{list(x.shape)}")
            return (x.view([d for a, d in enumerate(x.shape) if a not in dims]),)

        describe = f"squeeze(axes={axes})" if axes else "squeeze(all dims of size 1)"
        return view_template(name, node, describe, run)


@template("Unsqueeze")
class Unsqueeze(MovementTemplate):
    def params(self, node, ctx):
        axes = _axes(node, ctx)
        if not axes:
            raise Decline("Unsqueeze without axes")
        return axes

    def build(self, node, ctx, name, fusion=None):
        axes = self.params(node, ctx)

        def run(x):
            out_rank = x.dim() + len(axes)
            positions = sorted(a + out_rank if a < 0 else a for a in axes)
            if len(set(positions)) != len(positions) or not all(
                    0 <= p < out_rank for p in positions):
                raise ValueError(f"Unsqueeze axes {axes} invalid for output rank {out_rank}")
            dims = list(x.shape)
            for p in positions:
                dims.insert(p, 1)
            return (x.view(dims),)  # inserting size-1 dims is always a view

        return view_template(name, node, f"unsqueeze(axes={axes})", run)


@template("Expand")
class Expand(MovementTemplate):
    def params(self, node, ctx):
        if not input_name(node, 1):
            raise Decline("Expand without a shape input")
        if ctx.constant_of(node.inputs[1]) is None:  # read on the host at run time
            return None
        return constant_ints(node, ctx, 1, "shape")

    def build(self, node, ctx, name, fusion=None):
        import torch

        shape = self.params(node, ctx)
        if shape is None:
            def run_runtime(x, target):  # bidirectional broadcast, as below
                dims = tuple(int(d) for d in target.tolist())
                return (x.expand(torch.broadcast_shapes(tuple(x.shape), dims)),)

            return view_template(name, node, f"expand(broadcast(dims, host value "
                                             f"'{node.inputs[1]}')), stride 0 on broadcast dims",
                                 run_runtime, [node.inputs[1]])

        def run(x):  # bidirectional broadcast: a 1 in `shape` keeps the input's dim
            return (x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(shape))),)

        return view_template(name, node, f"expand(broadcast(dims, {shape})), stride 0 on "
                                         "broadcast dims", run)


def slice_window(shape: Sequence[int], starts, ends, axes, steps
                 ) -> tuple[list[int], list[int], list[int]]:
    """Per dim (first index, count, step) after ONNX Slice's clamping."""
    rank = len(shape)
    first, count, step = [0] * rank, list(shape), [1] * rank
    seen = set()
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = a + rank if a < 0 else a
        if not 0 <= a < rank or a in seen:
            raise ValueError(f"Slice axes {list(axes)} invalid for rank {rank}")
        seen.add(a)
        dim = shape[a]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
            n = max(0, -(-(e - s) // st))
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            n = max(0, -(-(s - e) // -st)) if dim else 0
        first[a], count[a], step[a] = s, n, st
    return first, count, step


@template("Slice")
class Slice(MovementTemplate):
    def params(self, node, ctx):
        if ctx.opset < 10:
            starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
            axes, steps = node.attrs.get("axes"), None
        else:
            runtime = [i for i in (1, 2, 3) if input_name(node, i) and
                       ctx.constant_of(node.inputs[i]) is None]
            if runtime:  # read on the host at run time; constant positive steps only
                steps = constant_ints(node, ctx, 4, "steps")
                if steps is not None and any(st <= 0 for st in steps):
                    raise Decline("Slice with runtime starts/ends and negative steps")
                return None, None, None, steps, None
            starts = constant_ints(node, ctx, 1, "starts")
            ends = constant_ints(node, ctx, 2, "ends")
            axes = constant_ints(node, ctx, 3, "axes")
            steps = constant_ints(node, ctx, 4, "steps")
        if starts is None or ends is None:
            raise Decline("Slice without starts or ends")
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        if not len(starts) == len(ends) == len(axes) == len(steps):
            raise Decline("Slice's starts, ends, axes and steps differ in length")
        if 0 in steps:
            raise Decline("Slice step 0")
        reversed_ = any(st < 0 for st in steps)
        rank = known_rank(ctx, node.inputs[0]) if reversed_ else None
        return starts, ends, axes, steps, rank

    def build(self, node, ctx, name, fusion=None):
        starts, ends, axes, steps, rank = self.params(node, ctx)
        if starts is None:  # starts / ends / axes are values: handed over on the host
            return self._runtime_view(node, name, steps)
        describe = f"slice(starts={starts}, ends={ends}, axes={axes}, steps={steps})"

        def window(x):
            first, count, step = slice_window(x.shape, starts, ends, axes, steps)
            start = sum(f * s for f, s in zip(first, x.stride())) if all(count) else 0
            return count, [s * st for s, st in zip(x.stride(), step)], start

        if rank is None:  # positive steps: a strided view
            def run(x):
                count, strides, start = window(x)
                return (x.as_strided(count, strides, x.storage_offset() + start),)

            return view_template(name, node, describe + " as_strided", run)

        kernel = CopyKernel(name, node, rank, describe + ", negative steps read backwards", ctx)

        def run_copy(x):
            import torch

            count, strides, start = window(x)
            out = torch.empty(count, dtype=x.dtype, device=kernel.device)
            strided_copy(kernel.fn, x, start, strides, out, count)
            return (out,)

        return kernel.compiled(run_copy, [node.inputs[0]], kernel.ir_text)

    @staticmethod
    def _runtime_view(node, name, steps):
        host = [v for v in node.inputs[1:4] if v]
        present = [i for i in (1, 2, 3) if input_name(node, i)]

        def run(x, *values):
            given = dict(zip(present, ([int(v) for v in a.tolist()] for a in values)))
            starts, ends = given[1], given[2]
            axes = given.get(3, list(range(len(starts))))
            step = steps or [1] * len(starts)
            if not len(starts) == len(ends) == len(axes) == len(step):
                raise ValueError(f"Slice's starts {starts}, ends {ends}, axes {axes} and "
                                 f"steps {step} differ in length")
            first, count, stride = slice_window(x.shape, starts, ends, axes, step)
            start = sum(f * s for f, s in zip(first, x.stride())) if all(count) else 0
            return (x.as_strided(count, [s * st for s, st in zip(x.stride(), stride)],
                                 x.storage_offset() + start),)

        describe = (f"slice by the host values {', '.join(repr(v) for v in host)}"
                    f"{f', steps={steps}' if steps else ''} as_strided")
        return view_template(name, node, describe, run, host)


# The gathering templates register on import; they use the helpers above.
from . import index_kernels  # noqa: E402,F401
