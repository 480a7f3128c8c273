"""Autotuning: config spaces, the tuning database, the lookup at launch, launch recording.

A tunable template (MatMul, Gemm, Conv, attention) launches with a *config*: a frozen
dataclass of ints (tiles, group size, num_warps, num_stages). At every launch
:meth:`ConfigSpace.choose` asks the device's :class:`TuningTable` for a stored config for
(kernel key, shape key); without one the
template's size heuristic (its ``pick_config``) decides. A normal run never times anything:
tuning happens only in :func:`tritort.codegen.tuner.tune`, driven by ``perf/autotune.py``, on launches
recorded while a session ran under :func:`recording`.

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

Database
--------
One JSON file, by default ``tuning.json`` next to the kernel cache (``cache_dir().parent``),
moved with ``TRITORT_TUNING_DB``::

    {"format": "tritort-tuning", "version": 1,
     "tables": [{"device": "NVIDIA H100 80GB HBM3", "triton": "3.5.0",
                 "results": {"matmul:float16:batch0": {"b1_m512_n768_k64_nn": {
                     "config": {"block_m": 128, "block_n": 128, "block_k": 64,
                                "group_m": 8, "num_warps": 4, "num_stages": 4},
                     "default": {...}, "default_ms": 0.031, "tuned_ms": 0.022,
                     "problem": {"batch": 1, "M": 500, ...}, "tritort": "0.1.0"}}}}]}

``device`` is ``torch.cuda.get_device_name()`` or ``"triton-interpreter"``. Only the table of
the current (device, triton version) is read; the others are kept as they are when the file is
rewritten. Writes merge into what is on disk and replace the file atomically. A file that is not
valid JSON is ignored with a warning (and moved aside to ``*.corrupt`` on the next save); one
from a newer format version is never overwritten.

Tables are shared per (database file, device) within a process, like the kernel cache: the
Triton provider loads (or re-reads, if the file changed) its table at creation, and
``InferenceSession.get_tuning_results`` / ``set_tuning_results`` read and extend it (results set
that way live in memory only). Lookups read immutable snapshots, so they need no lock; changes
build a new snapshot under a lock.

Plugging a template in
----------------------
1. Declare its space next to its ``pick_config``::

       SPACE = tuning.ConfigSpace("conv", ConvConfig, candidates=_candidates,
                                  rules=(tuning.dot_blocks("block_m", "block_n", "block_k"),
                                         tuning.within_problem(block_m="M", block_n="N"),
                                         tuning.shared_memory(_smem_bytes)),
                                  shape_key=_shape_key, check=_check)

   ``candidates(problem, device)`` lists configs to try, each rule ``(config, problem,
   device)`` returns why to drop one (or None), ``shape_key(problem)`` is the key (use
   :func:`bucket`), ``check(config)`` says why a stored config can never be valid.
2. Split its launch into ``_run(fn, cfg, *args)`` (grid from ``cfg``, then the kernel call) and
   a head that picks the config::

       problem = {"N": n, "M": m, ...}                 # what shape_key and the rules read
       args = (x, w, y, *extra)          # tensors first: the device comes from args[0]
       cfg = SPACE.choose(f"conv:{dtype}:{spec}", problem,
                          lambda: pick_config(...), args, functools.partial(_run, fn))
       _run(fn, cfg, *args)

   ``_run`` must take every tensor it reads or writes through ``args``: the tuner relaunches
   it on private copies.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import cache

log = logging.getLogger("tritort.tuning")

FORMAT = "tritort-tuning"
VERSION = 1
INTERPRETER = "triton-interpreter"
VALIDATORS = ("DEVICE", "TRITON_VERSION")  # must match; TRITORT_VERSION is informational
SPACES: dict[str, "ConfigSpace"] = {}  # template name (a kernel key's first part) -> space

# ------------------------------------------------------------------ devices


@dataclass(frozen=True)
class DeviceInfo:
    name: str  # the database's device key
    interpreted: bool
    shared_memory: int  # bytes one program may use


_devices: dict[tuple, DeviceInfo] = {}


def device_info(torch_device: Any) -> DeviceInfo:
    key = (torch_device.type, torch_device.index)
    info = _devices.get(key)
    if info is None:
        if torch_device.type != "cuda":  # Triton's interpreter on torch CPU tensors
            info = DeviceInfo(INTERPRETER, True, 1 << 30)
        else:
            import torch

            index = torch_device.index if torch_device.index is not None else \
                torch.cuda.current_device()
            info = DeviceInfo(torch.cuda.get_device_name(index), False, _shared_memory(index))
        _devices[key] = info
    return info


def _shared_memory(index: int) -> int:
    try:
        import triton

        return int(triton.runtime.driver.active.utils.get_device_properties(index)
                   ["max_shared_mem"])
    except Exception:  # an older driver API: torch's figure, else a common floor
        import torch

        props = torch.cuda.get_device_properties(index)
        return int(getattr(props, "shared_memory_per_block_optin", 48 * 1024))


def triton_version() -> str:
    import triton

    return triton.__version__


# ------------------------------------------------------------------ config spaces

Rule = Callable[[Any, dict, DeviceInfo], "str | None"]


def bucket(n: int, floor: int = 1) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (2**k and 1.5 * 2**k) >= n."""
    n = max(int(n), floor, 1)
    pow2 = 1 << (n - 1).bit_length()
    three_quarters = 3 * pow2 // 4
    return three_quarters if pow2 >= 4 and three_quarters >= n else pow2


