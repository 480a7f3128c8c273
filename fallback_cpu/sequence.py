"""Sequence and optional kernels of the NumPy provider.

Runtime values: a sequence is a Python list of arrays, an empty optional is None and a
non-empty optional is its element itself. Sequence ops build new lists and never mutate
the input list, since the executor may hand the same list to several consumers.
"""
from __future__ import annotations

import numpy as np

from .registry import NodeContext, register


def _position(pos, default: int, length: int, allow_end: bool) -> int:
    """A sequence position input (scalar int32/int64 or None) as a checked index >= 0."""
    p = default if pos is None else int(np.asarray(pos).item())
    upper = length if allow_end else length - 1
    if not -length <= p <= upper:
        raise IndexError(f"sequence position {p} out of range for a sequence of length {length}")
    return p + length if p < 0 else p


def _normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis % rank


@register("SequenceConstruct", since=11)
def sequence_construct(ctx: NodeContext):
    def run(*tensors):
        return (list(tensors),)
    return run


@register("SequenceEmpty", since=11)
def sequence_empty(ctx: NodeContext):
    # The element type (dtype attr) only matters for typing; an empty list carries none.
    def run():
        return ([],)
    return run


@register("SequenceLength", since=11)
def sequence_length(ctx: NodeContext):
    def run(seq):
        return (np.array(len(seq), dtype=np.int64),)
    return run


@register("SequenceAt", since=11)
def sequence_at(ctx: NodeContext):
    def run(seq, position):
        return (seq[_position(position, 0, len(seq), allow_end=False)],)
    return run


@register("SequenceInsert", since=11)
def sequence_insert(ctx: NodeContext):
    def run(seq, tensor, position=None):
        p = _position(position, len(seq), len(seq), allow_end=True)
        return (seq[:p] + [tensor] + seq[p:],)
    return run


@register("SequenceErase", since=11)
def sequence_erase(ctx: NodeContext):
    def run(seq, position=None):
        p = _position(position, -1, len(seq), allow_end=False)
        return (seq[:p] + seq[p + 1:],)
    return run


@register("SplitToSequence", since=[11, 24])
def split_to_sequence(ctx: NodeContext):
    axis = ctx.attr("axis", 0)
    keepdims = ctx.attr("keepdims", 1)

    def run(x, split=None):
        ax = _normalize_axis(axis, x.ndim)
        length = x.shape[ax]
        if split is None:
            # Default: size-1 chunks; keepdims=0 drops the split axis (only in this form).
            parts = np.split(x, length, axis=ax) if length else []
            if not keepdims:
                parts = [np.squeeze(p, axis=ax) for p in parts]
            return (parts,)
        split = np.asarray(split)
        if split.ndim == 0:
            chunk = int(split)
            if chunk <= 0:
                raise ValueError(f"SplitToSequence: split must be positive, got {chunk}")
            if length == 0:
                return ([],)  # as onnxruntime: no chunks, not one empty chunk
            bounds = list(range(chunk, length, chunk))
        else:
            sizes = split.astype(np.int64)
            if np.any(sizes < 0) or int(sizes.sum()) != length:
                raise ValueError(f"SplitToSequence: split {sizes.tolist()} does not add up "
                                 f"to dimension {length}")
            bounds = np.cumsum(sizes)[:-1].tolist()
        return (np.split(x, bounds, axis=ax),)
    return run


@register("ConcatFromSequence", since=11)
def concat_from_sequence(ctx: NodeContext):
    axis = ctx.attr("axis")
    if axis is None:
        raise ValueError("ConcatFromSequence requires the 'axis' attribute")
    new_axis = bool(ctx.attr("new_axis", 0))

    def run(seq):
        if not seq:
            raise ValueError("ConcatFromSequence: the input sequence is empty")
        rank = seq[0].ndim + (1 if new_axis else 0)
        ax = _normalize_axis(axis, rank)
        if new_axis:
            return (np.stack(seq, axis=ax),)
        return (np.concatenate(seq, axis=ax),)
    return run


@register("Optional", since=[15, 28])
def optional(ctx: NodeContext):
    # A present input is the optional's element; no input means an empty optional.
    def run(x=None):
        return (x,)
    return run


@register("OptionalHasElement", since=[15, 18, 28])
def optional_has_element(ctx: NodeContext):
    # v18+: a plain tensor/sequence input counts as present, an omitted input as empty.
    def run(x=None):
        return (np.array(x is not None),)
    return run


@register("OptionalGetElement", since=[15, 18, 28])
def optional_get_element(ctx: NodeContext):
    def run(x):
        if x is None:
            raise ValueError(f"OptionalGetElement '{ctx.name}': the optional input is empty")
        return (x,)
    return run
