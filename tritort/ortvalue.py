"""OrtValue: a tensor, sequence, map or empty optional held by the runtime.

A CPU tensor OrtValue shares memory with the numpy array it was made from, as in ORT.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import dtypes
from .errors import InvalidArgument, EPFail

_DEVICES = ("cpu", "cuda")


def _check_device(device_type: str, device_id: int) -> str:
    device = str(device_type).lower()
    if device not in _DEVICES:
        raise InvalidArgument(f"unknown device_type '{device_type}'; expected one of {_DEVICES}")
    if device == "cuda":
        raise EPFail(f"device 'cuda:{device_id}' is not available in this build: no CUDA device "
                     "is visible (tritort places CUDA values through torch)")
    return device


class OrtValue:
    def __init__(self, value: Any, device: str = "cpu", device_id: int = 0) -> None:
        self._value = value
        self._device = device
        self._device_id = device_id

    # -- construction -----------------------------------------------------------------------
    @staticmethod
    def ortvalue_from_numpy(numpy_obj: np.ndarray, device_type: str = "cpu",
                            device_id: int = 0) -> "OrtValue":
        _check_device(device_type, device_id)
        arr = numpy_obj if isinstance(numpy_obj, np.ndarray) else np.asarray(numpy_obj)
        if arr.dtype.kind in "US":
            arr = arr.astype(object)
        dtypes.from_numpy(arr.dtype)  # refuse dtypes ONNX has no name for
        return OrtValue(arr)

    @staticmethod
    def ortvalue_from_numpy_with_onnx_type(data: np.ndarray, onnx_element_type: int) -> "OrtValue":
        dt = dtypes.from_onnx(onnx_element_type)
        arr = np.asarray(data)
        if arr.dtype.itemsize != dt.itemsize:
            raise InvalidArgument(f"array of {arr.dtype} cannot hold {dt.name}: item size "
                                  f"{arr.dtype.itemsize} != {dt.itemsize}")
        return OrtValue(arr.view(dt.numpy))

    @staticmethod
    def ortvalue_from_shape_and_type(shape: Sequence[int], element_type, device_type: str = "cpu",
                                     device_id: int = 0) -> "OrtValue":
        _check_device(device_type, device_id)
        dt = dtypes.from_any(element_type)
        return OrtValue(np.zeros(tuple(int(d) for d in shape), dtype=dt.numpy))

    # -- inspection -------------------------------------------------------------------------
    def is_tensor(self) -> bool:
        return isinstance(self._value, np.ndarray)

    def is_tensor_sequence(self) -> bool:
        return isinstance(self._value, list)

    def has_value(self) -> bool:
        return self._value is not None

    def is_sparse_tensor(self) -> bool:
        return False

    def _tensor(self) -> np.ndarray:
        if not isinstance(self._value, np.ndarray):
            raise InvalidArgument(f"this OrtValue holds {self.data_type()}, not a tensor")
        return self._value

    def shape(self) -> list[int]:
        return list(self._tensor().shape)

    def data_type(self) -> str:
        return _describe(self._value)

    def element_type(self) -> int:
        return dtypes.from_numpy(self._tensor().dtype).onnx

    def device_name(self) -> str:
        return self._device

    def data_ptr(self) -> int:
        return int(self._tensor().__array_interface__["data"][0])

    def tensor_size_in_bytes(self) -> int:
        return int(self._tensor().nbytes)

    def numpy(self) -> Any:
        return self._value

    def update_inplace(self, np_arr: np.ndarray) -> None:
        dst = self._tensor()
        src = np.asarray(np_arr)
        if src.dtype != dst.dtype or src.size != dst.size:
            raise InvalidArgument(f"update_inplace needs {dst.size} elements of {dst.dtype}, got "
                                  f"{src.size} of {src.dtype}")
        dst.reshape(-1)[...] = src.reshape(-1)

    def __repr__(self) -> str:
        shape = f" shape={self.shape()}" if self.is_tensor() else ""
        return f"OrtValue({self.data_type()}{shape}, device={self._device})"


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"tensor({dtypes.from_numpy(value.dtype).name})"
    if isinstance(value, list):
        inner = _describe(value[0]) if value else "tensor(undefined)"
        return f"seq({inner})"
    if isinstance(value, dict):
        return "map"
    if value is None:
        return "optional(none)"
    return type(value).__name__
