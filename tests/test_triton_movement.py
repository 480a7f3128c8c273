"""Data-movement templates on the Triton provider (interpreter mode) against onnxruntime.

Views (Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Expand, Slice) and the index-math
kernels (Concat, Split, Gather, Pad, Tile, strided copies). Inputs get symbolic dims, so every
model also checks that one compiled kernel serves any size. Non-contiguous inputs come from a
view node in front of the op under test: feeds themselves arrive contiguous.
"""
from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort as ort
from tests import models
from tests.triton_env import requires_triton
from tritort import dtypes

pytestmark = requires_triton
TRITON = "TritonExecutionProvider"
_names = itertools.count()


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, name=f"{op.lower()}_{next(_names)}", **attrs)


def ints(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _elem(dtype) -> int:
    return dtypes.from_numpy(dtype).onnx


def build(nodes, feeds, outputs, inits=(), opset=21, out_types=None):
    """A model whose inputs have symbolic dims (rank and type from the first feeds)."""
    inputs = [models.vi(k, _elem(v.dtype), [f"{k}_{j}" for j in range(v.ndim)])
              for k, v in feeds.items()]
    first = next(iter(feeds.values())).dtype
    outs = [models.vi(o, (out_types or {}).get(o, _elem(first)), None) for o in outputs]
    return models.make(nodes, inputs, outs, inits, opset=opset)


def reference(model):
    data = model.SerializeToString()
    try:
        return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except (onnxruntime.capi.onnxruntime_pybind11_state.NotImplemented,
            onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph):
        from onnx.reference import ReferenceEvaluator  # ORT lacks some bf16/bool kernels

        return ReferenceEvaluator(model)


def check(model, *feed_sets, on_triton=None):
    """Run each feed set on tritort (Triton first) and the reference; outputs must be equal.

    ``on_triton``: the nodes that must have been placed on Triton (default: all of them).
    """
    sess = ort.InferenceSession(model.SerializeToString(), providers=[TRITON,
                                                                      "CPUExecutionProvider"])
    placed = sess._program.partition.assignments
    names = on_triton if on_triton is not None else [n.name for n in model.graph.node]
    for name in names:
        assert placed[name].provider.name == TRITON, placed[name].declined
    ref = reference(model)
    for feeds in feed_sets:
        for got, exp, vi in zip(sess.run(None, feeds), ref.run(None, feeds), model.graph.output):
            exp = np.asarray(exp)
            assert got.dtype == exp.dtype and got.shape == exp.shape, \
                (vi.name, got.dtype, got.shape, exp.dtype, exp.shape)
            np.testing.assert_array_equal(got, exp, err_msg=vi.name)
    return sess


def rand(*shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 100, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def transposed(x, perm, name="X"):
    """Feeds ``x`` permuted back by ``perm`` so a Transpose(perm) in the graph yields x's
    values as a non-contiguous view."""
    return {name: np.ascontiguousarray(np.transpose(x, np.argsort(perm)))}


# ------------------------------------------------------------------ views


@pytest.mark.parametrize("perm", [None, [0, 2, 1], [2, 0, 1], [1, 2, 0]])
def test_transpose(perm):
    attrs = {} if perm is None else {"perm": perm}
    model = build([node("Transpose", ["X"], ["T"], **attrs), node("Neg", ["T"], ["Y"])],
                  {"X": rand(2, 3, 4)}, ["T", "Y"])
    check(model, {"X": rand(2, 3, 4)}, {"X": rand(3, 1, 5)})


def test_transpose_of_a_transpose_and_rank_one():
    model = build([node("Transpose", ["X"], ["T"], perm=[1, 0]),
                   node("Transpose", ["T"], ["Y"], perm=[1, 0])], {"X": rand(2, 3)}, ["Y"])
    check(model, {"X": rand(2, 3)})
    model = build([node("Transpose", ["X"], ["Y"])], {"X": rand(5)}, ["Y"])
    check(model, {"X": rand(5)})


@pytest.mark.parametrize("shape, allowzero", [([0, -1], 0), ([-1], 0), ([2, 0, -1], 0),
                                              ([3, -1, 2], 0), ([6, 2], 1)])
def test_reshape(shape, allowzero):
    model = build([node("Reshape", ["X", "shape"], ["Y"], allowzero=allowzero)],
                  {"X": rand(2, 6)}, ["Y"], [ints("shape", shape)])
    check(model, {"X": rand(2, 6)})


def test_reshape_allowzero_keeps_a_zero_dim():
    model = build([node("Reshape", ["X", "shape"], ["Y"], allowzero=1)],
                  {"X": rand(0, 4)}, ["Y"], [ints("shape", [4, 0])])
    check(model, {"X": rand(0, 4)})


def test_reshape_of_a_non_contiguous_input_copies():
    # Transpose makes a view whose strides cannot merge: Reshape copies with a kernel
    perm = [0, 2, 1]
    model = build([node("Transpose", ["X"], ["T"], perm=perm),
                   node("Reshape", ["T", "shape"], ["Y"]),
                   node("Reshape", ["T", "split"], ["Z"])],  # splitting a dim stays a view
                  {"X": rand(2, 3, 4)}, ["Y", "Z"], [ints("shape", [0, -1]),
                                                    ints("split", [2, 2, 2, 3])])
    check(model, transposed(rand(2, 4, 3), perm))


@pytest.mark.parametrize("axis", [0, 1, 2, -1, 3])
def test_flatten(axis):
    perm = [2, 0, 1]
    model = build([node("Transpose", ["X"], ["T"], perm=perm),
                   node("Flatten", ["T"], ["Y"], axis=axis),
                   node("Flatten", ["X"], ["Z"], axis=axis)], {"X": rand(2, 3, 4)}, ["Y", "Z"])
    check(model, {"X": rand(2, 3, 4)}, {"X": rand(1, 5, 2)})


@pytest.mark.parametrize("opset, axes", [(11, [1]), (11, [-1, 1]), (11, None), (13, [-3]),
                                         (13, None), (21, [1, 3])])
def test_squeeze(opset, axes):
    inits, inputs, attrs = [], ["X"], {}
    if axes is not None and opset >= 13:
        inits, inputs = [ints("axes", axes)], ["X", "axes"]
    elif axes is not None:
        attrs = {"axes": axes}
    model = build([node("Squeeze", inputs, ["Y"], **attrs)], {"X": rand(1, 1, 3, 1)}, ["Y"],
                  inits, opset=opset)
    check(model, {"X": rand(1, 1, 3, 1)})


@pytest.mark.parametrize("opset, axes", [(11, [0]), (11, [-1, 1]), (13, [0, 4]), (21, [-2])])
def test_unsqueeze(opset, axes):
    inits, inputs, attrs = [], ["X"], {}
    if opset >= 13:
        inits, inputs = [ints("axes", axes)], ["X", "axes"]
    else:
        attrs = {"axes": axes}
    perm = [1, 0, 2]
    model = build([node("Transpose", ["X"], ["T"], perm=perm),
                   node("Unsqueeze", ["T"] + inputs[1:], ["Y"], **attrs)],
                  {"X": rand(2, 3, 4)}, ["Y"], inits, opset=opset)
    check(model, {"X": rand(2, 3, 4)})


@pytest.mark.parametrize("shape", [[3, 4], [2, 1, 4], [1], [4, 1, 1], [1, 0]])
def test_expand(shape):
    model = build([node("Expand", ["X", "shape"], ["E"]), node("Add", ["E", "E"], ["Y"])],
                  {"X": rand(3, 1)}, ["E", "Y"], [ints("shape", shape)])
    check(model, {"X": rand(3, 1)})


BIG = 2 ** 62
SLICES = [  # starts, ends, axes, steps
    ([1], [3], None, None),
    ([0, 1], [-1, BIG], [1, 0], None),
    ([-3], [-BIG], [-1], [-1]),
    ([BIG, 1], [-BIG, 3], [2, 0], [-2, 1]),
    ([-10], [BIG], [1], [-1]),  # negative step: start clamps to 0, end to dim - 1: empty
    ([3, 0], [1, 5], [-1, -2], [2, 3]),  # empty along the last axis
    ([2], [-1], [0], [-1]),
    ([-10], [-BIG], [0], [-1]),  # start below -dim clamps to 0: one element (Python: none)
]


@pytest.mark.parametrize("starts, ends, axes, steps", SLICES)
def test_slice(starts, ends, axes, steps):
    names = ["starts", "ends"] + (["axes"] if axes is not None or steps else []) + \
        (["steps"] if steps else [])
    values = {"starts": starts, "ends": ends, "steps": steps,
              "axes": axes if axes is not None else list(range(len(starts)))}
    perm = [1, 2, 0]
    model = build([node("Transpose", ["X"], ["T"], perm=perm),
                   node("Slice", ["T"] + names, ["Y"]),
                   node("Slice", ["X"] + names, ["Z"])],
                  {"X": rand(4, 5, 6)}, ["Y", "Z"], [ints(n, values[n]) for n in names])
    check(model, {"X": rand(4, 5, 6)}, {"X": rand(3, 0, 2)})


def test_slice_opset_9_attributes():
    model = build([node("Slice", ["X"], ["Y"], starts=[1, -2], ends=[BIG, -1], axes=[0, 1])],
                  {"X": rand(3, 4)}, ["Y"], opset=9)
    check(model, {"X": rand(3, 4)})


# ------------------------------------------------------------------ kernels


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    perm = [1, 0]
    model = build([node("Transpose", ["A"], ["T"], perm=perm),
                   node("Concat", ["T", "B", "T"], ["Y"], axis=axis),
                   node("Concat", ["B", "B"], ["Z"], axis=axis)],
                  {"A": rand(3, 3), "B": rand(3, 3, seed=1)}, ["Y", "Z"])
    check(model, {"A": rand(3, 3), "B": rand(3, 3, seed=1)})


def test_concat_zero_size():
    model = build([node("Concat", ["A", "B"], ["Y"], axis=0)],
                  {"A": rand(0, 3), "B": rand(2, 3)}, ["Y"])
    check(model, {"A": rand(0, 3), "B": rand(2, 3)}, {"A": rand(0, 0), "B": rand(0, 0)})


@pytest.mark.parametrize("opset, attrs, sizes, outs", [
    (11, {"axis": 1, "split": [1, 3]}, None, 2),
    (11, {"axis": 0}, None, 3),
    (13, {"axis": -3}, [2, 0, 4], 3),
    (18, {"axis": -1, "num_outputs": 3}, None, 3),  # 7 = 3 + 3 + 1: a smaller tail
    (18, {"axis": 2, "num_outputs": 2}, None, 2),
])
def test_split(opset, attrs, sizes, outs):
    inputs = ["T", "split"] if sizes else ["T"]
    inits = [ints("split", sizes)] if sizes else []
    names = [f"Y{i}" for i in range(outs)]
    perm = [1, 0, 2]
    model = build([node("Transpose", ["X"], ["T"], perm=perm),
                   node("Split", inputs, names, **attrs)], {"X": rand(4, 6, 7)}, names, inits,
                  opset=opset)
    check(model, {"X": rand(4, 6, 7)})


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("indices", [np.array(1), np.array([2, -1, 0]),
                                     np.array([[0, -3], [1, 2]], np.int32),
                                     np.zeros((0, 2), np.int64)], ids=str)
def test_gather(axis, indices):
    perm = [2, 0, 1]
    model = build([node("Transpose", ["X"], ["T"], perm=perm),
                   node("Gather", ["T", "I"], ["Y"], axis=axis),
                   node("Gather", ["X", "I"], ["Z"], axis=axis)],
                  {"X": rand(3, 3, 3), "I": indices}, ["Y", "Z"])
    check(model, {"X": rand(3, 3, 3), "I": indices})


def test_gather_rank_one_data_scalar_index():
    model = build([node("Gather", ["X", "I"], ["Y"])], {"X": rand(5), "I": np.array(-2)}, ["Y"])
    check(model, {"X": rand(5), "I": np.array(-2)}, {"X": rand(3), "I": np.array(0)})


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "wrap"])
@pytest.mark.parametrize("pads", [[1, 0, 2, 2, 1, 0], [0, 0, 0, 0, 0, 0], [2, 1, 1, 0, 1, 1]])
def test_pad_modes(mode, pads):
    perm = [2, 0, 1]
    model = build([node("Transpose", ["X"], ["T"], perm=perm),
                   node("Pad", ["T", "pads"], ["Y"], mode=mode)],
                  {"X": rand(3, 4, 5)}, ["Y"], [ints("pads", pads)])
    check(model, {"X": rand(3, 4, 5)}, {"X": rand(2, 3, 4)})


