"""Row-wise tile kernels: the machinery shared by reductions, Softmax and the normalizations.

A tensor is viewed as [rows, columns]: the kept axes enumerate rows, the reduced axes columns.
Both become element offsets through runtime dims and strides, so the reduced axes need not be
trailing, adjacent or contiguous. A program owns BLOCK_M rows and walks the columns BLOCK_N at
a time; an op is one or more such passes (max, then sum, then store, ...), each a few lines of
Triton written through :class:`TileSource`. Sizes stay runtime arguments: a kernel is
specialized on rank, axes, dtypes and attributes only.
"""
from __future__ import annotations

import re
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx

from tritort import dtypes

from .cache import KERNEL
from .emit import (ExprEmitter, acc_type, compute_type, helper_source, round_bf16, storage_type,
                   store, stored)
from .ir import Const, Expr, Load, PointwiseKernel

_COMBINE_HELPERS = {
    "max": "\n\n@triton.jit\ndef _max_nan(a, b):\n"
           "    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)\n",
    "min": "\n\n@triton.jit\ndef _min_nan(a, b):\n"
           "    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)\n",
    "mul": "\n\n@triton.jit\ndef _mul(a, b):\n    return a * b\n",
}


def extreme(dtype: str, largest: bool) -> str:
    """The largest (or smallest) value of dtype as a source literal: the identity of Min (Max)."""
    if dtype in dtypes.FLOAT_TYPES:
        return "float('inf')" if largest else "float('-inf')"
    if dtype == "bool":
        return "1" if largest else "0"
    info = np.iinfo(dtypes.BY_NAME[dtype].numpy)
    return str(int(info.max if largest else info.min))


def torch_dtype(dtype: str):
    import torch

    return getattr(torch, dtypes.BY_NAME[dtype].torch)


def since_version(op_type: str, opset: int) -> int:
    try:
        return onnx.defs.get_schema(op_type, opset, "").since_version
    except onnx.defs.SchemaError:  # not defined at this opset: the model checker says why
        return opset


def check_dtypes(ctx, values: Sequence[str], allowed: Sequence[str], op: str) -> str | None:
    """Why the node is declined for its element types, or None."""
    for value in values:
        if not value:
            continue
        dt = ctx.dtype_of(value)
        if dt is None:
            return f"element type or rank of '{value}' unknown at load time"
        if dt not in allowed:
            return f"Triton's {op} does not take {dt} ('{value}')"
    return None


def constant_ints(ctx, value: str) -> list[int] | None:
    c = ctx.constant_of(value)
    return None if c is None else [int(v) for v in np.asarray(c).ravel()]


def normalize_axes(axes: Sequence[int], rank: int) -> tuple[int, ...] | None:
    """Sorted non-negative axes, or None when one is out of range or repeated."""
    out = []
    for a in axes:
        if not -max(rank, 1) <= a < max(rank, 1):
            return None
        out.append(a + rank if a < 0 else a)
    return tuple(sorted(out)) if len(set(out)) == len(out) else None


@dataclass(frozen=True)
class Layout:
    rank: int
    kept: tuple[int, ...]  # axes enumerated by rows
    reduced: tuple[int, ...]  # axes enumerated by columns

    @classmethod
    def reducing(cls, rank: int, reduced: Sequence[int]) -> "Layout":
        reduced = tuple(sorted(reduced))
        return cls(rank, tuple(a for a in range(rank) if a not in reduced), reduced)

    def text(self) -> str:
        return f"rows over axes {list(self.kept)}, columns over axes {list(self.reduced)}"


