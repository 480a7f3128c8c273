"""ONNX Runtime's device and allocator descriptions: ``OrtDevice``, ``OrtMemoryInfo``,
``OrtArenaCfg``, their enums, and the process-wide shared allocators that
``create_and_register_allocator`` registers and sessions use when their config entry
``session.use_env_allocators`` is ``"1"``.

tritort allocates host memory through numpy and device memory through torch's caching
allocator; both are already shared by every session of a process. A registered allocator is
therefore recorded (and reported by the sessions that use it) but its arena configuration
(``max_mem``, extend strategy, chunk sizes) is not applied.
"""
from __future__ import annotations

import enum
import threading
from typing import Any, Mapping, NamedTuple

from .errors import InvalidArgument


class OrtAllocatorType(enum.IntEnum):
    INVALID = -1
    ORT_DEVICE_ALLOCATOR = 0
    ORT_ARENA_ALLOCATOR = 1


class OrtMemType(enum.IntEnum):
    CPU_INPUT = -2
    CPU_OUTPUT = -1
    CPU = -1  # ORT's alias of CPU_OUTPUT
    DEFAULT = 0


class OrtMemoryInfoDeviceType(enum.IntEnum):
    CPU = 0
    GPU = 1
    FPGA = 2
    NPU = 3


class OrtDeviceMemoryType(enum.IntEnum):
    DEFAULT = 0
    HOST_ACCESSIBLE = 5


class OrtDeviceVendorId(enum.IntEnum):
    """Vendor ids as in ORT's ``OrtDevice::VendorIds``."""

    NONE = 0x0000
    AMD = 0x1002
    NVIDIA = 0x10DE
    ARM = 0x13B5
    MICROSOFT = 0x1414
    HUAWEI = 0x19E5
    QUALCOMM = 0x5143
    INTEL = 0x8086


# ORT's OrtDevice type codes, and the names OrtDevice.make takes
_CPU, _GPU, _FPGA, _NPU, _DML = 0, 1, 2, 3, 4
# (a DirectML device is a GPU of Microsoft's: onnxruntime reports type 1 for it)
_DEVICE_TYPES = {"cpu": _CPU, "cuda": _GPU, "gpu": _GPU, "webgpu": _GPU, "npu": _NPU,
                 "cann": _NPU, "dml": _GPU}
_ALIAS_VENDORS = {"cuda": OrtDeviceVendorId.NVIDIA, "dml": OrtDeviceVendorId.MICROSOFT,
                  "cann": OrtDeviceVendorId.HUAWEI, "webgpu": OrtDeviceVendorId.NONE}


class _Device(NamedTuple):
    """The value an ``OrtDevice`` wraps (ORT's C++ ``OrtDevice``)."""

    device_type: int
    mem_type: int
    vendor_id: int
    device_id: int


class OrtDevice:
    """A device (type, memory type, vendor, id), as onnxruntime's ``OrtDevice``.

    ``OrtDevice.make("cuda", 0)`` describes the first CUDA device (tritort's Triton provider
    runs there); ``OrtDevice.make("cpu", 0)`` host memory."""

    __slots__ = ("_ort_device",)

    def __init__(self, c_ort_device: Any) -> None:
        if isinstance(c_ort_device, OrtDevice):
            c_ort_device = c_ort_device._ort_device
        if not isinstance(c_ort_device, _Device):
            raise ValueError("`Provided object` needs to be an OrtDevice; create one with "
                             "OrtDevice.make(name, device_id)")
        self._ort_device = c_ort_device

    def _get_c_device(self) -> _Device:
        return self._ort_device

    @staticmethod
    def make(ort_device_name: str, device_id: int, vendor_id: int = -1) -> "OrtDevice":
        name = str(ort_device_name)
        if name not in _DEVICE_TYPES:
            raise InvalidArgument(f"Unsupported device type: {name} (known: "
                                  f"{sorted(_DEVICE_TYPES)})")
        if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
            raise InvalidArgument(f"OrtDevice.make: device_id must be an int >= 0, got "
                                  f"{device_id!r}")
        vendor = int(vendor_id)
        if vendor < 0:
            vendor = int(_ALIAS_VENDORS.get(name, OrtDeviceVendorId.NONE))
        return OrtDevice(_Device(_DEVICE_TYPES[name], 0, vendor, device_id))

    # ORT's C++ type codes (onnxruntime.capi...OrtDevice.cpu() and so on)
    @staticmethod
    def cpu() -> int:
        return _CPU

    @staticmethod
    def gpu() -> int:
        return _GPU

    @staticmethod
    def cuda() -> int:
        return _GPU

    @staticmethod
    def npu() -> int:
        return _NPU

    @staticmethod
    def fpga() -> int:
        return _FPGA

    @staticmethod
    def dml() -> int:
        return _DML

    @staticmethod
    def default_memory() -> int:
        return 0

    def device_id(self) -> int:
        return self._ort_device.device_id

    def device_type(self) -> int:
        return self._ort_device.device_type

    def device_vendor_id(self) -> int:
        return self._ort_device.vendor_id

    def device_mem_type(self) -> int:
        return self._ort_device.mem_type

    def torch_device(self) -> tuple[str, int]:
        """('cpu', 0) or ('cuda', n): where tritort keeps values for this device."""
        d = self._ort_device
        if d.device_type == _CPU:
            return ("cpu", 0)
        if d.device_type == _GPU and d.vendor_id in (OrtDeviceVendorId.NVIDIA,
                                                     OrtDeviceVendorId.NONE):
            return ("cuda", d.device_id)
        raise InvalidArgument(f"{self!r}: tritort keeps values on the CPU or a CUDA device only")

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, OrtDevice) and other._ort_device == self._ort_device

    def __hash__(self) -> int:
        return hash(self._ort_device)

    def __repr__(self) -> str:
        d = self._ort_device
        return (f"OrtDevice(device_type={d.device_type}, mem_type={d.mem_type}, "
                f"vendor_id={d.vendor_id:#x}, device_id={d.device_id})")


