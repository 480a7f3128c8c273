"""DLPack and device helpers: moving tensors between numpy, torch and raw pointers, no copies.

numpy holds CPU values (ml_dtypes for bfloat16/float8, which numpy's DLPack export refuses:
those travel through a torch view of the same memory). torch holds device values (and the
Triton interpreter's CPU values). Raw pointers become tensors through a DLPack capsule built
here, so CPU and CUDA pointers take the same path. torch is imported only when a value needs
it: a numpy-only program never loads it.

Stream contract (CUDA): a run works on torch's current stream of the session's device, so it
is ordered after whatever the caller queued there (no device-wide sync). With the provider
option ``user_compute_stream`` the run waits on an event recorded on the caller's current
stream, runs on the given stream, and the caller's stream then waits on an event recorded at
the end, so outputs are ready on the caller's current stream when the call returns.
"""
from __future__ import annotations

import ctypes
import sys
import warnings
from typing import Any, Sequence

import numpy as np

from . import dtypes
from .errors import EPFail, InvalidArgument

# DLPack device types (dlpack.h: DLDeviceType)
KDL_CPU, KDL_CUDA, KDL_CUDA_HOST, KDL_CUDA_MANAGED = 1, 2, 3, 13

_DEVICE_NAMES = ("cpu", "cuda")


# -- recognizing values --------------------------------------------------------------------
def torch_module():
    """torch if something already imported it (a torch value can exist only then), else None."""
    return sys.modules.get("torch")


def is_torch(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def is_capsule(value: Any) -> bool:
    return type(value).__name__ == "PyCapsule"


def is_dlpack_producer(value: Any) -> bool:
    return hasattr(value, "__dlpack__") or is_capsule(value)


def _import_torch(why: str):
    try:
        import torch
    except ImportError:
        raise InvalidArgument(f"{why} needs torch (pip install 'tritort[gpu]')") from None
    return torch


# -- devices -------------------------------------------------------------------------------
def parse_device(device_type: Any, device_id: Any = 0) -> tuple[str, int]:
    """('cpu', 0) or ('cuda', n) from ORT's device_type/device_id, checked to exist."""
    name = str(device_type).lower()
    if ":" in name:  # 'cuda:1' as torch spells it
        name, _, index = name.partition(":")
        device_id = index
    if name not in _DEVICE_NAMES:
        raise InvalidArgument(f"unknown device_type '{device_type}'; expected one of "
                              f"{_DEVICE_NAMES}")
    try:
        index = int(device_id)
    except (TypeError, ValueError):
        raise InvalidArgument(f"device_id must be an int, got {device_id!r}") from None
    if index < 0:
        raise InvalidArgument(f"device_id must be >= 0, got {index}")
    if name == "cpu":
        return "cpu", 0
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is None or not torch.cuda.is_available():
        raise EPFail(f"device 'cuda:{index}' is not available: no CUDA device is visible to "
                     "torch (tritort places CUDA values through torch)")
    if index >= torch.cuda.device_count():
        raise EPFail(f"device 'cuda:{index}' does not exist; torch sees "
                     f"{torch.cuda.device_count()} CUDA device(s)")
    return "cuda", index


def device_of(value: Any) -> tuple[str, int]:
    """Where a numpy array or torch tensor lives, as ('cpu', 0) or ('cuda', n)."""
    if is_torch(value):
        d = value.device
        return (d.type, d.index or 0) if d.type != "cpu" else ("cpu", 0)
    return "cpu", 0


def device_text(device: tuple[str, int]) -> str:
    return "cpu" if device[0] == "cpu" else f"{device[0]}:{device[1]}"


# -- numpy <-> torch -------------------------------------------------------------------------
def _raw_torch(torch, itemsize: int):
    return {1: torch.uint8, 2: torch.int16}[itemsize]


def torch_to_numpy(t) -> np.ndarray:
    """A numpy array of a torch tensor: a view for CPU tensors, a host copy for device ones.

    bfloat16/float8 come back as ml_dtypes arrays over the same bytes.
    """
    if t.requires_grad:
        t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    try:
        dt = dtypes.from_torch(t.dtype)
    except dtypes.UnknownDType as e:
        raise InvalidArgument(str(e)) from None
    if dt.onnx in dtypes.LOW_PRECISION_FLOATS:
        import torch

        return t.view(_raw_torch(torch, dt.itemsize)).numpy().view(dt.numpy)
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    return t.numpy()


def numpy_to_torch(arr: np.ndarray):
    """A torch CPU tensor over the same memory (a copy only for negative strides)."""
    import torch

    arr = np.asarray(arr)
    if any(s < 0 for s in arr.strides):
        arr = arr.copy()
    try:
        dt = dtypes.from_numpy(arr.dtype)
    except dtypes.UnknownDType as e:
        raise InvalidArgument(str(e)) from None
    if dt.torch is None or dt.numpy == np.object_:
        raise InvalidArgument(f"element type {dt.name} has no torch dtype")
    with warnings.catch_warnings():
        # read-only arrays (initializers) are only ever read through these views
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        if dt.onnx in dtypes.LOW_PRECISION_FLOATS:
            raw = arr.view(np.int16 if dt.itemsize == 2 else np.uint8)
            return torch.from_numpy(raw).view(getattr(torch, dt.torch))
        return torch.from_numpy(arr)


def to_host(value: Any) -> Any:
    """Idempotent move to host memory: numpy passes, torch tensors become numpy."""
    if isinstance(value, np.ndarray) or value is None:
        return value
    if is_torch(value):
        return torch_to_numpy(value)
    if isinstance(value, list):
        return [to_host(v) for v in value]
    return value


def as_tensor(obj: Any) -> Any:
    """Any DLPack producer or capsule, zero-copy: a torch tensor, or numpy without torch."""
    if isinstance(obj, np.ndarray) or is_torch(obj):
        return obj
    try:
        import torch
    except ImportError:
        torch = None
    try:
        if torch is not None:
            return torch.from_dlpack(obj)
        return np.from_dlpack(obj)
    except (BufferError, RuntimeError, TypeError, ValueError) as e:
        raise InvalidArgument(f"cannot import {type(obj).__name__} through DLPack: "
                              f"{type(e).__name__}: {e}") from None


def export(value: Any, kwargs: dict) -> Any:
    """``__dlpack__`` for a numpy array or torch tensor (kwargs: the protocol's, non-None)."""
    if is_torch(value):
        return value.__dlpack__(**kwargs)
    dt = dtypes.from_numpy(value.dtype)
    if dt.dlpack is None:
        raise BufferError(f"tensor({dt.name}) has no DLPack type code; read it with numpy()")
    stream = kwargs.pop("stream", None)
    if stream not in (None, -1):
        raise BufferError("a CPU value takes no stream")
    if dt.onnx in dtypes.LOW_PRECISION_FLOATS:  # numpy cannot export ml_dtypes: use torch
        return numpy_to_torch(value).__dlpack__(**kwargs)
    try:
        return value.__dlpack__(**kwargs)
    except BufferError:
        if value.flags.writeable:
            raise
        # an unversioned capsule cannot say read-only: export through a torch view
        return numpy_to_torch(value).__dlpack__(**kwargs)


# -- raw pointers --------------------------------------------------------------------------
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                             ("deleter", _DELETER)]

