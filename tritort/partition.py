"""Partition stage: providers claim nodes in priority order, the CPU provider taking the rest."""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from .errors import InvalidGraph, NotImplemented
from .graph import Graph, Node
from .providers import ExecutionProvider


@dataclass
class Assignment:
    node: Node
    provider: ExecutionProvider
    # Why each higher-priority provider passed on the node.
    declined: dict[str, str] = field(default_factory=dict)


@dataclass
class ProviderSubgraph:
    """Nodes one provider runs together: a fused kernel, or a run of single-node kernels."""

    ep_name: str
    nodes: list[Node]

    def get_nodes(self) -> list["AssignedNode"]:
        return [AssignedNode(n.name, n.op_type, n.domain) for n in self.nodes]


@dataclass(frozen=True)
class AssignedNode:
    name: str
    op_type: str
    domain: str


@dataclass
class Partition:
    assignments: dict[str, Assignment]  # node name -> provider, in topological order

    def nodes_of(self, provider: ExecutionProvider) -> list[Node]:
        return [a.node for a in self.assignments.values() if a.provider is provider]

    def report(self) -> str:
        """Which node went to which provider, and why higher-priority ones passed."""
        lines = []
        for a in self.assignments.values():
            line = f"{a.node.op_type:<22} {a.node.name:<32} -> {a.provider.name}"
            if a.declined:
                line += "  (" + "; ".join(f"{k}: {v}" for k, v in a.declined.items()) + ")"
            lines.append(line)
        return "\n".join(lines)


def topological_order(graph: Graph) -> list[Node]:
    """Nodes ordered so producers come first, keeping model order where it is free."""
    produced_by = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs if o}
    deps = [{produced_by[x] for x in n.all_inputs if x in produced_by} for n in graph.nodes]
    users: list[list[int]] = [[] for _ in graph.nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    pending = [len(d) for d in deps]
    ready = [i for i, c in enumerate(pending) if c == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(graph.nodes[i])
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(graph.nodes):
        stuck = [graph.nodes[i].describe() for i, c in enumerate(pending) if c > 0]
        raise InvalidGraph(f"the graph has a cycle through {', '.join(stuck[:5])}")
    return order


def partition(graph: Graph, providers: list[ExecutionProvider]) -> Partition:
    assignments: dict[str, Assignment] = {}
    unplaced: list[str] = []
    for node in topological_order(graph):
        declined: dict[str, str] = {}
        for ep in providers:
            reason = ep.claim(node, graph)
            if reason is None:
                assignments[node.name] = Assignment(node, ep, declined)
                break
            declined[ep.name] = reason
        else:
            opset = graph.opsets.get(node.domain)
            unplaced.append(
                f"Could not find an implementation for {node.op_type}({opset}) node with name "
                f"'{node.name}' (domain '{node.domain or 'ai.onnx'}'): "
                + "; ".join(f"{k}: {v}" for k, v in declined.items()))
    if unplaced:
        # every node no provider takes, not only the first: a model missing several ops
        # (an ORT-optimized graph, say) is diagnosed in one try
        if len(unplaced) > 1:
            unplaced.insert(0, f"{len(unplaced)} nodes have no implementation:")
        raise NotImplemented("\n".join(unplaced))
    return Partition(assignments)
