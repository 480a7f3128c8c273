"""Execute stage: one loop over a plan's steps."""
from __future__ import annotations

import time
from typing import Any

from .errors import Fail, OrtError, node_failure
from .planner import Plan
from .profiling import Profiler


def execute(plan: Plan, feeds: dict[str, Any], terminate=None,
            profiler: Profiler | None = None) -> list[Any]:
    """Run ``plan`` on ``feeds`` (name -> value); returns the fetched values in order.

    ``terminate`` is an object with ``is_set()``, checked between steps.
    """
    slots: list[Any] = [None] * plan.num_slots
    for s, value in plan.constant_slots:
        slots[s] = value
    input_slots = plan.input_slots
    for name, value in feeds.items():
        slots[input_slots[name]] = value
    for step in plan.steps:
        if terminate is not None and terminate.is_set():
            raise Fail("Exiting due to terminate flag being set to true.")
        args = [slots[s] if s >= 0 else None for s in step.in_slots]
        if profiler is not None:
            t0 = time.monotonic_ns()
        try:
            results = step.fn(*args)
        except OrtError as e:
            if step.runs_subgraphs:
                raise
            raise node_failure(step.label, step.op_type, e) from e
        except Exception as e:  # any kernel failure becomes ORT's error naming the node
            raise node_failure(step.label, step.op_type, e) from e
        if profiler is not None:
            _record(profiler, step, t0, args, results)
        for s, value in zip(step.out_slots, results):
            if s >= 0:
                slots[s] = value
        for s in step.free_slots:
            slots[s] = None
    return [slots[s] for s in plan.fetch_slots]


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
