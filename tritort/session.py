"""InferenceSession: the public entry point, orchestrating load -> ... -> execute."""
from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from . import allocators, dlpack, loader, optimizer, sparse
from .adapters import active_feeds
from .providers import registry as eps
from .compiler import Program
from .errors import EPFail, Fail, InvalidArgument, InvalidArgumentValue, NoSuchFile, OrtError
from .executor import build_subgraph, execute
from .feeds import InputSpec, NodeArg, node_arg
from .options import (ORT_CONFIG_KEY, RunOptions, SessionOptions, load_config_from_model,
                      options_from_model)
from .ortvalue import OrtValue
from .planner import Plans, device_inputs
from .profiling import Profiler
from .replay import BoundPlans

log = logging.getLogger("tritort")

RECORD_ASSIGNMENT_KEY = "session.record_ep_graph_assignment_info"
# "0" runs every launch through its launcher: no recorded launches replayed
BOUND_PLANS_KEY = "tritort.bound_plans"
EXTERNAL_DIR_KEY = "session.model_external_initializers_file_folder_path"
# optimized_model_filepath: initializers of at least MIN bytes go to this file, beside the model
OPTIMIZED_EXTERNAL_FILE_KEY = "session.optimized_model_external_initializers_file_name"
OPTIMIZED_EXTERNAL_MIN_KEY = "session.optimized_model_external_initializers_min_size_in_bytes"
OPTIMIZED_EXTERNAL_MIN_DEFAULT = 1024  # onnxruntime's
# "1": the session uses the allocator create_and_register_allocator registered
USE_ENV_ALLOCATORS_KEY = "session.use_env_allocators"


