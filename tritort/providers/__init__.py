"""Execution providers: thin bridges from the runtime to an engine that runs nodes.

A provider says which nodes it can take (``claim``), turns its claimed nodes into callables
(``compile``), and moves values between host memory and its device.
"""
from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import InvalidArgument
from ..graph import Graph, Node, ValueInfo

CPU = "CPUExecutionProvider"

# Every provider name ORT knows, so code that lists them finds ours among them.
ALL_PROVIDER_NAMES = [
    "TritonExecutionProvider", "TensorrtExecutionProvider", "CUDAExecutionProvider",
    "MIGraphXExecutionProvider", "ROCMExecutionProvider", "OpenVINOExecutionProvider",
    "DnnlExecutionProvider", "VitisAIExecutionProvider", "QNNExecutionProvider",
    "NnapiExecutionProvider", "CoreMLExecutionProvider", "ArmNNExecutionProvider",
    "ACLExecutionProvider", "DmlExecutionProvider", "RknpuExecutionProvider",
    "WebNNExecutionProvider", "WebGpuExecutionProvider", "XnnpackExecutionProvider",
    "CANNExecutionProvider", "AzureExecutionProvider", CPU,
]


@dataclass
class CompiledUnit:
    """One callable covering one node, or several fused ones.

    ``inputs`` are the values it reads (explicit inputs then implicit outer-scope ones; ''
    for an omitted optional input), ``outputs`` the values it produces ('' if omitted).
    ``host_inputs``: inputs it reads in host memory whatever its device (a shape, say), so
    the plan copies them to the host rather than to the device.
    """

    name: str
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    fn: Callable[..., tuple]
    host_inputs: frozenset = frozenset()

    @property
    def op_type(self) -> str:
        return self.nodes[0].op_type if len(self.nodes) == 1 else "FusedKernel"

    @property
    def runs_subgraphs(self) -> bool:
        return any(n.subgraphs for n in self.nodes)


class ExecutionProvider(abc.ABC):
    name: str = ""
    device: str = "cpu"
    option_docs: dict[str, str] = {}

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


TRITON = "TritonExecutionProvider"
# onnxruntime code asks for CUDA; on tritort that is the Triton provider.
ALIASES = {"CUDAExecutionProvider": TRITON}


def _registry() -> dict[str, type[ExecutionProvider]]:
    from .cpu import CPUExecutionProvider
    from .triton import TritonExecutionProvider

    return {TRITON: TritonExecutionProvider, CPU: CPUExecutionProvider}


def available_providers() -> list[str]:
    return [name for name, cls in _registry().items() if cls.unavailable_reason() is None]


def resolve(providers: Sequence[Any] | None,
            provider_options: Sequence[dict] | None) -> list[ExecutionProvider]:
    """Turn ORT's ``providers``/``provider_options`` arguments into provider objects.

    The CPU provider is always last, as in ORT: it takes whatever the others leave.
    """
    registry = _registry()
    names_opts: list[tuple[str, dict]] = []
    providers = list(providers or [CPU])
    if provider_options is not None:
        if any(isinstance(p, tuple) for p in providers):
            raise InvalidArgument("options were given both inside 'providers' and as "
                                  "'provider_options'; use one form")
        if len(provider_options) != len(providers):
            raise InvalidArgument(f"'providers' has {len(providers)} entries but "
                                  f"'provider_options' has {len(provider_options)}")
    for i, p in enumerate(providers):
        if isinstance(p, tuple):
            if len(p) != 2 or not isinstance(p[1], dict):
                raise InvalidArgument(f"provider entry {p!r} must be a name or (name, options dict)")
            name, opts = p
        else:
            name, opts = p, (provider_options[i] if provider_options is not None else {})
        if not isinstance(name, str):
            raise InvalidArgument(f"provider names are strings, got {type(name).__name__}")
        names_opts.append((name, dict(opts)))
    seen: list[ExecutionProvider] = []
    for name, opts in names_opts:
        name = ALIASES.get(name, name)
        if name not in registry:
            if name in ALL_PROVIDER_NAMES:
                raise InvalidArgument(f"{name} is not available in this build; available "
                                      f"providers: {list(registry)}")
            raise InvalidArgument(f"unknown provider '{name}'; known providers: "
                                  f"{ALL_PROVIDER_NAMES}")
        if any(ep.name == name for ep in seen):
            raise InvalidArgument(f"provider '{name}' is listed twice")
        reason = registry[name].unavailable_reason()
        if reason is not None:
            warnings.warn(f"{name} was requested but cannot be used: {reason}. Its nodes run "
                          f"on {CPU}; get_providers() lists only the providers in use.",
                          RuntimeWarning, stacklevel=3)
            continue
        seen.append(registry[name](opts))
    if not any(ep.name == CPU for ep in seen):
        seen.append(registry[CPU]({}))
    return seen
