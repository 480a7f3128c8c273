"""OrtValue over numpy and torch through DLPack: zero copy, every dtype, bit-exact round trips."""
from __future__ import annotations

import gc

import ml_dtypes
import numpy as np
import onnxruntime
import pytest
import torch
from onnx import TensorProto as TP

import tritort as ort
from tritort import dlpack, dtypes

# (ONNX type, numpy dtype, torch dtype or None, numpy can export it through DLPack)
DTYPES = [
    (TP.FLOAT, np.float32, torch.float32, True),
    (TP.FLOAT16, np.float16, torch.float16, True),
    (TP.DOUBLE, np.float64, torch.float64, True),
    (TP.BFLOAT16, ml_dtypes.bfloat16, torch.bfloat16, False),
    (TP.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn, torch.float8_e4m3fn, False),
    (TP.FLOAT8E4M3FNUZ, ml_dtypes.float8_e4m3fnuz, torch.float8_e4m3fnuz, False),
    (TP.FLOAT8E5M2, ml_dtypes.float8_e5m2, torch.float8_e5m2, False),
    (TP.FLOAT8E5M2FNUZ, ml_dtypes.float8_e5m2fnuz, torch.float8_e5m2fnuz, False),
    (TP.INT8, np.int8, torch.int8, True),
    (TP.UINT8, np.uint8, torch.uint8, True),
    (TP.INT16, np.int16, torch.int16, True),
    (TP.UINT16, np.uint16, torch.uint16, True),
    (TP.INT32, np.int32, torch.int32, True),
    (TP.UINT32, np.uint32, torch.uint32, True),
    (TP.INT64, np.int64, torch.int64, True),
    (TP.UINT64, np.uint64, torch.uint64, True),
    (TP.BOOL, np.bool_, torch.bool, True),
    (TP.INT4, ml_dtypes.int4, None, False),
    (TP.UINT4, ml_dtypes.uint4, None, False),
]
TORCH_DTYPES = [d for d in DTYPES if d[2] is not None]
ID = lambda d: str(np.dtype(d[1]))  # noqa: E731


def sample(np_dtype, shape=(2, 3)) -> np.ndarray:
    """Values of the type, from random bytes for the float types (NaN and inf included)."""
    dt = np.dtype(np_dtype)
    rng = np.random.default_rng(0)
    count = int(np.prod(shape))
    if dt == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if dt in (np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.uint4)):
        lo = -8 if dt == np.dtype(ml_dtypes.int4) else 0
        return rng.integers(lo, lo + 16, shape).astype(dt)
    raw = rng.integers(0, 256, count * dt.itemsize, dtype=np.uint8)
    return raw.view(dt).reshape(shape)


def as_torch(x: np.ndarray, torch_dtype) -> torch.Tensor:
    """torch's own view of a numpy array's memory (a raw view for ml_dtypes)."""
    if x.dtype.kind == "V" or x.dtype in (np.dtype(ml_dtypes.bfloat16),) or \
            str(x.dtype).startswith("float8"):
        raw = np.uint8 if x.dtype.itemsize == 1 else np.int16
        return torch.from_numpy(x.view(raw)).view(torch_dtype)
    return torch.from_numpy(x)


def bits(a) -> np.ndarray:
    """The raw bytes of a numpy array or torch tensor (NaN payloads compare too)."""
    if isinstance(a, torch.Tensor):
        a = a.contiguous().view(torch.uint8).numpy()
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("row", DTYPES, ids=ID)
def test_from_numpy_shares_memory_and_describes_itself(row):
    onnx_type, np_dtype, _, _ = row
    x = sample(np_dtype)
    v = ort.OrtValue.ortvalue_from_numpy(x)
    assert v.data_ptr() == x.ctypes.data and v.numpy() is x
    assert v.shape() == [2, 3] and v.element_type() == onnx_type
    assert v.device_name() == "cpu" and v.is_tensor() and v.has_value()
    assert v.tensor_size_in_bytes() == x.nbytes
    assert v.data_type() == f"tensor({dtypes.from_onnx(onnx_type).name})"


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16, np.float64, np.int8, np.uint8,
                                      np.int16, np.uint16, np.int32, np.uint32, np.int64,
                                      np.uint64, np.bool_])