@dataclass
class TileFusion:
    """Pointwise nodes computed inside a row-wise kernel (chosen by codegen.fusion).

    ``prologue`` computes the data tile (the node's first input, its one output) from its
    own inputs, each loaded with broadcast strides over the data's shape; ``store_data``: the
    data is read outside the group too (a residual stream), so the first pass stores it.
    ``epilogue`` works on the result ``result``: per row (a reduction's), or per element when
    ``per_element`` (a Softmax or normalization's data-shaped result); its other inputs
    broadcast to the result's shape; its outputs are the values stored. ``store_result``: the
    result is read outside the group too, so it is stored as well.
    """

    prologue: PointwiseKernel | None
    epilogue: PointwiseKernel | None
    result: str
    store_result: bool
    nodes: list[tuple[str, str]]  # (name, op type) of every fused node besides the anchor
    # tiled anchors (GEMM): operand index -> the Cast / scale node computing that operand
    operands: dict = field(default_factory=dict)
    data: str = ""  # the anchor's data input (the prologue's output)
    store_data: bool = False
    per_element: bool = False

    @property
    def prologue_inputs(self) -> list[str]:
        return [p.name for p in self.prologue.inputs] if self.prologue else []

    @property
    def row_inputs(self) -> list[str]:
        if not self.epilogue:
            return []
        return [p.name for p in self.epilogue.inputs if p.name != self.result]

    @property
    def row_outputs(self) -> list[tuple[str, str]]:
        """(value, dtype) of the per-row values stored, in launcher order."""
        if not self.epilogue:
            return []
        return [(p.name, p.dtype) for p, _ in self.epilogue.outputs]

    def kernel_outputs(self, anchor_outputs: Sequence[str]) -> list[str]:
        """The values a kernel with this fusion writes, in its launcher's return order: the
        anchor's own (with an epilogue, its result only if read elsewhere), then the
        epilogue's."""
        data = [self.data] if self.store_data else []
        if not self.epilogue:
            return list(anchor_outputs) + data
        return list(anchor_outputs[:1] if self.store_result else []) + \
            [v for v, _ in self.row_outputs] + data

    def text(self) -> str:
        parts = []
        for what, k in (("prologue (on each loaded tile)", self.prologue),
                        ("epilogue (on the anchor's result)", self.epilogue)):
            if k:
                parts.append(f"  fused {what}:\n" + "\n".join(
                    "    " + line for line in k.text().splitlines()))
        if self.store_data:
            parts.append(f"  {self.data}: stored by the first pass")
        if self.epilogue:
            parts.append(f"  {self.result}: {'stored' if self.store_result else 'not stored'}")
        return "\n".join(parts)


class TileEmitter(ExprEmitter):
    """The pointwise emitter's expressions, on named tiles instead of a kernel's loads."""

    def __init__(self, loads: dict[int, str]) -> None:
        super().__init__(None)
        self.loads = loads

    def value(self, e: Expr) -> str:
        return self.loads[e.arg] if isinstance(e, Load) else super().value(e)


