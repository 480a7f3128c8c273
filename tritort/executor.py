"""Execute stage: one loop over a plan's steps.

Control-flow bodies are small programs of their own: :func:`build_subgraph` compiles, plans
and wraps one into the runner its kernel calls on each iteration.
"""
from __future__ import annotations

import sys
import time
import traceback
from typing import Any, Sequence

import numpy as np
import onnx

from . import runstate
from .compiler import Program
from .errors import OrtError, node_error
from .graph import Graph, free_names
from .planner import Plan, Plans
from .profiling import Profiler
from .providers import CompileInfo, ExecutionProvider


def _solo_count(args: list, pos: int) -> int:
    return sys.getrefcount(args[pos])


def _base_count(view: np.ndarray) -> int:
    return sys.getrefcount(view.base)


def _calibrate() -> tuple[int, int]:
    """References that :func:`_spare`'s checks see on an array held only by an ``args`` list,
    and on the base of a view held only by that view (interpreters differ); -1 (never
    donate) where a second holder would go unnoticed."""
    args = [np.empty(2)]
    solo = _solo_count(args, 0)
    other = args[0]
    if _solo_count(args, 0) <= solo:
        solo = -1
    view = other[:1]
    del other
    args.clear()
    base = _base_count(view)
    holders = [view.base]
    if _base_count(view) <= base:
        base = -1
    holders.clear()
    return solo, base


_SOLO, _SOLO_BASE = _calibrate()


def _spare(args: list, donors: tuple[int, ...]) -> int:
    """The first donor position whose array nothing but ``args`` references and whose memory
    is writable and its own, or a view's whose owner nothing but that view references (no
    buffer shared with a caller, an initializer or another value); -1 if none."""
    for pos in donors:
        if _solo_count(args, pos) != _SOLO or type(args[pos]) is not np.ndarray:
            continue
        x = args[pos]
        if not x.flags.writeable:
            continue
        if x.flags.owndata:
            return pos
        if type(x.base) is np.ndarray and x.base.flags.owndata and \
                _base_count(x) == _SOLO_BASE:
            return pos
    return -1


def execute(plan: Plan, feeds: dict[str, Any], terminate=None,
            profiler: Profiler | None = None) -> list[Any]:
    """Run ``plan`` on ``feeds`` (name -> value); returns the fetched values in order.

    ``terminate`` is an object with ``is_set()``, checked between steps; for the duration of
    the run it is also the current run's flag (``runstate``), which the kernels that loop in
    Python check per iteration. A run without one (a control-flow body's, run by
    :class:`SubgraphRunner` from inside its node's kernel) takes the current run's flag, so a
    body stops as promptly as its outer graph. A step with donors drops its dying inputs from
    the slots before it runs; where one of them is then held by nothing else, its kernel's
    in-place form may write the result into that buffer.
    """
    if terminate is None:
        return _execute(plan, feeds, runstate.current(), profiler)
    token = runstate.enter(terminate)
    try:
        return _execute(plan, feeds, terminate, profiler)
    finally:
        runstate.leave(token)


def _execute(plan: Plan, feeds: dict[str, Any], terminate, profiler: Profiler | None,
             ) -> list[Any]:
    slots: list[Any] = [None] * plan.num_slots
    for s, value in plan.constant_slots:
        slots[s] = value
    input_slots = plan.input_slots
    for name, value in feeds.items():
        slots[input_slots[name]] = value
    value = results = None  # no stray reference may keep a value alive for _spare
    for step in plan.steps:
        if terminate is not None and terminate.is_set():
            raise runstate.terminated()
        args = [slots[s] if s >= 0 else None for s in step.in_slots]
        if profiler is not None:
            t0 = time.monotonic_ns()
        try:
            if step.donors:
                for pos in step.donors:
                    slots[step.in_slots[pos]] = None
                pos = _spare(args, step.donors)
                results = step.fn.inplace(pos, *args) if pos >= 0 else step.fn(*args)
            else:
                results = step.fn(*args)
        except OrtError as e:
            if terminate is not None and terminate.is_set():
                raise runstate.terminated() from e
            if step.runs_subgraphs:
                raise
            raise node_error(step.label, step.op_type, e) from e
        except Exception as e:  # any kernel failure becomes ORT's error naming the node
            if terminate is not None and terminate.is_set():
                raise runstate.terminated() from e
            if isinstance(e, MemoryError):
                raise _out_of_memory(step, e, slots, args) from None
            raise node_error(step.label, step.op_type, e) from e
        if profiler is not None:
            _record(profiler, step, t0, args, results)
        for s, value in zip(step.out_slots, results):
            if s >= 0:
                slots[s] = value
        value = results = None
        for s in step.free_slots:
            slots[s] = None
    return [slots[s] for s in plan.fetch_slots]


def _out_of_memory(step, e: MemoryError, slots: list, args: list) -> OrtError:
    """A kernel ran out of memory: the run releases its values and the kernel's frames
    before it builds the error, which needs memory too (else MemoryError escapes)."""
    slots.clear()
    args.clear()
    traceback.clear_frames(e.__traceback__)
    return node_error(step.label, step.op_type, e)


def _record(profiler: Profiler, step, t0: int, args, results) -> None:
    profiler.record(
        f"{step.label}_kernel_time", "Node", t0, time.monotonic_ns(),
        {"op_name": step.op_type, "provider": step.provider,
         "input_type_shape": [_shape(a) for a in args],
         "output_type_shape": [_shape(r) for r in results]})


def _shape(value: Any) -> Any:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return {str(getattr(value, "dtype", "")): list(shape)}
    return type(value).__name__


class SubgraphRunner:
    """A compiled control-flow body: ``run(feeds, outer) -> outputs``.

    A body runs inside its node's kernel, so within the outer run: it checks that run's
    terminate flag (``runstate``) between its steps, and its own Loops and Scans check it
    per iteration."""

    def __init__(self, graph: Graph, providers: Sequence[ExecutionProvider],
                 outer_names: Sequence[str], config: dict[str, str] | None = None) -> None:
        self.program = Program(graph, providers, config, build_subgraph)
        self.input_names = graph.input_names
        self.output_names = graph.output_names
        self.output_types = [o.type for o in graph.outputs]
        self.outer_names = list(outer_names)
        self.plan = Plans(self.program, self.outer_names).get(self.output_names)

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
