"""Plan stage: execution order, value slots and lifetimes, device copies, fetch pruning.

A plan is built once per set of fetches and reused by every run asking for them; running
it is one loop over prepared steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .graph import Graph, Node
from .partition import Partition


@dataclass
class Step:
    fn: Callable[..., Any]
    in_slots: tuple[int, ...]  # -1 for an omitted optional input
    out_slots: tuple[int, ...]  # -1 for an omitted output
    free_slots: tuple[int, ...]  # values dead after this step
    node: Node | None  # None for a device copy
    provider: str
    label: str


@dataclass
class Plan:
    steps: list[Step]
    slot_of: dict[str, int]
    num_slots: int
    constant_slots: list[tuple[int, Any]]  # initializers, placed before each run
    input_slots: dict[str, int]
    fetch_slots: tuple[int, ...]


def _needed_nodes(order: list[Node], fetches: Sequence[str]) -> list[Node]:
    producer = {o: n for n in order for o in n.outputs if o}
    needed: set[str] = set()
    stack = [producer[f] for f in fetches if f in producer]
    while stack:
        n = stack.pop()
        if n.name in needed:
            continue
        needed.add(n.name)
        stack.extend(producer[x] for x in n.all_inputs if x in producer)
    return [n for n in order if n.name in needed]


def make_plan(graph: Graph, order: list[Node], part: Partition, kernels: dict[str, Callable],
              fetches: Sequence[str], host_device: str = "cpu",
              outer_names: Sequence[str] = ()) -> Plan:
    """``outer_names``: values a subgraph reads from enclosing scopes, fed like inputs."""
    nodes = _needed_nodes(order, fetches)
    slot_of: dict[str, int] = {}

    def slot(name: str) -> int:
        if not name:
            return -1
        if name not in slot_of:
            slot_of[name] = len(slot_of)
        return slot_of[name]

    input_slots = {name: slot(name) for name in list(graph.input_names) + list(outer_names)}
    constant_slots = [(slot(k), v) for k, v in graph.initializers.items()]
    device_of = {name: host_device for name in list(input_slots) + list(graph.initializers)}
    steps: list[Step] = []
    for node in nodes:
        ep = part.assignments[node.name].provider
        ins = []
        for name in node.inputs + node.implicit_inputs:
            if name and device_of.get(name, host_device) != ep.device:
                name = _copy_step(steps, name, ep, device_of, slot, part)
            ins.append(slot(name))
        outs = tuple(slot(o) for o in node.outputs)
        for o in node.outputs:
            if o:
                device_of[o] = ep.device
        steps.append(Step(kernels[node.name], tuple(ins), outs, (), node, ep.name,
                          node.name))
    fetch_names = []
    for f in fetches:
        if device_of.get(f, host_device) != host_device:
            f = _copy_step(steps, f, None, device_of, slot, part)
        fetch_names.append(f)
    fetch_slots = tuple(slot_of[f] for f in fetch_names)
    _assign_lifetimes(steps, set(fetch_slots) | {s for s, _ in constant_slots})
    return Plan(steps, slot_of, len(slot_of), constant_slots, input_slots, fetch_slots)


def _copy_step(steps, name, ep, device_of, slot, part) -> str:
    """Insert a copy of ``name`` onto ``ep``'s device (or to the host when ep is None)."""
    target = ep.device if ep is not None else "cpu"
    copy_name = f"{name}@{target}"
    if copy_name not in device_of:
        if ep is not None:
            fn, label = ep.to_device, f"copy {name} to {target}"
        else:
            src = next(a.provider for a in part.assignments.values() if name in a.node.outputs)
            fn, label = src.to_host, f"copy {name} to host"
        steps.append(Step(lambda x, _f=fn: (_f(x),), (slot(name),), (slot(copy_name),), (),
                          None, "copy", label))
        device_of[copy_name] = target
    return copy_name


def _assign_lifetimes(steps: list[Step], keep: set[int]) -> None:
    last_use: dict[int, int] = {}
    for i, step in enumerate(steps):
        for s in step.in_slots:
            if s >= 0:
                last_use[s] = i
        for s in step.out_slots:  # an output nobody reads dies where it is made
            if s >= 0:
                last_use.setdefault(s, i)
    frees: dict[int, list[int]] = {}
    for s, i in last_use.items():
        if s not in keep:
            frees.setdefault(i, []).append(s)
    for i, step in enumerate(steps):
        step.free_slots = tuple(frees.get(i, ()))
