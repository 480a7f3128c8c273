"""One compile per distinct kernel: a kernel's body (what is hashed and cached) holds the code
only, so the layers of a model share their kernels and a deeper model compiles nothing new."""
from __future__ import annotations

import re

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort as ort
from tests import models
from tests.triton_env import requires_triton

pytestmark = requires_triton
TRITON_FIRST = ["TritonExecutionProvider", "CPUExecutionProvider"]
BATCH, SEQ, HIDDEN, HEADS, FFN = 2, 8, 16, 2, 32
HEAD = HIDDEN // HEADS


def _layer(i: int, x: str, rng, activation: str) -> tuple[list, list, str]:
    """One post-LN encoder layer: Q/K/V projections with bias, heads split by Reshape and
    Transpose, scaled scores, Softmax, heads merged, output projection, residual Add,
    LayerNormalization, a feed-forward block (MatMul + bias, Gelu or Relu, MatMul + bias),
    residual Add, LayerNormalization. Every node, value and weight is named after layer i."""
    p = f"l{i}_"
    inits = []

    def weight(name, *shape, scale=None):
        scale = scale if scale is not None else 1 / np.sqrt(shape[0])
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), p + name))
        return p + name

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), p + name))
        return p + name

    nodes = []

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [p + name], name=p + name + "_node", **attrs))
        return p + name

    heads = const("heads_shape", [BATCH, SEQ, HEADS, HEAD], np.int64)
    merged = const("merged_shape", [BATCH, SEQ, HIDDEN], np.int64)
    proj = {}
    for t in "qkv":
        mm = node("MatMul", [x, weight(f"w{t}", HIDDEN, HIDDEN)], f"{t}_mm")
        biased = node("Add", [mm, weight(f"b{t}", HIDDEN, scale=0.1)], f"{t}_bias")
        split = node("Reshape", [biased, heads], f"{t}_heads")
        perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
        proj[t] = node("Transpose", [split], f"{t}_t", perm=perm)
    scores = node("MatMul", [proj["q"], proj["k"]], "scores")
    scaled = node("Mul", [scores, const("scale", 1 / np.sqrt(HEAD))], "scaled")
    probs = node("Softmax", [scaled], "probs", axis=-1)
    ctx = node("MatMul", [probs, proj["v"]], "ctx")
    ctx_t = node("Transpose", [ctx], "ctx_t", perm=[0, 2, 1, 3])
    ctx_m = node("Reshape", [ctx_t, merged], "ctx_merged")
    out = node("Add", [node("MatMul", [ctx_m, weight("wo", HIDDEN, HIDDEN)], "o_mm"),
                       weight("bo", HIDDEN, scale=0.1)], "o_bias")
    res1 = node("Add", [out, x], "res1")
    ln1 = node("LayerNormalization", [res1, weight("g1", HIDDEN, scale=1.0),
                                      weight("beta1", HIDDEN, scale=0.1)], "ln1", axis=-1)
    up = node("Add", [node("MatMul", [ln1, weight("w1", HIDDEN, FFN)], "f1_mm"),
                      weight("b1", FFN, scale=0.1)], "f1_bias")
    act = node(activation, [up], "act")
    down = node("Add", [node("MatMul", [act, weight("w2", FFN, HIDDEN)], "f2_mm"),
                        weight("b2", HIDDEN, scale=0.1)], "f2_bias")
    res2 = node("Add", [down, ln1], "res2")
    ln2 = node("LayerNormalization", [res2, weight("g2", HIDDEN, scale=1.0),
                                      weight("beta2", HIDDEN, scale=0.1)], "ln2", axis=-1)
    return nodes, inits, ln2


def encoder(layers: int, activation: str = "Gelu"):
    rng = np.random.default_rng(7)
    nodes, inits, x = [], [], "X"
    for i in range(layers):
        n, w, x = _layer(i, x, rng, activation)
        nodes += n
        inits += w
    nodes.append(helper.make_node("Identity", [x], ["Y"], name="final_identity"))
    return models.make(nodes, [models.vi("X", shape=[BATCH, SEQ, HIDDEN])],
                       [models.vi("Y", shape=[BATCH, SEQ, HIDDEN])], inits, opset=20)


def feeds():
    return {"X": np.random.default_rng(3).standard_normal((BATCH, SEQ, HIDDEN))
            .astype(np.float32)}


