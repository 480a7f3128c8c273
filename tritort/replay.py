"""Bound plans: a device plan's kernel launches recorded once per input signature, then replayed.

The first run of a signature runs the plan as usual while every kernel launch is recorded
(:mod:`tritort.codegen.launch`) and every torch operation outside the kernels is audited.
When that run did only what a replay can repeat (launches, buffer allocations and views, host
arithmetic on shapes, uploads of host constants), later runs of the signature walk the
recorded launches: no shape arithmetic, config lookups, allocation, argument binding or
exceptions per launch. The caller's device tensors are read in place (swapped into the
recorded launches); host values are copied into buffers of the plan. With
``enable_cuda_graph`` the walk is captured once into a CUDA graph and replayed (its pointers
are fixed, so every input is copied into the plan's buffers).

A plan that cannot be bound (a node on the host reading device data, a random op, control
flow) runs as before; :attr:`BoundPlans.refusals` says why, per signature.
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Sequence

import numpy as np

from . import arena, dlpack
from .errors import Fail
from .executor import execute
from .planner import Plan

# signatures kept per plan: a new one beyond this drops the least recently used
MAX_SIGNATURES = 8
# launches between two looks at the terminate flag
TERMINATE_EVERY = 32
_FETCH = "fetch"  # a run's current tensors: input names, and (_FETCH, index) for fetches
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike",
                               "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"})
# torch operations a replay repeats for free: allocations keep their buffers, views their
# strides. Anything else computes on data, which only the recorded kernels may do.
_ALLOCATIONS_AND_VIEWS = frozenset({
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "view",
    "_unsafe_view", "as_strided", "expand", "permute", "transpose", "t", "unsqueeze", "squeeze",
    "slice", "select", "alias", "detach", "split", "split_with_sizes", "unbind", "narrow",
    "diagonal", "unfold", "_reshape_alias", "view_as_real", "view_as_complex", "lift_fresh",
    "is_pinned", "is_contiguous", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset",
})
# copies a replay may keep as they were made: host data (shapes, constants) put on a device
_HOST_COPIES = frozenset({"_to_copy", "copy_", "_pin_memory", "pin_memory"})
# allocations whose contents only kernels write: the arena may place them
_UNINITIALIZED = frozenset({"empty", "empty_strided", "empty_like", "new_empty",
                            "new_empty_strided"})


def signature(feeds: dict[str, Any]) -> tuple | None:
    """What a bound plan is specialized on: each input's shape, dtype and device; None for
    feeds a replay cannot take (sequences, maps)."""
    key = []
    for name, value in sorted(feeds.items(), key=lambda item: item[0]):
        if value is None:
            key.append((name, None))
        elif isinstance(value, np.ndarray):
            key.append((name, value.shape, value.dtype.str, "host"))
        elif dlpack.is_torch(value):
            key.append((name, tuple(value.shape), str(value.dtype), str(value.device)))
        else:
            return None
    return tuple(key)


def unbindable_reason(plan: Plan) -> str | None:
    """Why no recording of ``plan`` can stand for its later runs, or None."""
    for step in plan.steps:
        if step.op_type in _NONDETERMINISTIC:
            return f"{step.label} ({step.op_type}) draws new values on every run"
        if step.runs_subgraphs:
            return f"{step.label} ({step.op_type}) runs control flow on the host"
    if plan.host_reads:
        readers = []
        for value in plan.host_reads:
            slot = plan.slot_of.get(f"{value}@cpu")
            readers += [f"{s.label} ({s.op_type}) reads {value}" for s in plan.steps
                        if slot in s.in_slots and s.op_type != "Copy"]
        return f"the run reads device values on the host: {'; '.join(readers)}"
    if plan.host_value_inputs:
        return (f"a host step reads the values of input(s) "
                f"{', '.join(plan.host_value_inputs)}")
    return None


class BoundPlan:
    """A plan's recorded launches for one input signature, and the buffers they use.

    ``inputs``: per device-read input, the tensor the recording ran on (the caller's own
    device tensor, or a buffer of the plan holding a host value); ``patches``: per launch, the
    argument positions that view an input, as (position, input, view) with the recorded view.
    A replay reads a caller's device tensor in place by swapping it (or the same view of it)
    into those positions; host values and non-contiguous tensors are copied into the plan's
    buffer. A captured CUDA graph has its pointers fixed: every input is copied."""

    def __init__(self, inputs: dict[str, Any], buffers: dict[str, Any], launches: list,
                 outputs: list, interpreted: bool, writes: list | None = None) -> None:
        self.inputs = inputs
        self.buffers = buffers  # the plan's own: name -> tensor
        self.launches = launches
        self.patches = [_input_views(p.arguments, inputs) for p in launches]
        # per launch: (position, fetch index, shape, strides, offset in the fetch) of the
        # arguments over a fetch the kernels write whole (see _output_views)
        self.writes = writes or [[] for _ in launches]
        self._written = frozenset(w[1] for ws in self.writes for w in ws)
        self._patched_set = frozenset(i for i in range(len(launches))
                                      if self.patches[i] or self.writes[i])
        self._steps: dict[tuple, list] = {}  # (stream, hooks set) -> what a run launches
        self.outputs = outputs
        self.output_patches = _input_views(outputs, inputs)  # fetches that are inputs
        self.interpreted = interpreted
        self.graph: Any = None  # a torch.cuda.CUDAGraph once captured
        self.arena: Any = None  # one buffer holding every intermediate, placed by lifetime
        self.recorded_bytes = 0  # what the intermediates took while recorded
        self.lock = threading.Lock()  # its buffers: one run at a time

    def run(self, feeds: dict[str, Any], terminate,
            targets: Sequence[Any] | None = None) -> list[Any]:
        """The fetches as the plan's buffers hold them after this run (the caller copies or
        clones them before the next run of this plan), or as the caller's ``targets`` do
        where the kernels wrote them there."""
        if terminate is not None and terminate.is_set():
            raise Fail("Exiting due to terminate flag being set to true.")
        current = self._place_inputs(feeds)
        if self.graph is not None:  # its pointers are fixed: fetches stay in its buffers
            self.graph.replay()
            return self._outputs(current)
        for index, output in enumerate(self.outputs):
            target = targets[index] if targets is not None else None
            current[_FETCH, index] = target if self._writable(index, target) else output
        from .codegen.launch import current_stream, hooks_set

        stream = None if self.interpreted else current_stream()
        key = (stream, hooks_set())
        steps = self._steps.get(key)
        if steps is None:
            steps = self._steps[key] = self._launch_steps(stream, key[1])
        for count, (batch, index, function, arguments) in enumerate(steps):
            if terminate is not None and (batch is not None or count % TERMINATE_EVERY == 0) \
                    and terminate.is_set():
                raise Fail("Exiting due to terminate flag being set to true.")
            if batch is not None:
                for local, i in index:  # this run's input addresses into their slots
                    for position, value in self._patched_values(i, current):
                        batch.set(local, position, value)
                batch.go(stream)
                continue
            if index in self._patched_set:
                function, arguments = self.launches[index].call(
                    stream, self._patched(index, current))
            function(*arguments)
        return self._outputs(current)

    def _launch_steps(self, stream: Any, hooked: bool) -> list[tuple]:
        """What a run does, in order: (batch, [(its launch, plan launch)] reading inputs, None,
        None) for launches packed into one call, or (None, launch index, function, arguments)
        for a launch made through Triton's launcher (the interpreter, a profiler's launch
        hooks, or a launch the batch cannot pack)."""
        from .codegen import batch_launch

        rt = None if self.interpreted or hooked else batch_launch.runtime()
        steps: list[tuple] = []
        run: list[int] = []

        def flush() -> None:
            if run:
                batch = batch_launch.LaunchBatch([self.launches[i] for i in run], rt)
                steps.append((batch, [(local, i) for local, i in enumerate(run)
                                      if i in self._patched_set], None, None))
                run.clear()

        for i, launch in enumerate(self.launches):
            if rt is not None and batch_launch.batchable(launch) is None:
                run.append(i)
                if len(run) == TERMINATE_EVERY:
                    flush()
                continue
            flush()
            steps.append((None, i, *launch.call(stream, launch.values)))
        flush()
        return steps

    def _patched_values(self, index: int, current: dict[Any, Any]):
        """(position, value) of launch ``index``'s arguments that view an input, or a fetch
        it writes (the plan's buffer or the caller's target), this run."""
        launch = self.launches[index]
        for position, name, view in self.patches[index]:
            yield position, launch.passed(_same_view(view, self.inputs[name], current[name]))
        for position, fetch, shape, strides, offset in self.writes[index]:
            tensor = current[_FETCH, fetch]
            yield position, launch.passed(tensor.as_strided(shape, strides,
                                                            tensor.storage_offset() + offset))

    def _writable(self, index: int, target: Any) -> bool:
        """Can the kernels write fetch ``index`` straight into ``target``?"""
        if target is None or index not in self._written:
            return False
        output = self.outputs[index]
        return (dlpack.is_torch(target) and target.device == output.device and
                target.dtype == output.dtype and tuple(target.shape) == tuple(output.shape)
                and target.is_contiguous() and output.is_contiguous())

    def _patched(self, index: int, current: dict[str, Any]) -> tuple:
        """Launch ``index``'s values with this run's inputs swapped in."""
        values = list(self.launches[index].values)
        for position, value in self._patched_values(index, current):
            values[position] = value
        return tuple(values)

    def _outputs(self, current: dict[Any, Any]) -> list[Any]:
        outputs = [current.get((_FETCH, i), o) for i, o in enumerate(self.outputs)]
        for position, name, view in self.output_patches:
            outputs[position] = _same_view(view, self.inputs[name], current[name])
        return outputs

    def _place_inputs(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Each input as the launches will read it: the caller's tensor where it can be read
        in place, else the plan's buffer after copying the value in."""
        current = {}
        for name, recorded in self.inputs.items():
            value = feeds[name]
            in_place = _in_place(value, recorded.device) if self.graph is None else None
            if in_place is not None:
                current[name] = in_place
                continue
            buffer = self.buffers.get(name)
            if buffer is None:
                import torch

                buffer = self.buffers[name] = torch.empty_like(recorded)
            if isinstance(value, np.ndarray):
                value = dlpack.numpy_to_torch(value)
            buffer.copy_(value, non_blocking=True)
            current[name] = buffer
        return current

    def capture(self) -> None:
        """Record the launch walk into a CUDA graph, reading the plan's own input buffers."""
        import torch

        from .codegen.launch import current_stream

        for name, recorded in self.inputs.items():
            if name not in self.buffers:
                self.buffers[name] = recorded.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            stream = current_stream()
            for launch, patch in zip(self.launches, self.patches):
                values = list(launch.values)
                for position, name, view in patch:
                    values[position] = launch.passed(
                        _same_view(view, self.inputs[name], self.buffers[name]))
                launch.go(stream, values)
        self.graph = graph