class TileSource:
    """Writes one kernel over a Layout.

    ``full`` tensors are indexed like the input (loaded or stored per element: the input,
    broadcast parameters, same-shaped outputs); ``rows`` tensors hold one value per row,
    contiguously (reduction results, statistics). Both map a short name to an ONNX type.
    The data tensor is ``x``; with a ``fusion`` its prologue's inputs (``p0``, ``p1``, ...)
    replace it (and ``xs`` receives the data when it is stored); its epilogue's inputs
    (``e0``, ...) are full tensors, read at row offsets only for a per-row result; its
    epilogue's outputs are rows ``o0``, ``o1``, ... (full tensors for a per-element one,
    replacing the template's output ``y``). The launcher takes tensors in the order of
    ``full`` then ``rows``: data, parameters, full outputs, epilogue inputs, ``xs``.
    """

    def __init__(self, name: str, node, layout: Layout, full: dict[str, str],
                 rows: dict[str, str], fusion: TileFusion | None = None) -> None:
        self.name, self.node, self.layout = name, node, layout
        self.fusion = fusion
        self.data_dtype = full["x"]
        prologue = bool(fusion and fusion.prologue)
        if prologue:
            self.data_dtype = fusion.prologue.outputs[0][0].dtype
            data = {f"p{i}": p.dtype for i, p in enumerate(fusion.prologue.inputs)}
            full = {**data, **{t: dt for t, dt in full.items() if t != "x"}}
        self.prologue_tensors = tuple(t for t in full if t.startswith("p")) \
            if prologue else ("x",)
        self.per_element = bool(fusion and fusion.epilogue and fusion.per_element)
        if fusion and fusion.epilogue:
            params = [p for p in fusion.epilogue.inputs if p.name != fusion.result]
            outs = {f"o{i}": dt for i, (_, dt) in enumerate(fusion.row_outputs)}
            inputs = {f"e{i}": p.dtype for i, p in enumerate(params)}
            if self.per_element:
                full = {t: dt for t, dt in full.items() if t != "y" or fusion.store_result}
                full = {**full, **outs, **inputs}
            else:
                full = {**full, **inputs}
                kept = {t: dt for t, dt in rows.items() if fusion.store_result}
                rows = {**kept, **outs}
        self.stores_data = bool(prologue and fusion.store_data)
        if self.stores_data:
            full = {**full, "xs": self.data_dtype}
        self.data_tensors = self.prologue_tensors + (("xs",) if self.stores_data else ())
        self._data_stored = False
        self.full, self.rows = full, rows
        self.lines: list[str] = []
        self.indent = 1
        self.helpers: set[str] = set()
        self._fused_uses = 0
        self._prologue()

    def line(self, text: str) -> None:
        self.lines.append("    " * self.indent + text)

    def _decompose(self, index: str, axes: Sequence[int], prefix: str) -> None:
        """Split a linear row (column) index into per-axis indices, the last axis fastest."""
        if len(axes) == 1:
            self.line(f"{prefix}{axes[0]} = {index}")
            return
        if not axes:
            return
        # one name per index: a row value reassigned in a loop would be a loop-carried one
        rem = f"{index[:-1]}_rem"
        self.line(f"{rem} = {index}")
        for a in reversed(axes[1:]):
            self.line(f"{prefix}{a} = {rem} % d{a}")
            self.line(f"{rem} = {rem} // d{a}")
        self.line(f"{prefix}{axes[0]} = {rem}")

    def _offsets(self, index: str, axes: Sequence[int], prefix: str, suffix: str,
                 tensors: Sequence[str]) -> None:
        for t in tensors:
            terms = " + ".join(f"{prefix}{a} * {t}_s{a}" for a in axes)
            self.line(f"{t}_{suffix} = {terms or index + ' * 0'}")

    def _prologue(self) -> None:
        self.line("rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)")
        self.line("row_mask = rows < M")
        self._decompose("rows", self.layout.kept, "i")
        self._offsets("rows", self.layout.kept, "i", "row", list(self.full))

    @contextmanager
    def columns(self, *tensors: str):
        """A loop over the columns in BLOCK_N chunks; offsets for ``tensors`` inside."""
        self.line("for start in range(0, N, BLOCK_N):")
        self.indent += 1
        self.line("cols = start + tl.arange(0, BLOCK_N).to(tl.int64)")
        self.line("mask = row_mask[:, None] & (cols < N)[None, :]")
        self._decompose("cols", self.layout.reduced, "j")
        self._offsets("cols", self.layout.reduced, "j", "col", tensors)
        yield
        self.indent -= 1

    def load(self, t: str, to: str | None = None) -> str:
        """A tile of tensor t (inside columns()), in its compute type or ``to``."""
        text = f"tl.load({t}_ptr + ({t}_row[:, None] + {t}_col[None, :]), mask=mask, other=0)"
        target = to or acc_type(self.full[t])
        return text if target == storage_type(self.full[t]) else f"{text}.to({target})"

    def data(self, to: str | None = None) -> str:
        """The data tile (inside columns(*data_tensors)) in its compute type or ``to``: the
        loaded input, or the fused prologue computed from its own loaded inputs."""
        prologue = self.fusion.prologue if self.fusion else None
        if prologue is None:
            return self.load("x", to)
        loads = {i: f"{t}v{self._fused_uses}" for i, t in enumerate(self.prologue_tensors)}
        for i, t in enumerate(self.prologue_tensors):
            self.line(f"{loads[i]} = {self.load(t, compute_type(self.full[t]))}")
        value = self._pointwise(prologue.outputs[0][1], loads, "BLOCK_M, BLOCK_N")
        if self.stores_data and not self._data_stored:
            # the first pass walks every column of the row: it writes the data once
            self.store_full("xs", value)
            self._data_stored = True
        # rounded to the data's type, as if it had been stored and loaded
        return self._reloaded(value, self.data_dtype, to or acc_type(self.data_dtype))

    def finish_rows(self, result: str, out: str = "y") -> None:
        """Store the per-row ``result`` to ``out``, or run the fused epilogue on it."""
        epilogue = self.fusion.epilogue if self.fusion else None
        if epilogue is None:
            self.store_row(out, result)
            return
        self.line(f"result = {result}")
        if self.fusion.store_result:
            self.store_row(out, "result")
        loads: dict[int, str] = {}
        params = iter(f"e{i}" for i in range(len(self.fusion.row_inputs)))
        for i, p in enumerate(epilogue.inputs):
            if p.name == self.fusion.result:
                loads[i] = self._reloaded("result", p.dtype, compute_type(p.dtype))
                continue
            t = next(params)
            text = f"tl.load({t}_ptr + {t}_row, mask=row_mask, other=0)"
            if compute_type(p.dtype) != storage_type(p.dtype):
                text += f".to({compute_type(p.dtype)})"
            loads[i] = f"{t}v"
            self.line(f"{t}v = {text}")
        for j, (_, e) in enumerate(epilogue.outputs):
            self.store_row(f"o{j}", self._pointwise(e, loads, "BLOCK_M"))

    def outputs(self, out: str = "y") -> tuple[str, ...]:
        """The full tensors the last pass touches in place of the template's output ``out``:
        with a per-element epilogue its inputs and outputs (and ``out`` if still stored)."""
        if not self.per_element:
            return (out,)
        return tuple(t for t in self.full if t == out or t[0] in "eo" and t[1:].isdigit())

    def finish_full(self, value: str, out: str = "y") -> None:
        """Store the element tile ``value`` to ``out`` (inside columns(*outputs())), or run
        the fused per-element epilogue on it."""
        if not self.per_element:
            self.store_full(out, value)
            return
        fusion, epilogue = self.fusion, self.fusion.epilogue
        self.line(f"result = {value}")
        if fusion.store_result:
            self.store_full(out, "result")
        loads: dict[int, str] = {}
        params = iter(f"e{i}" for i in range(len(fusion.row_inputs)))
        for i, p in enumerate(epilogue.inputs):
            if p.name == fusion.result:
                loads[i] = self._reloaded("result", p.dtype, compute_type(p.dtype))
                continue
            t = next(params)
            loads[i] = f"{t}v"
            self.line(f"{t}v = {self.load(t, compute_type(p.dtype))}")
        for j, (_, e) in enumerate(epilogue.outputs):
            self.store_full(f"o{j}", self._pointwise(e, loads, "BLOCK_M, BLOCK_N"))

    def launch_args(self, full: Sequence[Any] = (), **launch) -> dict:
        """TileLauncher's arguments for this kernel, from the template's own outputs
        (``full``: the element outputs' torch dtypes) and fusion."""
        fusion = self.fusion
        if fusion is None:
            return {"full": list(full), **launch}
        if self.per_element:
            full = list(full[:1] if fusion.store_result else []) + \
                [torch_dtype(dt) for _, dt in fusion.row_outputs]
        launch.setdefault("data_inputs", len(self.prologue_tensors))
        return {"full": list(full), "row_inputs": len(fusion.row_inputs),
                "tail_full": self.per_element,
                "store_data": torch_dtype(self.data_dtype) if self.stores_data else None,
                **launch}

    def launch_inputs(self, data: str, params: Sequence[str] = ()) -> list[str]:
        """The node values the launcher takes: the data (or the prologue's inputs), the
        parameters, the epilogue's inputs."""
        fusion = self.fusion
        if fusion is None:
            return [data, *params]
        head = fusion.prologue_inputs if fusion.prologue else [data]
        return head + list(params) + fusion.row_inputs

    def _pointwise(self, e: Expr, loads: dict[int, str], block: str) -> str:
        """Lines computing tile IR expression e from named tiles; returns its name."""
        if isinstance(e, Const):
            return f"tl.full([{block}], {ExprEmitter(None).value(e)}, {compute_type(e.dtype)})"
        emitter = TileEmitter(loads)
        value = emitter.value(e)
        # names unique per use: a later pass must not see them as loop-carried values
        prefix = f"f{self._fused_uses}_"
        self._fused_uses += 1
        rename = lambda text: re.sub(r"\b([tv]\d+)", prefix + r"\1", text)  # noqa: E731
        for line in emitter.lines:
            self.line(rename(line.strip()))
        return rename(value)

    def _reloaded(self, value: str, dtype: str, target: str) -> str:
        """value rounded to dtype and held as ``target``: as if stored and loaded again."""
        kept = stored(value, dtype)
        return kept if target == storage_type(dtype) and dtype != "bfloat16" \
            else f"{kept}.to({target})"

    def store_full(self, t: str, value: str) -> None:
        self.line(store(f"{t}_ptr + ({t}_row[:, None] + {t}_col[None, :])", value,
                        self.full[t], "mask"))

    def store_row(self, t: str, value: str) -> None:
        self.line(store(f"{t}_ptr + rows", value, self.rows[t], "row_mask"))

    def round_to(self, value: str, dtype: str) -> str:
        """value rounded to dtype but kept in its compute type (a cast inside the math)."""
        if dtype == "bfloat16":
            return round_bf16(value)
        if dtype == "float16":
            return f"({value}).to(tl.float16).to(tl.float32)"
        return f"({value}).to({storage_type(dtype)})" if dtype == "float" else value

    def combine(self, op: str) -> str:
        """The name of a jitted combine function for tl.reduce (NaN-propagating max/min)."""
        self.helpers.add(_COMBINE_HELPERS[op])
        return {"max": "_max_nan", "min": "_min_nan", "mul": "_mul"}[op]

    def render(self) -> str:
        lay = self.layout
        ptrs = [f"{t}_ptr" for t in list(self.full) + list(self.rows)]
        dims = [f"d{a}" for a in lay.kept + lay.reduced]
        strides = [f"{t}_s{a}" for t in self.full for a in lay.kept + lay.reduced]
        params = ptrs + ["M", "N"] + dims + strides + ["BLOCK_M: tl.constexpr",
                                                       "BLOCK_N: tl.constexpr"]
        node = self.node
        header = [f"# tritort kernel template {self.name}",
                  f"# ONNX node: {node.name!r} ({node.op_type}); {lay.text()}"]
        if self.fusion:
            fused = ", ".join(f"{n!r} ({op})" for n, op in self.fusion.nodes)
            header.append(f"# fused ONNX nodes: {fused}")
        header += ["import triton", "import triton.language as tl"]
        # wrap between parameters only ("BLOCK_M: tl.constexpr" stays whole)
        text = f"def {KERNEL}({', '.join(p.replace(' ', '~') for p in params)}):"
        signature = ["@triton.jit"] + [line.replace("~", " ") for line in textwrap.wrap(
            text, 100, subsequent_indent=" " * 8, break_long_words=False)]
        helpers = self.helpers | {helper_source("\n".join(self.lines))} - {""}
        return ("\n".join(header) + "\n" + "".join(sorted(helpers)) + "\n\n"
                + "\n".join(signature + self.lines) + "\n")