def test_metadata_matches_onnxruntime(np_dtype):
    x = np.zeros((2, 3), np_dtype)
    ours, ref = ort.OrtValue.ortvalue_from_numpy(x), onnxruntime.OrtValue.ortvalue_from_numpy(x)
    assert ours.data_type() == ref.data_type() and ours.element_type() == ref.element_type()
    assert ours.shape() == ref.shape() and ours.device_name() == ref.device_name()
    assert ours.tensor_size_in_bytes() == ref.tensor_size_in_bytes()


@pytest.mark.parametrize("row", TORCH_DTYPES, ids=ID)
def test_torch_from_dlpack_views_the_same_memory(row):
    onnx_type, np_dtype, torch_dtype, numpy_exports = row
    x = sample(np_dtype)
    v = ort.OrtValue.ortvalue_from_numpy(x)
    t = torch.from_dlpack(v)
    assert t.dtype == torch_dtype and t.data_ptr() == x.ctypes.data and list(t.shape) == [2, 3]
    assert np.array_equal(bits(t), bits(x))
    if numpy_exports:  # bool stays bool (kDLBool)
        n = np.from_dlpack(v)
        assert n.dtype == x.dtype and n.ctypes.data == x.ctypes.data
    assert v.__dlpack_device__() == (dlpack.KDL_CPU, 0)


@pytest.mark.parametrize("row", TORCH_DTYPES, ids=ID)
def test_from_dlpack_of_torch_is_zero_copy_and_bit_exact(row):
    onnx_type, np_dtype, torch_dtype, _ = row
    x = sample(np_dtype)
    t = as_torch(x, torch_dtype)
    v = ort.OrtValue.from_dlpack(t)
    assert v.data_ptr() == t.data_ptr() and v.element_type() == onnx_type
    assert v.data_type() == f"tensor({dtypes.from_onnx(onnx_type).name})"
    host = v.numpy()  # ml_dtypes for bfloat16 / float8: a view, no copy
    assert host.dtype == np.dtype(np_dtype) and host.ctypes.data == t.data_ptr()
    assert np.array_equal(bits(host), bits(x))
    # torch -> OrtValue -> torch -> OrtValue -> numpy, still the same bytes and memory
    again = ort.OrtValue.from_dlpack(torch.from_dlpack(v))
    assert again.data_ptr() == t.data_ptr() and np.array_equal(bits(again.numpy()), bits(x))


@pytest.mark.parametrize("torch_dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_low_precision_round_trip_every_bit_pattern(torch_dtype):
    raw = torch.arange(256 if torch_dtype.itemsize == 1 else 65536, dtype=torch.int32)
    raw = raw.to(torch.uint8) if torch_dtype.itemsize == 1 else \
        raw.to(torch.uint16).view(torch.int16)
    t = raw.view(torch_dtype)
    v = ort.OrtValue.from_dlpack(t)
    n = v.numpy()
    assert n.dtype == np.dtype(dtypes.from_torch(torch_dtype).numpy)
    back = ort.OrtValue.ortvalue_from_numpy(n)  # numpy(ml_dtypes) -> OrtValue -> torch
    t2 = torch.from_dlpack(back)
    assert t2.dtype == torch_dtype and t2.data_ptr() == t.data_ptr()
    assert torch.equal(t2.view(raw.dtype), raw)
    # and the values themselves agree with torch's reading of the bits (NaNs aside)
    finite = torch.isfinite(t.float())
    np.testing.assert_array_equal(n.astype(np.float32)[finite.numpy()],
                                  t.float()[finite].numpy())


def test_from_dlpack_sources():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert ort.OrtValue.from_dlpack(x).data_ptr() == x.ctypes.data
    v = ort.OrtValue.from_dlpack(x)
    assert ort.OrtValue.from_dlpack(v).data_ptr() == x.ctypes.data  # another OrtValue
    t = torch.arange(6.0)
    cap = torch.utils.dlpack.to_dlpack(t)
    assert ort.OrtValue.from_dlpack(cap).data_ptr() == t.data_ptr()  # a legacy capsule
    cap = t.__dlpack__(max_version=(1, 0))
    assert ort.OrtValue.from_dlpack(cap).data_ptr() == t.data_ptr()  # a versioned capsule
    g = torch.ones(3, requires_grad=True)
    assert ort.OrtValue.from_dlpack(g).data_ptr() == g.data_ptr()
    u = torch.tensor([0, 1, 1], dtype=torch.uint8)
    b = ort.OrtValue.from_dlpack(u, is_bool_tensor=True)
    assert b.data_type() == "tensor(bool)" and b.numpy().tolist() == [False, True, True]
    strided = torch.arange(12.0).reshape(3, 4).t()
    s = ort.OrtValue.from_dlpack(strided)
    np.testing.assert_array_equal(s.numpy(), strided.numpy())
    with pytest.raises(ort.InvalidArgument, match="DLPack producer"):
        ort.OrtValue.from_dlpack([1, 2, 3])
    with pytest.raises(ort.InvalidArgument, match="uint8"):
        ort.OrtValue.from_dlpack(t, is_bool_tensor=True)


def test_to_dlpack_and_read_only_arrays():
    x = np.arange(4, dtype=np.int32)
    x.flags.writeable = False
    v = ort.OrtValue.ortvalue_from_numpy(x)
    assert torch.from_dlpack(v).data_ptr() == x.ctypes.data
    assert torch.from_dlpack(v.to_dlpack()).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("onnx_type", [TP.INT4, TP.UINT4])
def test_int4_lives_in_numpy_and_is_not_exported(onnx_type):
    v = ort.OrtValue.ortvalue_from_shape_and_type([2, 2], onnx_type)
    assert v.data_type() == f"tensor({'int4' if onnx_type == TP.INT4 else 'uint4'})"
    x = sample(dtypes.from_onnx(onnx_type).numpy, (2, 2))
    v.update_inplace(x)
    np.testing.assert_array_equal(v.numpy(), x)
    with pytest.raises(BufferError, match="no DLPack type code"):
        torch.from_dlpack(v)


def test_from_numpy_with_onnx_type_reinterprets_bits():
    bf = np.array([1.5, -2.0, 3.25], dtype=ml_dtypes.bfloat16)
    v = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bf.view(np.uint16), TP.BFLOAT16)
    assert v.data_type() == "tensor(bfloat16)" and np.array_equal(v.numpy(), bf)
    assert v.data_ptr() == bf.ctypes.data
    t = torch.from_dlpack(v)
    assert t.dtype == torch.bfloat16 and t.tolist() == [1.5, -2.0, 3.25]
    with pytest.raises(ort.InvalidArgument, match="item size"):
        ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.zeros(2, np.float32), TP.BFLOAT16)


