"""OrtValue: a tensor, sequence, map or empty optional held by the runtime.

A tensor lives in a numpy array (CPU; ml_dtypes for bfloat16/float8/int4) or a torch tensor
(CPU or CUDA: what the Triton provider produces, or what the caller bound). Construction from
numpy or through DLPack shares memory, as in ORT; only a CPU -> CUDA placement copies.
``__dlpack__``/``__dlpack_device__`` let ``torch.from_dlpack(v)`` and ``np.from_dlpack(v)``
view the same memory.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import dlpack, dtypes
from .errors import InvalidArgument
from .sparse import SparseTensor


def _check_device(device_type: str, device_id: int) -> tuple[str, int]:
    return dlpack.parse_device(device_type, device_id)


def _dtype(element_type: Any) -> dtypes.DType:
    try:
        return dtypes.from_any(element_type)
    except (dtypes.UnknownDType, TypeError) as e:
        raise InvalidArgument(f"unsupported element type {element_type!r}: "
                              f"{e.args[0] if e.args else e}") from None


def _torch_dtype(dt: dtypes.DType, where: str):
    if dt.torch is None or dt.numpy == np.object_:
        raise InvalidArgument(f"{where}: tensor({dt.name}) cannot live on a CUDA device "
                              "(torch has no such dtype); keep it on the CPU")
    import torch

    return getattr(torch, dt.torch)


class OrtValue:
    """ORT's OrtValue. ``OrtValue(value)`` wraps a numpy array, torch tensor, list or None."""

    __slots__ = ("_value",)

    def __init__(self, value: Any, *_unused: Any) -> None:
        self._value = value

    # -- construction -----------------------------------------------------------------------
    @staticmethod
    def ortvalue_from_numpy(numpy_obj: Any, device_type: str = "cpu",
                            device_id: int = 0) -> "OrtValue":
        """CPU: shares the array's memory. CUDA: a copy on the device (through torch)."""
        device = _check_device(device_type, device_id)
        if dlpack.is_torch(numpy_obj):
            arr = dlpack.torch_to_numpy(numpy_obj)
        else:
            arr = numpy_obj if isinstance(numpy_obj, np.ndarray) else np.asarray(numpy_obj)
        if arr.dtype.kind in "US":
            arr = arr.astype(object)
        dt = _dtype(arr.dtype)  # refuse dtypes ONNX has no name for
        if device[0] == "cpu":
            return OrtValue(arr)
        _torch_dtype(dt, "ortvalue_from_numpy")
        return OrtValue(dlpack.numpy_to_torch(arr).to(dlpack.device_text(device)))

    @staticmethod
    def ortvalue_from_numpy_with_onnx_type(data: np.ndarray, onnx_element_type: int) -> "OrtValue":
        """The array's bytes read as ``onnx_element_type`` (e.g. uint16 bits as bfloat16)."""
        dt = _dtype(int(onnx_element_type))
        arr = np.asarray(data)
        if arr.dtype.itemsize != dt.itemsize:
            raise InvalidArgument(f"array of {arr.dtype} cannot hold {dt.name}: item size "
                                  f"{arr.dtype.itemsize} != {dt.itemsize}")
        return OrtValue(arr.view(dt.numpy))

    @staticmethod
    def ortvalue_from_shape_and_type(shape: Sequence[int] | None = None, element_type: Any = None,
                                     device_type: str = "cpu", device_id: int = 0) -> "OrtValue":
        """A zero-filled tensor; ``element_type`` is a numpy dtype or an ONNX TensorProto enum."""
        if shape is None or element_type is None:
            raise InvalidArgument("ortvalue_from_shape_and_type needs shape and element_type")
        device = _check_device(device_type, device_id)
        dt = _dtype(element_type)
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise InvalidArgument(f"shape must be a sequence of ints, got {shape!r}") from None
        if any(d < 0 for d in dims):
            raise InvalidArgument(f"shape {list(dims)} has a negative dimension")
        if device[0] == "cpu":
            return OrtValue(np.zeros(dims, dtype=dt.numpy))
        import torch

        return OrtValue(torch.zeros(dims, dtype=_torch_dtype(dt, "ortvalue_from_shape_and_type"),
                                    device=dlpack.device_text(device)))

    @staticmethod
    def from_dlpack(data: Any, is_bool_tensor: bool = False) -> "OrtValue":
        """Any ``__dlpack__`` producer (torch, numpy, another OrtValue, ...) or a capsule.

        Zero-copy: the OrtValue views the producer's memory. ``is_bool_tensor`` (ORT's
        argument, for producers that send bool as uint8) reads uint8 data as bool.
        """
        if isinstance(data, OrtValue):
            value = data._tensor()
        elif isinstance(data, np.ndarray):
            value = data
        elif dlpack.is_torch(data):
            value = data.detach() if data.requires_grad else data
        elif dlpack.is_dlpack_producer(data):
            value = dlpack.as_tensor(data)
        else:
            raise InvalidArgument(f"from_dlpack expects a DLPack producer or capsule, got "
                                  f"{type(data).__name__}")
        if is_bool_tensor:
            if _element(value).onnx != dtypes.BY_NAME["uint8"].onnx:
                raise InvalidArgument("is_bool_tensor=True needs uint8 data")
            value = value.view(dtypes.BY_NAME["bool"].numpy) if isinstance(value, np.ndarray) \
                else value.view(_torch_dtype(dtypes.BY_NAME["bool"], "from_dlpack"))
        _element(value)
        return OrtValue(value)

    @staticmethod
    def ort_value_from_sparse_tensor(sparse_tensor: SparseTensor) -> "OrtValue":
        """An OrtValue holding ``sparse_tensor`` (its memory shared)."""
        if not isinstance(sparse_tensor, SparseTensor):
            raise InvalidArgument(f"ort_value_from_sparse_tensor expects a SparseTensor, got "
                                  f"{type(sparse_tensor).__name__}")
        return OrtValue(sparse_tensor)

    def as_sparse_tensor(self) -> SparseTensor:
        """The SparseTensor this OrtValue holds."""
        if not isinstance(self._value, SparseTensor):
            raise InvalidArgument(f"this OrtValue holds {self.data_type()}, not a SparseTensor")
        return self._value

    def to_dlpack(self) -> Any:
        """A DLPack capsule over this value's memory (ORT's name)."""
        return self.__dlpack__()

    # -- DLPack protocol --------------------------------------------------------------------
    def __dlpack__(self, *, stream: Any = None, max_version: Any = None, dl_device: Any = None,
                   copy: Any = None) -> Any:
        kwargs = {k: v for k, v in (("stream", stream), ("max_version", max_version),
                                    ("dl_device", dl_device), ("copy", copy)) if v is not None}
        return dlpack.export(self._tensor(), kwargs)

    def __dlpack_device__(self) -> tuple:
        value = self._tensor()
        if dlpack.is_torch(value):
            return value.__dlpack_device__()
        return (dlpack.KDL_CPU, 0)

    # -- inspection -------------------------------------------------------------------------
    def is_tensor(self) -> bool:
        return isinstance(self._value, np.ndarray) or dlpack.is_torch(self._value)

    def is_tensor_sequence(self) -> bool:
        return isinstance(self._value, list)

    def has_value(self) -> bool:
        return self._value is not None

    def is_sparse_tensor(self) -> bool:
        return isinstance(self._value, SparseTensor)

    def _tensor(self) -> Any:
        value = self._value
        if isinstance(value, np.ndarray) or dlpack.is_torch(value):
            return value
        raise InvalidArgument(f"this OrtValue holds {self.data_type()}, not a tensor")

    def shape(self) -> list[int]:
        if isinstance(self._value, SparseTensor):
            return self._value.dense_shape()
        return list(self._tensor().shape)

    def data_type(self) -> str:
        return _describe(self._value)

    def element_type(self) -> int:
        if isinstance(self._value, SparseTensor):
            return self._value.element_type()
        return _element(self._tensor()).onnx

    def device_name(self) -> str:
        """'cpu' or 'cuda' (ORT's names)."""
        value = self._value
        if isinstance(value, SparseTensor):
            return value.device_name()
        if dlpack.is_torch(value):
            return value.device.type
        return "cpu"

    def device_id(self) -> int:
        return dlpack.device_of(self._value)[1]

    def data_ptr(self) -> int:
        value = self._tensor()
        if isinstance(value, np.ndarray):
            return int(value.__array_interface__["data"][0])
        return int(value.data_ptr())

    def tensor_size_in_bytes(self) -> int:
        value = self._tensor()
        if isinstance(value, np.ndarray):
            return int(value.nbytes)
        return int(value.numel() * value.element_size())

    def numpy(self) -> Any:
        """numpy (ml_dtypes for bfloat16/float8): a view on the CPU, a copy from a device."""
        value = self._value
        if isinstance(value, np.ndarray):
            return value
        if isinstance(value, SparseTensor):
            raise InvalidArgument("this OrtValue holds a SparseTensor: read it with "
                                  "as_sparse_tensor() (values(), as_coo_view(), ...)")
        return dlpack.to_host(value)

    def update_inplace(self, np_arr: Any) -> None:
        """Copy ``np_arr`` into this value's memory; same element type and element count."""
        dst = self._tensor()
        if dlpack.is_torch(np_arr):
            src = np_arr
        else:
            src = np.asarray(np_arr)
        want, got = _element(dst), _element(src)
        size = _numel(dst)
        if want.onnx != got.onnx or _numel(src) != size:
            raise InvalidArgument(
                f"update_inplace needs {size} elements of {want.name}, got {_numel(src)} of "
                f"{got.name} (shape {list(src.shape)}); the OrtValue's memory cannot change size")
        if isinstance(dst, np.ndarray):
            dst[...] = dlpack.to_host(src).reshape(dst.shape)
        else:
            if isinstance(src, np.ndarray):
                src = dlpack.numpy_to_torch(src)
            dst.copy_(src.reshape(dst.shape))

    def __repr__(self) -> str:
        shape = f" shape={self.shape()}" if self.is_tensor() or self.is_sparse_tensor() else ""
        value = self._value._values if isinstance(self._value, SparseTensor) else self._value
        device = dlpack.device_text(dlpack.device_of(value))
        return f"OrtValue({self.data_type()}{shape}, device={device})"


def _element(value: Any) -> dtypes.DType:
    try:
        if isinstance(value, np.ndarray):
            return dtypes.from_numpy(value.dtype)
        return dtypes.from_torch(value.dtype)
    except dtypes.UnknownDType as e:
        raise InvalidArgument(e.args[0]) from None


def _numel(value: Any) -> int:
    return int(value.size) if isinstance(value, np.ndarray) else int(value.numel())


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray) or dlpack.is_torch(value):
        return f"tensor({_element(value).name})"
    if isinstance(value, list):
        inner = _describe(value[0]) if value else "tensor(undefined)"
        return f"seq({inner})"
    if isinstance(value, SparseTensor):
        return value.data_type()
    if isinstance(value, dict):
        return "map"
    if value is None:
        return "optional(none)"
    return type(value).__name__