_LIVE: dict[int, tuple] = {}  # managed-tensor address -> the ctypes objects it points into
_CAPSULE_NAME = b"dltensor"
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


@_DELETER
def _release(address):  # the consumer is done with the tensor: drop the keep-alives
    _LIVE.pop(address, None)


def _capsule(ptr: int, dt: dtypes.DType, shape: tuple[int, ...], device: tuple[str, int]):
    """A 'dltensor' capsule over ``ptr`` (C-contiguous); the caller keeps the memory alive."""
    if dt.dlpack is None:
        raise InvalidArgument(f"element type {dt.name} has no DLPack type code")
    ndim = len(shape)
    shape_arr = (ctypes.c_int64 * max(ndim, 1))(*shape)
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    strides_arr = (ctypes.c_int64 * max(ndim, 1))(*reversed(strides))
    managed = _DLManagedTensor()
    t = managed.dl_tensor
    t.data = ctypes.c_void_p(int(ptr))
    t.device = _DLDevice(KDL_CUDA if device[0] == "cuda" else KDL_CPU, device[1])
    t.ndim = ndim
    t.dtype = _DLDataType(dt.dlpack[0], dt.dlpack[1], 1)
    t.shape = ctypes.cast(shape_arr, ctypes.POINTER(ctypes.c_int64))
    t.strides = ctypes.cast(strides_arr, ctypes.POINTER(ctypes.c_int64))
    t.byte_offset = 0
    managed.manager_ctx = None
    managed.deleter = _release
    address = ctypes.addressof(managed)
    _LIVE[address] = (managed, shape_arr, strides_arr)
    return address, _capsule_new(address, _CAPSULE_NAME, None)


