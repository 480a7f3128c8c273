"""Many recorded launches in one call: a bound plan's launches without Triton's per-launch
argument parsing.

Triton's compiled launcher parses every argument of every launch from Python objects (about
2–3 µs for the 20–30 arguments of a fused kernel). A bound plan's arguments do not change
between runs, except the addresses of its inputs, so they are packed once into parameter
buffers here, and one call into a small C loop hands each launch to ``cuLaunchKernelEx`` with
the same launch configuration Triton's launcher would build. A run then costs one foreign
call per batch plus the driver's own launch work, and an input's new address is one write
into its parameter slot.

The loop is C built with the system compiler (which Triton's own launchers already need),
once per machine, into the kernel cache folder; it reaches the driver through function
pointers taken from the process's ``libcuda.so.1``. Launches this path cannot pack (global
or profile scratch, tensor descriptors, tuple arguments) are left to Triton's launcher:
:func:`batchable` says why.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tritort.errors import Fail

from .cache import cache_dir

_SOURCE = r"""
#include <stddef.h>
#include <string.h>
#include "cuda.h"

/* newer than some cuda.h headers: the values Triton's launcher uses */
#define SHARED_MEMORY_MODE_ATTRIBUTE 18
#define ALLOW_OVERSIZED_SHARED_MEMORY 3

typedef CUresult (*launch_ex_t)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*ctx_get_t)(CUcontext *);
typedef CUresult (*ctx_set_t)(CUcontext);

typedef struct {
  CUlaunchConfig config;
  CUlaunchAttribute attrs[4];
  CUfunction function;
  void **params;
  int empty; /* a grid with no programs launches nothing */
} tritort_launch;

size_t tritort_launch_size(void) { return sizeof(tritort_launch); }

/* The configuration Triton's launcher gives the same launch. */
void tritort_fill(tritort_launch *r, unsigned gx, unsigned gy, unsigned gz, int num_warps,
                  int num_ctas, int shared, int cooperative, int pdl, CUfunction function,
                  void **params) {
  int n = 0;
  r->empty = (unsigned long long)gx * gy * gz == 0;
  r->config.gridDimX = gx * num_ctas;
  r->config.gridDimY = gy;
  r->config.gridDimZ = gz;
  r->config.blockDimX = 32 * num_warps;
  r->config.blockDimY = 1;
  r->config.blockDimZ = 1;
  r->config.sharedMemBytes = shared;
  r->config.hStream = NULL;
  memset(r->attrs, 0, sizeof r->attrs);
  if (shared > 228 * 1024) { /* an int attribute: its value's first int */
    r->attrs[n].id = (CUlaunchAttributeID)SHARED_MEMORY_MODE_ATTRIBUTE;
    r->attrs[n++].value.cooperative = ALLOW_OVERSIZED_SHARED_MEMORY;
  }
  if (pdl) {
    r->attrs[n].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    r->attrs[n++].value.programmaticStreamSerializationAllowed = 1;
  }
  if (cooperative) {
    r->attrs[n].id = CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
    r->attrs[n++].value.cooperative = 1;
  }
  if (num_ctas != 1) {
    r->attrs[n].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    r->attrs[n].value.clusterDim.x = num_ctas;
    r->attrs[n].value.clusterDim.y = 1;
    r->attrs[n++].value.clusterDim.z = 1;
    r->attrs[n].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE;
    r->attrs[n++].value.clusterSchedulingPolicyPreference = CU_CLUSTER_SCHEDULING_POLICY_SPREAD;
  }
  r->config.attrs = r->attrs;
  r->config.numAttrs = n;
  r->function = function;
  r->params = params;
}

/* Launches records[0..count) in order on stream, in the given context if the thread has
   none. 0 on success, else 1 + the failed launch's index (-1: the context) with the
   driver's code in *code. */