def test_pad_constant_value_axes_and_negative_pads():
    value = numpy_helper.from_array(np.array(7.5, np.float32), "value")
    model = build([node("Pad", ["X", "pads", "value"], ["Y"]),
                   node("Pad", ["X", "crop", "", "axes"], ["Z"]),
                   node("Pad", ["X", "pads", "V"], ["W"])],
                  {"X": rand(3, 4), "V": np.array([-1.0], np.float32)}, ["Y", "Z", "W"],
                  [ints("pads", [1, -1, 0, 2]), ints("crop", [-1, 2]), ints("axes", [-1]),
                   value])
    check(model, {"X": rand(3, 4), "V": np.array([-1.0], np.float32)})


def test_pad_opset_2_attributes():
    model = build([node("Pad", ["X"], ["Y"], pads=[0, 1, 1, 0], value=2.0)], {"X": rand(2, 2)},
                  ["Y"], opset=2)
    check(model, {"X": rand(2, 2)})


@pytest.mark.parametrize("repeats", [[1, 1], [2, 3], [3, 0], [1, 2]])
def test_tile(repeats):
    perm = [1, 0]
    model = build([node("Transpose", ["X"], ["T"], perm=perm),
                   node("Tile", ["T", "reps"], ["Y"])], {"X": rand(2, 3)}, ["Y"],
                  [ints("reps", repeats)])
    check(model, {"X": rand(2, 3)}, {"X": rand(1, 4)})