def pow2_at_least(n: int, floor: int = 16) -> int:
    return max(floor, 1 << max(int(n) - 1, 0).bit_length())


def stored_config_check(blocks: Sequence[str], low: int = 1, high: int = 1 << 30):
    """A ``check`` for :class:`ConfigSpace`: why a stored config can never launch (block
    fields not powers of two in [low, high], num_warps not a power of two <= 32, more than 8
    stages), or None."""
    def check(cfg) -> str | None:
        for name in blocks:
            v = getattr(cfg, name)
            if v < low or v & (v - 1) or v > high:
                return f"{name}={v} is not a power of two in [{low}, {high}]"
        if cfg.num_warps not in (1, 2, 4, 8, 16, 32):
            return f"num_warps={cfg.num_warps} is not a power of two <= 32"
        return f"num_stages={cfg.num_stages} > 8" if cfg.num_stages > 8 else None

    return check


def dot_blocks(*fields: str) -> Rule:
    """tl.dot needs every block dim >= 16."""
    def rule(cfg, problem, device):
        small = [f"{f}={getattr(cfg, f)}" for f in fields if getattr(cfg, f) < 16]
        return f"{', '.join(small)} < 16 (tl.dot)" if small else None
    return rule


def within_problem(**dims: str) -> Rule:
    """Drop tiles larger than their problem dim rounded up to a power of two (>= 16)."""
    def rule(cfg, problem, device):
        for f, dim in dims.items():
            if getattr(cfg, f) > pow2_at_least(problem[dim]):
                return f"{f}={getattr(cfg, f)} > {dim}={problem[dim]}"
        return None
    return rule


def shared_memory(estimate: Callable[[Any, dict], int]) -> Rule:
    """Drop configs whose staged tiles (``estimate(cfg, problem)`` bytes) overflow the device."""
    def rule(cfg, problem, device):
        need = estimate(cfg, problem)
        if need > device.shared_memory:
            return f"shared memory {need // 1024} KiB > {device.shared_memory // 1024} KiB"
        return None
    return rule


def describe(cfg: Any) -> str:
    short = {"num_warps": "warps", "num_stages": "stages"}
    return " ".join(f"{short.get(f.name, f.name.removeprefix('block_'))}={getattr(cfg, f.name)}"
                    for f in dataclasses.fields(cfg))


@dataclass(frozen=True, eq=False)
class ConfigSpace:
    """One tunable template's configs: candidates, pruning rules, shape key (module docstring)."""

    template: str
    config_type: type
    candidates: Callable[[dict, DeviceInfo], Iterable[Any]]
    rules: tuple = ()
    shape_key: Callable[[dict], str] = str
    check: Callable[[Any], "str | None"] | None = None

    def __post_init__(self) -> None:
        SPACES[self.template] = self

    def pruned(self, problem: dict, device: DeviceInfo, default: Any = None,
               limit: int | None = None) -> tuple[list, list[tuple[Any, str]]]:
        """(configs to try, default first; [(config, why dropped)])."""
        kept, dropped, seen = [], [], set()
        for cfg in ([default] if default is not None else []) + list(
                self.candidates(problem, device)):
            if cfg in seen:
                continue
            seen.add(cfg)
            reason = next((r for rule in self.rules if (r := rule(cfg, problem, device))), None)
            if reason is not None and cfg != default:  # the default runs anyway
                dropped.append((cfg, reason))
            elif limit is not None and len(kept) >= limit:
                dropped.append((cfg, f"over the limit of {limit} candidates"))
            else:
                kept.append(cfg)
        return kept, dropped

    def parse(self, value: Any) -> Any:
        """A config from its JSON dict; ValueError saying what is wrong."""
        names = [f.name for f in dataclasses.fields(self.config_type)]
        if not isinstance(value, dict):
            raise ValueError(f"a {self.template} config is a dict of {names}, got "
                             f"{type(value).__name__}")
        if set(value) != set(names):
            raise ValueError(f"a {self.template} config has the fields {names}, got "
                             f"{sorted(map(str, value))}")
        bad = [k for k, v in value.items() if type(v) is not int or v <= 0]
        if bad:
            raise ValueError(f"{self.template} config fields {bad} must be positive ints")
        cfg = self.config_type(**value)
        reason = self.check(cfg) if self.check is not None else None
        if reason:
            raise ValueError(f"invalid {self.template} config {value}: {reason}")
        return cfg

    def choose(self, kernel: str, problem: dict, default: Callable[[], Any], args: Sequence,
               run: Callable[..., None], table: "TuningTable | None" = None) -> Any:
        """The config for one launch: the table's entry, else ``default()``. While
        :func:`recording`, the launch is also recorded (``run(cfg, *args)`` relaunches it)."""
        table = table if table is not None else active_table(args[0].device)
        cfg = table.lookup(self, kernel, problem) if table.has(kernel) else None
        recorder = _recorder
        if recorder is None:
            return cfg if cfg is not None else default()
        fallback = default()
        recorder.add(self, kernel, problem, fallback, table.device, args, run)
        return cfg if cfg is not None else fallback