class InferenceSession:
    """ONNX Runtime's InferenceSession over tritort's providers."""

    def __init__(self, path_or_bytes: Any, sess_options: SessionOptions | None = None,
                 providers: Sequence[Any] | None = None,
                 provider_options: Sequence[dict] | None = None, **kwargs: Any) -> None:
        # onnxruntime's keyword arguments: read_config_from_model (1: take the session
        # options from the model's ort_config), enable_fallback
        self._read_config_from_model = kwargs.pop("read_config_from_model", None)
        enable_fallback = kwargs.pop("enable_fallback", 1)
        if kwargs:
            raise InvalidArgument(f"unexpected keyword arguments {sorted(kwargs)}")
        if sess_options is not None and not isinstance(sess_options, SessionOptions):
            raise InvalidArgument(f"sess_options must be a SessionOptions, got "
                                  f"{type(sess_options).__name__}")
        self._model_source = path_or_bytes
        self._sess_options = sess_options if sess_options is not None else SessionOptions()
        self._fallback = int(enable_fallback) == 1
        self._profiler: Profiler | None = None
        self._create(providers, provider_options)

    # -- creation -----------------------------------------------------------------------------
    def _create(self, providers, provider_options) -> None:
        # providers first: a bad list leaves the session as it was (set_providers)
        resolved = eps.resolve(providers, provider_options)
        so, source, external_dir = self._options_for_model()
        self._options_in_use = so
        if so.enable_profiling:
            self._profiler = Profiler(so.profile_file_prefix)
        t0 = time.monotonic_ns()
        loaded = loader.load(
            source,
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
        self._sparse_outputs = {vi.name for vi in self._outputs_meta
                                if vi.type.WhichOneof("value") == "sparse_tensor_type"}
        graph = optimizer.optimize(loaded.graph, int(so.graph_optimization_level),
                                   any(ep.reads_quantized_weights for ep in resolved))
        if so.optimized_model_filepath:
            self._save_optimized(graph, so.optimized_model_filepath, so._config)
        self._shared_allocators = (allocators.shared_allocators()
                                   if so._config.get(USE_ENV_ALLOCATORS_KEY) == "1" else [])
        self._providers = resolved
        for ep in self._providers:
            ep.configure(so)
        self._scoped = [ep for ep in self._providers if ep.run_scope() is not None]
        self._program = Program(graph, self._providers, so._config, build_subgraph)
        self._plans = Plans(self._program)
        self._protected_roots = {id(_root(v)) for v in graph.initializers.values()
                                 if isinstance(v, np.ndarray)}
        self._prepare_devices()
        if self._profiler is not None:
            self._profiler.record("session_initialization", "Session", t0, time.monotonic_ns(),
                                  {"nodes": len(graph.nodes)})

    def _options_for_model(self) -> tuple[SessionOptions, Any, str | None]:
        """The options this session runs with, the model source to load and the folder of
        its external data. Reading the options from the model (ORT_LOAD_CONFIG_FROM_MODEL=1,
        the config entry session.load_config_from_model, or read_config_from_model=1), they
        are, as in onnxruntime, default options plus what the model's ort_config sets."""
        so = self._sess_options
        if not load_config_from_model(so, self._read_config_from_model):
            return so, self._model_source, so._config.get(EXTERNAL_DIR_KEY)
        proto, model_dir = loader.read_model(self._model_source)
        text = next((p.value for p in proto.metadata_props if p.key == ORT_CONFIG_KEY), None)
        return options_from_model(text), proto, str(model_dir) if model_dir else None

    def _save_optimized(self, graph, path: str, config: dict[str, str]) -> None:
        """Write the optimized model; with the config entry
        session.optimized_model_external_initializers_file_name, the initializers of at
        least ..._min_size_in_bytes bytes (1024 by default; strings never) go to that file,
        beside the model, in the order of the model's initializers. Everything is checked
        before anything is written."""
        src = self._loaded.proto
        opsets = [onnx.helper.make_opsetid(d, v) for d, v in graph.opsets.items()]
        model = onnx.helper.make_model(graph.to_proto(), opset_imports=opsets,
                                       producer_name="tritort", ir_version=src.ir_version)
        name = config.get(OPTIMIZED_EXTERNAL_FILE_KEY, "")
        if not name:
            onnx.save(model, path)
            return
        text = config.get(OPTIMIZED_EXTERNAL_MIN_KEY, str(OPTIMIZED_EXTERNAL_MIN_DEFAULT))
        try:
            min_size = int(text)
        except ValueError:
            min_size = -1
        if min_size < 0:
            raise InvalidArgument(f"session config entry {OPTIMIZED_EXTERNAL_MIN_KEY} must be "
                                  f"a number of bytes (an integer >= 0), got '{text}'")
        folder = Path(os.path.abspath(path)).parent
        target = (folder / name).resolve()
        if os.path.isabs(name) or not target.is_relative_to(folder.resolve()):
            raise InvalidArgument(
                f"session config entry {OPTIMIZED_EXTERNAL_FILE_KEY} = '{name}' must name a "
                f"file inside the optimized model's folder {folder} (a relative path without "
                "'..'): a model's external data is loaded from its own folder only")
        if not target.parent.is_dir():
            raise NoSuchFile(f"cannot write the optimized model's external initializers to "
                             f"{target}: the folder {target.parent} does not exist")
        blobs, offset = [], 0
        for tensor in model.graph.initializer:
            if tensor.data_type == onnx.TensorProto.STRING or not tensor.HasField("raw_data") \
                    or len(tensor.raw_data) < min_size:
                continue
            data = tensor.raw_data
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", name), ("offset", str(offset)),
                               ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            blobs.append(data)
            offset += len(data)
        with open(target, "wb") as f:
            for data in blobs:
                f.write(data)
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
        """The options in use: those given, or those read from the model."""
        return self._options_in_use

    def get_providers(self) -> list[str]:
        return [ep.name for ep in self._providers]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {ep.name: dict(ep.options) for ep in self._providers}

    # -- tuning -------------------------------------------------------------------------------
    def tuning_tables(self) -> dict[str, Any]:
        """The live tuning table of each tunable provider, by provider name: its launchers
        read configs from it, and ``table.recording()`` collects what they launch
        (tritort.autotune tunes those)."""
        return {ep.name: ep.tuning for ep in self._providers
                if getattr(ep, "tuning", None) is not None}

    def get_tuning_results(self) -> list[dict]:
        """ORT's shape: per tunable provider, {"ep", "results": {kernel key: {shape key:
        config}}, "validators"} (codegen/tuning.py describes the keys)."""
        return [{"ep": name, "results": table.results(), "validators": table.validators()}
                for name, table in self.tuning_tables().items()]

    def set_tuning_results(self, results: Sequence[dict], error_on_invalid: bool = False) -> None:
        """Use these tuned configs from now on (in memory; perf/autotune.py writes the
        database). Invalid entries are skipped with a warning, or raise InvalidArgument."""
        if not isinstance(results, (list, tuple)):
            raise InvalidArgument(f"tuning results must be a list of dicts (as "
                                  f"get_tuning_results returns), got {type(results).__name__}")
        tables = self.tuning_tables()
        valid = []
        for index, item in enumerate(results):
            ep = item.get("ep") if isinstance(item, dict) else None
            table = tables.get(ep)
            if table is None:
                reason, configs = (f"'{ep}' is not a provider of this session with tunable "
                                   f"kernels (those are {sorted(tables)})"), {}
            else:
                reason, configs = table.check_results(item)
            if reason is not None:
                message = f"Invalid TuningResults (index={index}): {reason}"
                if error_on_invalid:
                    raise InvalidArgument(message)
                log.warning("%s; skipped", message)
                continue
            valid.append((table, configs))
        for table, configs in valid:  # all checked before any is used
            table.install(configs)

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
            enabled = self._options_in_use.get_session_config_entry(RECORD_ASSIGNMENT_KEY) == "1"
        except OrtError:
            enabled = False
        if not enabled:
            raise Fail(f"graph assignment info was not recorded; set the session config entry "
                       f"'{RECORD_ASSIGNMENT_KEY}' to '1' before creating the session")
        return self._program.assignment_info()

    def placement(self) -> dict[str, str]:
        """Node name -> the provider that runs it, in execution order."""
        return {name: a.provider.name
                for name, a in self._program.partition.assignments.items()}

    def placement_report(self) -> str:
        """Which provider runs each node, and why higher-priority providers passed on it;
        last, which values a run reads back from a device (each read waits for it)."""
        reads = self._plans.get(self._output_names, keep_on_device=True).host_reads
        if any(ep.device != "cpu" for ep in self._providers):
            summary = ", ".join(reads) if reads else "none"
            return (f"{self._program.partition.report()}\n"
                    f"host synchronizations during a run (device values read on the host): "
                    f"{summary}")
        return self._program.partition.report()

    # -- profiling ----------------------------------------------------------------------------
    def end_profiling(self) -> str:
        if self._profiler is None:
            return ""
        return self._profiler.write()

    def get_profiling_start_time_ns(self) -> int:
        return self._profiler.start_ns if self._profiler is not None else 0

    # -- devices ------------------------------------------------------------------------------
    def _prepare_devices(self) -> None:
        """Which inputs may stay on a device; the CUDA device and stream runs are ordered on."""
        self._initializer_spans: tuple | None = None
        read_on_device = device_inputs(self._program.units)
        cuda = [ep for ep in self._providers
                if getattr(getattr(ep, "torch_device", None), "type", "cpu") == "cuda"]
        devices = tuple(("cuda", ep.torch_device.index or 0) for ep in cuda)
        for name, spec in self._specs.items():
            spec.keep_device = name in read_on_device
            spec.devices = devices
        self._host_only = all(ep.device == "cpu" for ep in self._providers)
        self._guard: tuple | None = None
        self._bound_plans: BoundPlans | None = None
        launching = [ep for ep in self._providers if hasattr(ep, "torch_device")]
        if launching and self._options_in_use._config.get(BOUND_PLANS_KEY, "1") != "0":
            cuda_graph = launching[0].options.get("enable_cuda_graph", "0") == "1"
            self._bound_plans = BoundPlans(launching[0], read_on_device, cuda_graph)
        if cuda:
            ep = cuda[0]
            text = ep.options.get("user_compute_stream", "").strip()
            try:
                stream = int(text, 0) if text else 0
            except ValueError:
                raise InvalidArgument(f"{ep.name}: user_compute_stream must be a stream address "
                                      f"(an integer), got '{text}'") from None
            self._guard = (ep.torch_device, stream or None)

    def _execute(self, fetches: list[str], feeds: dict[str, Any], terminate, on_device: bool,
                 borrowed: bool, targets: dict | None = None) -> list[Any]:
        if self._scoped:  # provider settings that hold during a run (BLAS threads)
            with contextlib.ExitStack() as stack:
                for ep in self._scoped:
                    stack.enter_context(ep.run_scope())
                return self._execute_on_device(fetches, feeds, terminate, on_device, borrowed,
                                               targets)
        return self._execute_on_device(fetches, feeds, terminate, on_device, borrowed, targets)

    def _execute_on_device(self, fetches: list[str], feeds: dict[str, Any], terminate,
                           on_device: bool, borrowed: bool,
                           targets: dict | None = None) -> list[Any]:
        if self._guard is None:
            return self._execute_plan(fetches, feeds, terminate, on_device, borrowed, targets)
        device, stream = self._guard
        with dlpack.StreamGuard(device, stream) as guard:
            results = self._execute_plan(fetches, feeds, terminate, on_device, borrowed,
                                         targets)
            guard.hand_over(results)
        return results

    def _execute_plan(self, fetches: list[str], feeds: dict[str, Any], terminate,
                      on_device: bool, borrowed: bool,
                      targets: dict | None = None) -> list[Any]:
        """The recorded launches of the input signature where the plan can be bound (not
        while profiling: its events are per node), else the plan's steps."""
        if self._bound_plans is not None and self._profiler is None:
            plan = self._plans.get(fetches, keep_on_device=True)
            results = self._bound_plans.run(
                plan, feeds, terminate, [targets.get(f) for f in fetches] if targets else None)
            if results is not None:
                return [_handed_over(r, on_device, borrowed) for r in results]
        plan = self._plans.get(fetches, keep_on_device=on_device)
        return execute(plan, feeds, terminate, self._profiler)

    def _callers_stream(self) -> Callable:
        """A context factory making this thread's current CUDA stream current in another."""
        if self._guard is None:
            return contextlib.nullcontext
        import torch

        stream = torch.cuda.current_stream(self._guard[0])
        return lambda: torch.cuda.stream(stream)

    def _synchronize(self) -> None:
        """The host waits for this session's work on its CUDA device (no-op on the CPU)."""
        if self._guard is not None:
            dlpack.synchronize(self._guard[0])

    def _aliases_initializer(self, span: tuple | None) -> bool:
        if span is None or span[0] != "cpu":
            return False
        if self._initializer_spans is None:
            spans = sorted(sp[1:] for v in self._program.graph.initializers.values()
                           if isinstance(v, np.ndarray) and (sp := dlpack.span(v)) is not None
                           and sp[1] != sp[2])
            los = [lo for lo, _ in spans]
            reach, top = [], 0
            for _, hi in spans:
                top = max(top, hi)
                reach.append(top)
            self._initializer_spans = (los, reach)
        los, reach = self._initializer_spans
        i = bisect.bisect_left(los, span[2]) - 1  # the last initializer starting before the end
        return i >= 0 and reach[i] > span[1]

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

    def _feeds(self, input_feed, run_options=None) -> dict[str, Any]:
        """The run's inputs, converted and checked: the feed, with the parameters of the run
        options' active LoRA adapters (which win, as in onnxruntime). Required inputs missing
        are ``ValueError`` as in onnxruntime (also ``InvalidArgument``); that is checked
        first, as onnxruntime does, then the names and values."""
        if not isinstance(input_feed, dict):
            raise InvalidArgument(f"input_feed must be a dict of name -> value, got "
                                  f"{type(input_feed).__name__}")
        adapters = getattr(run_options, "_active_adapters", None)
        if adapters:
            input_feed = {**input_feed, **active_feeds(adapters)}
        missing = [vi.name for vi in self._required
                   if vi.name not in input_feed and not self._specs[vi.name].optional]
        if missing:
            raise InvalidArgumentValue(f"Required inputs ({missing}) are missing from input "
                                       f"feed ({list(input_feed)}).")
        feeds = {}
        for name, value in input_feed.items():
            spec = self._specs.get(name)
            if spec is None:
                raise InvalidArgument(f"Invalid input name: {name}. Valid inputs: "
                                      f"{[vi.name for vi in self._inputs_meta]}")
            feeds[name] = spec.convert(value)
        for vi in self._required:
            feeds.setdefault(vi.name, None)
        return feeds

    def _run(self, fetches: list[str], feeds: dict[str, Any], run_options,
             on_device: bool = False, borrowed: bool = False,
             targets: dict | None = None) -> list[Any]:
        """Run on converted feeds. Results are host values, or with ``on_device`` values where
        their producers left them (torch tensors for the Triton provider); ``borrowed``: the
        caller copies them before the next run, so they may be the session's own buffers;
        ``targets``: fetch name -> the caller's device tensor it goes to, which a bound plan
        may write in place (the result is then that tensor)."""
        if run_options is not None and not isinstance(run_options, RunOptions):
            raise InvalidArgument(f"run_options must be a RunOptions, got "
                                  f"{type(run_options).__name__}")
        terminate = run_options._terminate if run_options is not None else None
        try:
            results = self._execute(fetches, feeds, terminate, on_device, borrowed, targets)
        except EPFail:
            if not self._fallback or self.get_providers() == [eps.CPU]:
                raise
            log.warning("a provider failed; falling back to %s for this session", eps.CPU)
            self.set_providers([eps.CPU])
            feeds = {k: dlpack.to_host(v) for k, v in feeds.items()}
            return self._run(fetches, feeds, run_options, on_device, borrowed)
        if self._sparse_outputs:  # a sparse initializer returned: dense inside, sparse out
            results = [sparse.from_dense(dlpack.to_host(r))
                       if name in self._sparse_outputs and not isinstance(r, sparse.SparseTensor)
                       and r is not None else r for name, r in zip(fetches, results)]
        if on_device:
            return [self._detach_device(r, feeds) for r in results]
        return [self._detach(r, feeds) for r in results]

    def _detach(self, value: Any, feeds: dict[str, Any]) -> Any:
        """Copy an output that shares memory with an input or initializer, or is read-only."""
        if isinstance(value, np.ndarray):
            if not value.flags.writeable:
                return value.copy()
            root = id(_root(value))
            if root in self._protected_roots:
                return value.copy()
            span = None
            for f in feeds.values():
                if isinstance(f, np.ndarray):
                    # bounds only: cheap, and also sees views made through torch
                    if np.may_share_memory(value, f):
                        return value.copy()
                elif f is not None and dlpack.is_torch(f):  # a tensor kept for a device
                    span = span or dlpack.span(value)
                    if dlpack.overlaps(span, dlpack.span(f)):
                        return value.copy()
            if not self._host_only and self._aliases_initializer(span or dlpack.span(value)):
                return value.copy()  # a device view of an initializer (Triton interpreter)
            return value
        if isinstance(value, np.generic):
            return np.asarray(value)
        if isinstance(value, list):
            return [self._detach(v, feeds) for v in value]
        return value

    def _detach_device(self, value: Any, feeds: dict[str, Any]) -> Any:
        """``_detach`` for values that may be torch tensors."""
        if not dlpack.is_torch(value):
            return self._detach(value, feeds)
        span = dlpack.span(value)
        if self._aliases_initializer(span) or any(
                dlpack.overlaps(span, dlpack.span(f)) for f in feeds.values()):
            return value.clone()
        return value

    def run(self, output_names, input_feed, run_options: RunOptions | None = None) -> list[Any]:
        fetches = self._fetch_names(output_names)
        return self._run(fetches, self._feeds(input_feed, run_options), run_options)

    def run_with_ort_values(self, output_names, input_dict_ort_values,
                            run_options: RunOptions | None = None) -> list[OrtValue]:
        if not isinstance(input_dict_ort_values, dict):
            raise InvalidArgument("run_with_ort_values expects a dict of name -> OrtValue")
        for name, v in input_dict_ort_values.items():
            if not isinstance(v, OrtValue):
                raise InvalidArgument(f"input '{name}' must be an OrtValue, got "
                                      f"{type(v).__name__}")
        fetches = self._fetch_names(output_names)
        results = self._run(fetches, self._feeds(input_dict_ort_values, run_options),
                            run_options, on_device=True)
        return [OrtValue(r) for r in results]

    def run_async(self, output_names, input_feed, callback: Callable, user_data: Any,
                  run_options: RunOptions | None = None) -> None:
        """Run on a worker thread; ``callback(results, user_data, err)`` gets the outcome."""
        fetches = self._fetch_names(output_names)
        feeds = self._feeds(input_feed, run_options)
        on_callers_stream = self._callers_stream()  # torch's current stream is per thread

        def work() -> None:
            try:
                with on_callers_stream():
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
        from .iobinding import IOBinding

        if not isinstance(iobinding, IOBinding):
            raise InvalidArgument(f"run_with_iobinding expects an IOBinding, got "
                                  f"{type(iobinding).__name__}")
        if iobinding._session is not self:
            raise InvalidArgument("this IOBinding belongs to another session; create one with "
                                  "this session's io_binding()")
        iobinding._run(run_options)


def _handed_over(value: Any, on_device: bool, borrowed: bool) -> Any:
    """A bound plan's output (its own buffer, rewritten by its next run) as the caller may
    keep it: a host copy, a device clone, or the buffer itself when ``borrowed``."""
    if not dlpack.is_torch(value):
        return np.array(value, copy=True) if isinstance(value, np.ndarray) else value
    if not on_device:
        host = dlpack.to_host(value)
        return host.copy() if value.device.type == "cpu" else host
    return value if borrowed else value.clone()


def _root(arr: Any) -> Any:
    while isinstance(arr, np.ndarray) and arr.base is not None:
        arr = arr.base
    return arr