def arg_best(k: TileSource, t: str, largest: bool, last: bool) -> None:
    """Lines leaving in ``best_idx`` the column of each row's largest (smallest) value, the
    first such column or, with ``last``, the last one. NaN beats every number, as in numpy."""
    dtype = k.full[t]
    floats = dtype in dtypes.FLOAT_TYPES
    worst = extreme(dtype, not largest)
    k.line(f"worst = tl.full([BLOCK_M, BLOCK_N], {worst}, {acc_type(dtype)})")
    k.line(f"best = tl.full([BLOCK_M], {worst}, {acc_type(dtype)})")
    k.line("best_idx = tl.zeros([BLOCK_M], dtype=tl.int64)")
    if floats:
        k.line("best_nan = tl.zeros([BLOCK_M], dtype=tl.int32)")
    with k.columns(t):
        k.line(f"v = {k.load(t)}")
        hits = "mask & (v == chunk[:, None])"
        if floats:
            k.line("is_nan = mask & (v != v)")
            k.line("chunk_nan = tl.max(is_nan.to(tl.int32), axis=1)")
            k.line("v = tl.where(mask & (v == v), v, worst)")
            # a chunk holding NaN is won by its NaNs
            hits = f"tl.where(chunk_nan[:, None] > 0, is_nan, {hits})"
        else:
            k.line("v = tl.where(mask, v, worst)")
        k.line(f"chunk = tl.{'max' if largest else 'min'}(v, axis=1)")
        if last:
            k.line(f"chunk_idx = tl.max(tl.where({hits}, cols[None, :], -1), axis=1)")
        else:
            k.line(f"chunk_idx = tl.min(tl.where({hits}, cols[None, :], N), axis=1)")
        # ties go to the earlier chunk, or with `last` to the later one
        better = f"chunk {'>' if largest else '<'}{'=' if last else ''} best"
        if not floats:
            take = better
        elif last:
            take = f"(chunk_nan > 0) | ((best_nan == 0) & ({better}))"
        else:
            take = f"(best_nan == 0) & ((chunk_nan > 0) | ({better}))"
        k.line(f"take = {take}")
        k.line("best = tl.where(take, chunk, best)")
        k.line("best_idx = tl.where(take, chunk_idx, best_idx)")
        if floats:
            k.line("best_nan = tl.maximum(best_nan, chunk_nan)")
