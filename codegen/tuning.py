"""Autotuning at launch: the tuned-config table, the config a launch uses, launch recording.

A tunable template (MatMul, Gemm, Conv, attention) launches with a *config* from its
:class:`~tritort.codegen.tuning_space.ConfigSpace`. The Triton provider resolves its device's
:class:`TuningTable` once, at creation, and hands it to every template through the
TemplateContext; each launcher keeps it and asks :func:`choose` for a stored config for
(kernel key, shape key), else the template's size heuristic (its ``pick_config``) decides.
A normal run never times anything: tuning happens only in :func:`tritort.codegen.tuner.tune`,
driven by ``tritort autotune``, on launches recorded while the table was
:meth:`TuningTable.recording`.

Keys
----
* kernel key ``"matmul:float16:batch0"``: template, element type(s) (``AxB`` when the
  operands differ), and the specialization that changes the generated loop (batch rank). Not
  the source hash: the source names the ONNX node in its header and changes with every fused
  epilogue, so a hash would give each node its own key and cosmetic edits would void the
  database. Epilogues are left out: a config decides the main loop's tiling, and an epilogue
  runs once per output tile whatever the tiling.
* shape key ``"b1_m512_n768_k64_nn"``: sizes rounded up to buckets (powers of two and 1.5x
  them: 16, 24, 32, 48, 64, 96, ...) plus the operands' layout (``n`` contiguous along K for A /
  along N for B, ``t`` transposed, ``s`` strided). Buckets, not exact sizes, so dynamic dims (a
  sequence length) find the entry of a neighbouring size: configs change with the number of
  tiles and waves, which moves little within a 1.5x step, while the usual model sizes
  (multiples of 64 or 96) land exactly on a bucket of their own.

Tables
------
The file is :mod:`tritort.codegen.tuning_db`'s. Tables are shared per (database file, device)
within a process, like the kernel cache: the Triton provider loads (or re-reads, if the file
changed) its table at creation, and ``InferenceSession.get_tuning_results`` /
``set_tuning_results`` read and extend it (results set that way live in memory only). Lookups
read immutable snapshots, so they need no lock; changes build a new snapshot under a lock.

Plugging a template in
----------------------
1. Declare its space next to its ``pick_config``::

       SPACE = tuning_space.ConfigSpace(
           "conv", ConvConfig, candidates=_candidates,
           rules=(tuning_space.dot_blocks("block_m", "block_n", "block_k"),
                  tuning_space.within_problem(block_m="M", block_n="N"),
                  tuning_space.shared_memory(_smem_bytes)),
           shape_key=_shape_key, check=_check)

   ``candidates(problem, device)`` lists configs to try, each rule ``(config, problem,
   device)`` returns why to drop one (or None), ``shape_key(problem)`` is the key (use
   :func:`~tritort.codegen.tuning_space.bucket`), ``check(config)`` says why a stored config
   can never be valid.
2. Split its launch into ``_run(fn, cfg, *args)`` (grid from ``cfg``, then the kernel call) and
   a head that picks the config with the table its launcher was given (``ctx.tuning``)::

       problem = {"N": n, "M": m, ...}                 # what shape_key and the rules read
       args = (x, w, y, *extra)          # tensors first: the device comes from args[0]
       cfg = tuning.choose(table, SPACE, f"conv:{dtype}:{spec}", problem,
                           lambda: pick_config(...), args, functools.partial(_run, fn))
       _run(fn, cfg, *args)

   ``_run`` must take every tensor it reads or writes through ``args``: the tuner relaunches
   it on private copies.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .tuning_db import (TuningDBError, db_path, empty_doc, read_db, table_of, well_formed,
                        write_db)
from .tuning_space import (SPACES, ConfigSpace, DeviceInfo, config_dict, device_info,
                           triton_version)
# the tuning API callers (the autotune driver, tests) know by this module's name
from .tuning_db import FORMAT, VERSION  # noqa: F401
from .tuning_space import INTERPRETER, bucket, describe  # noqa: F401

log = logging.getLogger("tritort.tuning")

VALIDATORS = ("DEVICE", "TRITON_VERSION")  # must match; TRITORT_VERSION is informational

# ------------------------------------------------------------------ tables


class TuningTable:
    """The results one device uses: its database table plus entries added in this process."""

    def __init__(self, path: Path, device: DeviceInfo, triton: str | None = None) -> None:
        self.path = Path(path)
        self.device = device
        self.triton = triton or triton_version()
        self._lock = threading.Lock()
        self._file: dict = {}  # kernel -> shape -> entry, as read from the database
        self._local: dict = {}  # set_tuning_results and fresh tunings
        self._unsaved: set[tuple[str, str]] = set()
        self._stamp: tuple | None = None
        # what lookups read, swapped whole: (kernel -> shape -> entry, never changed once
        # published; (kernel, shape) -> parsed config or None, filled as lookups go)
        self._snapshot: tuple[dict, dict] = ({}, {})
        self.recorder: Recorder | None = None  # set while recording()
        self.refresh()

    # -- reading -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the database if the file changed since the last read."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        with self._lock:
            if stamp == self._stamp and self._stamp is not None:
                return
            try:
                doc = read_db(self.path)
            except TuningDBError as e:
                log.warning("%s; using no tuned configs", e)
                doc = empty_doc()
            table = table_of(doc, self.device.name, self.triton)
            where = f"tuning database {self.path}"
            self._file = well_formed(table.get("results"), where) if table else {}
            self._stamp = stamp
            self._publish()

    def _publish(self) -> None:
        merged = copy.deepcopy(self._file)
        for kernel, shapes in self._local.items():
            merged.setdefault(kernel, {}).update(copy.deepcopy(shapes))
        self._snapshot = (merged, {})

    def has(self, kernel: str) -> bool:
        return kernel in self._snapshot[0]

    def entry(self, kernel: str, shape: str) -> dict | None:
        return self._snapshot[0].get(kernel, {}).get(shape)

    def lookup(self, space: ConfigSpace, kernel: str, problem: dict) -> Any:
        """The stored config for this launch, or None."""
        shape = space.shape_key(problem)
        merged, parsed = self._snapshot
        key = (kernel, shape)
        if key in parsed:
            return parsed[key]
        entry = merged.get(kernel, {}).get(shape)
        cfg = None
        if entry is not None:
            try:
                cfg = space.parse(entry["config"])
            except ValueError as e:
                log.warning("tuning entry %s %s ignored: %s", kernel, shape, e)
        parsed[key] = cfg  # a lost race only repeats the parse
        return cfg

    @contextlib.contextmanager
    def recording(self):
        """``with table.recording() as rec: session.run(...)`` -> ``rec.launches``: the first
        launch of every (kernel key, shape key) that takes its config from this table."""
        with self._lock:
            if self.recorder is not None:
                raise RuntimeError("already recording tunable launches")
            self.recorder = recorder = Recorder()
        try:
            yield recorder
        finally:
            self.recorder = None

    def results(self) -> dict:
        """``{kernel key: {shape key: config dict}}``: ORT's tuning results."""
        return {k: {s: dict(e["config"]) for s, e in shapes.items()}
                for k, shapes in self._snapshot[0].items()}

    def validators(self) -> dict:
        from tritort.version import __version__

        return {"DEVICE": self.device.name, "TRITON_VERSION": self.triton,
                "TRITORT_VERSION": __version__}

    # -- changing ----------------------------------------------------------------------------
    def check_results(self, item: Any) -> tuple[str | None, dict]:
        """Validate one ORT tuning-results dict: (why it is invalid or None, kernel ->
        shape -> parsed config)."""
        if not isinstance(item, dict) or not isinstance(item.get("results"), dict):
            return "expected {'ep': ..., 'results': {...}, 'validators': {...}}", {}
        validators = item.get("validators")
        if not isinstance(validators, dict):
            return "'validators' must be a dict", {}
        mine = self.validators()
        for name in VALIDATORS:
            if validators.get(name) != mine[name]:
                return (f"validator {name} mismatch: expected '{mine[name]}', got "
                        f"'{validators.get(name)}'"), {}
        parsed: dict = {}
        for kernel, shapes in item["results"].items():
            space = SPACES.get(kernel.split(":")[0]) if isinstance(kernel, str) else None
            if space is None:
                return f"no tunable template for kernel key '{kernel}'", {}
            if not isinstance(shapes, dict):
                return f"results of '{kernel}' must be a dict of shape key -> config", {}
            for shape, value in shapes.items():
                if not isinstance(shape, str):
                    return f"shape keys must be strings, got {shape!r}", {}
                try:
                    parsed.setdefault(kernel, {})[shape] = space.parse(value)
                except ValueError as e:
                    return f"'{kernel}' '{shape}': {e}", {}
        return None, parsed

    def install(self, configs: dict) -> None:
        """Use ``{kernel: {shape: config}}`` in this process (not saved)."""
        with self._lock:
            for kernel, shapes in configs.items():
                for shape, cfg in shapes.items():
                    self._local.setdefault(kernel, {})[shape] = {
                        "config": config_dict(cfg)}
            self._publish()

    def store(self, kernel: str, shape: str, entry: dict) -> None:
        """A tuned entry: used at once, written by the next :meth:`save`."""
        with self._lock:
            self._local.setdefault(kernel, {})[shape] = copy.deepcopy(entry)
            self._unsaved.add((kernel, shape))
            self._publish()

    def save(self) -> Path:
        """Merge the stored entries into the database file (atomic replace)."""
        with self._lock:
            try:
                doc = read_db(self.path)
            except TuningDBError as e:
                if e.newer:
                    raise TuningDBError(f"{e}: not overwriting it") from None
                aside = self.path.with_name(self.path.name + ".corrupt")
                os.replace(self.path, aside)
                log.warning("%s; moved to %s", e, aside)
                doc = empty_doc()
            doc["version"] = VERSION
            table = table_of(doc, self.device.name, self.triton)
            if table is None:
                table = {"device": self.device.name, "triton": self.triton, "results": {}}
                doc["tables"].append(table)
            if not isinstance(table.get("results"), dict):
                table["results"] = {}
            for kernel, shape in sorted(self._unsaved):
                shapes = table["results"].get(kernel)
                if not isinstance(shapes, dict):
                    shapes = table["results"][kernel] = {}
                shapes[shape] = self._local[kernel][shape]
            write_db(self.path, doc)
            self._unsaved.clear()
            st = self.path.stat()
            self._file = well_formed(table["results"], str(self.path))
            self._stamp = (st.st_mtime_ns, st.st_size)
            self._publish()
        return self.path