# OrtMemoryInfo names onnxruntime's first constructor accepts, and their device
_MEMORY_NAMES = {
    "Cpu": (_CPU, OrtDeviceVendorId.NONE), "Cuda": (_GPU, OrtDeviceVendorId.NVIDIA),
    "CudaPinned": (_CPU, OrtDeviceVendorId.NVIDIA), "Cann": (_NPU, OrtDeviceVendorId.HUAWEI),
    "CannPinned": (_CPU, OrtDeviceVendorId.HUAWEI), "DML": (_DML, OrtDeviceVendorId.MICROSOFT),
    "OpenVINO_CPU": (_CPU, OrtDeviceVendorId.INTEL),
    "OpenVINO_GPU": (_GPU, OrtDeviceVendorId.INTEL),
    "WebGPU_Buffer": (_GPU, OrtDeviceVendorId.NONE),
}


class OrtMemoryInfo:
    """Where an allocator's memory lives: ``OrtMemoryInfo(name, allocator_type, device_id,
    mem_type)`` with ORT's names ("Cpu", "Cuda", "CudaPinned", ...), or
    ``OrtMemoryInfo.create_v2(...)`` for any device."""

    def __init__(self, name: str, allocator_type: OrtAllocatorType, device_id: int,
                 mem_type: OrtMemType) -> None:
        if name not in _MEMORY_NAMES:
            raise InvalidArgument(f"Specified device is not supported. Try CreateMemoryInfo_V2. "
                                  f"('{name}'; known names: {sorted(_MEMORY_NAMES)})")
        device_type, vendor = _MEMORY_NAMES[name]
        self._set(name, OrtAllocatorType(allocator_type), int(device_id), OrtMemType(mem_type),
                  device_type, OrtDeviceMemoryType.DEFAULT, int(vendor))

    def _set(self, name, allocator_type, device_id, mem_type, device_type, device_mem_type,
             vendor) -> None:
        if device_id < 0:
            raise InvalidArgument(f"OrtMemoryInfo: device_id must be >= 0, got {device_id}")
        self._name = name
        self._allocator_type = allocator_type
        self._device_id = device_id
        self._mem_type = mem_type
        self._device_type = device_type
        self._device_mem_type = device_mem_type
        self._vendor = vendor

    @staticmethod
    def create_v2(name: str, device_type: OrtMemoryInfoDeviceType, vendor_id: int,
                  device_id: int, mem_type: OrtDeviceMemoryType, alignment: int,
                  allocator_type: OrtAllocatorType) -> "OrtMemoryInfo":
        info = OrtMemoryInfo.__new__(OrtMemoryInfo)
        info._set(str(name), OrtAllocatorType(allocator_type), int(device_id),
                  OrtMemType.DEFAULT, int(OrtMemoryInfoDeviceType(device_type)),
                  OrtDeviceMemoryType(mem_type), int(vendor_id))
        info._alignment = int(alignment)
        return info

    name = property(lambda self: self._name, doc="The memory's name ('Cpu', 'Cuda', ...).")
    device_id = property(lambda self: self._device_id, doc="Device id.")
    mem_type = property(lambda self: self._mem_type, doc="OrtMemType.")
    allocator_type = property(lambda self: self._allocator_type, doc="OrtAllocatorType.")
    device_mem_type = property(lambda self: self._device_mem_type,
                               doc="Device memory type (Device or Host accessible).")
    device_vendor_id = property(lambda self: self._vendor, doc="The device's vendor id.")

    @property
    def device(self) -> OrtDevice:
        return OrtDevice(_Device(self._device_type, int(self._device_mem_type), self._vendor,
                                 self._device_id))

    def _key(self) -> tuple:
        return (self._device_type, self._vendor, self._device_id, int(self._mem_type))

    def __repr__(self) -> str:
        return (f"OrtMemoryInfo(name='{self._name}', device_id={self._device_id}, "
                f"mem_type={self._mem_type.name}, allocator_type={self._allocator_type.name})")