def _session(model, level=None):
    so = ort.SessionOptions()
    if level is not None:
        so.graph_optimization_level = level
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=TRITON_FIRST)
    expected = onnxruntime.InferenceSession(model.SerializeToString(),
                                            providers=["CPUExecutionProvider"])
    x = feeds()
    np.testing.assert_allclose(sess.run(None, x)[0], expected.run(None, x)[0],
                               rtol=1e-4, atol=1e-4)
    return sess


def _reports(sess) -> list[dict]:
    return [r for ep in sess._program.providers for r in getattr(ep, "kernels", [])]


def _kernels(sess) -> set[str]:
    return {r["kernel"] for r in _reports(sess) if r["kernel"] is not None}


def _files(folder) -> set[str]:
    return {p.name for p in folder.glob("*.py")}


def _loaded(folder) -> dict:
    from tritort.codegen import cache

    return {key: fn for (where, key), fn in cache._loaded.items() if where == str(folder)}


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("activation, level", [
    ("Gelu", None),  # attention becomes one fused node: the flash-attention template
    ("Relu", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),  # MatMul, Softmax, MatMul
])
def test_deeper_models_compile_no_new_kernels(cache_dir, activation, level):
    one = _session(encoder(1, activation), level)
    two = _session(encoder(2, activation), level)
    files, loaded = _files(cache_dir), _loaded(cache_dir)
    six = _session(encoder(6, activation), level)
    placed = six._program.partition.assignments
    assert all(a.provider.name == TRITON_FIRST[0] for a in placed.values())
    # as many units per layer at every depth ...
    per_layer = len(_reports(two)) - len(_reports(one))
    assert per_layer >= 15 and len(_reports(six)) == len(_reports(one)) + 5 * per_layer
    # ... running the kernels of the 2-layer model: no new body, no new file, no new load
    assert _kernels(six) == _kernels(two) >= _kernels(one)
    assert len(_kernels(two)) < per_layer
    assert _files(cache_dir) == files == {f"{k}.py" for k in _kernels(two)}
    assert _loaded(cache_dir) == loaded and len(loaded) == len(_kernels(six))
    assert len({id(fn) for fn in loaded.values()}) == len(loaded)
    assert all(r["cached"] for r in _reports(six) if r["kernel"])


def test_units_keep_descriptive_names_and_report_their_kernel(cache_dir):
    sess = _session(encoder(2))
    reports = _reports(sess)
    names = [r["name"] for r in reports]
    assert len(set(names)) == len(names)
    triton_units = [u.unit.name for u in sess._program.units
                    if u.provider.name == TRITON_FIRST[0]]
    assert sorted(triton_units) == sorted(names)
    # the residual Add and LayerNorm are one SkipLayerNormalization (onnxscript's rewriter)
    assert "skiplayernormalization_12" in names and "matmul_29" in names
    for r in reports:
        if r["kind"] == "movement" and r["name"].startswith(("transpose", "split")):
            assert r["kernel"] is None and r["path"] == "None"  # a view: no kernel
            continue
        assert re.fullmatch(r"k_[0-9a-f]{12}", r["kernel"]), r
        assert r["path"] == str(cache_dir / f"{r['kernel']}.py")
    # both norms of both layers run one kernel; Q, K and V are one GEMM per layer (horizontal
    # fusion), then a Split of views; the four GEMMs of a layer run three kernels
    for prefix, units in (("skiplayernormalization", 4), ("matmul", 8)):
        kernels = [r["kernel"] for r in reports if r["name"].startswith(prefix)]
        assert len(kernels) == units
        assert len(set(kernels)) == (1 if prefix == "skiplayernormalization" else 3)


def test_cached_kernels_name_no_node_or_value(cache_dir, tmp_path, monkeypatch):
    """Golden-ish: no node, value or initializer name of the model in a cached kernel, nor
    a unit's name; the dump still says which nodes each unit covers."""
    monkeypatch.setenv("TRITORT_DUMP_DIR", str(tmp_path / "dump"))
    model = encoder(2)
    sess = _session(model)
    graph = model.graph
    names = {n.name for n in graph.node} | {v for n in graph.node for v in n.output} | \
        {t.name for t in graph.initializer} | {r["name"] for r in _reports(sess)}
    sources = {p.stem: p.read_text() for p in cache_dir.glob("*.py")}
    assert len(sources) == len(_kernels(sess))
    for kernel, source in sources.items():
        words = set(re.findall(r"\w+", source))
        assert not words & names, (kernel, sorted(words & names))
        assert source.startswith("import triton\n") and f"\ndef {kernel}(" in source
    for r in _reports(sess):
        dumped = (tmp_path / "dump" / f"{r['name']}.py").read_text()
        header, body = dumped[:dumped.find("import triton")], dumped[dumped.find("import"):]
        assert all(node in header for node in r["nodes"]), (r, header)
        if r["kernel"] is not None:
            assert f"# kernel {r['kernel']} ({r['path']}); unit {r['name']}: " in header
            assert body == sources[r["kernel"]]


