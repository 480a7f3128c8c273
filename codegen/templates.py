"""Kernel templates: ops that are not pointwise (reductions, normalizations, data movement).

Each op has one row in TEMPLATES. A row claims a node (or says why not) and builds it into a
kernel of its own: generated Triton source loaded through the cache, and a launcher working
on torch tensors. Pointwise ops live in :mod:`tritort.codegen.lowering` instead, where
fusion can merge them.

A template declares what it is (its ``kind``, shown in the kernel reports) and what fusion
may give it; :mod:`tritort.codegen.fusion` reads only these declarations: the ``passes`` it
makes over its data input (a fused prologue is recomputed on each), and which pointwise work
its kernel can take: a ``prologue`` computing its data input on each loaded tile, an
``epilogue`` on its result, ``operand_prologues`` computing operands as they load (a GEMM's
Cast or scale, an attention's RotaryEmbedding on Q and K), by :meth:`Template.takes_operand`.
"""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from tritort.graph import Node

from . import cache

KINDS = ("rowwise", "tiled", "window", "attention", "movement")


@dataclass
class TemplateContext:
    """What a template may know while claiming and building a node."""

    dtype_of: Callable[[str], str | None]  # ONNX element-type name, or None if unknown
    shape_of: Callable[[str], tuple | None]  # ints and dim_param strings, or None
    constant_of: Callable[[str], Any]  # numpy value of an initializer, or None
    device: str  # the cache key's device string
    torch_device: Any
    interpreted: bool
    opset: int
    tuning: Any = None  # the TuningTable launchers take configs from (None: heuristics only)
    use_tf32: bool = False  # float32 tl.dot on TF32 tensor cores (the provider's use_tf32)

    def dot_precision(self, dtype: str) -> str | None:
        """``input_precision`` of a float32 ``tl.dot``: 'tf32' or 'ieee'; None for others."""
        if dtype != "float":
            return None
        return "tf32" if self.use_tf32 else "ieee"

    def rank_of(self, value: str) -> int | None:
        shape = self.shape_of(value)
        return None if shape is None else len(shape)


@dataclass
class KernelSpec:
    """A built kernel: its launcher and what the reports show of it."""

    name: str
    fn: Callable[..., tuple]  # torch tensors in, tuple of torch tensors out
    inputs: list[str]  # the node's input values the launcher takes, in order
    ir_text: str
    source: str
    path: Path | None
    cached: bool
    host_inputs: tuple[str, ...] = ()  # inputs the launcher takes as host (numpy) arrays

    @property
    def kernel(self) -> str | None:
        """The jitted function's name, ``k_`` + its body's hash (see :mod:`.cache`); None for
        a view, which runs no kernel."""
        return None if self.path is None else self.path.stem


class Template(abc.ABC):
    """One family of kernels. Subclasses declare ``kind`` and what fusion may give them."""

    kind: ClassVar[str]  # one of KINDS
    passes: ClassVar[int] = 1  # reading passes over the data input (the first input)
    prologue: ClassVar[bool] = False  # computes pointwise producers of its data per tile
    epilogue: ClassVar[bool] = False  # computes pointwise consumers of its result
    per_element_epilogue: ClassVar[bool] = False  # ... on each element, not once per row
    operand_prologues: ClassVar[bool] = False  # converts each GEMM operand's tiles as loaded
    operand_inputs: ClassVar[tuple[int, ...]] = (0, 1)  # the inputs those producers make

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "kind", None) not in KINDS:
            raise TypeError(f"template {cls.__name__} declares kind "
                            f"{getattr(cls, 'kind', None)!r}, not one of {KINDS}")

    def memory_passes(self, node: Node, shape: Sequence[Any]) -> int:
        """Passes that read the data input from memory (not cache), for data of ``shape``."""
        return self.passes

    @classmethod
    def anchors_fusion(cls) -> bool:
        """Can pointwise nodes join this template's kernel?"""
        return cls.prologue or cls.epilogue or cls.operand_prologues

    def takes_operand(self, producer: Node, ctx: TemplateContext, node: Node, index: int,
                      made_by: Callable[[str], Node | None]) -> bool:
        """With ``operand_prologues``: can the kernel compute ``node``'s input ``index`` from
        ``producer`` as it loads it (``made_by(value)``: the node making a value)? The shared
        rule (codegen.prologues) unless a template has its own."""
        from .prologues import operand_prologue

        return operand_prologue(producer, ctx, node, index, made_by) is not None

    @abc.abstractmethod
    def claim(self, node: Node, ctx: TemplateContext) -> str | None:
        """None to take the node, else why not."""

    @abc.abstractmethod
    def build(self, node: Node, ctx: TemplateContext, name: str,
              fusion: Any = None) -> KernelSpec:
        """A kernel for exactly this node; with a ``fusion`` (a rowwise.TileFusion holding
        only what the template declares it takes) the fused nodes' work too."""


TEMPLATES: dict[str, Template] = {}


def template(*op_types: str):
    """Class decorator: register one instance for the given op types."""

    def wrap(cls):
        instance = cls()
        for op_type in op_types:
            TEMPLATES[op_type] = instance
        return cls

    return wrap


def load_source(source: str, name: str, ctx: TemplateContext) -> cache.Loaded:
    """Compile ``source`` (defining ``@triton.jit def name``) through the kernel cache: its
    leading comment lines are the dump's header, the rest is hashed with the function
    renamed, so nothing but the code may differ between two nodes' kernels there."""
    return cache.load(source, name, ctx.device)


def kernel_signature(name: str, params: Sequence[str], width: int = 96) -> list[str]:
    """``def name(params):`` for generated source, wrapped between parameters."""
    lines, line = [], f"def {name}("
    for i, p in enumerate(params):
        piece = p + ("):" if i == len(params) - 1 else ", ")
        if len(line) + len(piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = " " * 8
        line += piece
    return lines + [line]


def dump(unit: str, ir_text: str, source: str, path: Path | None,
         nodes: Sequence[Node]) -> None:
    """With ``TRITORT_DUMP_DIR`` set, write a unit's tile IR (``{unit}.tileir.txt``) and its
    kernel (``{unit}.py``) there: the source's header, a line naming the cached kernel and
    the ONNX nodes the unit covers (written only here: neither is hashed), then the kernel
    as cached, its function named by its hash."""
    folder = os.environ.get("TRITORT_DUMP_DIR")
    if not folder:
        return
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{unit}.tileir.txt").write_text(ir_text + "\n")
    header, text = cache.split(source)
    covers = ", ".join(f"{n.name} ({n.op_type})" for n in nodes)
    if path is not None:
        header += f"# kernel {path.stem} ({path}); unit {unit}: {covers}\n"
        text = path.read_text()
    else:
        header += f"# no kernel (a view); unit {unit}: {covers}\n"
    (out / f"{unit}.py").write_text(header + text)


# The families register their rows on import; they need the names above to exist first.
from . import attention, conv, fp8_gemm, gemm, int8_gemm, movement, nbits_gemm, pool, \
    qoperator, quant_dynamic, reductions, rotary  # noqa: E402,F401
from . import split_gelu  # noqa: E402,F401