def test_from_shape_and_type():
    for element_type, name in ((TP.BFLOAT16, "bfloat16"), (TP.FLOAT8E4M3FN, "float8e4m3fn"),
                               (np.float32, "float"), (np.dtype(np.int64), "int64"),
                               (TP.BOOL, "bool")):
        v = ort.OrtValue.ortvalue_from_shape_and_type([2, 0, 3] if name == "bool" else [2, 3],
                                                      element_type, "cpu", 0)
        assert v.data_type() == f"tensor({name})" and not v.numpy().any()
        t = torch.from_dlpack(v)
        assert list(t.shape) == v.shape()
        if t.numel():  # torch reports 0 as the address of an empty tensor
            assert t.data_ptr() == v.data_ptr()
    with pytest.raises(ort.InvalidArgument, match="unsupported element type"):
        ort.OrtValue.ortvalue_from_shape_and_type([2], 999)
    with pytest.raises(ort.InvalidArgument, match="negative"):
        ort.OrtValue.ortvalue_from_shape_and_type([2, -1], np.float32)
    with pytest.raises(ort.InvalidArgument, match="unknown device_type"):
        ort.OrtValue.ortvalue_from_shape_and_type([2], np.float32, "npu")
    with pytest.raises(ort.InvalidArgument, match="shape and element_type"):
        ort.OrtValue.ortvalue_from_shape_and_type([2])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_a_device_is_a_clear_error():
    with pytest.raises(ort.EPFail, match="cuda:0.*not available"):
        ort.OrtValue.ortvalue_from_numpy(np.zeros(2, np.float32), "cuda", 0)
    with pytest.raises(ort.EPFail, match="not available"):
        ort.OrtValue.ortvalue_from_shape_and_type([2], TP.BFLOAT16, "cuda", 0)