_tables: dict[tuple, TuningTable] = {}  # (file, device name) -> table
_registry_lock = threading.Lock()


def table_at(path: Path, device: DeviceInfo) -> TuningTable:
    """The process's table for this database file and device (created on first use)."""
    key = (str(Path(path).resolve()), device.name)
    with _registry_lock:
        table = _tables.get(key)
        if table is None:
            table = _tables[key] = TuningTable(path, device)
        return table


def active_table(torch_device: Any) -> TuningTable:
    """The table of the database :func:`db_path` names now, for ``torch_device``: what a
    Triton provider resolves once, at its creation, and hands its launchers."""
    return table_at(db_path(), device_info(torch_device))


def forget_tables() -> None:
    """Drop every in-memory table (the next use re-reads the files): for tests and tools."""
    with _registry_lock:
        _tables.clear()


def choose(table: TuningTable | None, space: ConfigSpace, kernel: str, problem: dict,
           default: Callable[[], Any], args: Sequence, run: Callable[..., None]) -> Any:
    """The config for one launch: ``table``'s entry, else ``default()`` (the heuristic's; the
    only choice without a table). While the table is recording, the launch is recorded too
    (``run(cfg, *args)`` relaunches it)."""
    if table is None:
        return default()
    cfg = table.lookup(space, kernel, problem) if table.has(kernel) else None
    recorder = table.recorder
    if recorder is None:
        return cfg if cfg is not None else default()
    fallback = default()
    recorder.add(space, kernel, problem, fallback, table.device, args, run)
    return cfg if cfg is not None else fallback