# ------------------------------------------------------------------ the database file


class TuningDBError(ValueError):
    def __init__(self, message: str, newer: bool = False) -> None:
        super().__init__(message)
        self.newer = newer  # written by a newer tritort: never overwrite it


def db_path() -> Path:
    env = os.environ.get("TRITORT_TUNING_DB")
    return Path(env) if env else cache.cache_dir().parent / "tuning.json"


def _empty_doc() -> dict:
    return {"format": FORMAT, "version": VERSION, "tables": []}


def read_db(path: Path) -> dict:
    """The parsed file (an empty document if there is none); TuningDBError if unusable."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return _empty_doc()
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise TuningDBError(f"tuning database {path} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or \
            not isinstance(doc.get("tables"), list):
        raise TuningDBError(f"tuning database {path} is not a {FORMAT} file (expected "
                            f"{{'format': '{FORMAT}', 'version': {VERSION}, 'tables': [...]}})")
    version = doc.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise TuningDBError(f"tuning database {path} has format version {version!r}; this "
                            f"tritort reads version {VERSION}",
                            newer=isinstance(version, int))
    return doc


def write_db(path: Path, doc: dict) -> None:
    """Atomic: a temporary file in the same folder, then a rename over the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_tuning_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _table_of(doc: dict, device: str, triton: str) -> dict | None:
    for table in doc["tables"]:
        if isinstance(table, dict) and table.get("device") == device and \
                table.get("triton") == triton:
            return table
    return None


def _well_formed(results: Any, where: str) -> dict:
    """``{kernel: {shape: entry-with-a-config-dict}}``, malformed parts dropped with a warning."""
    good: dict = {}
    if not isinstance(results, dict):
        log.warning("%s: 'results' is not a dict; ignored", where)
        return good
    for kernel, shapes in results.items():
        if not isinstance(shapes, dict):
            log.warning("%s: entries of %s are not a dict; ignored", where, kernel)
            continue
        for shape, entry in shapes.items():
            if isinstance(entry, dict) and isinstance(entry.get("config"), dict):
                good.setdefault(kernel, {})[shape] = entry
            else:
                log.warning("%s: %s %s has no 'config' dict; ignored", where, kernel, shape)
    return good


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
                doc = _empty_doc()
            table = _table_of(doc, self.device.name, self.triton)
            where = f"tuning database {self.path}"
            self._file = _well_formed(table.get("results"), where) if table else {}
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
                        "config": dataclasses.asdict(cfg)}
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
                doc = _empty_doc()
            doc["version"] = VERSION
            table = _table_of(doc, self.device.name, self.triton)
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
            self._file = _well_formed(table["results"], str(self.path))
            self._stamp = (st.st_mtime_ns, st.st_size)
            self._publish()
        return self.path


_tables: dict[tuple, TuningTable] = {}  # (file, device name) -> table
_by_env: dict[tuple, TuningTable] = {}  # what a launch looks up: env spellings, torch device
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
    """The table launches on ``torch_device`` use: the one of :func:`db_path`."""
    env = os.environ.get
    key = (env("TRITORT_TUNING_DB"), env("TRITORT_CACHE_DIR"), env("XDG_CACHE_HOME"),
           torch_device.type, torch_device.index)
    table = _by_env.get(key)
    if table is None:
        table = table_at(db_path(), device_info(torch_device))
        _by_env[key] = table
    return table


def forget_tables() -> None:
    """Drop every in-memory table (the next use re-reads the files): for tests and tools."""
    with _registry_lock:
        _tables.clear()
        _by_env.clear()


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
    """The first launch of every (kernel key, shape key) while :func:`recording`."""

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


_recorder: Recorder | None = None


@contextlib.contextmanager
def recording():
    """``with recording() as rec: session.run(...)`` -> ``rec.launches``."""
    global _recorder
    if _recorder is not None:
        raise RuntimeError("already recording tunable launches")
    _recorder = Recorder()
    try:
        yield _recorder
    finally:
        _recorder = None


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
