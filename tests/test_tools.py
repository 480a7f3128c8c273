"""tritort.tools: random inputs derived from the graph are valid for it (every table index in
range, masks all ones, symbolic dims agreeing across inputs), checked against onnxruntime and
exact NumPy."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort as ort
from tritort import tools
from tests import models

WORDS, TYPES, HIDDEN = 30, 2, 8


def bert_like() -> onnx.ModelProto:
    """A BERT export's embedding block: word + token-type embeddings (Gathers from [30, 8] and
    [2, 8] tables) plus the additive mask (1 - Cast(mask)) * -10000, all [batch, seq]."""
    rng = np.random.default_rng(1)
    tables = [numpy_helper.from_array(rng.standard_normal((WORDS, HIDDEN), np.float32), "word"),
              numpy_helper.from_array(rng.standard_normal((TYPES, HIDDEN), np.float32), "type"),
              numpy_helper.from_array(np.array([2], np.int64), "axis2"),
              numpy_helper.from_array(np.array(1.0, np.float32), "one"),
              numpy_helper.from_array(np.array(-10000.0, np.float32), "big")]
    nodes = [helper.make_node("Gather", ["word", "input_ids"], ["we"], name="word_gather"),
             helper.make_node("Gather", ["type", "token_type_ids"], ["te"], name="type_gather"),
             helper.make_node("Add", ["we", "te"], ["emb"], name="emb_add"),
             helper.make_node("Unsqueeze", ["attention_mask", "axis2"], ["m3"], name="unsq"),
             helper.make_node("Cast", ["m3"], ["mf"], name="cast", to=TP.FLOAT),
             helper.make_node("Sub", ["one", "mf"], ["inv"], name="sub"),
             helper.make_node("Mul", ["inv", "big"], ["bias"], name="mul"),
             helper.make_node("Add", ["emb", "bias"], ["hidden"], name="mask_add")]
    dims = ["batch", "seq"]
    inputs = [models.vi(name, TP.INT64, dims)
              for name in ("input_ids", "token_type_ids", "attention_mask")]
    return models.make(nodes, inputs, [models.vi("hidden", TP.FLOAT, dims + [HIDDEN])], tables)


def bert_like_reference(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    return (init["word"][feeds["input_ids"]] + init["type"][feeds["token_type_ids"]]
            + (1.0 - mask) * np.float32(-10000.0))


def test_bert_like_inputs_index_their_tables_and_the_mask_is_ones():
    model = bert_like()
    feeds = tools.random_inputs(model, {"input_ids": [3, 7]}, seed=5)
    # every input shares [batch, seq], so the one given shape fixes all three
    assert {k: v.shape for k, v in feeds.items()} == {
        "input_ids": (3, 7), "token_type_ids": (3, 7), "attention_mask": (3, 7)}
    assert all(v.dtype == np.int64 for v in feeds.values())
    assert 0 <= feeds["input_ids"].min() and feeds["input_ids"].max() < WORDS
    assert set(np.unique(feeds["token_type_ids"])) <= {0, 1}
    np.testing.assert_array_equal(feeds["attention_mask"], np.ones((3, 7), np.int64))
    ref = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(ref.run(None, feeds)[0], bert_like_reference(model, feeds),
                               rtol=1e-6, atol=1e-6)


def test_describe_inputs_reads_paths_and_reports_bounds_and_masks(tmp_path):
    path = tmp_path / "bert.onnx"
    onnx.save(bert_like(), path)
    infos = {i.name: i for i in tools.describe_inputs(str(path))}
    assert (infos["input_ids"].index_bound, infos["input_ids"].is_mask) == (WORDS, False)
    assert (infos["token_type_ids"].index_bound, infos["token_type_ids"].is_mask) == (TYPES, False)
    assert (infos["attention_mask"].index_bound, infos["attention_mask"].is_mask) == (None, True)
    assert infos["input_ids"].shape == ["batch", "seq"]


def _gathers_model() -> onnx.ModelProto:
    """``ids`` indexes four tables: directly (6 rows), through Cast+Reshape on axis 1 of a
    [4, 5] table, through GatherElements (axis 0 of [9, 2]) and through a Reshape'd table
    whose 3 rows only shape inference knows. ``keep`` (bool) is a Where condition, ``flag``
    (int32) reaches Where through Cast; ``other`` is used by nothing that bounds it."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 2), np.float32), "t6"),
             numpy_helper.from_array(rng.standard_normal((4, 5), np.float32), "t45"),
             numpy_helper.from_array(rng.standard_normal((9, 2), np.float32), "t9"),
             numpy_helper.from_array(rng.standard_normal((6,), np.float32), "flat6"),
             numpy_helper.from_array(np.array([3, 2], np.int64), "shape32"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    nodes = [helper.make_node("Gather", ["t6", "ids"], ["g6"], name="g6"),
             helper.make_node("Cast", ["ids"], ["ids32"], name="c32", to=TP.INT32),
             helper.make_node("Reshape", ["ids32", "flat"], ["ids_flat"], name="r"),
             helper.make_node("Gather", ["t45", "ids_flat"], ["g45"], name="g45", axis=1),
             helper.make_node("Expand", ["ids", "shape32"], ["ids_x"], name="x"),
             helper.make_node("GatherElements", ["t9", "ids_x"], ["g9"], name="g9"),
             helper.make_node("Reshape", ["flat6", "shape32"], ["t3"], name="t3"),
             helper.make_node("Gather", ["t3", "ids"], ["g3"], name="g3"),
             helper.make_node("Cast", ["flag"], ["flag_b"], name="cb", to=TP.BOOL),
             helper.make_node("Where", ["keep", "g6", "g3"], ["w1"], name="w1"),
             helper.make_node("Where", ["flag_b", "g6", "g3"], ["w2"], name="w2"),
             helper.make_node("Add", ["other", "other"], ["o"], name="o")]
    inputs = [models.vi("ids", TP.INT64, [1, 2]), models.vi("keep", TP.BOOL, [1, 2, 2]),
              models.vi("flag", TP.INT32, [1, 2, 2]), models.vi("other", TP.INT64, ["n"])]
    outputs = [models.vi(n, TP.FLOAT, None) for n in ("g45", "g9", "w1", "w2")]
    return models.make(nodes, inputs, outputs + [models.vi("o", TP.INT64, None)], inits)


def test_index_bound_is_the_smallest_table_over_every_use():
    model = _gathers_model()
    infos = {i.name: i for i in tools.describe_inputs(model)}
    assert infos["ids"].index_bound == 3  # min(6, 5, 9, 3)
    assert infos["keep"].is_mask and infos["flag"].is_mask
    assert (infos["other"].index_bound, infos["other"].is_mask) == (None, False)
    for seed in range(5):
        feeds = tools.random_inputs(model, seed=seed)
        assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 3
        assert feeds["keep"].all() and (feeds["flag"] == 1).all()
        assert feeds["other"].shape == (1,) and 0 <= feeds["other"].min()
        assert feeds["other"].max() < 4
        # onnxruntime accepts them: every Gather index is in range
        got = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"]).run(None, feeds)
        init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        np.testing.assert_array_equal(got[2], init["t6"][feeds["ids"]])  # Where(True, g6, _)


def test_dtypes_and_symbolic_dims_default_to_one_and_agree():
    declared = {"f16": (TP.FLOAT16, ["n", 3]), "b": (TP.BOOL, ["n", "m"]),
                "s": (TP.STRING, [2]), "i8": (TP.UINT8, ["m"]), "f": (TP.FLOAT, ["k", "m"])}
    model = models.make(
        [helper.make_node("Identity", [n], [n + "_out"], name=n) for n in declared],
        [models.vi(n, elem, dims) for n, (elem, dims) in declared.items()],
        [models.vi(n + "_out", elem, dims) for n, (elem, dims) in declared.items()])
    feeds = tools.random_inputs(model, {"b": [4, 6]})
    assert {k: (v.dtype, v.shape) for k, v in feeds.items()} == {
        "f16": (np.float16, (4, 3)), "b": (np.bool_, (4, 6)), "s": (np.object_, (2,)),
        "i8": (np.uint8, (6,)), "f": (np.float32, (1, 6))}
    assert set(feeds["s"]) <= set(tools.STRINGS) and feeds["i8"].max() < 4
    assert tools.input_shapes(model, {"b": [4, 6]}, default_dim=None)["f"] is None
    assert tools.input_shapes(model, default_dim=2)["f16"] == [2, 3]


@pytest.mark.parametrize("shapes, message", [
    ({"nope": [1]}, r"unknown inputs \['nope'\]"),
    ({"input_ids": [1, 2, 3]}, r"input 'input_ids': expected rank 2 \['batch', 'seq'\], "
                               r"got 3 dims \[1, 2, 3\]"),
])
def test_bad_shapes_name_the_input(shapes, message):
    with pytest.raises(ort.InvalidArgument, match=message):
        tools.random_inputs(bert_like(), shapes)


def test_a_static_dim_must_match():
    with pytest.raises(ort.InvalidArgument, match=r"input 'A': expected dim 1 = 3, got 4"):
        tools.input_shapes(models.add_relu(), {"A": [2, 4]})


def test_parse_shapes():
    assert tools.parse_shapes(["a=1,128", "b=", "c=4"]) == {"a": [1, 128], "b": [], "c": [4]}
    for bad in ("a", "=1", "a=x", "a=-1"):
        with pytest.raises(ort.InvalidArgument, match=f"got '{bad}'"):
            tools.parse_shapes([bad])


def test_placement_summary_counts_nodes_per_provider():
    sess = ort.InferenceSession(models.add_relu().SerializeToString(),
                                providers=["CPUExecutionProvider"])
    assert tools.placement_summary(sess) == "CPUExecutionProvider: 3 nodes"