int tritort_launch_all(launch_ex_t launch, ctx_get_t get, ctx_set_t set, CUcontext context,
                       tritort_launch *records, int count, CUstream stream, int *code) {
  CUcontext current = NULL;
  CUresult status = get(&current);
  if (status == CUDA_SUCCESS && current == NULL)
    status = set(context);
  if (status != CUDA_SUCCESS) {
    *code = (int)status;
    return -1;
  }
  for (int i = 0; i < count; ++i) {
    tritort_launch *r = &records[i];
    if (r->empty)
      continue;
    r->config.hStream = stream;
    status = launch(&r->config, r->function, r->params, NULL);
    if (status != CUDA_SUCCESS) {
      *code = (int)status;
      return i + 1;
    }
  }
  return 0;
}
"""

# signature type -> (numpy dtype of the value as the kernel reads it), as Triton's extractors
_SCALARS = {
    "i1": np.int32, "i8": np.int8, "i16": np.int16, "i32": np.int32, "i64": np.int64,
    "u1": np.uint32, "u8": np.uint8, "u16": np.uint16, "u32": np.uint32, "u64": np.uint64,
    "fp16": np.float16, "fp32": np.float32, "f32": np.float32, "fp64": np.float64,
}
_SLOT = 8  # every parameter gets 8 aligned bytes; the driver copies the type's size

_lock = threading.Lock()
_runtime: "_Runtime | None | bool" = False  # False: not tried yet; None: unavailable


class _Runtime:
    """The compiled loop and the driver entry points it calls."""

    def __init__(self, library: ctypes.CDLL, driver: ctypes.CDLL) -> None:
        self.record_size = library.tritort_launch_size()
        self.fill = library.tritort_fill
        self.fill.restype = None
        self.fill.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 3 + [ctypes.c_int] * 5 + \
            [ctypes.c_void_p, ctypes.c_void_p]
        self.launch_all = library.tritort_launch_all
        self.launch_all.restype = ctypes.c_int
        self.launch_all.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int, ctypes.c_void_p,
                                                            ctypes.c_void_p]
        self.driver = driver
        self.entry_points = tuple(ctypes.c_void_p(ctypes.cast(getattr(driver, name),
                                                              ctypes.c_void_p).value)
                                  for name in ("cuLaunchKernelEx", "cuCtxGetCurrent",
                                               "cuCtxSetCurrent"))

    def current_context(self) -> ctypes.c_void_p:
        context = ctypes.c_void_p()
        self.driver.cuCtxGetCurrent(ctypes.byref(context))
        return context


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build() -> Path | None:
    """The loop's shared library, built once per machine and source."""
    import triton.backends.nvidia as nvidia

    include = Path(nvidia.__file__).parent / "include"
    compiler = _compiler()
    if compiler is None or not (include / "cuda.h").exists():
        return None
    key = hashlib.sha256((_SOURCE + str(include)).encode()).hexdigest()[:16]
    library = cache_dir() / "launch" / f"batch_launch_{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # built beside its final name, then renamed: concurrent builds leave one whole file
    partial = library.with_name(f".{library.name}.{os.getpid()}.partial")
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "batch_launch.c"
        source.write_text(_SOURCE)
        done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", f"-I{include}", "-o",
                               str(partial), str(source)], capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        return None
    os.replace(partial, library)
    return library


def runtime() -> _Runtime | None:
    """The loop, or None where it cannot be built or the driver cannot be reached (replays
    then call Triton's launchers one by one)."""
    global _runtime
    with _lock:
        if _runtime is False:
            _runtime = None
            if os.environ.get("TRITORT_BATCH_LAUNCH", "1") != "0":
                try:
                    library = _build()
                    if library is not None:
                        _runtime = _Runtime(ctypes.CDLL(str(library)),
                                            ctypes.CDLL("libcuda.so.1"))
                except (OSError, AttributeError):
                    _runtime = None
        return _runtime


def batchable(prepared: Any) -> str | None:
    """None if the launch can be packed, else why not."""
    if not getattr(prepared, "compiled", False):
        return "not a compiled launch"
    kernel, launcher = prepared.kernel, prepared.kernel.run
    if getattr(launcher, "gsan_enabled", False):
        return "sanitizer launches"
    for size in ("global_scratch_size", "profile_scratch_size"):
        if getattr(launcher, size, None) != 0:
            return f"kernel {kernel.name} needs {size.replace('_size', '')}"
    if getattr(launcher, "num_ctas", 1) == 16:
        return "16-CTA clusters need a per-kernel attribute"
    types = _signature(kernel)
    if types is None or len(types) != len(prepared.arguments):
        return f"kernel {kernel.name}'s signature is not flat"
    unknown = [t for t in types if t != "constexpr" and not t.startswith("*")
               and t not in _SCALARS and t != "bf16"]
    return f"kernel {kernel.name} takes {unknown[0]}" if unknown else None