# ------------------------------------------------------------------ every template


def _arr(*shape):
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)


_I64 = np.int64


def _chain(shape, *steps, outputs=1, dtype=TP.FLOAT):
    """A builder of copy i: X_i through ``steps`` (op, [(parameter, array)], attrs), each
    node, value and parameter named after i; the last node's ``outputs`` (of ``dtype``)
    are the copy's."""
    def build(i):
        nodes, inits, value = [], [], f"x_{i}"
        for n, (op, params, attrs) in enumerate(steps):
            names = []
            for p, a in params:
                inits.append(numpy_helper.from_array(np.asarray(a), f"{p}_{i}"))
                names.append(f"{p}_{i}")
            last = n == len(steps) - 1
            outs = [f"y{k}_{i}" for k in range(outputs)] if last else [f"v{n}_{i}"]
            nodes.append(helper.make_node(op, [value] + names, outs, name=f"{op}_{n}_{i}",
                                          **attrs))
            value = outs[0]
        return nodes, {f"x_{i}": _arr(*shape)}, inits, \
            [models.vi(o, dtype) for o in nodes[-1].output]
    return build


TEMPLATE_CASES = {
    "conv+relu": _chain((1, 3, 8, 8), ("Conv", [("w", _arr(4, 3, 3, 3)), ("b", _arr(4))],
                                       {"pads": [1] * 4}), ("Relu", [], {})),
    "maxpool": _chain((1, 3, 8, 8), ("MaxPool", [], {"kernel_shape": [3, 3], "pads": [1] * 4})),
    "averagepool": _chain((1, 3, 8, 8), ("AveragePool", [], {"kernel_shape": [3, 3],
                                                             "strides": [2, 2]})),
    "globalaveragepool": _chain((1, 3, 8, 8), ("GlobalAveragePool", [], {})),
    "mul+reducesum+sqrt": _chain((4, 6), ("Mul", [("s", np.float32(0.5))], {}),
                                 ("ReduceSum", [("axes", np.array([1], _I64))], {}),
                                 ("Abs", [], {}), ("Sqrt", [], {})),
    "argmax": _chain((4, 6), ("ArgMax", [], {"axis": 1}), dtype=TP.INT64),
    "mul+softmax": _chain((4, 6), ("Mul", [("s", np.float32(0.5))], {}),
                          ("Softmax", [], {"axis": -1})),
    "layernormalization": _chain((4, 6), ("LayerNormalization",
                                          [("g", _arr(6)), ("b", _arr(6))], {})),
    "instancenormalization": _chain((2, 3, 5), ("InstanceNormalization",
                                                [("g", _arr(3)), ("b", _arr(3))], {})),
    "batchnormalization": _chain((2, 3, 5), ("BatchNormalization", [
        ("g", _arr(3)), ("b", _arr(3)), ("m", _arr(3)), ("v", np.abs(_arr(3)) + 1)], {})),
    "gemm": _chain((4, 6), ("Gemm", [("w", _arr(5, 6)), ("c", _arr(5))],
                            {"transB": 1, "alpha": 0.5})),
    "matmul+add+relu": _chain((4, 6), ("MatMul", [("w", _arr(6, 5))], {}),
                              ("Add", [("b", _arr(5))], {}), ("Relu", [], {})),
    "concat": _chain((4, 6), ("Concat", [("z", _arr(4, 2))], {"axis": 1})),
    "split (a view) + tanh": _chain((4, 6), ("Split", [("sizes", np.array([6], _I64))],
                                            {"axis": 1}), ("Tanh", [], {})),
    "gather": _chain((4, 6), ("Gather", [("i", np.array([0, 2, 1], _I64))], {"axis": 1})),
    "pad": _chain((4, 6), ("Pad", [("pads", np.array([1, 0, 0, 2], _I64))], {})),
    "tile": _chain((4, 6), ("Tile", [("repeats", np.array([2, 1], _I64))], {})),
    "slice (reversed: a copy)": _chain((4, 6), ("Slice", [
        ("starts", np.array([-1], _I64)), ("ends", np.array([-100], _I64)),
        ("axes", np.array([1], _I64)), ("steps", np.array([-1], _I64))], {})),
    "attention": _chain((1, 2, 5, 8), ("Attention", [("k", _arr(1, 2, 5, 8)),
                                                     ("v", _arr(1, 2, 5, 8))],
                                       {"is_causal": 1})),
    "transpose+add+tanh (pointwise)": _chain((6, 6), ("Transpose", [], {"perm": [1, 0]}),
                                             ("Add", [("b", _arr(6))], {}), ("Tanh", [], {})),
}


