"""One device buffer for a bound plan's intermediates, placed by lifetime.

While a plan is recorded its launchers allocate every intermediate afresh, and the recorded
launches keep them all alive. Afterwards each such allocation's lifetime is known: from the
first launch that reads or writes it to the last (the end, for a fetched value). Allocations
whose lifetimes overlap get disjoint ranges of one buffer, the larger first at the lowest
offset that fits (as onnxruntime's memory patterns do), and every recorded tensor over them
becomes the same view of the buffer. The plan then holds its peak, not its sum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

ALIGN = 256  # bytes: what a CUDA allocation guarantees, so vectorized loads stay aligned


@dataclass
class Block:
    storage: int  # the recorded allocation's storage address
    nbytes: int
    first: int  # launch index of its first and last use
    last: int
    offset: int = -1


def lifetimes(allocated: dict[int, int], launches: Sequence[Sequence[Any]],
              outputs: Sequence[Any]) -> list[Block]:
    """A block per allocation (storage address -> bytes) that a launch uses, from its first to
    its last use; fetched values live to the end."""
    spans: dict[int, list[int]] = {}
    end = len(launches)
    for index, arguments in enumerate(launches):
        for value in arguments:
            key = storage_of(value)
            if key in allocated:
                span = spans.setdefault(key, [index, index])
                span[1] = index
    for value in outputs:
        key = storage_of(value)
        if key in spans:
            spans[key][1] = end
    return [Block(key, allocated[key], first, last) for key, (first, last) in spans.items()]


def place(blocks: list[Block]) -> int:
    """Give each block an offset; the buffer's size in bytes."""
    placed: list[Block] = []
    for block in sorted(blocks, key=lambda b: (-b.nbytes, b.first)):
        offset = 0
        for other in sorted((o for o in placed if o.first <= block.last and
                             block.first <= o.last), key=lambda o: o.offset):
            if offset + block.nbytes <= other.offset:
                break
            offset = max(offset, _aligned(other.offset + other.nbytes))
        block.offset = offset
        placed.append(block)
    return max((_aligned(b.offset + b.nbytes) for b in placed), default=0)


def rebase(blocks: list[Block], size: int, device: Any) -> tuple[Any, Callable[[Any], Any]]:
    """The buffer, and a function taking a recorded value to the same view of it (values
    over no block come back as they are)."""
    import torch

    buffer = torch.empty(size, dtype=torch.uint8, device=device)
    offsets = {b.storage: (b.offset, b.nbytes) for b in blocks}

    def moved(value: Any) -> Any:
        key = storage_of(value)
        if key not in offsets:
            return value
        offset, nbytes = offsets[key]
        typed = buffer[offset:offset + nbytes].view(value.dtype)
        return typed.as_strided(value.shape, value.stride(),
                                typed.storage_offset() + value.storage_offset())

    return buffer, moved


def storage_of(value: Any) -> int | None:
    """The address of a tensor's storage (None for anything else)."""
    if hasattr(value, "untyped_storage") and hasattr(value, "data_ptr"):
        return value.untyped_storage().data_ptr()
    return None


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN
