"""Compile stage: each provider turns its claimed nodes into callables.

A :class:`Program` is a compiled graph: its units in dependency order, each placed on the
provider that compiled it. Control-flow bodies compile the same way, through the
``build_subgraph`` callable the caller hands in (the executor's, which also plans and runs
them), so this stage never reaches forward into planning or execution.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable, Sequence

from .errors import Fail
from .graph import Graph
from .numerics import checked, wants_check
from .partition import Partition, ProviderSubgraph, partition
from .providers import CPU, CompiledUnit, CompileInfo, ExecutionProvider


@dataclass
class PlacedUnit:
    unit: CompiledUnit
    provider: ExecutionProvider


def order_units(placed: list[PlacedUnit], position: dict[str, int]) -> list[PlacedUnit]:
    """Units in dependency order, earliest model position first where the order is free."""
    producer = {o: i for i, pu in enumerate(placed) for o in pu.unit.outputs if o}
    deps = [{producer[x] for x in pu.unit.inputs if x in producer and producer[x] != i}
            for i, pu in enumerate(placed)]
    users: list[list[int]] = [[] for _ in placed]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    pending = [len(d) for d in deps]
    key = [min(position[n.name] for n in pu.unit.nodes) for pu in placed]
    ready = [(key[i], i) for i, c in enumerate(pending) if c == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(placed[i])
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, (key[u], u))
    if len(order) != len(placed):
        stuck = [placed[i].unit.name for i, c in enumerate(pending) if c > 0]
        raise Fail(f"compiled units depend on each other in a cycle: {stuck[:5]}")
    return order


def _check_cover(ep: ExecutionProvider, nodes, units: list[CompiledUnit]) -> None:
    """A provider's units must partition exactly the nodes it claimed."""
    claimed = [n.name for n in nodes]
    covered = [n.name for u in units for n in u.nodes]
    if sorted(claimed) != sorted(covered):
        raise Fail(f"{ep.name} compiled {len(covered)} node(s) for {len(claimed)} claimed: "
                   f"missing {sorted(set(claimed) - set(covered))[:5]}, duplicated or foreign "
                   f"{sorted(n for n in set(covered) if covered.count(n) > 1 or n not in claimed)[:5]}")


class Program:
    """``build_subgraph(graph_proto, info)`` returns the runner of a control-flow body."""

    def __init__(self, graph: Graph, providers: Sequence[ExecutionProvider],
                 config: dict[str, str] | None, build_subgraph: Callable) -> None:
        self.graph = graph
        self.providers = list(providers)
        self.partition: Partition = partition(graph, self.providers)
        position = {name: i for i, name in enumerate(self.partition.assignments)}
        users: dict[str, list[str]] = {}
        for node in graph.nodes:
            for value in node.all_inputs:
                users.setdefault(value, []).append(node.name)
        info = CompileInfo(graph.opsets, graph.value_types, build_subgraph, self.providers,
                           position, users, graph.output_names, dict(config or {}),
                           initializers=graph.initializers)
        reference = next(ep for ep in self.providers if ep.name == CPU)
        placed: list[PlacedUnit] = []
        for ep in self.providers:
            nodes = self.partition.nodes_of(ep)
            if nodes:
                units = ep.compile(nodes, info)
                _check_cover(ep, nodes, units)
                if ep is not reference and wants_check(info):
                    units = [checked(u, info, ep.to_host, reference,
                                     ep.use_tf32) for u in units]
                placed.extend(PlacedUnit(u, ep) for u in units)
        self.units = order_units(placed, position)

    def assignment_info(self) -> list[ProviderSubgraph]:
        """One subgraph per compiled kernel; consecutive CPU nodes form one subgraph."""
        subgraphs: list[ProviderSubgraph] = []
        for pu in self.units:
            name = pu.provider.name
            if name == CPU and subgraphs and subgraphs[-1].ep_name == CPU:
                subgraphs[-1].nodes.extend(pu.unit.nodes)
            else:
                subgraphs.append(ProviderSubgraph(name, list(pu.unit.nodes)))
        return subgraphs
