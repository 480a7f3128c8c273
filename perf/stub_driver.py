"""The stub CUDA driver under Triton's real launcher (perf/stub_cuda/libcuda_stub.c), for
benchmarks of the GPU launch path on a machine without a GPU (perf/host_overhead.py): build
and load it, make Triton's driver answer device queries with constants, make tritort's Triton
provider build for cuda:0 while allocating torch CPU tensors, and check the batch launcher's
packed launches against Triton's own launcher on it.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

STUB_SOURCE = Path(__file__).resolve().parent / "stub_cuda" / "libcuda_stub.c"
# what the stub says it is (perf/stub_cuda/libcuda_stub.c): an H100 SXM5
STUB_DEVICE_NAME = "NVIDIA H100 80GB HBM3"
STUB_CAPABILITY = (9, 0)
STUB_SHARED_MEMORY = 232448


# -- the stub driver ------------------------------------------------------------------------
def c_compiler() -> str | None:
    """The compiler Triton would use too (it builds its driver module the same way)."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or \
        shutil.which("clang")


def build_stub_driver() -> Path:
    """libcuda.so.1 built from the stub's source, in a temporary folder named by the hash of
    what goes into it (reruns reuse it; Triton's own module cache keys on that folder)."""
    import triton
    import triton.backends.nvidia as nvidia

    compiler = c_compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc or clang; or set CC)")
    include = Path(nvidia.__file__).resolve().parent / "include"
    digest = hashlib.sha256()
    for part in (STUB_SOURCE.read_bytes(), compiler.encode(), str(include).encode(),
                 triton.__version__.encode()):
        digest.update(part)
        digest.update(b"\0")
    folder = Path(tempfile.gettempdir()) / f"tritort-stub-cuda-{digest.hexdigest()[:16]}"
    library = folder / "libcuda.so.1"
    if library.is_file():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".build-{os.getpid()}.so"
    # the soname lets the already loaded stub satisfy Triton's module, linked against it
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", f"-I{include}",
                    "-Wl,-soname,libcuda.so.1", "-o", str(partial), str(STUB_SOURCE)],
                   check=True, capture_output=True, text=True)
    os.replace(partial, library)  # atomic: concurrent builds leave one complete file
    return library


def install_stub_driver() -> ctypes.CDLL:
    """Load the stub as the process's libcuda.so.1 and make Triton's active driver a CUDA
    driver over it with constant device queries; returns the stub (for its counters)."""
    library = build_stub_driver()
    os.environ["TRITON_LIBCUDA_PATH"] = str(library.parent)  # where Triton links and looks
    # loaded first and globally, the stub is what Triton's dlopen("libcuda.so.1") and its
    # driver module's NEEDED entry resolve to (no LD_LIBRARY_PATH needed)
    stub = ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    for counter in ("tritort_stub_launch_count", "tritort_stub_pointer_query_count"):
        getattr(stub, counter).restype = ctypes.c_ulonglong

    import triton
    from triton.backends.nvidia.driver import CudaDriver

    class StubCudaDriver(CudaDriver):
        """Triton's CUDA driver (its C module built against the stub) with the device
        queries torch.cuda would answer given as constants: one H100, stream 0."""

        def __init__(self) -> None:
            super().__init__()
            self.get_current_device = lambda: 0
            self.set_current_device = lambda device: None
            self.get_current_stream = lambda device: 0
            self.get_device_capability = lambda device: STUB_CAPABILITY

        def get_active_torch_device(self):
            import torch

            return torch.device("cpu")  # where this process's "device" tensors live

    triton.runtime.driver.set_active(StubCudaDriver())
    return stub


def use_gpu_path_on_cpu_tensors() -> None:
    """Make tritort's Triton provider build for cuda:0 (GPU sources, configs and cache key,
    the H100's tuning table) while allocating its tensors with torch on the CPU."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: this benchmark runs the compiled path")
    import torch

    from tritort.codegen import tuning_space
    from tritort.providers.triton import TritonExecutionProvider

    # what torch.cuda.get_device_name would say; the shared memory comes from the driver
    tuning_space._devices[("cuda", 0)] = tuning_space.DeviceInfo(
        STUB_DEVICE_NAME, False, STUB_SHARED_MEMORY)
    original_init = TritonExecutionProvider.__init__

    def init_on_cpu_tensors(self, options=None) -> None:
        original_init(self, options)
        self.torch_device = torch.device("cpu")
        self._device = dataclasses.replace(self._device, torch_device=self.torch_device)

    TritonExecutionProvider.unavailable_reason = classmethod(lambda cls: None)
    TritonExecutionProvider.__init__ = init_on_cpu_tensors


def check_batched_launches(sess, stub: ctypes.CDLL) -> dict:
    """Each replayed launch that tritort's batch launcher packs reaches the driver as Triton's
    own launcher sends it: the same grid, block, shared memory, attribute count and bytes of
    every parameter. Each is launched both ways on the stub, which keeps the last launch."""
    from tritort.codegen import batch_launch

    rt = batch_launch.runtime()
    bound = sess._bound_plans.bound() if getattr(sess, "_bound_plans", None) else []
    launches = [p for b in bound for p in b.launches]
    packable = [p for p in launches if rt is not None and batch_launch.batchable(p) is None]
    config = ctypes.POINTER(ctypes.c_uint * 8)
    params = ctypes.POINTER(ctypes.c_ulonglong * 64)
    stub.tritort_stub_last_config.restype = config
    stub.tritort_stub_last_params.restype = params
    mismatched = []

    def last(sizes: list[int]) -> tuple:
        words = stub.tritort_stub_last_params().contents
        return (tuple(stub.tritort_stub_last_config().contents),
                tuple(w & ((1 << 8 * size) - 1) for w, size in zip(words, sizes)))

    for p in packable:
        sizes = batch_launch.parameter_bytes(p) + [8, 8]  # + global and profile scratch
        stub.tritort_stub_record_params(len(sizes))
        p.go(0, p.values)
        triton_sent = last(sizes)
        batch_launch.LaunchBatch([p], rt).go(0)
        if last(sizes) != triton_sent:
            mismatched.append(p.kernel.name)
    stub.tritort_stub_record_params(0)
    return {"launches_checked": len(packable), "launches_not_packed": len(launches) - len(packable),
            "mismatched": mismatched}
