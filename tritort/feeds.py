"""Input conversion and validation, prepared once per session, checked before any work."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from . import dlpack, dtypes
from .errors import InvalidArgument
from .ortvalue import OrtValue
from .sparse import SparseTensor


@dataclass
class NodeArg:
    """ORT's NodeArg: a graph input or output's name, type text and shape."""

    name: str
    type: str
    shape: list

    def __repr__(self) -> str:
        return f"NodeArg(name='{self.name}', type='{self.type}', shape={self.shape})"


def node_arg(vi: onnx.ValueInfoProto) -> NodeArg:
    return NodeArg(vi.name, dtypes.type_string(vi.type), _shape_of(vi.type))


def _shape_of(tp: onnx.TypeProto) -> list:
    inner = tp
    while inner.WhichOneof("value") == "optional_type":
        inner = inner.optional_type.elem_type
    kind = inner.WhichOneof("value")
    if kind not in ("tensor_type", "sparse_tensor_type") \
            or not getattr(inner, kind).HasField("shape"):
        return []
    out: list = []
    for d in getattr(inner, kind).shape.dim:
        which = d.WhichOneof("value")
        out.append(d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param"
                   else None)
    return out


def to_numpy(value: Any) -> Any:
    """A host value from what a user may feed: OrtValue, torch tensor, DLPack producer."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, OrtValue):
        value = value._value
    if dlpack.is_torch(value):
        return dlpack.torch_to_numpy(value)
    if hasattr(value, "__dlpack__") and not isinstance(value, np.generic):
        return dlpack.to_host(dlpack.as_tensor(value))
    return value


def _is_producer(value: Any) -> bool:
    """A torch tensor or another DLPack producer (numpy scalars excepted)."""
    return dlpack.is_torch(value) or (hasattr(value, "__dlpack__")
                                      and not isinstance(value, np.generic)) \
        or dlpack.is_capsule(value)


def _strings(value: np.ndarray) -> np.ndarray:
    """A string tensor from a numpy str, bytes or void array: an object array of ``str`` (what
    onnxruntime returns for strings), bytes decoded as UTF-8; bytes that are not UTF-8 text
    stay ``bytes``. A void element's bytes are all kept, as onnxruntime keeps them."""
    if value.dtype.kind == "U":
        return value.astype(object)
    items = value.reshape(-1)
    raw = [v.tobytes() for v in items] if value.dtype.kind == "V" else items.tolist()
    try:
        text = [b.decode("utf-8") for b in raw]
    except UnicodeDecodeError:
        text = raw
    out = np.empty(len(text), dtype=object)
    out[:] = text
    return out.reshape(value.shape)


