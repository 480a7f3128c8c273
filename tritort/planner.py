"""Plan stage: execution order, value slots and lifetimes, device copies, fetch pruning.

A plan is built once per set of fetches and reused by every run asking for them; running
it is one loop over prepared steps.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .compiler import PlacedUnit, Program
from .dlpack import to_host
from .graph import Graph


@dataclass
class Step:
    fn: Callable[..., Any]
    in_slots: tuple[int, ...]  # -1 for an omitted optional input
    out_slots: tuple[int, ...]  # -1 for an omitted output
    free_slots: tuple[int, ...]  # values dead after this step
    op_type: str  # "Copy" for a device copy, "FusedKernel" for several nodes
    provider: str
    label: str
    runs_subgraphs: bool = False  # errors from nested nodes already name them
    # inputs (positions) whose value dies here and that fn.inplace may overwrite
    donors: tuple[int, ...] = ()


@dataclass
class Plan:
    steps: list[Step]
    slot_of: dict[str, int]
    num_slots: int
    constant_slots: list[tuple[int, Any]]  # initializers, placed before each run
    input_slots: dict[str, int]
    fetch_slots: tuple[int, ...]
    # values a run reads back from a device before its fetches (graph inputs included when
    # the caller placed them there): each one synchronizes the host with the device
    host_reads: tuple[str, ...] = ()
    # graph inputs whose values (not only shapes) a step reads on the host
    host_value_inputs: tuple[str, ...] = ()


class DeviceConstants:
    """Device copies of a graph's constants, made once and shared by all its plans."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], Any] = {}

    def get(self, name: str, value: Any, ep) -> Any:
        key = (name, ep.device)
        copy = self._values.get(key)
        if copy is None:
            copy = self._values[key] = ep.to_device(value)
        return copy

    def __len__(self) -> int:
        return len(self._values)


class Plans:
    """The plans of one compiled program, made once per fetch set (and per where fetched
    values end up) and shared by every run; locked, since runs may come from many threads.

    ``outer_names``: values a control-flow body reads from enclosing scopes, fed like inputs.
    """

    def __init__(self, program: Program, outer_names: Sequence[str] = ()) -> None:
        self.program = program
        self.outer_names = tuple(outer_names)
        self._plans: dict[tuple, Plan] = {}
        self._lock = threading.Lock()
        # weights a device reads, uploaded once for every plan: (name, device) -> value
        self.device_constants = DeviceConstants()

    def get(self, fetches: Sequence[str], keep_on_device: bool = False) -> Plan:
        key = (tuple(fetches), keep_on_device)
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                plan = self._plans.get(key)
                if plan is None:
                    plan = self._plans[key] = make_plan(
                        self.program.graph, self.program.units, fetches,
                        outer_names=self.outer_names, keep_on_device=keep_on_device,
                        device_constants=self.device_constants)
        return plan


def _needed_units(order: list[PlacedUnit], fetches: Sequence[str]) -> list[PlacedUnit]:
    producer = {o: i for i, pu in enumerate(order) for o in pu.unit.outputs if o}
    needed: set[int] = set()
    stack = [producer[f] for f in fetches if f in producer]
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(producer[x] for x in order[i].unit.inputs if x in producer)
    return [pu for i, pu in enumerate(order) if i in needed]


# Where a graph input read by a device provider may live: numpy on the host, or a torch tensor
# the caller placed on a device. Each consumer reaches it through an idempotent move.
ANYWHERE = "anywhere"


def device_inputs(units: Sequence[PlacedUnit], host_device: str = "cpu") -> set[str]:
    """Values read by units of providers that do not run on the host."""
    return {x for pu in units if pu.provider.device != host_device for x in pu.unit.inputs
            if x and x not in pu.unit.host_inputs}


