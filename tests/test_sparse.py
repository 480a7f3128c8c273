"""SparseTensor (COO and CSR(C)) against onnxruntime's: construction from numpy, views,
OrtValues holding one, sparse model inputs and outputs, and sparse initializers."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort as ort
from tritort import sparse

from . import models

CPU = ["CPUExecutionProvider"]
VALUES = np.array([1.0, 2.0, 3.0], np.float32)
LINEAR = np.array([1, 6, 11], np.int64)  # in a 3 x 4 tensor
COORDS = np.array([[0, 1], [1, 2], [2, 3]], np.int64)
INNER, OUTER = np.array([1, 2, 3], np.int64), np.array([0, 1, 2, 3], np.int64)
DENSE = np.zeros((3, 4), np.float32)
DENSE[0, 1], DENSE[1, 2], DENSE[2, 3] = 1, 2, 3


def _make(module, kind, values=VALUES, shape=(3, 4)):
    dev = module.OrtDevice.make("cpu", 0)
    if kind == "coo linear":
        return module.SparseTensor.sparse_coo_from_numpy(list(shape), values, LINEAR, dev)
    if kind == "coo coordinates":
        return module.SparseTensor.sparse_coo_from_numpy(list(shape), values, COORDS, dev)
    return module.SparseTensor.sparse_csr_from_numpy(list(shape), values, INNER, OUTER, dev)


def _describe(st) -> dict:
    out = {"format": st.format().name, "dense_shape": list(st.dense_shape()),
           "data_type": st.data_type(), "device": st.device_name(),
           "values": st.values().tolist()}
    if st.format().name == "ORT_SPARSE_COO":
        out["indices"] = st.as_coo_view().indices().tolist()
    else:
        view = st.as_csrc_view()
        out["inner"], out["outer"] = view.inner().tolist(), view.outer().tolist()
    return out


KINDS = ["coo linear", "coo coordinates", "csr"]


@pytest.mark.parametrize("kind", KINDS)
def test_construction_matches_onnxruntime(kind):
    ours, ref = _make(ort, kind), _make(onnxruntime, kind)
    assert _describe(ours) == _describe(ref)
    assert int(ours.format()) == int(ref.format())
    np.testing.assert_array_equal(sparse.to_dense(ours), DENSE)


@pytest.mark.parametrize("module", [ort, onnxruntime], ids=["tritort", "onnxruntime"])
def test_numeric_values_share_memory(module):
    values = VALUES.copy()
    st = _make(module, "coo linear", values)
    values[0] = 42
    assert st.values()[0] == 42


def test_string_values_match_onnxruntime():
    words = np.array(["a", "bc", "déf"])
    ours, ref = _make(ort, "coo linear", words), _make(onnxruntime, "coo linear", words)
    assert _describe(ours) == _describe(ref)
    assert ours.data_type() == "sparse_tensor(string)"
    # object arrays of str are taken too (onnxruntime refuses them: data type 17)
    objects = _make(ort, "csr", np.array(["a", "bc", "déf"], dtype=object))
    assert objects.values().tolist() == ["a", "bc", "déf"]


def test_wrong_view_is_refused_as_in_onnxruntime():
    for module in (ort, onnxruntime):
        with pytest.raises(RuntimeError, match="does not contain COO format"):
            _make(module, "csr").as_coo_view()
        with pytest.raises(RuntimeError, match="does not contain"):
            _make(module, "coo linear").as_csrc_view()


@pytest.mark.parametrize("build", [
    lambda m, d: m.SparseTensor.sparse_coo_from_numpy([3, 4], VALUES, LINEAR[:2], d),
    lambda m, d: m.SparseTensor.sparse_coo_from_numpy([3, 4], VALUES.reshape(3, 1), LINEAR, d),
    lambda m, d: m.SparseTensor.sparse_csr_from_numpy([2, 3, 4], VALUES, INNER, OUTER, d),
    lambda m, d: m.SparseTensor.sparse_csr_from_numpy([3, 4], VALUES, INNER, OUTER[:3], d),
    lambda m, d: m.SparseTensor.sparse_csr_from_numpy([3, 4], VALUES, INNER[:2], OUTER, d),
], ids=["coo count", "coo 2-D values", "csr rank", "csr outer", "csr inner"])
def test_inconsistent_arrays_refused_by_both(build):
    for module in (ort, onnxruntime):
        with pytest.raises(RuntimeError):
            build(module, module.OrtDevice.make("cpu", 0))


def test_out_of_range_indices_refused():
    """onnxruntime accepts indices outside the dense shape (and reads past the buffer when
    densifying); tritort refuses them, naming the index."""
    dev = ort.OrtDevice.make("cpu", 0)
    bad = np.array([1, 6, 12], np.int64)
    onnxruntime.SparseTensor.sparse_coo_from_numpy([3, 4], VALUES, bad,
                                                   onnxruntime.OrtDevice.make("cpu", 0))
    with pytest.raises(ort.InvalidArgument, match=r"linear COO index 12 is outside.*\[3, 4\]"):
        ort.SparseTensor.sparse_coo_from_numpy([3, 4], VALUES, bad, dev)
    with pytest.raises(ort.InvalidArgument, match="CSR column index 4"):
        ort.SparseTensor.sparse_csr_from_numpy([3, 4], VALUES, np.array([1, 2, 4]), OUTER, dev)
    with pytest.raises(ort.InvalidArgument, match="must rise from 0"):
        ort.SparseTensor.sparse_csr_from_numpy([3, 4], VALUES, INNER, np.array([0, 2, 1, 3]),
                                               dev)


def test_ortvalue_of_sparse_tensor_matches_onnxruntime():
    described = []
    for module in (ort, onnxruntime):
        st = _make(module, "csr")
        v = module.OrtValue.ort_value_from_sparse_tensor(st)
        described.append((v.is_sparse_tensor(), v.is_tensor(), v.data_type(), list(v.shape()),
                          v.element_type(), v.device_name(), v.has_value(),
                          _describe(v.as_sparse_tensor())))
        with pytest.raises(RuntimeError):
            v.numpy()
    assert described[0] == described[1]
    dense = ort.OrtValue.ortvalue_from_numpy(DENSE)
    assert not dense.is_sparse_tensor()
    with pytest.raises(ort.InvalidArgument, match="not a SparseTensor"):
        dense.as_sparse_tensor()


def test_to_cuda_needs_a_cuda_device():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: tests/test_iobinding_cuda.py territory")
    with pytest.raises(ort.EPFail, match="not available"):
        _make(ort, "coo linear").to_cuda(ort.OrtDevice.make("cuda", 0))
    with pytest.raises(RuntimeError):  # onnxruntime's CPU build has no CUDA either
        _make(onnxruntime, "coo linear").to_cuda(onnxruntime.OrtDevice.make("cuda", 0))


def _sparse_vi(name, shape=(3, 4), elem=TP.FLOAT):
    return helper.make_value_info(name, helper.make_sparse_tensor_type_proto(elem, list(shape)))


def _passthrough() -> bytes:
    """A model whose output is its sparse input."""
    return models.make([], [_sparse_vi("s")], [_sparse_vi("s")]).SerializeToString()


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_input_and_output_match_onnxruntime(kind):
    ours = ort.InferenceSession(_passthrough())
    ref = onnxruntime.InferenceSession(_passthrough(), providers=CPU)
    assert [(i.name, i.type, i.shape) for i in ours.get_inputs()] == \
        [(i.name, i.type, i.shape) for i in ref.get_inputs()] == \
        [("s", "sparse_tensor(float)", [3, 4])]
    assert [(o.type, o.shape) for o in ours.get_outputs()] == \
        [(o.type, o.shape) for o in ref.get_outputs()]
    got = ours.run_with_ort_values(
        None, {"s": ort.OrtValue.ort_value_from_sparse_tensor(_make(ort, kind))})[0]
    want = ref.run_with_ort_values(
        None, {"s": onnxruntime.OrtValue.ort_value_from_sparse_tensor(
            _make(onnxruntime, kind))})[0]
    assert got.is_sparse_tensor() and want.is_sparse_tensor()
    assert _describe(got.as_sparse_tensor()) == _describe(want.as_sparse_tensor())
    # run() takes and returns SparseTensor objects (onnxruntime's run() cannot take one)
    (out,) = ours.run(None, {"s": _make(ort, kind)})
    assert isinstance(out, ort.SparseTensor) and _describe(out) == _describe(_make(ort, kind))
    with pytest.raises(RuntimeError, match="Unable to handle object of type"):
        ref.run(None, {"s": _make(onnxruntime, kind)})


def test_sparse_input_checks():
    sess = ort.InferenceSession(_passthrough())
    ref = onnxruntime.InferenceSession(_passthrough(), providers=CPU)
    with pytest.raises(ort.InvalidArgument, match="takes a SparseTensor"):
        sess.run(None, {"s": DENSE})
    with pytest.raises(Exception, match="expected to be of type"):  # onnxruntime's words
        ref.run(None, {"s": DENSE})
    dev = ort.OrtDevice.make("cpu", 0)
    wide = ort.SparseTensor.sparse_coo_from_numpy([3, 4], VALUES.astype(np.float64), LINEAR,
                                                   dev)
    with pytest.raises(ort.InvalidArgument,
                       match=r"Actual: \(sparse_tensor\(double\)\) , expected: "
                             r"\(sparse_tensor\(float\)\)"):
        sess.run(None, {"s": wide})
    with pytest.raises(ort.InvalidArgument, match="index: 0 Got: 4 Expected: 3"):
        sess.run(None, {"s": ort.SparseTensor.sparse_coo_from_numpy([4, 3], VALUES, LINEAR,
                                                                      dev)})
    dense_model = models.identity().SerializeToString()
    with pytest.raises(ort.InvalidArgument, match="given a SparseTensor"):
        ort.InferenceSession(dense_model).run(None, {"X": _make(ort, "csr")})


@pytest.mark.parametrize("indices", [LINEAR, COORDS], ids=["linear", "coordinates"])
def test_sparse_initializer_read_by_a_dense_op(indices):
    w = helper.make_sparse_tensor(numpy_helper.from_array(VALUES, "w"),
                                  numpy_helper.from_array(indices, "w_indices"), [3, 4])
    model = models.make([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                        [models.vi("x", shape=[2, 3])], [models.vi("y", shape=[2, 4])])
    model.graph.sparse_initializer.append(w)
    data = model.SerializeToString()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = ort.InferenceSession(data).run(None, {"x": x})[0]
    want = onnxruntime.InferenceSession(data, providers=CPU).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(got, x @ DENSE)


def test_sparse_to_dense_matmul():
    """com.microsoft SparseToDenseMatMul: the model kind that takes sparse inputs. onnxruntime
    runs it from CSR (and COO with coordinates) through run_with_ort_values."""
    model = models.make(
        [helper.make_node("SparseToDenseMatMul", ["A", "B"], ["Y"], domain="com.microsoft",
                          name="spmm", alpha=2.0)],
        [_sparse_vi("A"), models.vi("B", shape=[4, 2])], [models.vi("Y", shape=[3, 2])])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    data = model.SerializeToString()
    ours = ort.InferenceSession(data)
    b = np.arange(8, dtype=np.float32).reshape(4, 2)
    ref = onnxruntime.InferenceSession(data, providers=CPU)
    want = ref.run_with_ort_values(None, {
        "A": onnxruntime.OrtValue.ort_value_from_sparse_tensor(_make(onnxruntime, "csr")),
        "B": onnxruntime.OrtValue.ortvalue_from_numpy(b)})[0].numpy()
    np.testing.assert_allclose(want, 2 * DENSE @ b)
    for kind in KINDS:
        np.testing.assert_allclose(ours.run(None, {"A": _make(ort, kind), "B": b})[0], want)


def test_sparse_initializer_returned_as_a_sparse_output():
    # the initializer is densified for the kernels; the output keeps its declared sparse type
    w = helper.make_sparse_tensor(numpy_helper.from_array(VALUES, "w"),
                                  numpy_helper.from_array(LINEAR, "w_indices"), [3, 4])
    model = models.make([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                        [models.vi("x", shape=[2, 3])],
                        [models.vi("y", shape=[2, 4]), _sparse_vi("w")])
    model.graph.sparse_initializer.append(w)
    data = model.SerializeToString()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    sess = ort.InferenceSession(data)
    assert [o.type for o in sess.get_outputs()] == ["tensor(float)", "sparse_tensor(float)"]
    y, w_out = sess.run(None, {"x": x})
    want_y = onnxruntime.InferenceSession(data, providers=CPU).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(y, want_y)
    assert w_out.dense_shape() == [3, 4]
    dense = np.zeros(12, np.float32)
    dense[w_out.as_coo_view().indices().reshape(-1)] = w_out.values()
    np.testing.assert_array_equal(dense.reshape(3, 4), DENSE)
