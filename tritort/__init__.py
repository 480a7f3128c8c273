"""tritort: ONNX Runtime's Python API over Triton-generated kernels and a NumPy provider.

``import tritort as ort`` is meant to work in code written for onnxruntime.
"""
from __future__ import annotations

import logging

import numpy as _np

from .adapters import AdapterFormat, LoraAdapter  # noqa: F401
from .allocators import (  # noqa: F401
    OrtAllocatorType, OrtArenaCfg, OrtDevice, OrtDeviceMemoryType, OrtDeviceVendorId,
    OrtMemoryInfo, OrtMemoryInfoDeviceType, OrtMemType, create_and_register_allocator,
    create_and_register_allocator_v2,
)
from .errors import (  # noqa: F401
    EngineError, EPFail, Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, ModelLoaded,
    NoModel, NoSuchFile, NotFound, NotImplemented, OrtError, RuntimeException,
)
from .feeds import NodeArg  # noqa: F401
from .iobinding import IOBinding  # noqa: F401
from .loader import ModelMetadata  # noqa: F401
from .options import (  # noqa: F401
    ExecutionMode, ExecutionOrder, GraphOptimizationLevel, RunOptions, SessionOptions,
)
from .ortvalue import OrtValue  # noqa: F401
from .providers.registry import ALL_PROVIDER_NAMES as _ALL_PROVIDERS
from .providers.registry import available_providers as _available
from .session import InferenceSession  # noqa: F401
from .sparse import OrtSparseFormat, SparseTensor  # noqa: F401
from .version import __version__  # noqa: F401

_log = logging.getLogger("tritort")
# ORT severities 0..4 (verbose, info, warning, error, fatal) as logging levels.
_SEVERITY = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR,
             4: logging.CRITICAL}


def get_available_providers() -> list[str]:
    return _available()


def get_all_providers() -> list[str]:
    return list(_ALL_PROVIDERS)


def get_device() -> str:
    return "GPU" if "TritonExecutionProvider" in _available() else "CPU"


def get_version_string() -> str:
    return __version__


def get_build_info() -> str:
    """onnxruntime's layout ("ORT Build Info: key=value, ..."), with tritort's facts."""
    import onnx

    return (f"tritort Build Info: version={__version__}, build type=Release, "
            f"onnx={onnx.__version__}, numpy={_np.__version__}, "
            f"providers={'+'.join(_available())}")


def enable_telemetry_events() -> None:
    """A no-op: tritort collects no telemetry (onnxruntime's call, kept for its callers)."""


def disable_telemetry_events() -> None:
    """A no-op: tritort collects no telemetry, so there is none to disable."""


def set_seed(seed: int) -> None:
    """Seeds the random ops without a seed attribute in sessions created from now on."""
    from tritort.fallback_cpu import random as _random_ops

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument(f"set_seed expects an int, got {seed!r}")
    _random_ops.set_seed(seed)


def set_default_logger_severity(severity: int) -> None:
    if severity not in _SEVERITY:
        raise InvalidArgument(f"logger severity must be 0..4, got {severity}")
    _log.setLevel(_SEVERITY[severity])


def set_default_logger_verbosity(verbosity: int) -> None:
    if not isinstance(verbosity, int) or verbosity < 0:
        raise InvalidArgument(f"logger verbosity must be an int >= 0, got {verbosity!r}")
    _log.verbosity = verbosity  # type: ignore[attr-defined]
