"""Fused pointwise kernels: build the tile IR for a group, and launch the compiled kernel."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from tritort.graph import Node

from . import target
from .ir import Cast, Expr, Load, Op, PointwiseKernel, TensorParam
from .launch import launch_kernel
from .keys import op_key
from .lowering import aligned_inputs, lower_node


def build_kernel(name: str, group: Sequence[Node], dtype_of: Callable[[str], str],
                 rank_of: Callable[[str], int], escapes: Callable[[str], bool]
                 ) -> PointwiseKernel:
    """Lower a fusion group; values used after the group (or graph outputs) are stored."""
    exprs: dict[str, Expr] = {}
    inputs: list[TensorParam] = []
    produced: list[str] = []
    for node in group:
        args: list[Expr | None] = []
        # a per-axis input is loaded as its own parameter: the same value may broadcast
        # from the right elsewhere in the group
        along = aligned_inputs(op_key(node), node.attrs,
                               [rank_of(v) if v else None for v in node.inputs])
        for index, value in enumerate(node.inputs):
            if not value:
                args.append(None)
                continue
            key = (value, along[index]) if index in along else value
            if key not in exprs:
                inputs.append(TensorParam(value, dtype_of(value), rank_of(value),
                                          along.get(index, 0)))
                exprs[key] = Load(dtype_of(value), len(inputs) - 1)
            args.append(exprs[key])
        outs = [o for o in node.outputs if o]
        results = lower_node(op_key(node), node.attrs, args, [dtype_of(o) for o in outs])
        for value, expr in zip(outs, results):
            exprs[value] = expr
            produced.append(value)
    stored = [v for v in produced if escapes(v)]
    rank = max([1] + [rank_of(v) for v in stored])
    inputs, results = _drop_unread_inputs(inputs, [exprs[v] for v in stored])
    outputs = [(TensorParam(v, dtype_of(v), rank_of(v)), e) for v, e in zip(stored, results)]
    return PointwiseKernel(name, [n.name for n in group], inputs, outputs, rank,
                           [n.op_type for n in group])


def _drop_unread_inputs(inputs: list[TensorParam], results: list[Expr]):
    """Inputs only consulted for their type (CastLike's target) are not loaded or broadcast."""
    read: set[int] = set()

    def visit(e: Expr) -> None:
        if isinstance(e, Load):
            read.add(e.arg)
        for child in _children(e):
            visit(child)

    for e in results:
        visit(e)
    if len(read) == len(inputs):
        return inputs, results
    index = {old: new for new, old in enumerate(sorted(read))}
    memo: dict[Expr, Expr] = {}

    def rewrite(e: Expr) -> Expr:
        if e not in memo:
            if isinstance(e, Load):
                memo[e] = Load(e.dtype, index[e.arg])
            elif isinstance(e, Op):
                memo[e] = Op(e.dtype, e.op, tuple(rewrite(a) for a in e.args))
            elif isinstance(e, Cast):
                memo[e] = Cast(e.dtype, rewrite(e.x), e.saturate)
            else:
                memo[e] = e
        return memo[e]

    return [inputs[i] for i in sorted(read)], [rewrite(e) for e in results]


def _children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, Op):
        return e.args
    if isinstance(e, Cast):
        return (e.x,)
    return ()


def _block_size(numel: int, interpreted: bool) -> tuple[int, int]:
    """(BLOCK, num_warps): big blocks for the interpreter (numpy underneath), 1024/4 on GPUs."""
    if interpreted:
        return max(16, min(1 << 16, 1 << max(0, (numel - 1).bit_length()))), 1
    if numel <= 4096:
        return max(128, 1 << max(0, (numel - 1).bit_length())), 4
    return 1024, 4


class PointwiseLauncher:
    """Runs one fused kernel on torch tensors: broadcast, allocate, launch."""

    def __init__(self, fn: Any, kernel: PointwiseKernel, torch_dtypes: list, device: Any):
        self.fn = fn
        self.kernel = kernel
        self.out_dtypes = torch_dtypes
        self.device = device
        self.interpreted = target.interpreted()

    def __call__(self, *inputs):
        import torch

        inputs = [t.reshape(tuple(t.shape) + (1,) * p.trailing) if p.trailing else t
                  for t, p in zip(inputs, self.kernel.inputs)]
        shape = torch.broadcast_shapes(*(t.shape for t in inputs)) if inputs else ()
        rank = self.kernel.rank
        if max(len(shape), 1) != rank:
            raise ValueError(f"kernel {self.kernel.name} was built for rank {rank}, the inputs "
                             f"broadcast to {list(shape)}")
        outs = [torch.empty(shape, dtype=dt, device=self.device) for dt in self.out_dtypes]
        numel = math.prod(shape)
        if numel == 0:
            return tuple(outs)
        dims = list(shape) or [1]
        strides: list[int] = []
        for t in inputs:
            s = t.expand(shape).stride() if len(shape) else ()
            strides.extend(s or (0,))
        block, warps = _block_size(numel, self.interpreted)
        grid = ((numel + block - 1) // block,)
        launch_kernel(self.fn, grid, *inputs, *outs, numel, *dims, *strides, BLOCK=block,
               num_warps=warps)
        return tuple(outs)
