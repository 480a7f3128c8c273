"""The one dtype table: ONNX element types <-> numpy/ml_dtypes, torch, triton and DLPack.

Every layer looks types up here; nothing else spells out a dtype mapping.
Torch and triton names are strings so this module imports neither.
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from onnx import TensorProto as TP

# DLPack type codes (dlpack.h: DLDataTypeCode).
DL_INT, DL_UINT, DL_FLOAT, DL_BFLOAT, DL_COMPLEX, DL_BOOL = 0, 1, 2, 4, 5, 6
DL_FLOAT8_E4M3FN, DL_FLOAT8_E4M3FNUZ, DL_FLOAT8_E5M2, DL_FLOAT8_E5M2FNUZ = 10, 11, 12, 13
DL_FLOAT8_E8M0FNU = 14


@dataclass(frozen=True)
class DType:
    onnx: int  # TensorProto.DataType
    name: str  # as in 'tensor(<name>)'
    numpy: np.dtype
    torch: str | None  # attribute of the torch module
    triton: str | None  # attribute of triton.language
    dlpack: tuple[int, int] | None  # (type code, bits)

    @property
    def is_float(self) -> bool:
        return self.numpy.kind == "f" or self.onnx in LOW_PRECISION_FLOATS

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


def _row(onnx_type, name, np_type, torch, triton, dlpack):
    return DType(onnx_type, name, np.dtype(np_type), torch, triton, dlpack)


TABLE: tuple[DType, ...] = (
    _row(TP.FLOAT, "float", np.float32, "float32", "float32", (DL_FLOAT, 32)),
    _row(TP.UINT8, "uint8", np.uint8, "uint8", "uint8", (DL_UINT, 8)),
    _row(TP.INT8, "int8", np.int8, "int8", "int8", (DL_INT, 8)),
    _row(TP.UINT16, "uint16", np.uint16, "uint16", "uint16", (DL_UINT, 16)),
    _row(TP.INT16, "int16", np.int16, "int16", "int16", (DL_INT, 16)),
    _row(TP.INT32, "int32", np.int32, "int32", "int32", (DL_INT, 32)),
    _row(TP.INT64, "int64", np.int64, "int64", "int64", (DL_INT, 64)),
    _row(TP.STRING, "string", np.object_, None, None, None),
    _row(TP.BOOL, "bool", np.bool_, "bool", "int1", (DL_BOOL, 8)),
    _row(TP.FLOAT16, "float16", np.float16, "float16", "float16", (DL_FLOAT, 16)),
    _row(TP.DOUBLE, "double", np.float64, "float64", "float64", (DL_FLOAT, 64)),
    _row(TP.UINT32, "uint32", np.uint32, "uint32", "uint32", (DL_UINT, 32)),
    _row(TP.UINT64, "uint64", np.uint64, "uint64", "uint64", (DL_UINT, 64)),
    _row(TP.COMPLEX64, "complex64", np.complex64, "complex64", None, (DL_COMPLEX, 64)),
    _row(TP.COMPLEX128, "complex128", np.complex128, "complex128", None, (DL_COMPLEX, 128)),
    _row(TP.BFLOAT16, "bfloat16", ml_dtypes.bfloat16, "bfloat16", "bfloat16", (DL_BFLOAT, 16)),
    _row(TP.FLOAT8E4M3FN, "float8e4m3fn", ml_dtypes.float8_e4m3fn, "float8_e4m3fn",
         "float8e4nv", (DL_FLOAT8_E4M3FN, 8)),
    _row(TP.FLOAT8E4M3FNUZ, "float8e4m3fnuz", ml_dtypes.float8_e4m3fnuz, "float8_e4m3fnuz",
         "float8e4b8", (DL_FLOAT8_E4M3FNUZ, 8)),
    _row(TP.FLOAT8E5M2, "float8e5m2", ml_dtypes.float8_e5m2, "float8_e5m2", "float8e5",
         (DL_FLOAT8_E5M2, 8)),
    _row(TP.FLOAT8E5M2FNUZ, "float8e5m2fnuz", ml_dtypes.float8_e5m2fnuz, "float8_e5m2fnuz",
         "float8e5b16", (DL_FLOAT8_E5M2FNUZ, 8)),
    _row(TP.UINT4, "uint4", ml_dtypes.uint4, None, None, None),
    _row(TP.INT4, "int4", ml_dtypes.int4, None, None, None),
    _row(TP.FLOAT4E2M1, "float4e2m1", ml_dtypes.float4_e2m1fn, None, None, None),
    _row(TP.FLOAT8E8M0, "float8e8m0", ml_dtypes.float8_e8m0fnu, "float8_e8m0fnu", None,
         (DL_FLOAT8_E8M0FNU, 8)),
    _row(TP.UINT2, "uint2", ml_dtypes.uint2, None, None, None),
    _row(TP.INT2, "int2", ml_dtypes.int2, None, None, None),
    _row(TP.FLOAT6E2M3, "float6e2m3", ml_dtypes.float6_e2m3fn, None, None, None),
    _row(TP.FLOAT6E3M2, "float6e3m2", ml_dtypes.float6_e3m2fn, None, None, None),
)

LOW_PRECISION_FLOATS = frozenset({
    TP.BFLOAT16, TP.FLOAT8E4M3FN, TP.FLOAT8E4M3FNUZ, TP.FLOAT8E5M2, TP.FLOAT8E5M2FNUZ,
    TP.FLOAT4E2M1, TP.FLOAT8E8M0, TP.FLOAT6E2M3, TP.FLOAT6E3M2,
})

# Element-type classes by DType.name, as the code generator chooses kernels by them.
FLOAT_TYPES = frozenset({"float", "float16", "bfloat16", "double"})  # arithmetic floats
INT_TYPES = frozenset({"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                       "uint64"})
NARROW_INT_TYPES = frozenset({"int8", "uint8", "int16", "uint16"})  # narrower than int32
FLOAT8_OCP_TYPES = frozenset({"float8e4m3fn", "float8e5m2"})  # the OCP 8-bit floats

BY_ONNX = {d.onnx: d for d in TABLE}
BY_NAME = {d.name: d for d in TABLE}
BY_NUMPY = {d.numpy: d for d in TABLE}
BY_TORCH = {d.torch: d for d in TABLE if d.torch}


class UnknownDType(KeyError):
    pass


def from_onnx(elem_type: int) -> DType:
    try:
        return BY_ONNX[int(elem_type)]
    except KeyError:
        raise UnknownDType(f"unsupported ONNX element type {elem_type}") from None


def from_numpy(dtype) -> DType:
    dt = np.dtype(dtype)
    if dt.kind in ("U", "S"):
        return BY_NAME["string"]
    try:
        return BY_NUMPY[dt]
    except KeyError:
        raise UnknownDType(f"numpy dtype {dt} has no ONNX element type") from None


def from_torch(torch_dtype) -> DType:
    name = str(torch_dtype).removeprefix("torch.")
    try:
        return BY_TORCH[name]
    except KeyError:
        raise UnknownDType(f"torch dtype {torch_dtype} has no ONNX element type") from None


def from_any(element_type) -> DType:
    """Accepts an ONNX enum, a numpy dtype or type, a torch dtype or a DType."""
    if isinstance(element_type, DType):
        return element_type
    if isinstance(element_type, (int, np.integer)) and not isinstance(element_type, bool):
        return from_onnx(int(element_type))
    if type(element_type).__module__ == "torch":
        return from_torch(element_type)
    return from_numpy(element_type)


def numpy_dtype(elem_type: int) -> np.dtype:
    return from_onnx(elem_type).numpy


def onnx_type_name(elem_type: int) -> str:
    return f"tensor({from_onnx(elem_type).name})"


def type_string(type_proto) -> str:
    """ORT's NodeArg.type text for an onnx.TypeProto: tensor(float), seq(tensor(int64)), ..."""
    which = type_proto.WhichOneof("value")
    if which == "tensor_type":
        t = type_proto.tensor_type.elem_type
        return f"tensor({BY_ONNX[t].name})" if t in BY_ONNX else "tensor(undefined)"
    if which == "sparse_tensor_type":
        return f"sparse_tensor({from_onnx(type_proto.sparse_tensor_type.elem_type).name})"
    if which == "sequence_type":
        return f"seq({type_string(type_proto.sequence_type.elem_type)})"
    if which == "optional_type":
        return f"optional({type_string(type_proto.optional_type.elem_type)})"
    if which == "map_type":
        key = from_onnx(type_proto.map_type.key_type).name
        return f"map({key},{type_string(type_proto.map_type.value_type)})"
    return "unknown"


def saturating_cast(x: np.ndarray, to: np.dtype, saturate: bool = True) -> np.ndarray:
    """Cast to ``to``; float8 targets follow ONNX Cast's saturation tables.

    With saturate=1, out-of-range values *and infinities* become +-max for all four float8
    types (e5m2 included); NaN stays NaN. With saturate=0 the plain conversion applies:
    out-of-range values and infinities become NaN for the fn/fnuz types, +-inf for e5m2.
    """
    to = np.dtype(to)
    if saturate and to in _FLOAT8 and x.dtype.kind in "fiuV":
        hi = float(ml_dtypes.finfo(to).max)
        # clip in a type that holds the source exactly enough: wide sources in float64
        wide = x.dtype.itemsize >= 4 and x.dtype != np.float32
        xf = x.astype(np.float64 if wide else np.float32, copy=False)
        return np.clip(xf, -hi, hi).astype(to)
    return x.astype(to)


_FLOAT8 = frozenset(np.dtype(t) for t in (
    ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2,
    ml_dtypes.float8_e5m2fnuz))