# ------------------------------------------------------------------ types and sizes

DTYPES = [ml_dtypes.bfloat16, np.bool_, np.float16, np.float64, np.int8, np.uint8, np.int16,
          np.uint16, np.int32, np.uint32, np.int64, np.uint64]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_kernel_moves_every_type(dtype):
    """Each kernel once per type: the kernels never look at the values they move."""
    x = rand(3, 4, dtype=dtype)
    nodes = [node("Transpose", ["X"], ["T"], perm=[1, 0]),
             node("Reshape", ["T", "flat"], ["reshaped"]),  # copy kernel
             node("Slice", ["X", "s", "e", "a", "st"], ["sliced"]),  # negative step
             node("Concat", ["T", "T"], ["concat"], axis=0),
             node("Split", ["T", "sp"], ["split0", "split1"], axis=1),
             node("Gather", ["T", "I"], ["gather"], axis=1),
             node("Pad", ["T", "pads"], ["pad"]),
             node("Tile", ["T", "reps"], ["tile"]),
             node("Expand", ["X", "shape"], ["expand"])]
    inits = [ints("flat", [-1]), ints("s", [-1]), ints("e", [-BIG]), ints("a", [1]),
             ints("st", [-2]), ints("sp", [1, 2]), ints("pads", [1, 0, 0, 2]),
             ints("reps", [1, 2]), ints("shape", [2, 3, 4])]
    outputs = ["reshaped", "sliced", "concat", "split0", "split1", "gather", "pad", "tile",
               "expand"]
    model = build(nodes, {"X": x, "I": np.array([2, -1])}, outputs, inits, opset=18,
                  out_types={o: _elem(np.dtype(dtype)) for o in outputs})
    check(model, {"X": x, "I": np.array([2, -1])})


