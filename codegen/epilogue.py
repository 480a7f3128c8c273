"""Pointwise epilogues spliced into tiled templates (GEMM, Conv) before their store.

The fusion pass picks the nodes (codegen.fusion); this module renders them for a template
whose kernel has, after its main loop, these names in scope (the template's side of the
contract): ``acc`` (the fp32 accumulator tile), ``tile_mask`` (in-bounds elements),
``out_idx_0`` .. ``out_idx_{R-1}`` (int64 tensors broadcastable to the tile: each element's
index along dim j of the kernel's view of Y) and ``y_offs`` (the tile's element offsets in Y).

Every epilogue input is loaded through strides over that view (0 where it broadcasts), a
0-d one as one scalar (its strides are passed but unused). The
template's own store writes one value: the anchor's result if something outside the group
reads it, else the epilogue's last output; every other output is stored by the epilogue
lines at ``y_offs`` (the launcher allocates them contiguous, shaped like Y).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from .emit import compute_type, round_bf16, storage_type, store
from .gemm import Epilogue
from .rowwise import TileEmitter, TileFusion, torch_dtype


@dataclass
class FusedEpilogue:
    epilogue: Epilogue  # params, lines and text for the template's source
    out_dtype: str  # what the template's own store writes
    inputs: list[str]  # ONNX values the launcher takes after the anchor's own inputs
    output_dtypes: list[str]  # tensors the epilogue lines store (params o0, o1, ...)
    result_stored: bool  # the own store holds the anchor's result (else the last output)


def build(fusion: TileFusion, result_dtype: str, rank: int) -> FusedEpilogue:
    """The epilogue computing ``fusion.epilogue`` on ``acc`` (the value ``fusion.result``)."""
    kernel = fusion.epilogue
    ep = Epilogue()
    loads: dict[int, str] = {}
    inputs: list[str] = []
    for i, p in enumerate(kernel.inputs):
        if p.name == fusion.result:  # as if stored in its type and loaded back
            loads[i] = "ep_result"
            if result_dtype == "bfloat16":
                ep.lines.append(f"ep_result = {round_bf16('acc')}")
            elif result_dtype == "float16":
                ep.lines.append("ep_result = acc.to(tl.float16).to(tl.float32)")
            else:
                ep.lines.append(f"ep_result = acc.to({compute_type(result_dtype)})")
            continue
        t = f"e{len(inputs)}"
        inputs.append(p.name)
        strides = [f"{t}_s{j}" for j in range(rank)]
        ep.params += [t, *strides]
        if p.rank == 0:  # one value (a constant, say): a scalar load, not a tile of copies
            load = f"tl.load({t})"
        else:
            offs = " + ".join(f"out_idx_{j} * {s}" for j, s in enumerate(strides)) or "0"
            load = f"tl.load({t} + ({offs}), mask=tile_mask, other=0)"
        if compute_type(p.dtype) != storage_type(p.dtype):
            load += f".to({compute_type(p.dtype)})"
        ep.lines.append(f"{t}v = {load}")
        loads[i] = f"{t}v"
    emitter = TileEmitter(loads)
    values = [emitter.value(e) for _, e in kernel.outputs]
    rename = lambda text: re.sub(r"\b(t\d+)", r"ep_\1", text)  # noqa: E731
    ep.lines += [rename(line.strip()) for line in emitter.lines]
    values = [rename(v) for v in values]
    dtypes_out = [p.dtype for p, _ in kernel.outputs]
    stored_by_lines = list(range(len(values))) if fusion.store_result else \
        list(range(len(values) - 1))
    for j, k in enumerate(stored_by_lines):
        ep.params.append(f"o{j}")
        ep.lines.append(store(f"o{j} + y_offs", values[k], dtypes_out[k], "tile_mask"))
    if not fusion.store_result:
        ep.lines.append(f"acc = ({values[-1]}).to(tl.float32)" if dtypes_out[-1] != "double"
                        else f"acc = {values[-1]}")
    ep.text = [f"fused epilogue: {', '.join(f'{n} ({op})' for n, op in fusion.nodes)}"]
    return FusedEpilogue(ep, result_dtype if fusion.store_result else dtypes_out[-1], inputs,
                         [dtypes_out[k] for k in stored_by_lines], fusion.store_result)


def launch_args(fused: FusedEpilogue, tensors: Sequence[Any], out_shape: Sequence[int],
                view_shape: Sequence[int], device: Any) -> tuple[tuple, list]:
    """The epilogue's kernel arguments and the output tensors it fills.

    ``out_shape``: Y's shape; ``view_shape``: the kernel's view of Y (batch folded, say).
    Inputs broadcast to Y, then take the view (a copy only where strides cannot express it).
    """
    import torch

    args: list[Any] = []
    for t in tensors:
        view = t.expand(tuple(out_shape)).reshape(tuple(view_shape))
        args += [view, *view.stride()]
    outputs = [torch.empty(tuple(out_shape), dtype=torch_dtype(dt), device=device)
               for dt in fused.output_dtypes]
    args += outputs
    return tuple(args), outputs
