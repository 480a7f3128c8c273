"""Compile stage: each provider turns its claimed nodes into callables.

A :class:`Program` is a compiled graph; it hands out plans per fetch set. Control-flow
subgraphs are compiled the same way, into :class:`SubgraphRunner` objects that kernels
call.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import onnx

from .executor import execute
from .graph import Graph, free_names
from .errors import Fail
from .partition import Partition, ProviderSubgraph, partition
from .planner import Plan, PlacedUnit, make_plan, order_units
from .providers import CPU, CompiledUnit, CompileInfo, ExecutionProvider


def _check_cover(ep: ExecutionProvider, nodes, units: list[CompiledUnit]) -> None:
    """A provider's units must partition exactly the nodes it claimed."""
    claimed = [n.name for n in nodes]
    covered = [n.name for u in units for n in u.nodes]
    if sorted(claimed) != sorted(covered):
        raise Fail(f"{ep.name} compiled {len(covered)} node(s) for {len(claimed)} claimed: "
                   f"missing {sorted(set(claimed) - set(covered))[:5]}, duplicated or foreign "
                   f"{sorted(n for n in set(covered) if covered.count(n) > 1 or n not in claimed)[:5]}")


class Program:
    def __init__(self, graph: Graph, providers: Sequence[ExecutionProvider],
                 config: dict[str, str] | None = None) -> None:
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
        placed: list[PlacedUnit] = []
        for ep in self.providers:
            nodes = self.partition.nodes_of(ep)
            if nodes:
                units = ep.compile(nodes, info)
                _check_cover(ep, nodes, units)
                placed.extend(PlacedUnit(u, ep) for u in units)
        self.units = order_units(placed, position)
        self._plans: dict[tuple, Plan] = {}
        self._lock = threading.Lock()

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

    def plan_for(self, fetches: Sequence[str], outer_names: Sequence[str] = ()) -> Plan:
        key = (tuple(fetches), tuple(outer_names))
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                plan = self._plans.get(key)
                if plan is None:
                    plan = make_plan(self.graph, self.units, fetches,
                                     outer_names=outer_names)
                    self._plans[key] = plan
        return plan


class SubgraphRunner:
    """A compiled control-flow body: ``run(feeds, outer) -> outputs``."""

    def __init__(self, graph: Graph, providers: Sequence[ExecutionProvider],
                 outer_names: Sequence[str], config: dict[str, str] | None = None) -> None:
        self.program = Program(graph, providers, config)
        self.input_names = graph.input_names
        self.output_names = graph.output_names
        self.output_types = [o.type for o in graph.outputs]
        self.outer_names = list(outer_names)
        self.plan = self.program.plan_for(self.output_names, self.outer_names)

    def run(self, feeds: Sequence[Any], outer: dict[str, Any]) -> list[Any]:
        values = dict(zip(self.input_names, feeds))
        for name in self.outer_names:
            values[name] = outer[name]
        return execute(self.plan, values)


def build_subgraph(graph_proto: onnx.GraphProto, parent: CompileInfo) -> SubgraphRunner:
    graph = Graph.from_proto(graph_proto, parent.opsets)
    graph.value_types = {**parent.value_types, **graph.value_types}
    return SubgraphRunner(graph, parent.providers, sorted(free_names(graph_proto)),
                          parent.options)