class InputSpec:
    """How one graph input is converted and checked."""

    def __init__(self, vi: onnx.ValueInfoProto) -> None:
        self.name = vi.name
        self.type = vi.type
        self.type_text = dtypes.type_string(vi.type)
        tensor = vi.type
        self.optional = tensor.WhichOneof("value") == "optional_type"
        if self.optional:
            tensor = tensor.optional_type.elem_type
        self.kind = tensor.WhichOneof("value")
        self.dtype = None
        self.dims = None
        if self.kind == "tensor_type" and tensor.tensor_type.elem_type:
            self.dtype = dtypes.numpy_dtype(tensor.tensor_type.elem_type)
            self.dtype_text = dtypes.onnx_type_name(tensor.tensor_type.elem_type)
            if tensor.tensor_type.HasField("shape"):
                self.dims = _shape_of(tensor)
        elif self.kind == "sparse_tensor_type" and tensor.sparse_tensor_type.elem_type:
            self.dtype = dtypes.numpy_dtype(tensor.sparse_tensor_type.elem_type)
            self.dtype_text = self.type_text
            if tensor.sparse_tensor_type.HasField("shape"):
                self.dims = _shape_of(tensor)
        elif self.kind == "sequence_type":
            elem = tensor.sequence_type.elem_type
            if elem.WhichOneof("value") == "tensor_type" and elem.tensor_type.elem_type:
                self.dtype = dtypes.numpy_dtype(elem.tensor_type.elem_type)

    # Set by the session once its providers are placed:
    keep_device = False  # a non-host provider reads this input: torch tensors stay torch
    devices: tuple = ()  # the CUDA devices its providers run on, as ('cuda', n)

    def convert(self, value: Any) -> Any:
        if self.kind == "sparse_tensor_type" and value is not None:
            return self._sparse(value._value if isinstance(value, OrtValue) else value)
        if not isinstance(value, np.ndarray) and value is not None:
            if isinstance(value, OrtValue):
                value = value._value
            if isinstance(value, SparseTensor):
                return self._sparse(value)
            if _is_producer(value):
                value = dlpack.as_tensor(value)
                if dlpack.is_torch(value):
                    if self.kind == "tensor_type":
                        return self._torch_tensor(value, self.name)
                    value = dlpack.torch_to_numpy(value)
        if value is None:
            if self.optional:
                return None
            raise InvalidArgument(f"input '{self.name}' is None but its type {self.type_text} "
                                  "is not optional")
        if self.kind == "sequence_type":
            if not isinstance(value, (list, tuple)):
                raise InvalidArgument(f"input '{self.name}' expects a sequence ({self.type_text}),"
                                      f" got {type(value).__name__}")
            return [self._tensor(to_numpy(v), f"{self.name}[{i}]") for i, v in enumerate(value)]
        if self.kind == "map_type":
            if not isinstance(value, dict):
                raise InvalidArgument(f"input '{self.name}' expects a map ({self.type_text}), "
                                      f"got {type(value).__name__}")
            return value
        return self._tensor(value, self.name)

    def _sparse(self, value: Any) -> SparseTensor:
        """A sparse tensor for a ``sparse_tensor(T)`` input, checked against its type."""
        if self.kind != "sparse_tensor_type":
            raise InvalidArgument(f"input '{self.name}' is {self.type_text}, but it was given "
                                  f"a SparseTensor; feed a dense array")
        if not isinstance(value, SparseTensor):
            raise InvalidArgument(
                f"input '{self.name}' is {self.type_text}; it takes a SparseTensor "
                f"(SparseTensor.sparse_coo_from_numpy or sparse_csr_from_numpy), got "
                f"{type(value).__name__}")
        if self.dtype is not None and value._dtype.numpy != self.dtype:
            raise self._type_error(self.name, value._dtype.name)
        if self.dims is not None:
            self._check_shape(tuple(value.dense_shape()), self.name)
        return value

    def _torch_tensor(self, t: Any, where: str) -> Any:
        """Check a torch tensor against the model; keep it for device consumers, else host."""
        try:
            dt = dtypes.from_torch(t.dtype)
        except dtypes.UnknownDType:
            expected = getattr(self, "dtype_text", self.type_text)
            raise InvalidArgument(f"input '{where}': torch dtype {t.dtype} has no ONNX element "
                                  f"type; expected {expected}") from None
        if self.dtype is not None and dt.numpy != self.dtype:
            raise self._type_error(where, dt.name)
        if self.dims is not None:
            self._check_shape(tuple(t.shape), where)
        device = t.device
        if device.type != "cpu" and (device.type, device.index or 0) not in self.devices:
            runs_on = ", ".join(["cpu"] + [f"{d}:{i}" for d, i in self.devices])
            raise InvalidArgument(
                f"input '{where}' is a {device} tensor, but no provider of this session runs "
                f"on {device} (it runs on: {runs_on}); move the tensor there or create the "
                "session with TritonExecutionProvider on that device")
        if t.requires_grad:
            t = t.detach()
        if self.keep_device:
            return t
        return dlpack.torch_to_numpy(t)

    def check(self, dtype: dtypes.DType, shape: tuple, where: str | None = None) -> None:
        """Validate an element type and shape (a bound buffer) without touching data."""
        where = where or self.name
        if self.kind != "tensor_type":
            raise InvalidArgument(f"input '{where}' is {self.type_text}; only tensors can be "
                                  "bound to a buffer")
        if self.dtype is not None and dtype.numpy != self.dtype:
            raise self._type_error(where, dtype.name)
        if self.dims is not None:
            self._check_shape(tuple(shape), where)

    def _type_error(self, where: str, actual: str) -> InvalidArgument:
        expected = self.dtype_text if self.kind == "tensor_type" else self.type_text
        kind = "sparse_tensor" if self.kind == "sparse_tensor_type" else "tensor"
        return InvalidArgument(f"Unexpected input data type for '{where}'. Actual: "
                               f"({kind}({actual})) , expected: ({expected})")

    def _tensor(self, value: Any, where: str) -> np.ndarray:
        if isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_)):
            value = np.asarray(value)  # a numpy scalar has a dtype: checked as a 0-d array
        if not isinstance(value, np.ndarray):
            if isinstance(value, (list, tuple, int, float, bool, str, np.generic)):
                dtype = self.dtype if self.dtype is not None and self.dtype != object else None
                try:
                    value = np.asarray(value, dtype=dtype)
                except (TypeError, ValueError) as e:
                    raise InvalidArgument(f"input '{where}': cannot convert {type(value).__name__}"
                                          f" to {self.type_text}: {e}") from None
            else:
                raise InvalidArgument(f"input '{where}': expected a numpy array, OrtValue, torch "
                                      f"tensor, list or scalar, got {type(value).__name__}")
        if value.dtype.kind in "US" or (value.dtype.kind == "V" and self.dtype == np.object_):
            value = _strings(value)
        if self.dtype is not None and value.dtype != self.dtype:
            actual = dtypes.from_numpy(value.dtype).name if value.dtype in dtypes.BY_NUMPY \
                else str(value.dtype)
            raise self._type_error(where, actual)
        if self.dims is not None and self.kind == "tensor_type":
            self._check_shape(value.shape, where)
        return value

    def _check_shape(self, shape: tuple, where: str) -> None:
        if len(shape) != len(self.dims):
            raise InvalidArgument(f"Invalid rank for input: {where} Got: {len(shape)} Expected: "
                                  f"{len(self.dims)} (expected shape {self.dims}, got "
                                  f"{list(shape)}) Please fix either the inputs or the model.")
        bad = [(i, got, want) for i, (got, want) in enumerate(zip(shape, self.dims))
               if isinstance(want, int) and got != want]
        if bad:
            detail = "; ".join(f"index: {i} Got: {g} Expected: {w}" for i, g, w in bad)
            raise InvalidArgument(f"Got invalid dimensions for input: {where} for the following "
                                  f"indices {detail} (expected shape {self.dims}, got "
                                  f"{list(shape)}) Please fix either the inputs or the model.")
