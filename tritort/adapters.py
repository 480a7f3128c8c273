"""LoRA adapters in onnxruntime's ``.onnx_adapter`` format: ``AdapterFormat`` reads and
writes the files, ``LoraAdapter`` loads one for ``RunOptions.add_active_adapter``.

An adapter is a set of named tensors (its parameters) plus a format, adapter and model
version. A run with active adapters feeds each parameter to the model input (or overridable
initializer) of the same name, so one session serves several fine-tunes, chosen per run. As
in onnxruntime, the first active adapter that names an input wins, over later adapters and
over the run's own feed.

The file is a FlatBuffer (schema ``onnxruntime.adapters``, identifier ``TORT``)::

    table Adapter   { format_version:int; adapter_version:int; model_version:int;
                      parameters:[Parameter]; }
    table Parameter { name:string; dims:[long]; data_type:int (ONNX's element type);
                      raw_data:[ubyte] (little-endian, row-major); }

read and written here with ``struct``: every offset is checked against the buffer, so a
truncated or foreign file is an ``InvalidArgument`` naming it, never a crash.
"""
from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import dlpack, dtypes
from .errors import InvalidArgument, NoSuchFile
from .ortvalue import OrtValue

FORMAT_VERSION = 1
_IDENTIFIER = b"TORT"
_NOT_ADAPTER = "The buffer does not appear to be a valid lora parameter format"


