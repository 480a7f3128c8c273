"""ONNX Runtime's ``SparseTensor``: COO and CSR(C) sparse tensors, from numpy and back.

A sparse tensor holds its non-zero ``values`` (1-D), their indices and the dense shape.
COO indices are either linear (one int64 per value, into the flattened dense tensor) or
coordinates (``(nnz, rank)``); CSR(C) is 2-D only: ``inner`` column indices (one per value)
and ``outer`` row starts (rows + 1). Construction from numpy shares the arrays' memory, as in
ORT; string values are copied into an object array of ``str``.

Sparse tensors are fed to inputs of type ``sparse_tensor(T)`` (``run`` and
``run_with_ort_values``), returned for outputs of that type, and a model's sparse
initializers are constants like any other (dense where an op reads them).
"""
from __future__ import annotations

import enum
from typing import Any, Sequence

import numpy as np

from . import dlpack, dtypes
from .allocators import OrtDevice
from .errors import InvalidArgument


class OrtSparseFormat(enum.IntEnum):
    ORT_SPARSE_UNDEFINED = 0
    ORT_SPARSE_COO = 1
    ORT_SPARSE_CSRC = 2
    ORT_SPARSE_BLOCK_SPARSE = 4


class SparseCooView:
    """COO indices of a sparse tensor (``as_coo_view().indices()``)."""

    def __init__(self, indices: Any) -> None:
        self._indices = indices

    def indices(self) -> np.ndarray:
        return _host(self._indices)


class SparseCsrView:
    """CSR(C) indices of a sparse tensor (``as_csrc_view().inner()`` / ``.outer()``)."""

    def __init__(self, inner: Any, outer: Any) -> None:
        self._inner, self._outer = inner, outer

    def inner(self) -> np.ndarray:
        return _host(self._inner)

    def outer(self) -> np.ndarray:
        return _host(self._outer)


