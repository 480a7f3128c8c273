"""Fusion: which pointwise nodes share a kernel.

A group is a run of nodes that are consecutive in the graph's topological order (so no
path can leave the group and come back: the groups are cycle-free by construction) and
whose outputs all have the group's iteration shape, known symbolically at load time.
Broadcasting then happens only where group inputs are loaded. Independent siblings of
the same shape fuse too (horizontal fusion).
"""
from __future__ import annotations

from typing import Callable, Sequence

from tritort.graph import Node

Shape = tuple  # of ints and dim_param strings

MAX_NODES = 64
MAX_INPUTS = 16


def fuse(nodes: Sequence[Node], position: dict[str, int],
         shape_of: Callable[[str], Shape | None]) -> list[list[Node]]:
    groups: list[list[Node]] = []
    group_shape: Shape | None = None
    for node in nodes:
        shapes = {shape_of(o) for o in node.outputs if o}
        shape = shapes.pop() if len(shapes) == 1 else None
        if groups and shape is not None and shape == group_shape and _fits(groups[-1], node) \
                and position[node.name] == position[groups[-1][-1].name] + 1:
            groups[-1].append(node)
            continue
        groups.append([node])
        group_shape = shape
    check_partition(nodes, groups)
    return groups


def _fits(group: list[Node], node: Node) -> bool:
    if len(group) >= MAX_NODES:
        return False
    produced = {o for n in group for o in n.outputs}
    external = {i for n in group + [node] for i in n.inputs if i and i not in produced}
    return len(external) <= MAX_INPUTS


def check_partition(nodes: Sequence[Node], groups: list[list[Node]]) -> None:
    """The groups must hold every node exactly once."""
    flat = [n.name for g in groups for n in g]
    if sorted(flat) != sorted(n.name for n in nodes) or len(set(flat)) != len(flat):
        raise AssertionError(f"fusion groups do not partition the nodes: {flat}")
