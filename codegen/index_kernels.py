"""Kernel templates that move data: Concat, Gather, GatherND, Pad, Tile; and Split, whose
outputs are views (narrow along the axis) downstream kernels read through strides.

Each kernel walks the flat index of what it writes, splits it into an N-d index over runtime
dims and turns that into a source offset through runtime strides, so one kernel serves every
size and every input layout (views included). Concat launches the shared strided-copy
kernel once per input; the others launch once per node.
"""
from __future__ import annotations

import math

from .movement import (CopyKernel, Decline, MovementTemplate, constant_ints,
                       index_names, input_name, known_rank, launch, norm_axis, offset_expr,
                       render_kernel, strided_copy, torch_dtype, view_template)
from .templates import KernelSpec, load_source, template


def _dims(prefix: str, rank: int) -> list[str]:
    return [f"{prefix}{j}" for j in range(rank)]


# ------------------------------------------------------------------ Concat / Split


@template("Concat")
class Concat(MovementTemplate):
    def params(self, node, ctx):
        inputs = [v for v in node.inputs if v]
        if not inputs:
            raise Decline("Concat without inputs")
        rank = known_rank(ctx, inputs[0])
        axis = node.attrs.get("axis", 1 if ctx.opset < 4 else None)
        if axis is None:
            raise Decline("Concat without an axis")
        return inputs, norm_axis(axis, rank), rank

    def moved_values(self, node):
        return list(node.inputs)

    def build(self, node, ctx, name, fusion=None):
        import torch

        inputs, axis, rank = self.params(node, ctx)
        kernel = CopyKernel(name, node, rank, f"one launch per input, into the output at its "
                            f"offset along axis {axis}", ctx)

        def run(*xs):
            first = list(xs[0].shape)
            for x in xs:
                if x.dim() != rank or any(d != first[j] for j, d in enumerate(x.shape)
                                          if j != axis):
                    raise ValueError(f"Concat inputs {[list(t.shape) for t in xs]} differ "
                                     f"outside axis {axis}")
            shape = first[:axis] + [sum(x.shape[axis] for x in xs)] + first[axis + 1:]
            out = torch.empty(shape, dtype=xs[0].dtype, device=kernel.device)
            offset = 0
            for x in xs:
                part = out.narrow(axis, offset, x.shape[axis])
                strided_copy(kernel.fn, x, 0, x.stride(), part, x.shape)
                offset += x.shape[axis]
            return (out,)

        return kernel.compiled(run, inputs, kernel.ir_text)