class SparseTensor:
    """A sparse tensor (ORT's ``onnxruntime.SparseTensor``); build one with
    :meth:`sparse_coo_from_numpy` or :meth:`sparse_csr_from_numpy`."""

    __slots__ = ("_format", "_dense_shape", "_values", "_indices", "_dtype")

    def __init__(self, sparse_tensor: Any) -> None:
        if not isinstance(sparse_tensor, SparseTensor):
            raise ValueError("`Provided object` needs to be a SparseTensor; build one with "
                             "SparseTensor.sparse_coo_from_numpy or sparse_csr_from_numpy")
        for name in SparseTensor.__slots__:
            setattr(self, name, getattr(sparse_tensor, name))

    @classmethod
    def _make(cls, fmt: OrtSparseFormat, dense_shape: tuple[int, ...], values: Any,
              indices: tuple, dtype: dtypes.DType) -> "SparseTensor":
        st = cls.__new__(cls)
        st._format, st._dense_shape, st._values = fmt, dense_shape, values
        st._indices, st._dtype = indices, dtype
        return st

    def _get_c_tensor(self) -> "SparseTensor":
        return self

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def sparse_coo_from_numpy(cls, dense_shape: Sequence[int], values: np.ndarray,
                              coo_indices: np.ndarray, ort_device: OrtDevice) -> "SparseTensor":
        """COO from ``values`` (1-D) and ``coo_indices``: linear (nnz,) or coordinates
        (nnz, rank), int64. Numeric arrays are used in place (their memory is shared)."""
        shape = _dense_shape(dense_shape)
        device = _device(ort_device)
        vals, dt = _values(values, device)
        nnz = int(vals.shape[0])
        idx = _index_array(coo_indices, "coo_indices", device)
        if idx.ndim == 1:
            if idx.shape[0] != nnz:
                raise InvalidArgument(f"sparse_coo_from_numpy: {idx.shape[0]} linear indices for "
                                      f"{nnz} values; give one index per value")
            _in_range(idx, int(np.prod(shape, dtype=np.int64)), "linear COO index", shape)
        elif idx.ndim == 2 and idx.shape == (nnz, len(shape)):
            for axis, size in enumerate(shape):
                _in_range(idx[:, axis], size, f"COO coordinate (axis {axis})", shape)
        else:
            raise InvalidArgument(
                f"sparse_coo_from_numpy: coo_indices of shape {list(idx.shape)} do not fit "
                f"{nnz} values of a rank-{len(shape)} tensor: expected [{nnz}] (linear) or "
                f"[{nnz}, {len(shape)}] (coordinates)")
        return cls._make(OrtSparseFormat.ORT_SPARSE_COO, shape, vals, (idx,), dt)

    @classmethod
    def sparse_csr_from_numpy(cls, dense_shape: Sequence[int], values: np.ndarray,
                              inner_indices: np.ndarray, outer_indices: np.ndarray,
                              ort_device: OrtDevice) -> "SparseTensor":
        """CSR(C) of a 2-D tensor: ``inner_indices`` the column of each value,
        ``outer_indices`` where each row starts (rows + 1 entries, ending at nnz)."""
        shape = _dense_shape(dense_shape)
        if len(shape) != 2:
            raise InvalidArgument(f"sparse_csr_from_numpy: CSR(C) tensors are 2-D; the dense "
                                  f"shape is {list(shape)}")
        device = _device(ort_device)
        vals, dt = _values(values, device)
        nnz = int(vals.shape[0])
        inner = _index_array(inner_indices, "inner_indices", device)
        outer = _index_array(outer_indices, "outer_indices", device)
        if inner.ndim != 1 or inner.shape[0] != nnz:
            raise InvalidArgument(f"sparse_csr_from_numpy: inner_indices has shape "
                                  f"{list(inner.shape)}; it needs one column index per value "
                                  f"([{nnz}])")
        if outer.ndim != 1 or outer.shape[0] != shape[0] + 1:
            raise InvalidArgument(f"sparse_csr_from_numpy: outer_indices has shape "
                                  f"{list(outer.shape)}; it needs rows + 1 = {shape[0] + 1} "
                                  "row starts")
        host_outer = _host(outer)
        if host_outer[0] != 0 or host_outer[-1] != nnz or np.any(np.diff(host_outer) < 0):
            raise InvalidArgument(f"sparse_csr_from_numpy: outer_indices {host_outer.tolist()} "
                                  f"must rise from 0 to the number of values ({nnz})")
        _in_range(inner, shape[1], "CSR column index", shape)
        return cls._make(OrtSparseFormat.ORT_SPARSE_CSRC, shape, vals, (inner, outer), dt)

    # -- inspection -------------------------------------------------------------------------
    def values(self) -> np.ndarray:
        """The non-zero values: the array given (shared memory) on the CPU, a host copy from
        a device."""
        return _host(self._values)

    def as_coo_view(self) -> SparseCooView:
        if self._format != OrtSparseFormat.ORT_SPARSE_COO:
            raise InvalidArgument(f"This sparse tensor does not contain COO format (it is "
                                  f"{self._format.name})")
        return SparseCooView(self._indices[0])

    def as_csrc_view(self) -> SparseCsrView:
        if self._format != OrtSparseFormat.ORT_SPARSE_CSRC:
            raise InvalidArgument(f"This sparse tensor does not contain CSR(C) format (it is "
                                  f"{self._format.name})")
        return SparseCsrView(*self._indices)

    def as_blocksparse_view(self) -> None:
        raise InvalidArgument(f"This sparse tensor does not contain BlockSparse format (it is "
                              f"{self._format.name}); tritort builds COO and CSR(C) tensors")

    def format(self) -> OrtSparseFormat:
        return self._format

    def dense_shape(self) -> list[int]:
        return list(self._dense_shape)

    def data_type(self) -> str:
        return f"sparse_tensor({self._dtype.name})"

    def element_type(self) -> int:
        return self._dtype.onnx

    def device_name(self) -> str:
        return dlpack.device_of(self._values)[0]

    def to_cuda(self, ort_device: OrtDevice) -> "SparseTensor":
        """A copy on the CUDA device ``ort_device`` names (through torch)."""
        device = _device(ort_device)
        if device[0] != "cuda":
            raise InvalidArgument(f"to_cuda needs a CUDA OrtDevice, got {ort_device!r}")
        if self.device_name() != "cpu":
            raise InvalidArgument("this sparse tensor is already on a device; cross-device "
                                  "copies are not supported (as in onnxruntime)")
        if self._dtype.numpy == np.object_:
            raise InvalidArgument("a sparse tensor of strings cannot live on a CUDA device")
        return SparseTensor._make(self._format, self._dense_shape, _to(self._values, device),
                                  tuple(_to(i, device) for i in self._indices), self._dtype)

    def __repr__(self) -> str:
        return (f"SparseTensor({self._format.name}, {self.data_type()}, dense_shape="
                f"{list(self._dense_shape)}, nnz={int(self._values.shape[0])}, "
                f"device={self.device_name()})")