_ARENA_KEYS = ("max_mem", "arena_extend_strategy", "initial_chunk_size_bytes",
               "max_dead_bytes_per_chunk", "initial_growth_chunk_size_bytes",
               "max_power_of_two_extend_bytes")


class OrtArenaCfg:
    """An arena allocator's configuration: ``OrtArenaCfg(max_mem, arena_extend_strategy,
    initial_chunk_size_bytes, max_dead_bytes_per_chunk)`` or ``OrtArenaCfg({key: value})``
    with any of ORT's six keys; -1 (or 0 for max_mem) leaves ORT's default."""

    def __init__(self, *args: Any) -> None:
        values = {"max_mem": 0, **{k: -1 for k in _ARENA_KEYS[1:]}}
        if len(args) == 1 and isinstance(args[0], Mapping):
            for key, value in args[0].items():
                if key not in _ARENA_KEYS:
                    raise InvalidArgument(f"Invalid OrtArenaCfg option: {key} (the options are "
                                          f"{list(_ARENA_KEYS)})")
                values[key] = value
        elif len(args) == 4:
            values.update(zip(_ARENA_KEYS[:4], args))
        else:
            raise TypeError("OrtArenaCfg takes (max_mem, arena_extend_strategy, "
                            "initial_chunk_size_bytes, max_dead_bytes_per_chunk) or a dict")
        for key, value in values.items():
            setattr(self, key, value)

    def __setattr__(self, key: str, value: Any) -> None:
        if key not in _ARENA_KEYS:
            raise AttributeError(f"OrtArenaCfg has no option '{key}'")
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"OrtArenaCfg.{key} must be an int, got {type(value).__name__}")
        object.__setattr__(self, key, value)

    def __repr__(self) -> str:
        return "OrtArenaCfg(" + ", ".join(f"{k}={getattr(self, k)}" for k in _ARENA_KEYS) + ")"


class SharedAllocator(NamedTuple):
    """A registered allocator: its memory, arena configuration, and (v2) provider and
    options."""

    memory_info: OrtMemoryInfo
    arena_cfg: OrtArenaCfg | None
    provider_type: str
    options: dict


_lock = threading.Lock()
_shared: dict[tuple, SharedAllocator] = {}


def create_and_register_allocator(mem_info: OrtMemoryInfo, arena_cfg: OrtArenaCfg | None) -> None:
    """Register a CPU allocator shared by the sessions whose config entry
    ``session.use_env_allocators`` is ``"1"`` (recorded; see the module docstring)."""
    _check(mem_info, arena_cfg)
    if mem_info._device_type != _CPU:
        raise InvalidArgument("Error when creating and registering allocator: Only CPU devices "
                              "are supported. Please call CreateAndRegisterAllocatorV2() for "
                              "other device.")
    with _lock:
        _shared[mem_info._key()] = SharedAllocator(mem_info, arena_cfg, "CPUExecutionProvider",
                                                   {})


def create_and_register_allocator_v2(provider_type: str, mem_info: OrtMemoryInfo,
                                     options: Mapping[str, str],
                                     arena_cfg: OrtArenaCfg | None) -> None:
    """Register an allocator of ``provider_type`` for any device (recorded as above)."""
    _check(mem_info, arena_cfg)
    if not isinstance(provider_type, str):
        raise TypeError(f"provider_type must be a str, got {type(provider_type).__name__}")
    with _lock:
        _shared[mem_info._key()] = SharedAllocator(mem_info, arena_cfg, provider_type,
                                                   {str(k): str(v) for k, v in options.items()})


def _check(mem_info: Any, arena_cfg: Any) -> None:
    if not isinstance(mem_info, OrtMemoryInfo):
        raise TypeError(f"expected an OrtMemoryInfo, got {type(mem_info).__name__}")
    if arena_cfg is not None and not isinstance(arena_cfg, OrtArenaCfg):
        raise TypeError(f"expected an OrtArenaCfg or None, got {type(arena_cfg).__name__}")


def shared_allocators() -> list[SharedAllocator]:
    """The allocators registered in this process, in registration order."""
    with _lock:
        return list(_shared.values())
