"""Execution providers: thin bridges from the runtime to an engine that runs nodes.

A provider says which nodes it can take (``claim``), turns its claimed nodes into callables
(``compile``), and moves values between host memory and its device. This module holds what
every provider shares; :mod:`tritort.providers.registry` knows the providers themselves, so a
provider never imports another's engine.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Sequence

from ..errors import InvalidArgument
from ..graph import Graph, Node, ValueInfo
from ..units import CompiledUnit  # noqa: F401  (providers and stages know it from here)

CPU = "CPUExecutionProvider"
TRITON = "TritonExecutionProvider"

class ExecutionProvider(abc.ABC):
    name: str = ""
    device: str = "cpu"
    option_docs: dict[str, str] = {}
    # its GEMMs read int8 / float8 weights as stored, dequantizing them as they load: the
    # optimizer then keeps weight DequantizeLinear nodes instead of folding them to floats
    reads_quantized_weights: bool = False
    # its float32 products round their inputs to TF32 (check_numerics widens its tolerance)
    use_tf32: bool = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this provider can run here, else why not."""
        return None

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        options = {str(k): str(v) for k, v in (options or {}).items()}
        unknown = sorted(set(options) - set(self.option_docs))
        if unknown:
            raise InvalidArgument(f"{self.name}: unknown provider option(s) {unknown}; "
                                  f"known options: {sorted(self.option_docs) or 'none'}")
        self.options = options

    def configure(self, session_options: Any) -> None:
        """Take what the session's options say about this provider (threads, memory)."""

    def run_scope(self) -> Any:
        """A context manager every run of the session executes in (a thread pool's size,
        say), or None when this provider needs none."""
        return None

    @abc.abstractmethod
    def claim(self, node: Node, graph: Graph) -> str | None:
        """None if this provider takes the node, else the reason it does not."""

    @abc.abstractmethod
    def compile(self, nodes: Sequence[Node], graph_info: "CompileInfo") -> list[CompiledUnit]:
        """Units covering exactly the claimed nodes, each node in one unit."""

    def to_device(self, value: Any) -> Any:
        return value

    def to_host(self, value: Any) -> Any:
        return value


class CompileInfo:
    """What compilation may know of the surrounding graph.

    ``position``: each node's index in the partition's topological order. ``users``: the
    nodes reading each value; ``graph_outputs``: values the graph returns.
    """

    def __init__(self, opsets: dict[str, int], value_types: dict,
                 build_subgraph: Callable | None, providers: Sequence["ExecutionProvider"] = (),
                 position: dict[str, int] | None = None,
                 users: dict[str, list[str]] | None = None,
                 graph_outputs: Sequence[str] = (), options: dict[str, str] | None = None,
                 initializers: dict[str, Any] | None = None):
        self.opsets = opsets
        self.value_types = value_types
        self.build_subgraph = build_subgraph
        self.providers = list(providers)
        self.position = position or {}
        self.users = users or {}
        self.graph_outputs = set(graph_outputs)
        self.options = options or {}
        self.initializers = initializers or {}
        self._values: dict[str, ValueInfo] = {}

    def value(self, name: str) -> ValueInfo | None:
        """The parsed type of ``name`` (None if unknown), parsed once."""
        info = self._values.get(name)
        if info is None and name in self.value_types:
            info = self._values[name] = ValueInfo.of(self.value_types[name])
        return info

    def escapes(self, value: str, group: set[str]) -> bool:
        """Is ``value`` read outside the node set ``group`` (or returned by the graph)?"""
        return value in self.graph_outputs or any(u not in group
                                                  for u in self.users.get(value, ()))