def _output_views(launches: Sequence[Sequence[Any]], outputs: Sequence[Any],
                  allocated: dict[int, int]) -> list[list[tuple]]:
    """Per launch, its arguments over a fetch that is a whole allocation of the recording
    (a contiguous tensor over all of it, fetched once): (position, fetch index, shape,
    strides, storage offset within the fetch). Before the arena shares memory between
    values, an allocation is exactly one value's, so these are all the views of that fetch."""
    whole: dict[int, int] = {}
    fetched: set[int] = set()
    for index, output in enumerate(outputs):
        key = arena.storage_of(output)
        if key in fetched:  # fetched twice: each fetch needs its own memory
            whole.pop(key, None)
            continue
        fetched.add(key)
        if key in allocated and output.is_contiguous() and output.storage_offset() == 0 and \
                output.numel() * output.element_size() == allocated[key]:
            whole[key] = index
    found: list[list[tuple]] = []
    for arguments in launches:
        views = []
        for position, value in enumerate(arguments):
            fetch = whole.get(arena.storage_of(value))
            if fetch is not None:
                views.append((position, fetch, tuple(value.shape), tuple(value.stride()),
                              value.storage_offset() - outputs[fetch].storage_offset()))
        found.append(views)
    return found


def _in_place(value: Any, device: Any) -> Any:
    """``value`` as a tensor the launches can read where it is, or None: a contiguous tensor on
    ``device``, or (interpreter) a C-ordered host array, viewed."""
    if dlpack.is_torch(value):
        return value if value.device == device and value.is_contiguous() else None
    if isinstance(value, np.ndarray) and device.type == "cpu" and value.flags.c_contiguous:
        return dlpack.numpy_to_torch(value)
    return None


