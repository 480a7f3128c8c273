"""Input conversion and validation, prepared once per session, checked before any work."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from . import dtypes
from .errors import InvalidArgument
from .ortvalue import OrtValue


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
    if inner.WhichOneof("value") != "tensor_type" or not inner.tensor_type.HasField("shape"):
        return []
    out: list = []
    for d in inner.tensor_type.shape.dim:
        which = d.WhichOneof("value")
        out.append(d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param"
                   else None)
    return out


def to_numpy(value: Any) -> Any:
    """A runtime value from what a user may feed: OrtValue, torch tensor, DLPack producer."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, OrtValue):
        return value.numpy()
    if type(value).__module__.startswith("torch"):
        return _torch_to_numpy(value)
    return value


def _torch_to_numpy(t) -> np.ndarray:
    if t.device.type != "cpu":
        raise InvalidArgument(f"a {t.device} torch tensor was fed to a CPU run; bind it with "
                              "IOBinding or move it to the CPU")
    dt = dtypes.from_torch(t.dtype)
    if t.dtype.is_floating_point and dt.onnx in dtypes.LOW_PRECISION_FLOATS:
        import torch

        raw = torch.int16 if dt.itemsize == 2 else torch.uint8
        return np.from_dlpack(t.detach().view(raw)).view(dt.numpy)
    return np.from_dlpack(t.detach())


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
        elif self.kind == "sequence_type":
            elem = tensor.sequence_type.elem_type
            if elem.WhichOneof("value") == "tensor_type" and elem.tensor_type.elem_type:
                self.dtype = dtypes.numpy_dtype(elem.tensor_type.elem_type)

    def convert(self, value: Any) -> Any:
        value = to_numpy(value)
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

    def _tensor(self, value: Any, where: str) -> np.ndarray:
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
        if value.dtype.kind in "US":
            value = value.astype(object)
        if self.dtype is not None and value.dtype != self.dtype:
            actual = dtypes.from_numpy(value.dtype).name if value.dtype in dtypes.BY_NUMPY \
                else str(value.dtype)
            raise InvalidArgument(f"Unexpected input data type for '{where}'. Actual: "
                                  f"(tensor({actual})) , expected: "
                                  f"({self.dtype_text if self.kind == 'tensor_type' else self.type_text})")
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
