"""What an engine hands the runtime: a compiled unit, one callable over one or more nodes.

Both engines build these and every stage after compiling reads them, so the shape lives in the
core layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .graph import Node


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
    # inputs it reads only for their shape (Shape, Size): passed wherever they live, never
    # copied, so a shape read is no host synchronization
    shape_inputs: frozenset = frozenset()

    @property
    def op_type(self) -> str:
        return self.nodes[0].op_type if len(self.nodes) == 1 else "FusedKernel"

    @property
    def runs_subgraphs(self) -> bool:
        return any(n.subgraphs for n in self.nodes)
