"""Keep NumPy's large temporaries in the process heap between kernels (glibc malloc).

Every kernel result and temporary of the NumPy provider is a fresh numpy array. With glibc's
defaults a block over the mmap threshold is mapped and unmapped per allocation, and the heap
top is returned to the kernel once more than twice that threshold is free there; either way
the next allocation page-faults on every 4 KiB page it touches. On this VM a fault costs about
1.7 us: a BERT-base run took 26,880 faults (45 ms) and one float32 erf over 393K elements went
from 0.6 to 3.1 ms. Raising both thresholds makes freed blocks come back from the heap, as an
arena allocator would (onnxruntime keeps its arena the same way).

Skipped where the user tuned malloc (MALLOC_*_ or GLIBC_TUNABLES in the environment), where
TRITORT_MALLOC_TUNING=0, and where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit; bigger blocks stay mmapped
TRIM_THRESHOLD = 256 << 20  # free heap kept before any is given back

_lock = threading.Lock()
_state: bool | None = None


def _user_tuned() -> bool:
    return ("GLIBC_TUNABLES" in os.environ or os.environ.get("TRITORT_MALLOC_TUNING") == "0"
            or any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ))


def keep_freed_memory() -> bool:
    """Once per process: raise glibc's mmap and trim thresholds. True when they are set."""
    global _state
    with _lock:
        if _state is None:
            _state = False
            if not _user_tuned():
                try:
                    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                    mallopt = libc.mallopt
                except (OSError, AttributeError):
                    return _state
                mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
                _state = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                              and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        return _state