def _input_views(values: Sequence[Any], inputs: dict[str, Any]) -> list[tuple]:
    """(position, input name, argument) for each argument that is an input or a view of one."""
    storages = {t.untyped_storage().data_ptr(): name for name, t in inputs.items()}
    found = []
    for position, value in enumerate(values):
        if dlpack.is_torch(value):
            name = storages.get(value.untyped_storage().data_ptr())
            if name is not None:
                found.append((position, name, value))
    return found


def _same_view(view: Any, recorded: Any, tensor: Any) -> Any:
    """``view`` of ``recorded``, taken of ``tensor`` instead (same shape and strides)."""
    if view is recorded:
        return tensor
    offset = view.storage_offset() - recorded.storage_offset() + tensor.storage_offset()
    return tensor.as_strided(view.shape, view.stride(), offset)


class BoundPlans:
    """A session's bound plans, by plan and input signature (the least recently used beyond
    :data:`MAX_SIGNATURES` per plan are dropped)."""

    def __init__(self, device_provider: Any, read_on_device: set[str],
                 cuda_graph: bool = False) -> None:
        self.provider = device_provider
        self.read_on_device = read_on_device  # graph inputs the device's kernels read
        self.cuda_graph = cuda_graph
        from .codegen import target

        self.interpreted = target.interpreted()
        self._bound: dict[int, collections.OrderedDict] = {}
        self.refusals: dict[tuple, str] = {}  # (plan id, signature) -> why it runs unbound
        self._lock = threading.Lock()

    def run(self, plan: Plan, feeds: dict[str, Any], terminate,
            targets: Sequence[Any] | None = None) -> list[Any] | None:
        """The fetches (the plan's buffers: copy before the next run), or None when this run must
        take the ordinary path (a plan that cannot be bound, or busy on another thread).
        ``targets``: per fetch, the caller's device tensor it goes to, or None; a replay writes
        a fetch its kernels produce straight there and returns that tensor."""
        key = signature(feeds)
        if key is None:
            self._refuse(plan, None, "an input is not a tensor")
            return None
        with self._lock:
            table = self._bound.setdefault(id(plan), collections.OrderedDict())
            bound = table.get(key)
            if bound is not None:
                table.move_to_end(key)
            refused = self.refusals.get((id(plan), key))
        if refused is not None:
            self._refuse(plan, None, refused)
            return None
        if bound is None:
            reason = unbindable_reason(plan)
            if reason is not None:
                self._refuse(plan, key, reason)
                return None
            bound, outputs = self._bind(plan, feeds, terminate, key)
            if bound is not None:
                with self._lock:
                    table[key] = bound
                    while len(table) > MAX_SIGNATURES:
                        table.popitem(last=False)
            return outputs  # the recording run computed them
        if not bound.lock.acquire(blocking=False):
            return None  # another thread replays this signature now
        try:
            return bound.run(feeds, terminate, targets)
        finally:
            bound.lock.release()

    def bound(self) -> list[BoundPlan]:
        """Every bound plan kept now."""
        with self._lock:
            return [b for table in self._bound.values() for b in table.values()]

    def _refuse(self, plan: Plan, key: tuple | None, reason: str) -> None:
        """Keep why this signature runs unbound; with CUDA graphs asked for, refuse the run."""
        if key is not None:
            self.refusals[(id(plan), key)] = reason
        if self.cuda_graph:
            raise Fail(f"enable_cuda_graph: this run cannot be captured into a CUDA graph: "
                       f"{reason}. Run the session without enable_cuda_graph, or keep these "
                       f"nodes off the host.")

    def _bind(self, plan: Plan, feeds: dict[str, Any], terminate,
              key) -> tuple[BoundPlan | None, list[Any]]:
        """Run ``plan`` once, recording: (the bound plan, or None with the reason kept when the
        recording cannot stand for later runs; this run's fetches)."""
        from .codegen import launch

        inputs, buffers = self._recorded_inputs(feeds)
        if len({t.untyped_storage().data_ptr() for t in inputs.values()}) < len(inputs):
            # which input a launch reads would be ambiguous: record a later run instead
            return None, execute(plan, feeds, terminate)
        with launch.recording() as launches, _Audit() as audit:
            outputs = execute(plan, {**feeds, **inputs}, terminate)
        if audit.refused:
            self._refuse(plan, key, f"the run computes outside its kernels: "
                                    f"{', '.join(sorted(audit.refused))}")
            return None, outputs
        prepared = [launch.Prepared(r) for r in launches]
        writes = _output_views([p.arguments for p in prepared], outputs, audit.allocated)
        del launches  # the recorded tensors go with them once the arena holds their data
        blocks = arena.lifetimes(audit.allocated, [p.arguments for p in prepared], outputs)
        size = arena.place(blocks)
        memory, moved = arena.rebase(blocks, size, self.provider.torch_device)
        for p in prepared:
            p.rebind(moved)
        bound = BoundPlan(inputs, buffers, prepared, [moved(o) for o in outputs],
                          self.interpreted, writes)
        bound.arena, bound.recorded_bytes = memory, sum(b.nbytes for b in blocks)
        if self.cuda_graph and not self.interpreted:
            bound.capture()
        return bound, outputs

    def _recorded_inputs(self, feeds: dict[str, Any]) -> tuple[dict, dict]:
        """The tensor each device-read input is recorded on: the caller's contiguous device
        tensor itself, else a buffer of the plan holding the value; (inputs, those buffers)."""
        import torch

        inputs, buffers = {}, {}
        device = self.provider.torch_device
        for name, value in feeds.items():
            if name not in self.read_on_device or value is None:
                continue
            in_place = _in_place(value, device)
            if in_place is not None:
                inputs[name] = in_place
                continue
            if isinstance(value, np.ndarray):
                # (np.ascontiguousarray would make a 0-d array 1-d)
                value = dlpack.numpy_to_torch(value if value.flags.c_contiguous
                                              else value.copy())
            buffer = torch.empty(tuple(value.shape), dtype=value.dtype, device=device)
            buffer.copy_(value)
            inputs[name] = buffers[name] = buffer
        return inputs, buffers


class _Audit:
    """Torch operations made outside recorded kernels while a plan is recorded: the names of
    those a replay could not repeat."""

    def __enter__(self) -> "_Audit":
        from torch.utils._python_dispatch import TorchDispatchMode

        from .codegen.launch import in_kernel

        audit = self
        self.refused: set[str] = set()
        self.allocated: dict[int, int] = {}  # storage address -> bytes, made by launchers

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                result = func(*args, **(kwargs or {}))
                if not in_kernel():
                    name = func.overloadpacket.__name__
                    if name not in _ALLOCATIONS_AND_VIEWS and not _host_copy(name, args):
                        audit.refused.add(name)
                    elif name in _UNINITIALIZED and result.untyped_storage().nbytes():
                        storage = result.untyped_storage()
                        audit.allocated[storage.data_ptr()] = storage.nbytes()
                return result

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


def _host_copy(name: str, args: Sequence[Any]) -> bool:
    """A copy of host data to a device: what it copies is fixed for the signature."""
    if name not in _HOST_COPIES:
        return False
    source = args[1] if name == "copy_" else args[0]
    target = args[0] if name == "copy_" else None
    if getattr(source, "device", None) is None or source.device.type != "cpu":
        return False
    return name != "copy_" or target.device.type != "cpu"
