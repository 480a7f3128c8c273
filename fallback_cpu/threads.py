"""intra_op_num_threads for the NumPy provider: the size of numpy's BLAS thread pool.

The NumPy kernels are single-threaded except inside BLAS (MatMul, Gemm, Conv), so the BLAS
pool is where a session's intra-op threads go. threadpoolctl finds the BLAS libraries once
(scanning the loaded libraries is the expensive part); a run then only reads and, when it
differs, sets the pool size (a few microseconds). The pool is process-wide: sessions asking
for different sizes from concurrent threads see each other's setting.
"""
from __future__ import annotations

import contextlib
import threading

_lock = threading.Lock()
_libs: list | None = None


def blas_libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded now (empty without it)."""
    global _libs
    if _libs is None:
        with _lock:
            if _libs is None:
                try:
                    from threadpoolctl import ThreadpoolController
                except ImportError:
                    _libs = []
                else:
                    _libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _libs


@contextlib.contextmanager
def blas_threads(n: int):
    """Run the block with numpy's BLAS on ``n`` threads; ``n <= 0`` leaves the pool alone."""
    libs = blas_libraries() if n > 0 else ()
    before = [lib.get_num_threads() for lib in libs]
    for lib, b in zip(libs, before):
        if b != n:
            lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib, b in zip(libs, before):
            if b != n:
                lib.set_num_threads(b)
