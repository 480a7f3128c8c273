"""SessionOptions, RunOptions and their enums, with ONNX Runtime's names and defaults."""
from __future__ import annotations

import enum
import threading
from typing import Any

from .errors import InvalidArgument, NotImplemented


class GraphOptimizationLevel(enum.IntEnum):
    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_LAYOUT = 3
    ORT_ENABLE_ALL = 99


class ExecutionMode(enum.IntEnum):
    ORT_SEQUENTIAL = 0
    ORT_PARALLEL = 1


class ExecutionOrder(enum.IntEnum):
    DEFAULT = 0
    PRIORITY_BASED = 1
    MEMORY_EFFICIENT = 2


def _typed(name: str, kind: type | tuple, default: Any, doc: str, convert=None):
    """A property that refuses values of the wrong type, as ORT's bindings do."""
    attr = "_" + name

    def get(self):
        return getattr(self, attr, default)

    def set_(self, value):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"{type(self).__name__}.{name} expects {kind}, got "
                            f"{type(value).__name__} ({value!r})")
        setattr(self, attr, convert(value) if convert else value)

    return property(get, set_, doc=doc)


class _ConfigEntries:
    """String key/value configuration shared by session and run options."""

    def __init__(self) -> None:
        self._config: dict[str, str] = {}

    def _add_entry(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"config entries are str -> str, got {type(key).__name__} -> "
                            f"{type(value).__name__}")
        self._config[key] = value

    def _get_entry(self, key: str) -> str:
        try:
            return self._config[key]
        except KeyError:
            raise InvalidArgument(f"{type(self).__name__} does not have configuration with key: "
                                  f"{key}") from None


class SessionOptions(_ConfigEntries):
    graph_optimization_level = _typed(
        "graph_optimization_level", (GraphOptimizationLevel, int),
        GraphOptimizationLevel.ORT_ENABLE_ALL, "Which graph optimizations run.",
        GraphOptimizationLevel)
    execution_mode = _typed("execution_mode", (ExecutionMode, int), ExecutionMode.ORT_SEQUENTIAL,
                            "Sequential or parallel node execution.", ExecutionMode)
    execution_order = _typed("execution_order", (ExecutionOrder, int), ExecutionOrder.DEFAULT,
                             "Node ordering strategy.", ExecutionOrder)
    intra_op_num_threads = _typed("intra_op_num_threads", int, 0, "Threads inside one kernel.")
    inter_op_num_threads = _typed("inter_op_num_threads", int, 0, "Threads across nodes.")
    enable_profiling = _typed("enable_profiling", bool, False, "Write a Chrome trace per session.")
    profile_file_prefix = _typed("profile_file_prefix", str, "onnxruntime_profile_",
                                 "Prefix of the profiling file name.")
    optimized_model_filepath = _typed("optimized_model_filepath", str, "",
                                      "Where to save the optimized model, if set.")
    enable_mem_pattern = _typed("enable_mem_pattern", bool, True, "Plan buffer sizes ahead.")
    enable_mem_reuse = _typed("enable_mem_reuse", bool, True, "Reuse dead buffers.")
    enable_cpu_mem_arena = _typed("enable_cpu_mem_arena", bool, True, "Arena for CPU buffers.")
    logid = _typed("logid", str, "", "Identifier in log messages.")
    log_severity_level = _typed("log_severity_level", int, -1,
                                "0 verbose .. 4 fatal; -1 uses the default logger's level.")
    log_verbosity_level = _typed("log_verbosity_level", int, 0, "Verbose log detail.")
    use_deterministic_compute = _typed("use_deterministic_compute", bool, False,
                                       "Prefer deterministic kernels.")

    def __init__(self) -> None:
        super().__init__()
        self.initializers: dict[str, Any] = {}
        self.free_dimensions_by_name: dict[str, int] = {}
        self.free_dimensions_by_denotation: dict[str, int] = {}

    def add_session_config_entry(self, key: str, value: str) -> None:
        self._add_entry(key, value)

    def get_session_config_entry(self, key: str) -> str:
        return self._get_entry(key)

    def add_initializer(self, name: str, ortvalue) -> None:
        from .ortvalue import OrtValue

        if not isinstance(ortvalue, OrtValue):
            raise TypeError(f"add_initializer('{name}') expects an OrtValue, got "
                            f"{type(ortvalue).__name__}")
        self.initializers[name] = ortvalue

    def add_external_initializers(self, names, ortvalues) -> None:
        names, ortvalues = list(names), list(ortvalues)
        if len(names) != len(ortvalues):
            raise InvalidArgument(f"add_external_initializers: {len(names)} names but "
                                  f"{len(ortvalues)} values")
        for name, value in zip(names, ortvalues):
            self.add_initializer(name, value)

    def add_free_dimension_override_by_name(self, dim_name: str, dim_value: int) -> None:
        self.free_dimensions_by_name[dim_name] = _dim_value(dim_name, dim_value)

    def add_free_dimension_override_by_denotation(self, dim_denotation: str, dim_value: int) -> None:
        self.free_dimensions_by_denotation[dim_denotation] = _dim_value(dim_denotation, dim_value)

    def register_custom_ops_library(self, library_path: str) -> None:
        raise NotImplemented(
            f"register_custom_ops_library('{library_path}'): tritort runs no native custom-op "
            "libraries; express the op in ONNX or as a model-local function instead")


def _dim_value(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"free dimension override '{name}' must be an int >= 0, "
                              f"got {value!r}")
    return value


class RunOptions(_ConfigEntries):
    log_severity_level = _typed("log_severity_level", int, -1,
                                "0 verbose .. 4 fatal; -1 uses the default logger's level.")
    log_verbosity_level = _typed("log_verbosity_level", int, 0, "Verbose log detail.")
    logid = _typed("logid", str, "", "Identifier in log messages.")
    only_execute_path_to_fetches = _typed("only_execute_path_to_fetches", bool, False,
                                          "Run only nodes the fetches need.")
    training_mode = _typed("training_mode", bool, False, "Unused for inference.")

    def __init__(self) -> None:
        super().__init__()
        self._terminate = threading.Event()

    @property
    def terminate(self) -> bool:
        """Set to True to stop every run using these options between two nodes."""
        return self._terminate.is_set()

    @terminate.setter
    def terminate(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"RunOptions.terminate expects bool, got {type(value).__name__}")
        if value:
            self._terminate.set()
        else:
            self._terminate.clear()

    def add_run_config_entry(self, key: str, value: str) -> None:
        self._add_entry(key, value)

    def get_run_config_entry(self, key: str) -> str:
        return self._get_entry(key)
