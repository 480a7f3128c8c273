"""What a run carries down to its kernels: whether it has been asked to stop.

``RunOptions.terminate`` is an object with ``is_set()``. The executor makes it the current
run's flag for the duration of a run (a context variable: each thread, and so each of the
concurrent runs of one session, sees its own), so code far below the session can honour it
without being handed it: control-flow bodies run by ``SubgraphRunner``, and the kernels that
loop in Python (Loop and Scan trips, recurrences) call :func:`check` once per iteration.
"""
from __future__ import annotations

import contextvars
from typing import Any

from .errors import Fail

TERMINATED = "Exiting due to terminate flag being set to true."

_flag: contextvars.ContextVar[Any] = contextvars.ContextVar("tritort_terminate", default=None)


def current() -> Any:
    """The running run's terminate flag (an object with ``is_set()``), or None."""
    return _flag.get()


def enter(flag: Any) -> contextvars.Token:
    """Make ``flag`` the current run's flag; hand the token to :func:`leave` afterwards."""
    return _flag.set(flag)


def leave(token: contextvars.Token) -> None:
    _flag.reset(token)


def terminated() -> Fail:
    """The error a run stopped by its terminate flag raises (ORT's class and wording)."""
    return Fail(TERMINATED)


def check() -> None:
    """Raise :func:`terminated`'s error if the current run has been asked to stop."""
    flag = _flag.get()
    if flag is not None and flag.is_set():
        raise Fail(TERMINATED)