def to_dense(st: SparseTensor) -> np.ndarray:
    """The dense numpy array a sparse tensor describes (zeros elsewhere; '' for strings)."""
    values = _host(st._values)
    dense = np.zeros(st._dense_shape, dtype=values.dtype) if values.dtype != np.object_ \
        else np.full(st._dense_shape, "", dtype=object)
    if st._format == OrtSparseFormat.ORT_SPARSE_COO:
        idx = _host(st._indices[0])
        if idx.ndim == 1:
            dense.reshape(-1)[idx] = values
        else:
            dense[tuple(idx.T)] = values
    else:
        inner, outer = (_host(i) for i in st._indices)
        rows = np.repeat(np.arange(st._dense_shape[0]), np.diff(outer))
        dense[rows, inner] = values
    return dense


def from_dense(dense: np.ndarray) -> SparseTensor:
    """A COO sparse tensor (linear indices) of a dense array's non-zero elements."""
    arr = np.asarray(dense)
    flat = arr.reshape(-1)
    idx = np.flatnonzero(flat != "" if arr.dtype == np.object_ else flat).astype(np.int64)
    dt = dtypes.from_numpy(arr.dtype)
    return SparseTensor._make(OrtSparseFormat.ORT_SPARSE_COO, tuple(int(d) for d in arr.shape),
                              flat[idx], (idx,), dt)


def _dense_shape(dense_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in np.asarray(dense_shape).reshape(-1))
    except (TypeError, ValueError):
        raise InvalidArgument(f"dense_shape must be a 1-D sequence of ints, got "
                              f"{dense_shape!r}") from None
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"dense_shape {list(shape)} has a negative dimension")
    return shape


def _device(ort_device: Any) -> tuple[str, int]:
    if not isinstance(ort_device, OrtDevice):
        raise InvalidArgument(f"ort_device must be an OrtDevice (OrtDevice.make('cpu', 0)), "
                              f"got {type(ort_device).__name__}")
    device = ort_device.torch_device()
    return device if device[0] == "cpu" else dlpack.parse_device(*device)  # exists, or EPFail


def _values(values: Any, device: tuple[str, int]) -> tuple[Any, dtypes.DType]:
    if dlpack.is_torch(values):
        if dlpack.device_of(values) != device:
            raise InvalidArgument(f"values live on {dlpack.device_text(dlpack.device_of(values))}"
                                  f" but ort_device says {dlpack.device_text(device)}")
        if values.dim() != 1:
            raise InvalidArgument(f"values must be 1-D (the non-zero elements), got shape "
                                  f"{list(values.shape)}")
        return values, dtypes.from_torch(values.dtype)
    arr = values if isinstance(values, np.ndarray) else np.asarray(values)
    if arr.ndim != 1:
        raise InvalidArgument(f"values must be 1-D (the non-zero elements), got shape "
                              f"{list(arr.shape)}")
    if arr.dtype.kind in "USO":
        if device[0] != "cpu":
            raise InvalidArgument("string values live on the CPU only")
        arr = np.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in arr.tolist()],
                       dtype=object)
        if not all(isinstance(v, str) for v in arr):
            raise InvalidArgument("object values of a sparse tensor must be strings")
        return arr, dtypes.BY_NAME["string"]
    try:
        dt = dtypes.from_numpy(arr.dtype)
    except dtypes.UnknownDType:
        raise InvalidArgument(f"values of dtype {arr.dtype} have no ONNX element type") from None
    arr = np.ascontiguousarray(arr)  # the caller's array itself when already contiguous
    return (arr if device[0] == "cpu" else _to(arr, device)), dt


def _index_array(indices: Any, what: str, device: tuple[str, int]) -> Any:
    if dlpack.is_torch(indices):
        if str(indices.dtype) != "torch.int64":
            indices = indices.long()
        return indices
    arr = np.asarray(indices)
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidArgument(f"{what} must be integers (int64), got {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    return arr if device[0] == "cpu" else _to(arr, device)


def _in_range(idx: Any, size: int, what: str, shape: tuple) -> None:
    host = _host(idx)
    if host.size and (host.min() < 0 or host.max() >= size):
        bad = host[(host < 0) | (host >= size)][0]
        raise InvalidArgument(f"{what} {int(bad)} is outside the dense shape {list(shape)} "
                              f"(valid: 0..{size - 1})")


def _host(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else dlpack.to_host(value)


def _to(value: Any, device: tuple[str, int]) -> Any:
    t = value if dlpack.is_torch(value) else dlpack.numpy_to_torch(value)
    return t.to(dlpack.device_text(device))