def test_zero_size_tensors():
    nodes = [node("Transpose", ["X"], ["T"], perm=[1, 0]),
             node("Reshape", ["T", "flat"], ["reshaped"]),
             node("Concat", ["T", "T"], ["concat"], axis=1),
             node("Split", ["T"], ["split0", "split1"], axis=0),
             node("Gather", ["T", "I"], ["gather"], axis=0),
             node("Pad", ["T", "pads"], ["pad"]),
             node("Tile", ["T", "reps"], ["tile"]),
             node("Slice", ["T", "s", "e", "a", "st"], ["sliced"])]
    inits = [ints("flat", [-1, 2]), ints("pads", [1, 0, 0, 0]), ints("reps", [2, 2]),
             ints("s", [-1]), ints("e", [-BIG]), ints("a", [1]), ints("st", [-1])]
    outputs = ["reshaped", "concat", "split0", "split1", "gather", "pad", "tile", "sliced"]
    model = build(nodes, {"X": rand(0, 4), "I": np.array([1, 0])}, outputs, inits)
    check(model, {"X": rand(0, 4), "I": np.array([1, 0])},
          {"X": rand(2, 4), "I": np.zeros(0, np.int64)})


def test_views_feed_pointwise_kernels():
    """Transpose -> Add -> Reshape -> Relu: the pointwise kernels read the views' strides."""
    nodes = [node("Transpose", ["X"], ["T"], perm=[0, 2, 1]),
             node("Add", ["T", "B"], ["S"]),
             node("Reshape", ["S", "shape"], ["R"]),
             node("Relu", ["R"], ["Y"]),
             node("Expand", ["B", "wide"], ["E"]),
             node("Mul", ["T", "E"], ["Z"])]
    feeds = {"X": rand(2, 3, 4), "B": rand(1, 3, seed=1)}
    model = build(nodes, feeds, ["Y", "Z"], [ints("shape", [0, -1]), ints("wide", [4, 1])])
    sess = check(model, feeds, {"X": rand(3, 5, 4), "B": rand(1, 5, seed=2)})
    kernels = {k["nodes"][0]: k for k in sess._program.providers[0].kernels}
    transpose = nodes[0].name
    assert kernels[transpose]["path"] == "None" and not kernels[transpose]["cached"]