def test_update_inplace_numpy_and_torch_backed():
    x = np.zeros((2, 3), np.float32)
    v = ort.OrtValue.ortvalue_from_numpy(x)
    v.update_inplace(np.arange(6, dtype=np.float32))  # same size, other shape
    np.testing.assert_array_equal(x, np.arange(6).reshape(2, 3))
    t = torch.zeros(4, dtype=torch.bfloat16)
    v = ort.OrtValue.from_dlpack(t)
    v.update_inplace(np.array([1, 2, 3, 4], dtype=ml_dtypes.bfloat16))
    assert t.tolist() == [1, 2, 3, 4] and v.data_ptr() == t.data_ptr()
    v.update_inplace(torch.full((2, 2), 7, dtype=torch.bfloat16))
    assert t.tolist() == [7, 7, 7, 7]
    strided = torch.zeros(3, 4).t()  # writes go through the strides
    ort.OrtValue.from_dlpack(strided).update_inplace(np.arange(12, dtype=np.float32))
    np.testing.assert_array_equal(strided.numpy(), np.arange(12).reshape(4, 3))
    with pytest.raises(ort.InvalidArgument, match="4 elements of bfloat16, got 5"):
        v.update_inplace(np.zeros(5, ml_dtypes.bfloat16))
    with pytest.raises(ort.InvalidArgument, match="4 elements of bfloat16.*float"):
        v.update_inplace(np.zeros(4, np.float32))


def test_torch_backed_value_inspection():
    t = torch.arange(6, dtype=torch.float16).reshape(2, 3)
    v = ort.OrtValue.from_dlpack(t)
    assert v.shape() == [2, 3] and v.data_type() == "tensor(float16)"
    assert v.element_type() == TP.FLOAT16 and v.device_name() == "cpu"
    assert v.tensor_size_in_bytes() == 12 and v.is_tensor() and not v.is_tensor_sequence()
    assert "float16" in repr(v)
    seq = ort.OrtValue([np.zeros(2)])
    assert seq.is_tensor_sequence() and not seq.is_tensor()
    with pytest.raises(ort.InvalidArgument, match="not a tensor"):
        seq.shape()
    with pytest.raises(ort.InvalidArgument, match="not a tensor"):
        torch.from_dlpack(seq)
    assert not ort.OrtValue(None).has_value()


def test_pointer_capsule_is_zero_copy_and_released():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    before = len(dlpack._LIVE)
    t = dlpack.tensor_from_pointer(x.ctypes.data, TP.FLOAT, (2, 3), ("cpu", 0))
    assert t.data_ptr() == x.ctypes.data and t.stride() == (3, 1)
    t[0, 0] = 42
    assert x[0, 0] == 42
    assert len(dlpack._LIVE) == before + 1
    del t
    gc.collect()
    assert len(dlpack._LIVE) == before  # the deleter ran
    bf = np.array([1.5, 2.5], dtype=ml_dtypes.bfloat16)
    t = dlpack.tensor_from_pointer(bf.ctypes.data, TP.BFLOAT16, [2], ("cpu", 0))
    assert t.dtype == torch.bfloat16 and t.tolist() == [1.5, 2.5]


@pytest.mark.parametrize("row", TORCH_DTYPES, ids=ID)
def test_pointer_capsule_type_codes_agree_with_torch(row):
    onnx_type, np_dtype, torch_dtype, _ = row
    x = sample(np_dtype, (3, 2))
    t = dlpack.tensor_from_pointer(x.ctypes.data, onnx_type, x.shape, ("cpu", 0))
    assert t.dtype == torch_dtype and t.data_ptr() == x.ctypes.data and t.shape == (3, 2)
    assert np.array_equal(bits(t), bits(x))


@pytest.mark.gpu
def test_cuda_values():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    v = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    assert v.device_name() == "cuda" and v.data_ptr() != x.ctypes.data  # a device copy
    t = torch.from_dlpack(v)
    assert t.is_cuda and t.data_ptr() == v.data_ptr()
    np.testing.assert_array_equal(v.numpy(), x)  # numpy() copies to the host
    z = ort.OrtValue.ortvalue_from_shape_and_type([4], TP.BFLOAT16, "cuda", 0)
    assert z.device_name() == "cuda" and z.data_type() == "tensor(bfloat16)"
    z.update_inplace(np.array([1, 2, 3, 4], dtype=ml_dtypes.bfloat16))
    assert torch.from_dlpack(z).tolist() == [1, 2, 3, 4]
    f8 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e5m2).cuda()
    w = ort.OrtValue.from_dlpack(f8)
    assert w.data_ptr() == f8.data_ptr() and w.__dlpack_device__()[0] == dlpack.KDL_CUDA
    assert np.array_equal(bits(w.numpy()), bits(f8.cpu()))
    p = dlpack.tensor_from_pointer(f8.data_ptr(), TP.FLOAT8E5M2, [256], ("cuda", 0))
    assert p.is_cuda and p.data_ptr() == f8.data_ptr()