# -- the FlatBuffer -----------------------------------------------------------------------
class _Table:
    """A FlatBuffer table at ``pos``: fields by index, every read bounds-checked."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - _unpack(buf, "<i", pos)
        self.vtable_size = _unpack(buf, "<H", self.vtable)
        if self.vtable_size < 4 or self.vtable_size % 2:
            raise ValueError(f"vtable size {self.vtable_size}")

    def _offset(self, index: int) -> int:
        entry = 4 + 2 * index
        return _unpack(self.buf, "<H", self.vtable + entry) if entry < self.vtable_size else 0

    def scalar(self, index: int, fmt: str, default: int) -> int:
        off = self._offset(index)
        return _unpack(self.buf, fmt, self.pos + off) if off else default

    def _target(self, index: int) -> int | None:
        off = self._offset(index)
        if not off:
            return None
        where = self.pos + off
        return where + _unpack(self.buf, "<I", where)

    def vector(self, index: int) -> tuple[int, int]:
        """(position of the first element, length); (0, 0) when absent."""
        at = self._target(index)
        if at is None:
            return 0, 0
        return at + 4, _unpack(self.buf, "<I", at)

    def string(self, index: int) -> str:
        start, length = self.vector(index)
        if start + length > len(self.buf):
            raise ValueError("string past the end")
        return self.buf[start:start + length].decode("utf-8")

    def table(self, vector_start: int, i: int) -> "_Table":
        where = vector_start + 4 * i
        return _Table(self.buf, where + _unpack(self.buf, "<I", where))


def _unpack(buf: bytes, fmt: str, pos: int) -> int:
    if pos < 0 or pos + struct.calcsize(fmt) > len(buf):
        raise ValueError(f"offset {pos} outside the buffer ({len(buf)} bytes)")
    return struct.unpack_from(fmt, buf, pos)[0]


def decode(buf: bytes, where: str = "<bytes>") -> tuple[int, int, int, dict[str, np.ndarray]]:
    """(format_version, adapter_version, model_version, {name: array}) of an adapter file's
    bytes. The arrays view ``buf`` (read-only) where their data is aligned."""
    if len(buf) < 8 or buf[4:8] != _IDENTIFIER:
        raise InvalidArgument(f"{_NOT_ADAPTER}: {where} does not start with an onnxruntime "
                              "adapter header (identifier 'TORT')")
    try:
        root = _Table(buf, _unpack(buf, "<I", 0))
        versions = [root.scalar(i, "<i", 0) for i in range(3)]
        start, count = root.vector(3)
        params: dict[str, np.ndarray] = {}
        for i in range(count):
            param = root.table(start, i)
            name = param.string(0)
            dims_at, rank = param.vector(1)
            dims = [_unpack(buf, "<q", dims_at + 8 * k) for k in range(rank)]
            code = param.scalar(2, "<i", 0)
            raw_at, nbytes = param.vector(3)
            params[name] = _array(buf, name, dims, code, raw_at, nbytes, where)
    except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise InvalidArgument(f"{_NOT_ADAPTER}: {where} is damaged ({e})") from None
    if versions[0] != FORMAT_VERSION:
        raise InvalidArgument(f"{where}: adapter format version {versions[0]}; tritort reads "
                              f"version {FORMAT_VERSION}, as onnxruntime does")
    return versions[0], versions[1], versions[2], params


def _array(buf: bytes, name: str, dims: list[int], code: int, at: int, nbytes: int,
           where: str) -> np.ndarray:
    try:
        dt = dtypes.from_onnx(code)
    except dtypes.UnknownDType:
        raise InvalidArgument(f"{where}: parameter '{name}' has element type {code}, which "
                              "ONNX does not define") from None
    if dt.onnx not in SUPPORTED:
        raise InvalidArgument(f"{where}: {_unsupported(name, dt)}")
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"{where}: parameter '{name}' has dims {dims}")
    count = int(np.prod(dims, dtype=np.int64))
    if count * dt.itemsize != nbytes or at + nbytes > len(buf):
        raise InvalidArgument(f"{where}: parameter '{name}' of shape {dims} and type "
                              f"{dt.name} needs {count * dt.itemsize} bytes; the file holds "
                              f"{nbytes}{' (past its end)' if at + nbytes > len(buf) else ''}")
    stored = dt.numpy if sys.byteorder == "little" else dt.numpy.newbyteorder("<")
    arr = np.frombuffer(buf, dtype=stored, count=count, offset=at)
    if not arr.dtype.isnative or not arr.flags.aligned:
        arr = arr.astype(dt.numpy)  # a copy, native and aligned
    return arr.reshape(dims)


# the element types onnxruntime accepts in an adapter (as ONNX element types)
SUPPORTED = frozenset(dtypes.BY_NAME[n].onnx for n in (
    "float", "uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "double", "uint32",
    "uint64", "bfloat16", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz"))


def _unsupported(name: str, dt: dtypes.DType) -> str:
    return (f"adapter parameter '{name}' is tensor({dt.name}), not a supported LoRA parameter "
            f"type (onnxruntime reads {sorted(dtypes.from_onnx(c).name for c in SUPPORTED)})")


def encode(format_version: int, adapter_version: int, model_version: int,
           params: Mapping[str, np.ndarray]) -> bytes:
    """An adapter file's bytes. Laid out front to back: every offset points forward, int64
    dims and raw data start 8-byte aligned."""
    out = bytearray()

    def put(fmt: str, *values: Any) -> int:
        at = len(out)
        out.extend(struct.pack(fmt, *values))
        return at

    def patch_offset(field_at: int, target: int) -> None:
        struct.pack_into("<I", out, field_at, target - field_at)

    def align(n: int, extra: int = 0) -> None:  # pad until (len + extra) % n == 0
        while (len(out) + extra) % n:
            out.append(0)

    put("<I", 0)
    out.extend(_IDENTIFIER)
    vtable = put("<6H", 12, 20, 4, 8, 12, 16)
    root = put("<iiiiI", 0, format_version, adapter_version, model_version, 0)
    struct.pack_into("<i", out, root, root - vtable)
    struct.pack_into("<I", out, 0, root)
    items = list(params.items())
    align(4)
    vector = put("<I", len(items))
    patch_offset(root + 16, vector)
    slots = [put("<I", 0) for _ in items]
    tables = []
    for slot, (name, arr) in zip(slots, items):
        align(4)
        vt = put("<6H", 12, 20, 4, 8, 12, 16)
        table = put("<iIIiI", 0, 0, 0, dtypes.from_numpy(arr.dtype).onnx, 0)
        struct.pack_into("<i", out, table, table - vt)
        patch_offset(slot, table)
        tables.append(table)
    for table, (name, arr) in zip(tables, items):
        data = name.encode("utf-8")
        align(4)
        patch_offset(table + 4, put("<I", len(data)))
        out.extend(data + b"\0")
        align(8, extra=4)
        patch_offset(table + 8, put("<I", arr.ndim))
        out.extend(struct.pack(f"<{arr.ndim}q", *arr.shape))
        raw = np.ascontiguousarray(arr)
        if sys.byteorder != "little":
            raw = raw.astype(raw.dtype.newbyteorder("<"))
        align(8, extra=4)
        patch_offset(table + 16, put("<I", raw.nbytes))
        out.extend(raw.tobytes())
    align(4)
    return bytes(out)


def _parameter_array(name: Any, value: Any) -> np.ndarray:
    if not isinstance(name, str):
        raise InvalidArgument(f"adapter parameter names are strings, got {type(name).__name__}")
    if isinstance(value, OrtValue):
        if not value.is_tensor():
            raise InvalidArgument(f"adapter parameter '{name}' holds {value.data_type()}; "
                                  "parameters are tensors")
        value = value.numpy()
    elif dlpack.is_torch(value):
        value = dlpack.torch_to_numpy(value)
    arr = np.asarray(value)
    try:
        dt = dtypes.from_numpy(arr.dtype)
    except dtypes.UnknownDType:
        raise InvalidArgument(f"adapter parameter '{name}' has dtype {arr.dtype}, which has no "
                              "ONNX element type") from None
    if dt.onnx not in SUPPORTED:
        raise InvalidArgument(_unsupported(name, dt))
    return arr


def _read(file_path: Any) -> tuple[int, int, int, dict[str, np.ndarray]]:
    path = Path(os.fspath(file_path))
    if not path.is_file():
        raise NoSuchFile(f"adapter file {path} does not exist")
    return decode(path.read_bytes(), str(path))


# -- the public classes --------------------------------------------------------------------
class AdapterFormat:
    """Reads and writes onnxruntime adapter files (``.onnx_adapter``)."""

    def __init__(self, adapter: Any = None) -> None:
        self._format_version = FORMAT_VERSION
        self._adapter_version = 0
        self._model_version = 0
        self._parameters: dict[str, np.ndarray] = {}
        if isinstance(adapter, AdapterFormat):
            self.__dict__.update(adapter.__dict__)
        elif adapter is not None:
            raise InvalidArgument(f"AdapterFormat(adapter) takes another AdapterFormat, got "
                                  f"{type(adapter).__name__}; use AdapterFormat.read_adapter")

    @staticmethod
    def read_adapter(file_path: os.PathLike | str) -> "AdapterFormat":
        fmt = AdapterFormat()
        (fmt._format_version, fmt._adapter_version, fmt._model_version,
         fmt._parameters) = _read(file_path)
        return fmt

    def export_adapter(self, file_path: os.PathLike | str) -> None:
        """Write the parameters and versions to ``file_path`` in onnxruntime's format."""
        data = encode(self._format_version, self._adapter_version, self._model_version,
                      self._parameters)
        Path(os.fspath(file_path)).write_bytes(data)

    def get_format_version(self) -> int:
        return self._format_version

    def set_adapter_version(self, adapter_version: int) -> None:
        self._adapter_version = _int32(adapter_version, "adapter_version")

    def get_adapter_version(self) -> int:
        return self._adapter_version

    def set_model_version(self, model_version: int) -> None:
        self._model_version = _int32(model_version, "model_version")

    def get_model_version(self) -> int:
        return self._model_version

    def set_parameters(self, params: Mapping[str, OrtValue]) -> None:
        """The parameters to export: name -> OrtValue (numpy arrays and torch tensors are
        taken too)."""
        self._parameters = {name: _parameter_array(name, v) for name, v in params.items()}

    def get_parameters(self) -> dict[str, OrtValue]:
        """name -> OrtValue; after read_adapter, views of the file's bytes (read-only)."""
        return {name: OrtValue(arr) for name, arr in self._parameters.items()}


