"""Launching row-wise tile kernels: tile and warp sizes for a [rows, columns] view, and the
launcher that broadcasts parameters, allocates the outputs and runs a TileSource kernel."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from .launch import launch_kernel
from .rowwise import Layout
from .tuning_space import DEFAULT_SMS


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


_TILE_ELEMENTS = 2048  # per program and column step: <= 8 per thread at 8 warps, no spills
_CACHED_ROW = 16384  # elements of a row a program re-reads from cache, not memory


def row_in_cache(row_dims: Sequence[Any]) -> bool:
    """Does a row of these (static) dims stay in cache between a program's passes over it?"""
    return all(isinstance(d, int) for d in row_dims) and math.prod(row_dims) <= _CACHED_ROW
_PER_THREAD = 8  # elements per thread a warp count aims at (two 16-byte loads of fp32)


def block_sizes(rows: int, cols: int, interpreted: bool,
                rows_contiguous: bool = False, sms: int = DEFAULT_SMS) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps). The interpreter runs numpy underneath, so big tiles are
    fast there. GPUs get tiles of at most _TILE_ELEMENTS and loop over long rows; when
    neighbouring rows are neighbours in memory (a reduction over leading axes) a tile takes
    many rows so its loads coalesce. Otherwise a program takes fewer rows until every SM has
    one (a 128-token LayerNorm: 128 programs of one row, not 32 of four); warps give each
    thread about _PER_THREAD elements of the tile."""
    if interpreted:
        block_n = min(_pow2(max(cols, 1)), 1 << 14)
        return max(1, min(_pow2(max(rows, 1)), (1 << 16) // block_n)), block_n, 1
    if rows_contiguous:
        block_m = min(_pow2(max(rows, 1)), 64)
        block_n = min(_pow2(max(cols, 1)), max(1, _TILE_ELEMENTS // block_m))
    else:
        block_n = min(_pow2(max(cols, 1)), _TILE_ELEMENTS)
        block_m = max(1, min(_pow2(max(rows, 1)), _TILE_ELEMENTS // block_n))
        while block_m > 1 and -(-rows // block_m) < sms:
            block_m //= 2
    warps = block_m * block_n // (32 * _PER_THREAD)
    return block_m, block_n, min(8, max(1, _pow2(max(warps, 1))))


class TileLauncher:
    """Runs a TileSource kernel on torch tensors: broadcast parameters, allocate, launch.

    The first input is the tensor the layout describes (with a fused prologue, the first
    ``data_inputs`` inputs broadcast together describe it). ``prepare`` turns the remaining
    inputs into tensors broadcastable to it (a per-channel vector gets trailing 1s, say); the
    last ``row_inputs`` inputs broadcast to the per-row result (shaped as with ``keepdims``)
    and are read at row offsets only. Outputs are ``full`` (shaped like
    the input) then ``rows`` (one value per row, shaped by a function of the input's shape);
    a None dtype marks an output the node omits. ``tail_full``: the last ``row_inputs``
    inputs broadcast to the whole input instead (a per-element epilogue's). ``store_data``:
    the dtype of the fused prologue's result, written as a last output.
    """

    def __init__(self, fn: Any, layout: Layout, device: Any, interpreted: bool,
                 full: Sequence[Any] = (), rows: Sequence[tuple[Any, Callable]] = (),
                 prepare: Callable[..., list] | None = None, data_inputs: int = 1,
                 row_inputs: int = 0, keepdims: bool = True, tail_full: bool = False,
                 store_data: Any = None) -> None:
        self.fn, self.layout, self.device, self.interpreted = fn, layout, device, interpreted
        self.full, self.rows, self.prepare = list(full), list(rows), prepare
        self.data_inputs, self.row_inputs, self.keepdims = data_inputs, row_inputs, keepdims
        self.tail_full, self.store_data = tail_full, store_data

    def _per_row(self, t, shape):
        """t over the input's axes, size 1 on the reduced ones (only row offsets are used:
        a view expanded over an empty reduced axis would have no memory to read)."""
        lay = self.layout
        if self.keepdims:
            return t.expand(tuple(1 if a in lay.reduced else d for a, d in enumerate(shape)))
        t = t.expand(tuple(shape[a] for a in lay.kept))
        for a in lay.reduced:
            t = t.unsqueeze(a)
        return t

    def __call__(self, *inputs):
        import torch

        lay = self.layout
        split = len(inputs) - self.row_inputs
        data, inputs, per_row = inputs[:self.data_inputs], inputs[self.data_inputs:split], \
            inputs[split:]
        if len(data) == 1:
            x = data[0]
            shape = tuple(x.shape)
        else:  # a fused prologue's inputs
            shape = tuple(torch.broadcast_shapes(*(t.shape for t in data)))
            data = [t.expand(shape) for t in data]
            x = data[0]
        if len(shape) != lay.rank:
            raise ValueError(f"kernel built for rank {lay.rank}, got shape {list(shape)}")
        params = self.prepare(x, *inputs) if self.prepare else list(inputs)
        params = [p.expand(shape) for p in params]
        per_row = [t.expand(shape) if self.tail_full else self._per_row(t, shape)
                   for t in per_row]
        full = [torch.empty(shape, dtype=dt, device=self.device) if dt is not None else None
                for dt in self.full]
        rows = [torch.empty(fn(shape), dtype=dt, device=self.device) if dt is not None else None
                for dt, fn in self.rows]
        kept = [] if self.store_data is None else \
            [torch.empty(shape, dtype=self.store_data, device=self.device)]
        outputs = tuple(full + rows + kept)
        n_rows = math.prod(shape[a] for a in lay.kept)
        n_cols = math.prod(shape[a] for a in lay.reduced)
        if n_rows == 0 or (n_cols == 0 and not any(r is not None for r in rows)):
            return outputs
        axes = lay.kept + lay.reduced
        tensors = list(data) + params + [t for t in full if t is not None] + per_row + kept
        strides = [t.stride(a) for t in tensors for a in axes]
        rows_contiguous = bool(lay.kept) and x.stride(lay.kept[-1]) == 1 and \
            all(x.stride(a) != 1 or shape[a] == 1 for a in lay.reduced)
        block_m, block_n, warps = block_sizes(n_rows, n_cols, self.interpreted,
                                              rows_contiguous)
        grid = ((n_rows + block_m - 1) // block_m,)
        # masked lanes compute 0/0 and log(0) too; numpy (the interpreter) would warn
        with np.errstate(all="ignore"):
            launch_kernel(self.fn, grid, *tensors, *(r for r in rows if r is not None), n_rows,
                   n_cols, *(shape[a] for a in axes), *strides, BLOCK_M=block_m,
                   BLOCK_N=block_n, num_warps=warps)
        return outputs
