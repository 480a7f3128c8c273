"""Chrome-trace profiling: one complete ("ph": "X") event per node run."""
from __future__ import annotations

import datetime
import json
import os
import threading
import time


class Profiler:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.start_ns = time.monotonic_ns()
        self._events: list[dict] = []
        self._lock = threading.Lock()
        self.pid = os.getpid()

    def record(self, name: str, cat: str, start_ns: int, end_ns: int, args: dict) -> None:
        event = {"cat": cat, "pid": self.pid, "tid": threading.get_ident() % 1_000_000,
                 "dur": (end_ns - start_ns) // 1000, "ts": (start_ns - self.start_ns) // 1000,
                 "ph": "X", "name": name, "args": args}
        with self._lock:
            self._events.append(event)

    def write(self) -> str:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        path = f"{self.prefix}_{stamp}_{time.monotonic_ns() % 1_000_000}.json"
        with self._lock:
            events = list(self._events)
            self._events.clear()
        with open(path, "w") as f:
            json.dump(events, f)
        return path