def test_views_have_readable_ir_and_no_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TRITORT_DUMP_DIR", str(tmp_path / "dump"))
    model = build([node("Transpose", ["X"], ["Y"], perm=[1, 0]),
                   node("Gather", ["X", "I"], ["Z"], axis=1)],
                  {"X": rand(2, 3), "I": np.array([0])}, ["Y", "Z"])
    sess = check(model, {"X": rand(2, 3), "I": np.array([0])})
    dump = tmp_path / "dump"
    assert "view: permute(1, 0)" in (dump / "transpose_0.tileir.txt").read_text()
    source = (dump / "gather_1.py").read_text()
    assert source.startswith("# tritort Gather kernel gather_1\n# ONNX node: gather_")
    # the unit keeps its name; its kernel (function and cache file) is named by its hash
    kernel = {k["name"]: k["kernel"] for k in sess._program.providers[0].kernels}["gather_1"]
    assert f"@triton.jit\ndef {kernel}(" in source
    assert [p.name for p in (tmp_path / "cache").glob("*.py")] == [f"{kernel}.py"]


def test_reshape_to_a_runtime_shape_reads_it_on_the_host():
    """The shape is a value (a graph input here; Shape -> Concat in exported models): the
    plan hands it to the Reshape in host memory, and the data stays a device view."""
    nodes = [node("Reshape", ["X", "S"], ["Z"])]
    model = build(nodes, {"X": rand(2, 3), "S": np.array([3, 2])}, ["Z"])
    sess = check(model, {"X": rand(2, 3), "S": np.array([3, -1])},
                 {"X": rand(4, 3), "S": np.array([0, 3])})
    steps = [s.label for s in sess._plans.get(["Z"], keep_on_device=True).steps]
    assert not any(name.startswith("copy S") for name in steps), steps
    with pytest.raises(ort.Fail, match="cannot reshape"):
        sess.run(None, {"X": rand(2, 3), "S": np.array([4, 2])})


def test_slice_by_runtime_starts_and_ends_is_a_view():
    """GPT-2's causal mask: a constant buffer sliced to the sequence length, which is a
    value; the bounds reach the view on the host."""
    nodes = [node("Slice", ["X", "S", "E", "A"], ["Z"])]
    model = build(nodes, {"X": rand(4, 6), "S": np.array([1]), "E": np.array([5])}, ["Z"],
                  inits=[numpy_helper.from_array(np.array([1], np.int64), "A")])
    sess = check(model, {"X": rand(4, 6), "S": np.array([1]), "E": np.array([5])},
                 {"X": rand(3, 7), "S": np.array([-3]), "E": np.array([2 ** 62])})
    steps = [s.label for s in sess._plans.get(["Z"], keep_on_device=True).steps]
    assert not any(label.startswith(("copy S", "copy E")) for label in steps), steps


def test_expand_to_a_runtime_shape_is_a_view():
    feeds = {"X": rand(3, 1), "S": np.array([2, 1, 4])}
    model = build([node("Expand", ["X", "S"], ["Z"])], feeds, ["Z"])
    check(model, feeds, {"X": rand(1, 5), "S": np.array([3, 1])})


def test_declines_run_on_the_cpu_with_a_reason():
    nodes = [node("Cast", ["X"], ["F8"], to=TP.FLOAT8E4M3FN),
             node("Transpose", ["F8"], ["T8"]),
             node("Cast", ["T8"], ["Z"], to=TP.FLOAT)]
    model = build(nodes, {"X": rand(2, 3)}, ["Z"])
    sess = check(model, {"X": rand(2, 3)}, on_triton=[])
    placed = sess._program.partition.assignments
    assert "float8" in placed[nodes[1].name].declined[TRITON]


def test_view_outputs_do_not_alias_feeds():
    model = build([node("Transpose", ["X"], ["Y"])], {"X": rand(2, 3)}, ["Y"])
    sess = ort.InferenceSession(model.SerializeToString(), providers=[TRITON])
    x = rand(2, 3)
    (y,) = sess.run(None, {"X": x})
    assert not np.shares_memory(x, y)


def test_pad_edge_and_wrap_of_size_one_dims():
    model = build([node("Pad", ["X", "pads"], ["E"], mode="edge"),
                   node("Pad", ["X", "pads"], ["W"], mode="wrap")],
                  {"X": rand(1, 3)}, ["E", "W"], [ints("pads", [2, 1, 1, 0])])
    check(model, {"X": rand(1, 3)}, {"X": rand(1, 1)})
