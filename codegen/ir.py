"""The tile IR: what a fused pointwise kernel computes, apart from how it is rendered.

A kernel iterates over one output shape. Each input is loaded with its own (broadcast)
strides; expressions are pure functions of the loaded values; each output is an
expression stored contiguously. Types are ONNX element-type names ('float', 'float16',
'bool', ...): the emitter decides how values are held while computing (fp32 for the
low-precision floats, rounded once on store).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Expr:
    dtype: str


@dataclass(frozen=True)
class Load(Expr):
    arg: int  # index into the kernel's inputs


@dataclass(frozen=True)
class Const(Expr):
    value: float | int | bool


@dataclass(frozen=True)
class Op(Expr):
    """A primitive pointwise operation; ``op`` is a key of the emitter's table."""

    op: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Cast(Expr):
    x: Expr
    saturate: bool = True


@dataclass
class TensorParam:
    name: str  # the ONNX value it binds to
    dtype: str
    rank: int
    # a 1-D input laid along one axis: this many trailing size-1 dims make it broadcast
    trailing: int = 0


@dataclass
class PointwiseKernel:
    name: str
    nodes: list[str]  # the fused ONNX nodes, in order
    inputs: list[TensorParam]
    outputs: list[tuple[TensorParam, Expr]]
    rank: int  # of the iteration space (0-d tensors iterate as rank 1)
    node_ops: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The printable form: one line per input, shared subexpression and output."""
        lines = [f"kernel {self.name} rank={self.rank} nodes=[{', '.join(self.nodes)}]"]
        for i, p in enumerate(self.inputs):
            along = f", along dim -{p.trailing + 1}" if p.trailing else ""
            lines.append(f"  in{i}: {p.name} {p.dtype}[rank {p.rank}] (broadcast load{along})")
        names: dict[Expr, str] = {}
        body: list[str] = []

        def show(e: Expr) -> str:
            if isinstance(e, Load):
                return f"in{e.arg}"
            if isinstance(e, Const):
                return f"{e.value!r}:{e.dtype}"
            if e in names:
                return names[e]
            if isinstance(e, Cast):
                text = f"cast<{e.dtype}{'' if e.saturate else ',nosat'}>({show(e.x)})"
            else:
                text = f"{e.op}({', '.join(show(a) for a in e.args)}):{e.dtype}"
            names[e] = f"t{len(names)}"
            body.append(f"  {names[e]} = {text}")
            return names[e]

        stores = [f"  out{i}: {p.name} {p.dtype} = {show(e)}"
                  for i, (p, e) in enumerate(self.outputs)]
        return "\n".join(lines + body + stores)