def split_sizes(dim: int, sizes: list[int] | None, parts: int) -> list[int]:
    """Explicit sizes, else equal chunks of ceil(dim / parts) with a smaller tail (v18)."""
    if sizes:
        if sum(sizes) != dim or any(s < 0 for s in sizes):
            raise ValueError(f"Split sizes {sizes} do not add up to the dim {dim}")
        return sizes
    chunk = -(-dim // parts)
    return [min(chunk, max(dim - i * chunk, 0)) for i in range(parts)]


@template("Split")
class Split(MovementTemplate):
    def params(self, node, ctx):
        rank = known_rank(ctx, node.inputs[0])
        axis = norm_axis(node.attrs.get("axis", 0), rank)
        if ctx.opset < 13:
            sizes = node.attrs.get("split")
            if sizes is None and ctx.opset < 2:  # Split-1 could take the sizes as an input
                sizes = constant_ints(node, ctx, 1, "split")
        else:
            sizes = constant_ints(node, ctx, 1, "split")
        parts = node.attrs.get("num_outputs") or len(node.outputs)
        if sizes and len(sizes) != len(node.outputs):
            raise Decline(f"Split into {len(sizes)} sizes but {len(node.outputs)} outputs")
        if not sizes and parts != len(node.outputs):
            raise Decline(f"Split num_outputs={parts} but {len(node.outputs)} outputs")
        return axis, sizes, parts, rank

    def build(self, node, ctx, name, fusion=None):
        axis, sizes, parts, _ = self.params(node, ctx)
        how = f"sizes {sizes}" if sizes else f"{parts} chunks of ceil(dim / {parts})"

        def run(x):  # each output a view of its window: consumers read it through strides
            outs, offset = [], 0
            for size in split_sizes(x.shape[axis], sizes, parts):
                outs.append(x.narrow(axis, offset, size))
                offset += size
            return tuple(outs)

        return view_template(name, node, f"narrow along axis {axis}: {how}", run)


# ------------------------------------------------------------------ Gather


def gather_source(name, node, data_rank: int, index_rank: int, axis: int) -> tuple[str, str]:
    """out[o..., j..., i...] = data[o..., wrap(indices[j...]), i...] for one axis."""
    rank = data_rank + index_rank - 1
    ir_text = (f"{name}: Gather '{node.name}' axis={axis}, data rank {data_rank}, indices "
               f"rank {index_rank} -> rank {rank}\n"
               "out[o, j, i] = data[o, k, i] with k = indices[j] (+ axis_dim if negative); "
               "out-of-range k reads 0")
    idx = index_names(rank)
    outer, middle, inner = idx[:axis], idx[axis:axis + index_rank], idx[axis + index_rank:]
    ds, js = _dims("ds", data_rank), _dims("js", index_rank)
    params = ["data", "indices", "out", "numel", *_dims("d", rank), *ds, *js, "axis_dim"]
    data_offset = offset_expr(outer + ["k"] + inner, ds)
    body = [f"    k = tl.load(indices + ({offset_expr(middle, js)}), mask=mask).to(tl.int64)",
            "    k = tl.where(k < 0, k + axis_dim, k)",
            "    ok = mask & (k >= 0) & (k < axis_dim)",
            f"    v = tl.load(data + ({data_offset}), mask=ok)",
            "    tl.store(out + offs, v, mask=mask)"]
    return render_kernel(name, node, ir_text, params, rank, body), ir_text


@template("Gather")
class Gather(MovementTemplate):
    def params(self, node, ctx):
        if ctx.dtype_of(node.inputs[1]) not in ("int32", "int64"):
            raise Decline(f"Gather indices of type {ctx.dtype_of(node.inputs[1])}")
        data_rank = known_rank(ctx, node.inputs[0])
        index_rank = known_rank(ctx, node.inputs[1])
        if data_rank == 0:
            raise Decline("Gather on a 0-d tensor")
        return norm_axis(node.attrs.get("axis", 0), data_rank), data_rank, index_rank

    def build(self, node, ctx, name, fusion=None):
        import torch

        axis, data_rank, index_rank = self.params(node, ctx)
        # a scalar index is gathered as a one-element index, and that dim dropped after
        source, ir_text = gather_source(name, node, data_rank, max(index_rank, 1), axis)
        fn, path, cached = load_source(source, name, ctx)

        def run(data, indices):
            if indices.dim() == 0:
                indices = indices.view(1)
            shape = list(data.shape[:axis]) + list(indices.shape) + list(data.shape[axis + 1:])
            out = torch.empty(shape, dtype=data.dtype, device=ctx.torch_device)
            numel = out.numel()
            launch(fn, numel, [data, indices, out, numel, *shape, *data.stride(),
                               *indices.stride(), data.shape[axis]])
            if index_rank == 0:
                out = out.view(shape[:axis] + shape[axis + 1:])
            return (out,)

        return KernelSpec(name, run, node.inputs[:2], ir_text, source, path, cached)


def gather_nd_source(name, node, data_rank: int, index_rank: int, depth: int,
                     batch: int) -> tuple[str, str]:
    """out[b..., j..., t...] = data[b..., k_0, ..., k_{depth-1}, t...] with
    k_c = indices[b..., j..., c]: GatherND's tuples of ``depth`` indices after ``batch``
    shared leading dims."""
    rank = index_rank - 1 + data_rank - batch - depth
    ir_text = (f"{name}: GatherND '{node.name}' batch_dims={batch}, {depth}-tuples, data rank "
               f"{data_rank}, indices rank {index_rank} -> rank {rank}\n"
               "out[b, j, t] = data[b, k, t] with k = indices[b, j, :] (+ dim if negative); "
               "out-of-range k reads 0")
    idx = index_names(rank)
    leading, trailing = idx[:index_rank - 1], idx[index_rank - 1:]
    ds, js, ns = _dims("ds", data_rank), _dims("js", index_rank), _dims("n", depth)
    params = ["data", "indices", "out", "numel", *_dims("d", rank), *ds, *js, *ns]
    # offs * 0 keeps a rank-0 result's row a block, as loads under a block mask need
    row = offset_expr(leading, js[:-1]) if leading else "offs * 0"
    body = ["    ok = mask", f"    row = {row}"]
    for c in range(depth):
        body += [f"    k{c} = tl.load(indices + row + {c} * {js[-1]}, mask=mask).to(tl.int64)",
                 f"    k{c} = tl.where(k{c} < 0, k{c} + n{c}, k{c})",
                 f"    ok = ok & (k{c} >= 0) & (k{c} < n{c})"]
    position = leading[:batch] + [f"k{c}" for c in range(depth)] + trailing
    body += [f"    v = tl.load(data + ({offset_expr(position, ds)}), mask=ok)",
             "    tl.store(out + offs, v, mask=mask)"]
    return render_kernel(name, node, ir_text, params, rank, body), ir_text


@template("GatherND")
class GatherND(MovementTemplate):
    def params(self, node, ctx):
        if ctx.dtype_of(node.inputs[1]) != "int64":
            raise Decline(f"GatherND indices of type {ctx.dtype_of(node.inputs[1])}")
        data_rank = known_rank(ctx, node.inputs[0])
        index_rank = known_rank(ctx, node.inputs[1])
        shape = ctx.shape_of(node.inputs[1])
        depth = shape[-1] if shape and isinstance(shape[-1], int) else None
        batch = int(node.attrs.get("batch_dims", 0))
        if index_rank < 1 or depth is None:
            raise Decline("GatherND's index tuple length is unknown at load time")
        if not 0 <= batch < min(data_rank, index_rank) or batch + depth > data_rank:
            raise Decline(f"GatherND batch_dims {batch} with {depth}-tuples does not fit data "
                          f"of rank {data_rank}")
        return data_rank, index_rank, depth, batch

    def build(self, node, ctx, name, fusion=None):
        import torch

        data_rank, index_rank, depth, batch = self.params(node, ctx)
        source, ir_text = gather_nd_source(name, node, data_rank, index_rank, depth, batch)
        fn, path, cached = load_source(source, name, ctx)

        def run(data, indices):
            shape = list(indices.shape[:-1]) + list(data.shape[batch + depth:])
            out = torch.empty(shape, dtype=data.dtype, device=ctx.torch_device)
            numel = out.numel()
            launch(fn, numel, [data, indices, out, numel, *shape, *data.stride(),
                               *indices.stride(), *data.shape[batch:batch + depth]])
            return (out,)

        return KernelSpec(name, run, node.inputs[:2], ir_text, source, path, cached)


# ------------------------------------------------------------------ Pad

_PAD_INDEX = {  # k: the source index along one dim, from i - begin
    "constant": ["    ok = ok & (k{j} >= 0) & (k{j} < n{j})"],
    "edge": ["    k{j} = tl.minimum(tl.maximum(k{j}, 0), n{j} - 1)"],
    "wrap": ["    k{j} = k{j} % n{j}",
             "    k{j} = tl.where(k{j} < 0, k{j} + n{j}, k{j})"],
    # mirror without repeating the edge: period p = max(2n - 2, 1), fold the second half back
    "reflect": ["    k{j} = k{j} % p{j}",
                "    k{j} = tl.where(k{j} < 0, k{j} + p{j}, k{j})",
                "    k{j} = tl.where(k{j} < n{j}, k{j}, p{j} - k{j})"],
}


def pad_source(name, node, rank: int, mode: str) -> tuple[str, str]:
    ir_text = (f"{name}: Pad '{node.name}' mode={mode}, rank {rank}\n"
               "out[i] = x[k] with k = i - begin (negative pads crop the input view first); "
               + ("outside x: value" if mode == "constant" else f"k folded into x by {mode}"))
    idx = index_names(rank)
    ks = [f"k{j}" for j in range(rank)]
    params = ["src", "value", "out", "numel", *_dims("d", rank), *_dims("n", rank),
              *_dims("s", rank), *_dims("b", rank)] + (_dims("p", rank) if mode == "reflect"
                                                       else [])
    body = ["    ok = mask"]
    for j, i in enumerate(idx):
        body.append(f"    k{j} = {i} - b{j}")
        body += [line.format(j=j) for line in _PAD_INDEX[mode]]
    body.append(f"    v = tl.load(src + ({offset_expr(ks, _dims('s', rank))}), mask=ok)")
    if mode == "constant":
        body.append("    v = tl.where(ok, v, tl.load(value))")
    body.append("    tl.store(out + offs, v, mask=mask)")
    return render_kernel(name, node, ir_text, params, rank, body), ir_text


@template("Pad")
class Pad(MovementTemplate):
    def params(self, node, ctx):
        rank = known_rank(ctx, node.inputs[0])
        mode = node.attrs.get("mode", "constant")
        if mode not in _PAD_INDEX:
            raise Decline(f"Pad mode '{mode}'")
        value, value_input = 0.0, ""
        if ctx.opset < 11:
            pads = node.attrs.get("paddings" if ctx.opset < 2 else "pads")
            value = node.attrs.get("value", 0.0)
            axes = None
        else:
            pads = constant_ints(node, ctx, 1, "pads")
            value_input = input_name(node, 2)
            axes = constant_ints(node, ctx, 3, "axes")
        if pads is None:
            raise Decline("Pad without pads")
        axes = list(range(rank)) if axes is None else [norm_axis(a, rank, "Pad axis")
                                                       for a in axes]
        if len(pads) != 2 * len(axes):
            raise Decline(f"Pad takes {2 * len(axes)} pads, got {len(pads)}")
        begin, end = [0] * rank, [0] * rank
        for n, a in enumerate(axes):
            begin[a], end[a] = pads[n], pads[len(axes) + n]
        return mode, begin, end, value, value_input, rank

    def build(self, node, ctx, name, fusion=None):
        import torch

        mode, begin, end, value, value_input, rank = self.params(node, ctx)
        source, ir_text = pad_source(name, node, max(rank, 1), mode)
        ir_text += f"\nbegin={begin} end={end}" + ("" if mode != "constant" or value_input
                                                  else f" value={value}")
        fn, path, cached = load_source(source, name, ctx)
        dtype = torch_dtype(ctx, node.inputs[0])
        # the pad value as a one-element tensor of the data's type (torch rounds it)
        default = torch.tensor([value], dtype=torch.float64).to(dtype).to(ctx.torch_device)

        def run(x, value_tensor=None):
            fill = default if value_tensor is None or value_tensor.numel() == 0 else \
                value_tensor.reshape(-1)
            crop = x
            for j in range(rank):  # negative pads crop: narrow the input view first
                lo, hi = max(-begin[j], 0), max(-end[j], 0)
                if lo or hi:
                    lo = min(lo, crop.shape[j])
                    crop = crop.narrow(j, lo, max(crop.shape[j] - lo - hi, 0))
            pad_begin = [max(b, 0) for b in begin]
            shape = [n + max(b, 0) + max(e, 0) for n, b, e in zip(crop.shape, begin, end)]
            if mode != "constant" and any(n == 0 and s for n, s in zip(crop.shape, shape)):
                raise ValueError(f"Pad mode {mode} cannot pad an empty dim of {list(x.shape)}")
            out = torch.empty(shape, dtype=x.dtype, device=ctx.torch_device)
            dims, ns, strides = shape, list(crop.shape), list(crop.stride())
            if rank == 0:
                dims, ns, strides, pad_begin = [1], [1], [0], [0]
            periods = [max(2 * n - 2, 1) for n in ns] if mode == "reflect" else []
            numel = out.numel()
            launch(fn, numel, [crop, fill, out, numel, *dims, *ns, *strides, *pad_begin,
                               *periods])
            return (out,)

        inputs = [node.inputs[0]] + ([value_input] if value_input else [])
        return KernelSpec(name, run, inputs, ir_text, source, path, cached)


# ------------------------------------------------------------------ Tile


def tile_source(name, node, rank: int, repeats: list[int]) -> tuple[str, str]:
    ir_text = (f"{name}: Tile '{node.name}' repeats={repeats}, rank {rank}\n"
               "out[i] = x[i % in_dims]")
    idx = index_names(rank)
    ks = [f"{i} % n{j}" for j, i in enumerate(idx)]
    params = ["src", "out", "numel", *_dims("d", rank), *_dims("n", rank), *_dims("s", rank)]
    body = [f"    v = tl.load(src + ({offset_expr([f'({k})' for k in ks], _dims('s', rank))}), "
            "mask=mask)",
            "    tl.store(out + offs, v, mask=mask)"]
    return render_kernel(name, node, ir_text, params, rank, body), ir_text


@template("Tile")
class Tile(MovementTemplate):
    def params(self, node, ctx):
        if ctx.opset < 6:
            raise Decline("Tile-1 takes tiles and axis inputs")
        rank = known_rank(ctx, node.inputs[0])
        repeats = constant_ints(node, ctx, 1, "repeats")
        if repeats is None or len(repeats) != rank or any(r < 0 for r in repeats):
            raise Decline(f"Tile repeats {repeats} do not fit rank {rank}")
        return repeats, rank

    def build(self, node, ctx, name, fusion=None):
        import torch

        repeats, rank = self.params(node, ctx)
        source, ir_text = tile_source(name, node, max(rank, 1), repeats)
        fn, path, cached = load_source(source, name, ctx)

        def run(x):
            shape = [n * r for n, r in zip(x.shape, repeats)]
            out = torch.empty(shape, dtype=x.dtype, device=ctx.torch_device)
            dims, ns, strides = (shape, list(x.shape), list(x.stride())) if rank else \
                ([1], [1], [0])
            numel = math.prod(shape)
            launch(fn, numel, [x, out, numel, *dims, *ns, *strides])
            return (out,)

        return KernelSpec(name, run, [node.inputs[0]], ir_text, source, path, cached)