def parameter_bytes(prepared: Any) -> list[int]:
    """The size of each parameter the kernel takes, in the order the driver gets them."""
    sizes = []
    for kind in _signature(prepared.kernel):
        if kind != "constexpr":
            sizes.append(8 if kind.startswith("*") else 2 if kind == "bf16"
                         else np.dtype(_SCALARS[kind]).itemsize)
    return sizes


def _signature(kernel: Any) -> list[str] | None:
    signature = getattr(getattr(kernel, "src", None), "signature", None)
    if not isinstance(signature, dict) or any(not isinstance(t, str)
                                              for t in signature.values()):
        return None
    return list(signature.values())


class LaunchBatch:
    """Prepared launches (each :func:`batchable`) packed to go in one call, in order.

    :meth:`set` replaces an argument's value (an input's new address) before :meth:`go`."""

    def __init__(self, launches: Sequence[Any], rt: _Runtime) -> None:
        self.names = [p.kernel.name for p in launches]
        self._rt = rt
        self._slot: list[dict[int, int]] = []  # per launch: argument position -> slot
        kinds: list[str] = []
        for prepared in launches:
            slots = {}
            for position, kind in enumerate(_signature(prepared.kernel)):
                if kind != "constexpr":
                    slots[position] = len(kinds)
                    kinds.append(kind)
            kinds.extend(("*scratch", "*scratch"))  # global and profile scratch: none
            self._slot.append(slots)
        self._kinds = kinds
        self._values = np.zeros(max(1, len(kinds)), dtype=np.uint64)
        base = self._values.ctypes.data
        self._pointers = np.array([base + _SLOT * i for i in range(len(kinds))] or [0],
                                  dtype=np.uint64)
        self._records = ctypes.create_string_buffer(rt.record_size * max(1, len(launches)))
        first = 0
        for index, prepared in enumerate(launches):
            for position, slot in self._slot[index].items():
                self._write(slot, prepared.values[position])
            grid = prepared.grid
            num_warps, num_ctas, shared = prepared.kernel.packed_metadata[:3]
            launcher = prepared.kernel.run
            rt.fill(ctypes.addressof(self._records) + index * rt.record_size, *grid,
                    num_warps, num_ctas, shared, int(bool(launcher.launch_cooperative_grid)),
                    int(bool(launcher.launch_pdl)), prepared.kernel.function,
                    self._pointers.ctypes.data + 8 * first)
            first += len(self._slot[index]) + 2
        self._count = len(launches)
        self._code = ctypes.c_int(0)
        self._context = rt.current_context()
        self._arguments = (*rt.entry_points, self._context, self._records, self._count)

    def _write(self, slot: int, value: Any) -> None:
        kind = self._kinds[slot]
        if kind.startswith("*"):
            self._values[slot] = 0 if value is None else int(value)
        elif kind == "bf16":  # Triton truncates to the upper half of the float32
            self._values[slot] = int(np.float32(value).view(np.uint32)) >> 16
        else:
            dtype = np.dtype(_SCALARS[kind])
            self._values.view(dtype)[slot * (_SLOT // dtype.itemsize)] = value

    def set(self, launch: int, position: int, value: Any) -> None:
        """Launch ``launch``'s argument ``position`` is ``value`` from now on."""
        self._write(self._slot[launch][position], value)

    def go(self, stream: Any) -> None:
        failed = self._rt.launch_all(*self._arguments, stream or None, ctypes.byref(self._code))
        if failed:
            what = "making the CUDA context current" if failed < 0 else \
                f"launching kernel {self.names[failed - 1]}"
            raise Fail(f"CUDA driver error {self._code.value} {what}")