def _int32(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not -2**31 <= int(value) < 2**31:
        raise TypeError(f"{what} must be a 32-bit int, got {value!r}")
    return int(value)


class LoraAdapter:
    """A LoRA adapter loaded from an onnxruntime adapter file, for
    ``RunOptions.add_active_adapter``."""

    def __init__(self) -> None:
        self._parameters: dict[str, np.ndarray] | None = None
        self._path: str | None = None

    def Load(self, file_path: os.PathLike | str) -> None:  # noqa: N802  (ORT's name)
        """Read the adapter's parameters from ``file_path``."""
        _, self._adapter_version, self._model_version, params = _read(file_path)
        self._parameters, self._path = params, os.fspath(file_path)

    @property
    def parameters(self) -> dict[str, np.ndarray]:
        """name -> array of the loaded adapter (read-only views of the file's bytes)."""
        if self._parameters is None:
            raise InvalidArgument("this LoraAdapter has not been loaded; call Load(path)")
        return dict(self._parameters)

    def __repr__(self) -> str:
        if self._parameters is None:
            return "LoraAdapter(not loaded)"
        return f"LoraAdapter('{self._path}', parameters={sorted(self._parameters)})"


def active_feeds(adapters: list[LoraAdapter]) -> dict[str, np.ndarray]:
    """The inputs a run's active adapters feed: the first adapter naming an input wins."""
    feeds: dict[str, np.ndarray] = {}
    for adapter in adapters:
        for name, arr in adapter.parameters.items():
            feeds.setdefault(name, arr)
    return feeds