@pytest.mark.parametrize("case", list(TEMPLATE_CASES))
def test_each_template_shares_its_kernel_across_copies(cache_dir, case):
    """Three copies of a chain, each named and parametrized on its own, run the kernels one
    copy runs. (Side by side, pointwise copies would fuse into one kernel: in each chain
    here an anchor or a view keeps the copies apart.)"""
    def run(copies):
        nodes, x, inits, outputs = [], {}, [], []
        for i in range(copies):
            more, feeds, params, outs = TEMPLATE_CASES[case](i)
            nodes, inits, outputs = nodes + more, inits + params, outputs + list(outs)
            x.update(feeds)
        model = models.make(nodes, [models.vi(k, shape=list(v.shape)) for k, v in x.items()],
                            outputs, inits, opset=23)
        sess = ort.InferenceSession(model.SerializeToString(), providers=TRITON_FIRST)
        placed = sess._program.partition.assignments
        assert all(a.provider.name == TRITON_FIRST[0] for a in placed.values())
        expected = onnxruntime.InferenceSession(model.SerializeToString(),
                                                providers=["CPUExecutionProvider"]).run(None, x)
        for got, want in zip(sess.run(None, x), expected):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        return _reports(sess)

    one, three = run(1), run(3)
    assert len(three) == 3 * len(one) and any(r["kernel"] for r in one)
    assert {r["kernel"] for r in three} == {r["kernel"] for r in one}


def test_a_folded_constant_is_a_different_kernel(cache_dir):
    """Gemm's alpha is in the source: two alphas, two kernels; one alpha, one kernel."""
    def kernels(alphas):
        nodes = [helper.make_node("Gemm", ["X", f"w{i}"], [f"y{i}"], name=f"g{i}", alpha=a)
                 for i, a in enumerate(alphas)]
        inits = [numpy_helper.from_array(_arr(6, 5), f"w{i}") for i in range(len(alphas))]
        model = models.make(nodes, [models.vi("X", shape=[4, 6])],
                            [models.vi(f"y{i}") for i in range(len(alphas))], inits)
        sess = ort.InferenceSession(model.SerializeToString(), providers=TRITON_FIRST)
        return [r["kernel"] for r in _reports(sess)]

    same, different = kernels([0.5, 0.5]), kernels([0.5, 2.0])
    assert same[0] == same[1] == different[0] != different[1]


# ------------------------------------------------------------------ the cache itself

_SOURCE = """\
# tritort test kernel {unit}
# ONNX node: {unit}_node
import triton
import triton.language as tl


@triton.jit
def {name}(x, y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + offs, tl.load(x + offs, mask=offs < n) * 2, mask=offs < n)
"""


def test_header_and_function_name_are_not_part_of_the_key(cache_dir):
    from tritort.codegen import cache

    a = cache.load(_SOURCE.format(unit="one", name="double_one"), "double_one", "test")
    b = cache.load(_SOURCE.format(unit="two", name="kernel"), cache.KERNEL, "test")
    assert a.fn is b.fn and a.path == b.path and not a.hit and b.hit
    assert re.fullmatch(r"k_[0-9a-f]{12}", a.name) and a.fn.__name__ == a.name
    text = a.path.read_text()
    assert "one" not in text and "two" not in text and f"def {a.name}(x, y, n," in text
    other = cache.load(_SOURCE.format(unit="one", name="f").replace("* 2", "* 3"), "f", "test")
    assert other.name != a.name
    with pytest.raises(ValueError, match="defines 0 functions named 'g'"):
        cache.load(_SOURCE.format(unit="one", name="f"), "g", "test")


def test_a_damaged_cache_file_is_written_again(cache_dir):
    from tritort.codegen import cache

    first = cache.load(_SOURCE.format(unit="u", name="f"), "f", "test")
    first.path.write_text(first.path.read_text()[:40])  # truncated
    cache._loaded.clear()  # as a new process would start
    again = cache.load(_SOURCE.format(unit="u", name="f"), "f", "test")
    assert again.path == first.path and not again.hit
    x = __import__("torch").arange(5, dtype=__import__("torch").float32)
    y = x.new_empty(5)
    again.fn[(1,)](x, y, 5, BLOCK=8)
    np.testing.assert_array_equal(y.numpy(), 2 * x.numpy())