def tensor_from_pointer(ptr: int, element_type: Any, shape: Sequence[int],
                        device: tuple[str, int]):
    """A torch tensor viewing ``ptr`` on ``device`` (no copy), through a DLPack capsule."""
    torch = _import_torch("a tensor over a raw pointer")
    dt = dtypes.from_any(element_type)
    shape = tuple(int(d) for d in shape)
    address, capsule = _capsule(ptr, dt, shape, device)
    try:
        return torch.from_dlpack(capsule)
    except Exception:
        _LIVE.pop(address, None)
        raise


def from_pointer(ptr: Any, element_type: Any, shape: Any, device: tuple[str, int]) -> Any:
    """What ``bind_input``/``bind_output`` with a buffer view: numpy on the CPU, torch on CUDA."""
    try:
        dt = dtypes.from_any(element_type)
    except (dtypes.UnknownDType, TypeError) as e:
        raise InvalidArgument(f"unknown element_type {element_type!r}: {e}") from None
    try:
        shape = tuple(int(d) for d in shape)
        ptr = int(ptr)
    except (TypeError, ValueError):
        raise InvalidArgument(f"shape must be a sequence of ints and buffer_ptr an int, got "
                              f"shape={shape!r}, buffer_ptr={ptr!r}") from None
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"shape {list(shape)} has a negative dimension")
    count = int(np.prod(shape)) if shape else 1
    if ptr == 0 and count:
        raise InvalidArgument("buffer_ptr is NULL")
    if dt.numpy == np.object_:
        raise InvalidArgument("string tensors cannot be bound by pointer")
    if device[0] == "cpu":
        if count == 0:
            return np.empty(shape, dtype=dt.numpy)
        buf = (ctypes.c_char * (count * dt.itemsize)).from_address(ptr)
        return np.frombuffer(buf, dtype=dt.numpy, count=count).reshape(shape)
    return tensor_from_pointer(ptr, dt, shape, device)


# -- aliasing -----------------------------------------------------------------------------
def span(value: Any) -> tuple[str, int, int] | None:
    """(device, first byte, one past the last byte) of the memory a value may reach."""
    if isinstance(value, np.ndarray):
        if value.dtype == np.object_:
            return None
        lo, hi = _byte_bounds(value)
        return "cpu", lo, hi
    if is_torch(value):
        storage = value.untyped_storage()
        lo = storage.data_ptr()
        return str(value.device), lo, lo + storage.nbytes()
    return None


try:
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:  # numpy < 2
    _byte_bounds = np.byte_bounds


def overlaps(a: tuple | None, b: tuple | None) -> bool:
    return (a is not None and b is not None and a[0] == b[0] and a[1] < b[2] and b[1] < a[2]
            and a[1] != a[2] and b[1] != b[2])


# -- CUDA streams --------------------------------------------------------------------------
class StreamGuard:
    """Runs a session's work on a CUDA device, ordered against the caller's current stream.

    Without a user stream the work is queued on torch's current stream of the device: it
    follows the producer's writes on that stream and the outputs are ready on it. With one,
    events order the user stream after the caller's stream and the caller's stream after
    the work (no host wait, no device-wide sync).
    """

    def __init__(self, device, user_stream: int | None = None) -> None:
        self.device = device
        self.user_stream = user_stream

    def __enter__(self) -> "StreamGuard":
        import torch

        self._device_ctx = torch.cuda.device(self.device)
        self._device_ctx.__enter__()
        self._stream_ctx = None
        try:
            self.caller = torch.cuda.current_stream(self.device)
            if self.user_stream is not None:
                stream = torch.cuda.ExternalStream(self.user_stream, device=self.device)
                if stream.cuda_stream != self.caller.cuda_stream:
                    ready = torch.cuda.Event()
                    ready.record(self.caller)  # after the producer's writes ...
                    stream.wait_event(ready)  # ... the work on the user stream starts
                    self.stream = stream
                    self._stream_ctx = torch.cuda.stream(stream)
                    self._stream_ctx.__enter__()
        except BaseException:
            self._device_ctx.__exit__(None, None, None)
            raise
        return self

    def hand_over(self, values: Sequence[Any]) -> None:
        """Tell the allocator the outputs are used on the caller's stream too."""
        if self._stream_ctx is None:
            return
        for v in values:
            if is_torch(v) and v.device.type == "cuda":
                v.record_stream(self.caller)

    def __exit__(self, *exc) -> None:
        import torch

        try:
            if self._stream_ctx is not None:
                done = torch.cuda.Event()
                done.record(self.stream)
                self._stream_ctx.__exit__(*exc)
                self.caller.wait_event(done)  # outputs are ready on the caller's stream
        finally:
            self._device_ctx.__exit__(*exc)


def synchronize(device) -> None:
    """Host waits for the work queued on ``device``'s current stream (not the whole device)."""
    import torch

    torch.cuda.current_stream(device).synchronize()
