"""Every kernel launch goes through :func:`launch_kernel`, so a run's launches can be recorded
once and replayed: a bound plan walks the recorded launches instead of the launchers (no
shape math, no config lookups, no allocation, no argument binding per launch).

Recording is scoped to a context (a contextvar, so concurrent runs on other threads are not
recorded into it); outside one, :func:`launch_kernel` is just ``fn[grid](*args, **meta)``.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
from dataclasses import dataclass
from typing import Any, Iterator

_recording: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "tritort_recorded_launches", default=None)
# set while a kernel runs: what the interpreter does to tensors is the kernel's own work
_in_kernel: contextvars.ContextVar[bool] = contextvars.ContextVar("tritort_in_kernel",
                                                                  default=False)


@dataclass
class Launch:
    """One recorded launch: the jitted function, its grid, arguments and launch options, and
    the compiled kernel Triton returned (None in the interpreter)."""

    fn: Any
    grid: tuple
    args: tuple
    meta: dict
    kernel: Any


def launch_kernel(fn: Any, grid: tuple, *args: Any, **meta: Any) -> Any:
    launches = _recording.get()
    if launches is None:
        return fn[grid](*args, **meta)
    token = _in_kernel.set(True)
    try:
        kernel = fn[grid](*args, **meta)
    finally:
        _in_kernel.reset(token)
    launches.append(Launch(fn, tuple(grid), args, meta, kernel))
    return kernel


def in_kernel() -> bool:
    """Is a recorded kernel launch under way on this thread?"""
    return _in_kernel.get()


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """The launches made in this context (this thread's), in order."""
    launches: list[Launch] = []
    token = _recording.set(launches)
    try:
        yield launches
    finally:
        _recording.reset(token)


class Prepared:
    """A recorded launch ready to go again: ``call(stream, values)`` gives the function and
    the arguments that launch it.

    :attr:`arguments` are its positional arguments, bound once, tensors included;
    :attr:`values` what the launch passes: on a GPU the compiled kernel's launcher is called
    as Triton's ``JITFunction.run`` calls it (argument binding, done once) with each tensor
    as its address, which the launcher takes without asking the driver about it; in the
    interpreter, or for a kernel Triton did not hand back, the jitted function is called as
    the launcher did. A replay may swap the tensor at a position for another of the same
    shape and strides (:meth:`passed`)."""

    def __init__(self, recorded: Launch) -> None:
        kernel = recorded.kernel
        self.compiled = kernel is not None and hasattr(kernel, "__getitem__") and \
            hasattr(kernel, "run")
        if not self.compiled:
            self.arguments = self.values = tuple(recorded.args)
            self._fn, self._grid, self._meta = recorded.fn, recorded.grid, recorded.meta
            return
        signature = inspect.signature(recorded.fn.fn)
        bound = signature.bind(*recorded.args, **{k: v for k, v in recorded.meta.items()
                                                  if k in signature.parameters})
        bound.apply_defaults()
        self.arguments = tuple(bound.arguments.values())  # keeps the tensors alive
        self.values = tuple(self.passed(v) for v in self.arguments)
        grid = tuple(recorded.grid) + (1,) * (3 - len(recorded.grid))
        self.kernel, self.grid = kernel, grid[:3]
        self._runner = kernel[grid]  # loads the module; with launch hooks, the fallback
        self._launch = kernel.run  # the compiled launcher itself
        self._head = (*grid[:3],)
        self._tail = (kernel.function, kernel.packed_metadata, None, None, None)

    def rebind(self, moved: Any) -> None:
        """Each argument replaced by ``moved(argument)`` (a view of the same shape and strides
        elsewhere: the plan's memory arena)."""
        self.arguments = tuple(moved(a) for a in self.arguments)
        self.values = tuple(self.passed(a) for a in self.arguments)

    def passed(self, value: Any) -> Any:
        """``value`` as this launch passes it (a tensor's address on a GPU)."""
        if self.compiled and hasattr(value, "data_ptr") and hasattr(value, "untyped_storage"):
            return value.data_ptr()
        return value

    def call(self, stream: Any, values: tuple) -> tuple[Any, tuple]:
        """(function, arguments): calling the one with the other launches the kernel."""
        if not self.compiled:
            return self._interpret, (values,)
        if hooks_set():
            return self._hooked, (stream, values)
        return self._launch, (*self._head, stream, *self._tail, *values)

    def go(self, stream: Any, values: tuple) -> None:
        function, arguments = self.call(stream, values)
        function(*arguments)

    def _hooked(self, stream: Any, values: tuple) -> None:
        self._runner(*values, stream=stream)

    def _interpret(self, values: tuple) -> None:
        token = _in_kernel.set(True)  # the interpreter's tensor work is the kernel's
        try:
            self._fn[self._grid](*values, **self._meta)
        finally:
            _in_kernel.reset(token)


def hooks_set() -> bool:
    """Are Triton's launch hooks (a profiler's) set? They need the full launch path."""
    from triton import knobs

    return _hook_set(knobs.runtime.launch_enter_hook) or _hook_set(knobs.runtime.launch_exit_hook)


def _hook_set(hook: Any) -> bool:
    # Triton 3.9 keeps hooks in a chain that is never None; empty, it calls nothing
    calls = getattr(hook, "calls", None)
    return hook is not None and (calls is None or bool(calls))


def current_stream() -> Any:
    """The stream launches go to now, as Triton's launcher takes it (None in the interpreter)."""
    from triton.runtime import driver

    active = driver.active
    return active.get_current_stream(active.get_current_device())