# ------------------------------------------------------------------ recording


@dataclass
class RecordedLaunch:
    space: ConfigSpace
    kernel: str
    shape: str
    problem: dict
    default: Any
    device: DeviceInfo
    args: tuple  # private copies of the launch's tensors (other args as they were)
    run: Callable[..., None]  # run(cfg, *args)


class Recorder:
    """The first launch of every (kernel key, shape key) while its table is recording."""

    def __init__(self) -> None:
        self.launches: list[RecordedLaunch] = []
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def add(self, space, kernel, problem, default, device, args, run) -> None:
        shape = space.shape_key(problem)
        with self._lock:
            if (kernel, shape) in self._seen:
                return
            self._seen.add((kernel, shape))
            self.launches.append(RecordedLaunch(space, kernel, shape, dict(problem), default,
                                                device, tuple(map(private_copy, args)), run))


def private_copy(value: Any) -> Any:
    """A copy of a tensor with the same sizes and strides (stride-0 broadcasts stay views)."""
    import torch

    if not isinstance(value, torch.Tensor):
        return value
    if value.numel() == 0:
        return value.clone()
    span = 1 + sum((n - 1) * s for n, s in zip(value.shape, value.stride()))
    flat = value.as_strided((span,), (1,), value.storage_offset()).clone()
    return flat.as_strided(value.shape, value.stride(), 0)
