"""InferenceSession: the public entry point, orchestrating load -> ... -> execute."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from . import loader, optimizer
from . import providers as eps
from .compiler import Program
from .errors import EPFail, Fail, InvalidArgument, OrtError
from .executor import execute
from .feeds import InputSpec, NodeArg, node_arg
from .options import RunOptions, SessionOptions
from .ortvalue import OrtValue
from .profiling import Profiler

log = logging.getLogger("tritort")

RECORD_ASSIGNMENT_KEY = "session.record_ep_graph_assignment_info"
EXTERNAL_DIR_KEY = "session.model_external_initializers_file_folder_path"


class InferenceSession:
    """ONNX Runtime's InferenceSession over tritort's providers."""

    def __init__(self, path_or_bytes: Any, sess_options: SessionOptions | None = None,
                 providers: Sequence[Any] | None = None,
                 provider_options: Sequence[dict] | None = None, **kwargs: Any) -> None:
        if kwargs:
            raise InvalidArgument(f"unexpected keyword arguments {sorted(kwargs)}")
        if sess_options is not None and not isinstance(sess_options, SessionOptions):
            raise InvalidArgument(f"sess_options must be a SessionOptions, got "
                                  f"{type(sess_options).__name__}")
        self._model_source = path_or_bytes
        self._sess_options = sess_options if sess_options is not None else SessionOptions()
        self._fallback = True
        self._profiler: Profiler | None = None
        self._create(providers, provider_options)

    # -- creation -----------------------------------------------------------------------------
    def _create(self, providers, provider_options) -> None:
        so = self._sess_options
        if so.enable_profiling:
            self._profiler = Profiler(so.profile_file_prefix)
        t0 = time.monotonic_ns()
        external_dir = so._config.get(EXTERNAL_DIR_KEY)
        loaded = loader.load(
            self._model_source,
            initializers={k: v.numpy() for k, v in so.initializers.items()},
            free_dims_by_name=so.free_dimensions_by_name,
            free_dims_by_denotation=so.free_dimensions_by_denotation,
            external_dir=external_dir)
        self._loaded = loaded
        self._inputs_meta = [vi for vi in loaded.graph.inputs]
        initializer_names = set(loaded.graph.initializers)
        self._required = [vi for vi in self._inputs_meta if vi.name not in initializer_names]
        self._overridable = [vi for vi in self._inputs_meta if vi.name in initializer_names]
        self._outputs_meta = list(loaded.graph.outputs)
        self._output_names = [o.name for o in self._outputs_meta]
        self._specs = {vi.name: InputSpec(vi) for vi in self._inputs_meta}
        graph = optimizer.optimize(loaded.graph, so.graph_optimization_level)
        if so.optimized_model_filepath:
            self._save_optimized(graph, so.optimized_model_filepath)
        self._providers = eps.resolve(providers, provider_options)
        self._program = Program(graph, self._providers, so._config)
        self._protected_roots = {id(_root(v)) for v in graph.initializers.values()
                                 if isinstance(v, np.ndarray)}
        if self._profiler is not None:
            self._profiler.record("session_initialization", "Session", t0, time.monotonic_ns(),
                                  {"nodes": len(graph.nodes)})

    def _save_optimized(self, graph, path: str) -> None:
        src = self._loaded.proto
        model = onnx.helper.make_model(graph.to_proto(), opset_imports=list(src.opset_import),
                                       producer_name="tritort", ir_version=src.ir_version)
        onnx.save(model, path)

    # -- metadata -----------------------------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return [node_arg(vi) for vi in self._required]

    def get_outputs(self) -> list[NodeArg]:
        return [node_arg(vi) for vi in self._outputs_meta]

    def get_overridable_initializers(self) -> list[NodeArg]:
        return [node_arg(vi) for vi in self._overridable]

    def get_modelmeta(self) -> loader.ModelMetadata:
        return self._loaded.metadata

    def get_session_options(self) -> SessionOptions:
        return self._sess_options

    def get_providers(self) -> list[str]:
        return [ep.name for ep in self._providers]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {ep.name: dict(ep.options) for ep in self._providers}

    def set_providers(self, providers: Sequence[Any] | None = None,
                      provider_options: Sequence[dict] | None = None) -> None:
        """Re-create the session with other providers (ORT semantics)."""
        self._create(providers, provider_options)

    def enable_fallback(self) -> None:
        self._fallback = True

    def disable_fallback(self) -> None:
        self._fallback = False

    def get_provider_graph_assignment_info(self):
        try:
            enabled = self._sess_options.get_session_config_entry(RECORD_ASSIGNMENT_KEY) == "1"
        except OrtError:
            enabled = False
        if not enabled:
            raise Fail(f"graph assignment info was not recorded; set the session config entry "
                       f"'{RECORD_ASSIGNMENT_KEY}' to '1' before creating the session")
        return self._program.assignment_info()

    def placement_report(self) -> str:
        """Which provider runs each node, and why higher-priority providers passed on it."""
        return self._program.partition.report()

    # -- profiling ----------------------------------------------------------------------------
    def end_profiling(self) -> str:
        if self._profiler is None:
            return ""
        return self._profiler.write()

    def get_profiling_start_time_ns(self) -> int:
        return self._profiler.start_ns if self._profiler is not None else 0

    # -- running ------------------------------------------------------------------------------
    def _fetch_names(self, output_names) -> list[str]:
        if output_names is None or (isinstance(output_names, (list, tuple)) and not output_names):
            return list(self._output_names)
        if isinstance(output_names, str):
            raise InvalidArgument("output_names must be a list of names, not a string")
        names = list(output_names)
        for n in names:
            if n not in self._output_names:
                raise InvalidArgument(f"Invalid Output Name:{n}. Valid outputs: "
                                      f"{self._output_names}")
        return names

    def _feeds(self, input_feed) -> dict[str, Any]:
        if not isinstance(input_feed, dict):
            raise InvalidArgument(f"input_feed must be a dict of name -> value, got "
                                  f"{type(input_feed).__name__}")
        feeds = {}
        for name, value in input_feed.items():
            spec = self._specs.get(name)
            if spec is None:
                raise InvalidArgument(f"Invalid input name: {name}. Valid inputs: "
                                      f"{[vi.name for vi in self._inputs_meta]}")
            feeds[name] = spec.convert(value)
        missing = [vi.name for vi in self._required
                   if vi.name not in feeds and not self._specs[vi.name].optional]
        if missing:
            raise InvalidArgument(f"Required inputs ({missing}) are missing from input feed "
                                  f"({list(input_feed)}).")
        for vi in self._required:
            feeds.setdefault(vi.name, None)
        return feeds

    def _run(self, fetches: list[str], feeds: dict[str, Any], run_options) -> list[Any]:
        if run_options is not None and not isinstance(run_options, RunOptions):
            raise InvalidArgument(f"run_options must be a RunOptions, got "
                                  f"{type(run_options).__name__}")
        terminate = run_options._terminate if run_options is not None else None
        plan = self._program.plan_for(fetches)
        try:
            results = execute(plan, feeds, terminate, self._profiler)
        except EPFail:
            if not self._fallback or self.get_providers() == [eps.CPU]:
                raise
            log.warning("a provider failed; falling back to %s for this session", eps.CPU)
            self.set_providers([eps.CPU])
            return self._run(fetches, feeds, run_options)
        return [self._detach(r, feeds) for r in results]

    def _detach(self, value: Any, feeds: dict[str, Any]) -> Any:
        """Copy an output that shares memory with an input or initializer, or is read-only."""
        if isinstance(value, np.ndarray):
            if not value.flags.writeable:
                return value.copy()
            root = id(_root(value))
            if root in self._protected_roots or any(
                    isinstance(f, np.ndarray) and root == id(_root(f)) for f in feeds.values()):
                return value.copy()
            return value
        if isinstance(value, np.generic):
            return np.asarray(value)
        if isinstance(value, list):
            return [self._detach(v, feeds) for v in value]
        return value

    def run(self, output_names, input_feed, run_options: RunOptions | None = None) -> list[Any]:
        fetches = self._fetch_names(output_names)
        return self._run(fetches, self._feeds(input_feed), run_options)

    def run_with_ort_values(self, output_names, input_dict_ort_values,
                            run_options: RunOptions | None = None) -> list[OrtValue]:
        if not isinstance(input_dict_ort_values, dict):
            raise InvalidArgument("run_with_ort_values expects a dict of name -> OrtValue")
        for name, v in input_dict_ort_values.items():
            if not isinstance(v, OrtValue):
                raise InvalidArgument(f"input '{name}' must be an OrtValue, got "
                                      f"{type(v).__name__}")
        results = self.run(output_names, input_dict_ort_values, run_options)
        return [OrtValue(r) for r in results]

    def run_async(self, output_names, input_feed, callback: Callable, user_data: Any,
                  run_options: RunOptions | None = None) -> None:
        """Run on a worker thread; ``callback(results, user_data, err)`` gets the outcome."""
        fetches = self._fetch_names(output_names)
        feeds = self._feeds(input_feed)

        def work() -> None:
            try:
                results = self._run(fetches, feeds, run_options)
            except Exception as e:  # reported through the callback, as ORT does
                callback(None, user_data, f"{type(e).__name__}: {e}")
                return
            callback(results, user_data, "")

        threading.Thread(target=work, name="tritort-run-async", daemon=True).start()

    def io_binding(self):
        from .iobinding import IOBinding

        return IOBinding(self)

    def run_with_iobinding(self, iobinding, run_options: RunOptions | None = None) -> None:
        iobinding._run(run_options)


def _root(arr: Any) -> Any:
    while isinstance(arr, np.ndarray) and arr.base is not None:
        arr = arr.base
    return arr
