"""SessionOptions, RunOptions and their enums, with ONNX Runtime's names and defaults."""
from __future__ import annotations

import copy
import enum
import json
import logging
import os
import threading
from typing import Any

from .errors import Fail, InvalidArgument, NotImplemented

log = logging.getLogger("tritort")


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

    def _copy(self) -> "SessionOptions":
        """A copy whose containers are its own (what a session keeps of these options)."""
        other = copy.copy(self)
        other._config = dict(self._config)
        other.initializers = dict(self.initializers)
        other.free_dimensions_by_name = dict(self.free_dimensions_by_name)
        other.free_dimensions_by_denotation = dict(self.free_dimensions_by_denotation)
        return other

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
        self._active_adapters: list = []

    def add_active_adapter(self, adapter) -> None:
        """Feed this LoRA adapter's parameters to every run using these options (the first
        active adapter that names an input wins, over later ones and the run's own feed)."""
        from .adapters import LoraAdapter

        if not isinstance(adapter, LoraAdapter):
            raise TypeError(f"add_active_adapter expects a LoraAdapter, got "
                            f"{type(adapter).__name__}")
        adapter.parameters  # noqa: B018  (refuses an adapter that was never loaded)
        self._active_adapters.append(adapter)

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


# -- the session options a model carries (onnxruntime's ORT_LOAD_CONFIG_FROM_MODEL) ----------
LOAD_CONFIG_ENV = "ORT_LOAD_CONFIG_FROM_MODEL"
# tritort's session config entry with the same effect as the environment variable
LOAD_CONFIG_KEY = "session.load_config_from_model"
ORT_CONFIG_KEY = "ort_config"  # the model metadata entry holding the JSON


def load_config_from_model(options: SessionOptions, read_config_from_model: Any = None) -> bool:
    """Whether a session reads its options from the model: InferenceSession's
    ``read_config_from_model`` argument when given, else ``ORT_LOAD_CONFIG_FROM_MODEL=1`` or
    the session config entry ``session.load_config_from_model`` = "1"."""
    env = os.environ.get(LOAD_CONFIG_ENV)
    if env not in (None, "", "0", "1"):
        raise Fail(f"The only supported values for the environment variable {LOAD_CONFIG_ENV} "
                   f"are '0' and '1'. The environment variable contained the value: {env}")
    if read_config_from_model is not None:
        return int(read_config_from_model) == 1
    return env == "1" or options._config.get(LOAD_CONFIG_KEY) == "1"


def options_from_model(ort_config: str | None) -> SessionOptions:
    """The session options onnxruntime builds from a model's ``ort_config`` metadata: default
    options, then the ``session_options`` object's ``intra_op_num_threads``,
    ``inter_op_num_threads``, ``execution_mode``, ``graph_optimization_level`` and
    ``enable_profiling`` (integers, checked as onnxruntime checks them); other keys are
    ignored, as onnxruntime ignores them."""
    options = SessionOptions()
    if ort_config is None:
        return options
    try:
        parsed = json.loads(ort_config)
    except ValueError as e:
        raise Fail(f"Json stored in the `{ORT_CONFIG_KEY}` key cannot be parsed. Error message: "
                   f"{e}") from None
    section = parsed.get("session_options") if isinstance(parsed, dict) else None
    if not isinstance(section, dict):
        log.info("no session options in the model's %s", ORT_CONFIG_KEY)
        return options
    for key, value in section.items():
        apply = _MODEL_OPTIONS.get(key)
        if apply is None:
            log.info("Ignoring unsupported session option in ORT config: %s", key)
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise Fail(f"{key} option in the model file must be an integer (in the model's "
                       f"{ORT_CONFIG_KEY}: got {json.dumps(value)})")
        apply(options, value)
    return options


def _threads(attr: str):
    def apply(options: SessionOptions, value: int) -> None:
        if value < 0:
            raise Fail(f"Unsupported value for {attr}: {value} (in the model's "
                       f"{ORT_CONFIG_KEY}; 0 or more)")
        setattr(options, attr, value)
    return apply


def _choice(attr: str, enum_type, message: str):
    def apply(options: SessionOptions, value: int) -> None:
        if value not in {int(m) for m in enum_type}:
            raise Fail(f"{message}: {value} (in the model's {ORT_CONFIG_KEY}; one of "
                       f"{sorted(int(m) for m in enum_type)})")
        setattr(options, attr, enum_type(value))
    return apply


def _profiling(options: SessionOptions, value: int) -> None:
    if value not in (0, 1):
        raise Fail(f"Unsupported value for enable_profiling option: {value} (in the model's "
                   f"{ORT_CONFIG_KEY}; 0 or 1)")
    options.enable_profiling = value == 1


_MODEL_OPTIONS = {
    "intra_op_num_threads": _threads("intra_op_num_threads"),
    "inter_op_num_threads": _threads("inter_op_num_threads"),
    "execution_mode": _choice("execution_mode", ExecutionMode,
                              "Unsupported execution_mode value in ORT config"),
    "graph_optimization_level": _choice("graph_optimization_level", GraphOptimizationLevel,
                                        "Unsupported graph_optimization_level value in ORT "
                                        "config"),
    "enable_profiling": _profiling,
}
