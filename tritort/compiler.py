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
from .partition import Partition, partition
from .planner import Plan, make_plan
from .providers import CompileInfo, ExecutionProvider


class Program:
    def __init__(self, graph: Graph, providers: Sequence[ExecutionProvider]) -> None:
        self.graph = graph
        self.providers = list(providers)
        self.partition: Partition = partition(graph, self.providers)
        self.order = [a.node for a in self.partition.assignments.values()]
        info = CompileInfo(graph.opsets, graph.value_types, build_subgraph, self.providers)
        self.kernels: dict[str, Any] = {}
        for ep in self.providers:
            nodes = self.partition.nodes_of(ep)
            if nodes:
                self.kernels.update(ep.compile(nodes, info))
        self._plans: dict[tuple, Plan] = {}
        self._lock = threading.Lock()

    def plan_for(self, fetches: Sequence[str], outer_names: Sequence[str] = ()) -> Plan:
        key = (tuple(fetches), tuple(outer_names))
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                plan = self._plans.get(key)
                if plan is None:
                    plan = make_plan(self.graph, self.order, self.partition, self.kernels,
                                     fetches, outer_names=outer_names)
                    self._plans[key] = plan
        return plan


class SubgraphRunner:
    """A compiled control-flow body: ``run(feeds, outer) -> outputs``."""

    def __init__(self, graph: Graph, providers: Sequence[ExecutionProvider],
                 outer_names: Sequence[str]) -> None:
        self.program = Program(graph, providers)
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
    return SubgraphRunner(graph, parent.providers, sorted(free_names(graph_proto)))
