"""Kernel registry of the NumPy provider, keyed by (domain, op_type, since_version).

A registry row is a *factory*: it receives a :class:`NodeContext` once, at session
creation, and returns the callable that runs the node. Attribute parsing therefore
happens once per node, never per run.

The callable takes the node's inputs positionally (``None`` for an omitted optional
input) and returns a tuple with one entry per produced output.
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from tritort.errors import Fail, OrtError
from tritort.graph import Node

Kernel = Callable[..., tuple]
KernelFactory = Callable[["NodeContext"], Kernel]

ONNX_DOMAIN = ""
ML_DOMAIN = "ai.onnx.ml"


def normalize_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


@dataclass
class NodeContext:
    """What a kernel factory may know about its node.

    ``attrs`` maps attribute names to Python values: int, float, str (decoded), numpy
    array (tensor), onnx.GraphProto (subgraph), or lists of these. ``input_types`` and
    ``output_types`` hold onnx.TypeProto or None where shape inference gave nothing.
    Control-flow ops: ``implicit_inputs`` names the outer-scope values the node's subgraphs
    read; the executor passes their values positionally after the explicit inputs.
    ``subgraph(attr_name)`` returns a runner with ``input_names``, ``output_names`` and
    ``run(feeds: list, outer: dict[str, value]) -> list``.
    """

    op_type: str
    domain: str
    name: str
    attrs: dict[str, Any]
    opset: int
    since_version: int
    input_names: Sequence[str]
    output_names: Sequence[str]
    input_types: Sequence[Any] = ()
    output_types: Sequence[Any] = ()
    proto: onnx.NodeProto | None = None
    opsets: dict[str, int] = field(default_factory=dict)
    subgraph: Callable[[str], Any] | None = None
    implicit_inputs: Sequence[str] = ()

    @property
    def num_inputs(self) -> int:
        return len(self.input_names)

    @property
    def num_outputs(self) -> int:
        return len(self.output_names)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def output_elem_type(self, index: int) -> int | None:
        """The ONNX element type of output ``index`` if shape inference knew it."""
        if index >= len(self.output_types) or self.output_types[index] is None:
            return None
        t = self.output_types[index]
        if t.HasField("tensor_type"):
            return t.tensor_type.elem_type
        return None


class _Registry:
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], list[tuple[int, KernelFactory]]] = {}
        self._lock = threading.Lock()

    def add(self, domain: str, op_type: str, since: int, factory: KernelFactory) -> None:
        key = (normalize_domain(domain), op_type)
        with self._lock:
            rows = self._rows.setdefault(key, [])
            if any(v == since for v, _ in rows):
                raise ValueError(f"kernel {domain or 'ai.onnx'}::{op_type} v{since} registered twice")
            bisect.insort(rows, (since, factory), key=lambda r: r[0])

    def lookup(self, domain: str, op_type: str, opset: int) -> tuple[int, KernelFactory] | None:
        """The newest row with since_version <= opset, or None."""
        rows = self._rows.get((normalize_domain(domain), op_type))
        if not rows:
            return None
        best = None
        for since, factory in rows:
            if since <= opset:
                best = (since, factory)
        return best

    def ops(self) -> list[tuple[str, str, int]]:
        return sorted((d, op, v) for (d, op), rows in self._rows.items() for v, _ in rows)


REGISTRY = _Registry()


def register(op_type: str, since: int | Sequence[int] = 1, domain: str = ONNX_DOMAIN):
    """Decorator adding a kernel factory for one or more since_versions of an op."""
    versions = [since] if isinstance(since, int) else list(since)

    def wrap(factory: KernelFactory) -> KernelFactory:
        for v in versions:
            REGISTRY.add(domain, op_type, v, factory)
        return factory

    return wrap


def elementwise(op_type: str, fn: Callable[..., np.ndarray], since: int | Sequence[int] = 1,
                domain: str = ONNX_DOMAIN) -> None:
    """Register a single-output op that needs no attributes: ``fn(*inputs) -> array``."""

    def factory(ctx: NodeContext) -> Kernel:
        return lambda *xs: (fn(*xs),)

    register(op_type, since, domain)(factory)


# ------------------------------------------------------------------ the engine's public entry


def missing_kernel(domain: str, op_type: str, opsets: dict[str, int]) -> str | None:
    """None when a kernel runs ``domain::op_type`` at the model's opset, else why not."""
    opset = opsets.get(domain)
    if opset is None:
        return f"the model imports no opset for domain '{domain}'"
    if REGISTRY.lookup(domain, op_type, opset) is None:
        reason = f"no NumPy kernel for {domain or 'ai.onnx'}::{op_type} at opset {opset}"
        if normalize_domain(domain) not in (ONNX_DOMAIN, ML_DOMAIN):
            # a vendor domain (com.microsoft, ...): say what does run there
            known = sorted({op for d, op, _ in REGISTRY.ops() if d == normalize_domain(domain)})
            reason += (f"; the NumPy kernels of domain '{domain}' are: {', '.join(known)}"
                       if known else f"; there is no NumPy kernel in domain '{domain}'")
        return reason
    return None


def build_kernel(node: Node, opsets: dict[str, int], value_types: dict,
                 subgraph: Callable[[str], Any] | None = None) -> Kernel:
    """The callable running ``node`` (its factory parses the attributes once, here).

    ``value_types`` maps value names to onnx.TypeProto; ``subgraph(attr_name)`` builds the
    runner of a control-flow body. A factory refusing its attributes raises Fail."""
    opset = opsets[node.domain]
    since, factory = REGISTRY.lookup(node.domain, node.op_type, opset)
    ctx = NodeContext(
        op_type=node.op_type, domain=node.domain, name=node.name, attrs=node.attrs,
        opset=opset, since_version=since, input_names=node.inputs, output_names=node.outputs,
        input_types=[value_types.get(n) for n in node.inputs],
        output_types=[value_types.get(n) for n in node.outputs],
        proto=node.proto, opsets=opsets, subgraph=subgraph,
        implicit_inputs=node.implicit_inputs)
    try:
        return factory(ctx)
    except OrtError:
        raise
    except Exception as e:
        raise Fail(f"{node.describe()}: cannot build its kernel: {type(e).__name__}: {e}") from e