def make_plan(graph: Graph, units: list[PlacedUnit], fetches: Sequence[str],
              host_device: str = "cpu", outer_names: Sequence[str] = (),
              keep_on_device: bool = False,
              device_constants: DeviceConstants | None = None) -> Plan:
    """``outer_names``: values a subgraph reads from enclosing scopes, fed like inputs.

    Graph inputs read by a device provider may arrive on that device (``ANYWHERE``): device
    consumers get them through their provider's ``to_device``, host consumers through
    ``dlpack.to_host``, both passing values already in place through untouched. Fetches are
    brought to the host unless ``keep_on_device``: then each stays where its producer left it.
    Constants a device reads come from ``device_constants`` (uploaded there on first use).
    """
    if device_constants is None:
        device_constants = DeviceConstants()
    needed = _needed_units(units, fetches)
    producer_of = {o: pu.provider for pu in units for o in pu.unit.outputs if o}
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
    for name in device_inputs(units, host_device).intersection(graph.input_names):
        device_of[name] = ANYWHERE
    steps: list[Step] = []
    host_value_inputs: list[str] = []
    for pu in needed:
        unit, ep = pu.unit, pu.provider
        host_value_inputs += [x for x in unit.inputs if x in input_slots and x not in
                              unit.shape_inputs and (ep.device == host_device
                                                     or x in unit.host_inputs)]
        ins = []
        for name in unit.inputs:
            if name in unit.shape_inputs:
                pass
            elif name in unit.host_inputs:
                if device_of.get(name, host_device) != host_device:
                    name = _copy_step(steps, name, None, device_of, slot, producer_of)
            elif name and device_of.get(name, host_device) != ep.device:
                if name in graph.initializers and name not in input_slots:
                    name = _placed_constant(name, graph.initializers[name], ep, device_of,
                                            slot, constant_slots, device_constants)
                else:
                    name = _copy_step(steps, name, ep, device_of, slot, producer_of)
            ins.append(slot(name))
        outs = tuple(slot(o) for o in unit.outputs)
        for o in unit.outputs:
            if o:
                device_of[o] = ep.device
        steps.append(Step(unit.fn, tuple(ins), outs, (), unit.op_type, ep.name, unit.name,
                          unit.runs_subgraphs))
    # values copied to the host so far are read there mid-run: each waits for the device
    host_reads = tuple(n[:-len(host_device) - 1] for n in device_of
                       if n.endswith(f"@{host_device}"))
    fetch_names = []
    for f in fetches:
        if not keep_on_device and device_of.get(f, host_device) != host_device:
            f = _copy_step(steps, f, None, device_of, slot, producer_of)
        fetch_names.append(f)
    fetch_slots = tuple(slot_of[f] for f in fetch_names)
    _assign_lifetimes(steps, set(fetch_slots) | {s for s, _ in constant_slots},
                      set(input_slots.values()))
    return Plan(steps, slot_of, len(slot_of), constant_slots, input_slots, fetch_slots,
                host_reads, tuple(dict.fromkeys(host_value_inputs)))


def _placed_constant(name, value, ep, device_of, slot, constant_slots, device_constants) -> str:
    """A constant the device reads is there before any run: moved once per session, shared by
    every plan, never per run."""
    copy_name = f"{name}@{ep.device}"
    if copy_name not in device_of:
        constant_slots.append((slot(copy_name), device_constants.get(name, value, ep)))
        device_of[copy_name] = ep.device
    return copy_name


def _copy_step(steps, name, ep, device_of, slot, producer_of, host_device="cpu") -> str:
    """Insert a copy of ``name`` onto ``ep``'s device (to the host when ep is None)."""
    target = ep.device if ep is not None else host_device
    copy_name = f"{name}@{target}"
    if copy_name not in device_of:
        source = device_of.get(name, host_device)
        moves = []
        if source == ANYWHERE:  # a graph input: numpy or a tensor the caller placed
            moves.append(to_host if target == host_device else ep.to_device)
        else:
            if source != host_device:  # the producer brings its values home
                moves.append(producer_of[name].to_host)
            if target != host_device:
                moves.append(ep.to_device)

        def move(x, _moves=tuple(moves)):
            for m in _moves:
                x = m(x)
            return (x,)

        steps.append(Step(move, (slot(name),), (slot(copy_name),), (), "Copy", "copy",
                          f"copy {name} from {source} to {target}"))
        device_of[copy_name] = target
    return copy_name


def _assign_lifetimes(steps: list[Step], keep: set[int], inputs: set[int] = frozenset()) -> None:
    """Free each value after its last reader. A kernel with an ``inplace`` form may reuse
    the buffer of an input read once by its last reader (never a graph input, a constant or
    a fetch); the executor still checks at run time that nothing else holds that array."""
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
        if getattr(step.fn, "inplace", None) is not None:
            dying = set(step.free_slots) - inputs
            step.donors = tuple(pos for pos, s in enumerate(step.in_slots)
                                if s in dying and step.in_slots.count(s) == 1)
