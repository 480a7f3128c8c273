"""onnxruntime's com.microsoft activations, normalizations and RotaryEmbedding on the Triton
provider (interpreter mode), against onnxruntime: each node must land on Triton, and fuse
where its row says it does (BiasGelu into a GEMM's epilogue, say)."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import tritort as ort
from tests.test_contrib_ops import MS, _elem, build, ms, randint, randn, run_ort
from tests.triton_env import requires_triton

pytestmark = requires_triton
T = "TritonExecutionProvider"
TRITON_FIRST = [T, "CPUExecutionProvider"]


def _typed(nodes, feeds, outputs, inits=None, opset=17, symbolic=True):
    """The model with its outputs typed as onnxruntime computes them (onnx's shape inference
    does not know com.microsoft ops), dims symbolic unless ``symbolic`` is False; returns
    (model, onnxruntime's outputs)."""
    want = run_ort(build(nodes, feeds, outputs, inits, opset), feeds)
    model = build(nodes, feeds, outputs, inits, opset)
    for vi, w in zip(model.graph.output, want):
        dims = [f"{vi.name}_{i}" for i in range(w.ndim)] if symbolic else list(w.shape)
        vi.CopyFrom(helper.make_tensor_value_info(vi.name, _elem(w.dtype), dims))
    return model, want


def _session(model):
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=TRITON_FIRST)


def _kernels(sess):
    """The Triton units' node names, one list per kernel launch."""
    return [[n.name for n in s.get_nodes()] for s in sess.get_provider_graph_assignment_info()
            if s.ep_name == T]


def _placed_on_triton(sess, names):
    placed = sess._program.partition.assignments
    for name in names:
        assert placed[name].provider.name == T, (name, placed[name].declined)


def check_triton(nodes, feeds, outputs, inits=None, opset=17, rtol=1e-5, atol=1e-5,
                 skip=()):
    """Run ``nodes`` on Triton and on onnxruntime; every node must run on Triton."""
    nodes = [nodes] if not isinstance(nodes, list) else nodes
    for i, n in enumerate(nodes):
        n.name = n.name or f"n{i}_{n.op_type}"
    model, want = _typed(nodes, feeds, outputs, inits, opset)
    sess = _session(model)
    _placed_on_triton(sess, [n.name for n in nodes])
    got = sess.run(None, feeds)
    for name, g, w in zip(outputs, got, want):
        if name in skip:
            continue
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.shape)
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol,
                                   atol=atol, err_msg=name)
    return sess


# ------------------------------------------------------------------ activations


@pytest.mark.parametrize("shape", [(2, 3, 16), (5,), ()])
def test_gelu(shape):
    check_triton(ms("Gelu", ["x"], ["y"]), {"x": randn(*shape, scale=3.0)}, ["y"])


def test_bias_gelu():
    check_triton(ms("BiasGelu", ["a", "b"], ["y"]), {"a": randn(2, 4, 32), "b": randn(32)},
                 ["y"])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 4, 32), (7, 3)])
def test_fast_gelu(bias, shape):
    feeds = {"x": randn(*shape, scale=3.0)}
    if bias:
        feeds["bias"] = randn(shape[-1])
    check_triton(ms("FastGelu", list(feeds), ["y"]), feeds, ["y"])


@pytest.mark.parametrize("alpha", [None, 1.0, -0.5])
def test_quick_gelu(alpha):
    attrs = {} if alpha is None else {"alpha": alpha}
    check_triton(ms("QuickGelu", ["x"], ["y"], **attrs), {"x": randn(3, 5, 8, scale=4.0)},
                 ["y"])


def test_bias_add():
    """onnxruntime runs BiasAdd on CUDA only: against float64 numpy."""
    feeds = {"x": randn(2, 3, 8), "bias": randn(8), "skip": randn(2, 3, 8)}
    model = build([ms("BiasAdd", ["x", "bias", "skip"], ["y"], name="ba")], feeds, ["y"])
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                 ["b", "s", 8]))
    sess = _session(model)
    _placed_on_triton(sess, ["ba"])
    (got,) = sess.run(None, feeds)
    want = sum(v.astype(np.float64) for v in feeds.values())
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ normalizations


@pytest.mark.parametrize("skip_shape", ["BSH", "1SH", "SH"])
@pytest.mark.parametrize("with_beta,with_bias", [(True, True), (True, False), (False, True),
                                                 (False, False)])
def test_skip_layer_normalization(skip_shape, with_beta, with_bias):
    b, s, hidden = 2, 5, 16
    feeds = {"x": randn(b, s, hidden),
             "skip": randn(*{"BSH": (b, s, hidden), "1SH": (1, s, hidden),
                             "SH": (s, hidden)}[skip_shape]),
             "gamma": randn(hidden)}
    inputs = ["x", "skip", "gamma", "", ""]
    if with_beta:
        feeds["beta"] = randn(hidden)
        inputs[3] = "beta"
    if with_bias:
        feeds["bias"] = randn(hidden)
        inputs[4] = "bias"
    while inputs[-1] == "":
        inputs.pop()
    outputs = ["y", "mean", "inv_std", "sum"]
    check_triton(ms("SkipLayerNormalization", inputs, outputs, epsilon=1e-5), feeds, outputs)


@pytest.mark.parametrize("outputs", [["y"], ["y", "", "", "sum"], ["y", "mean"],
                                     ["y", "", "inv_std"]], ids=str)
def test_skip_layer_normalization_optional_outputs(outputs):
    feeds = {"x": randn(2, 3, 8), "skip": randn(2, 3, 8), "gamma": randn(8), "bias": randn(8)}
    check_triton(ms("SkipLayerNormalization", ["x", "skip", "gamma", "", "bias"], outputs),
                 feeds, [o for o in outputs if o])


def test_skip_layer_normalization_2d_input_and_default_epsilon():
    feeds = {"x": randn(7, 32), "skip": randn(7, 32), "gamma": randn(32), "beta": randn(32)}
    check_triton(ms("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"]), feeds,
                 ["y"])


def test_skip_layer_normalization_float16():
    """float16: statistics in float32, the stored sum rounded to float16 first."""
    feeds = {k: v.astype(np.float16) for k, v in {
        "x": randn(2, 4, 32), "skip": randn(2, 4, 32), "gamma": randn(32), "beta": randn(32),
        "bias": randn(32)}.items()}
    outputs = ["y", "mean", "inv_std", "sum"]
    check_triton(ms("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], outputs),
                 feeds, outputs, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 16), (6, 24)])
def test_skip_simplified_layer_normalization(with_bias, shape):
    feeds = {"x": randn(*shape), "skip": randn(*shape), "gamma": randn(shape[-1])}
    inputs = ["x", "skip", "gamma"]
    if with_bias:
        feeds["bias"] = randn(shape[-1])
        inputs.append("bias")
    outputs = ["y", "mean", "inv_std", "sum"]
    check_triton(ms("SkipSimplifiedLayerNormalization", inputs, outputs, epsilon=1e-6), feeds,
                 outputs)


def test_skip_simplified_layer_normalization_float16():
    feeds = {k: v.astype(np.float16) for k, v in {
        "x": randn(2, 3, 64), "skip": randn(2, 3, 64), "gamma": randn(64)}.items()}
    check_triton(ms("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma"],
                    ["y", "", "", "sum"]), feeds, ["y", "sum"], rtol=1e-3, atol=2e-3)


def test_skip_layer_normalization_with_a_bad_skip_stays_on_the_cpu():
    feeds = {"x": randn(2, 3, 8), "skip": randn(2, 1, 8), "gamma": randn(8)}
    model = build([ms("SkipLayerNormalization", ["x", "skip", "gamma"], ["y"], name="sln")],
                  feeds, ["y"], out_types={"y": TensorProto.FLOAT})
    sess = _session(model)
    assignment = sess._program.partition.assignments["sln"]
    assert assignment.provider.name == "CPUExecutionProvider"
    assert "skip of shape [2, 1, 8]" in str(assignment.declined)
    with pytest.raises(ort.Fail, match="skip"):
        sess.run(None, feeds)


@pytest.mark.parametrize("axis", [-1, -2, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simplified_layer_normalization(axis, dtype):
    """Default domain, where onnxruntime registers it (the loader checks it as a custom op)."""
    feeds = {"x": randn(2, 3, 8, dtype=dtype)}
    feeds["scale"] = randn(*feeds["x"].shape[axis:], dtype=dtype)
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y", "inv"],
                            axis=axis, epsilon=1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    check_triton(node, feeds, ["y", "inv"], rtol=tol, atol=tol)


def test_simplified_layer_normalization_float16():
    feeds = {"x": randn(4, 64, dtype=np.float16), "scale": randn(64, dtype=np.float16)}
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y", "inv"])
    check_triton(node, feeds, ["y", "inv"], rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_normalization_before_opset_17(axis):
    """onnxruntime's default-domain LayerNormalization-1 takes ai.onnx LayerNormalization's
    row: the same computation."""
    feeds = {"x": randn(2, 3, 8)}
    feeds["scale"] = randn(*feeds["x"].shape[axis:])
    feeds["bias"] = randn(*feeds["x"].shape[axis:])
    node = helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y", "mean", "inv"],
                            axis=axis, epsilon=1e-5)
    check_triton(node, feeds, ["y", "mean", "inv"], opset=14)


# ------------------------------------------------------------------ RotaryEmbedding


@pytest.mark.parametrize("layout", ["3d", "4d", "3d_no_heads"])
@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("positions", ["offset", "ids"])
@pytest.mark.parametrize("partial", [False, True])
def test_contrib_rotary_embedding(layout, interleaved, positions, partial):
    b, s, n, h = 2, 5, 3, 16
    if partial and layout == "3d_no_heads":
        pytest.skip("rotary_embedding_dim needs num_heads with 3-D input")
    rot = 8 if partial else h
    x = randn(b, n, s, h) if layout == "4d" else randn(b, s, n * h)
    pid = (randint(0, 20, b, s, dtype=np.int64) if positions == "ids"
           else np.array([3], np.int64))
    feeds = {"x": x, "pid": pid}
    inits = {"cos": randn(20, rot // 2), "sin": randn(20, rot // 2)}
    attrs = {"interleaved": interleaved}
    if layout != "3d_no_heads":
        attrs["num_heads"] = n
    if partial:
        attrs["rotary_embedding_dim"] = rot
    check_triton(ms("RotaryEmbedding", ["x", "pid", "cos", "sin"], ["y"], **attrs), feeds, ["y"],
                 inits=inits)


def test_contrib_rotary_embedding_float16():
    x = randn(1, 4, 2 * 16, dtype=np.float16)
    inits = {"cos": randn(8, 8, dtype=np.float16), "sin": randn(8, 8, dtype=np.float16)}
    check_triton(ms("RotaryEmbedding", ["x", "pid", "cos", "sin"], ["y"], num_heads=2),
                 {"x": x, "pid": np.array([1], np.int64)}, ["y"], inits=inits, rtol=2e-3,
                 atol=2e-3)


def _onnx_rotary_reference(x, cos, sin, pos, interleaved, heads, rot):
    """ai.onnx RotaryEmbedding-23 in float64, from the spec's formulas."""
    x = x.astype(np.float64)
    four_d = x.ndim == 4
    work = x.transpose(0, 2, 1, 3) if four_d else x.reshape(*x.shape[:2], heads, -1)
    cos, sin = cos.astype(np.float64), sin.astype(np.float64)
    if pos is not None:
        cos, sin = cos[pos], sin[pos]
    rot = rot or work.shape[-1]
    c, s = cos[:, :, None, :rot // 2], sin[:, :, None, :rot // 2]
    part = work[..., :rot]
    x1, x2 = (part[..., 0::2], part[..., 1::2]) if interleaved else \
        (part[..., :rot // 2], part[..., rot // 2:])
    out = work.copy()
    first, second = (slice(0, rot, 2), slice(1, rot, 2)) if interleaved else \
        (slice(0, rot // 2), slice(rot // 2, rot))
    out[..., first], out[..., second] = c * x1 - s * x2, s * x1 + c * x2
    return out.transpose(0, 2, 1, 3) if four_d else out.reshape(x.shape)


@pytest.mark.parametrize("layout", ["3d", "4d"])
@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("positions", [True, False])
@pytest.mark.parametrize("partial", [False, True])
def test_onnx_rotary_embedding(layout, interleaved, positions, partial):
    """ai.onnx RotaryEmbedding (opset 23) against onnxruntime, and float64 from the spec."""
    b, s, n, h = 2, 5, 3, 16
    rot = 8 if partial else h
    x = randn(b, n, s, h) if layout == "4d" else randn(b, s, n * h)
    feeds = {"x": x}
    if positions:
        feeds["pid"] = randint(0, 20, b, s, dtype=np.int64)
        cos, sin = randn(20, rot // 2), randn(20, rot // 2)
    else:
        cos, sin = randn(b, s, rot // 2), randn(b, s, rot // 2)
    attrs = {"interleaved": interleaved}
    if layout == "3d":
        attrs["num_heads"] = n
    if partial:
        attrs["rotary_embedding_dim"] = rot
    inputs = ["x", "cos", "sin"] + (["pid"] if positions else [])
    node = helper.make_node("RotaryEmbedding", inputs, ["y"], **attrs)
    feeds.update({"cos": cos, "sin": sin})
    sess = check_triton(node, feeds, ["y"], opset=23)
    (got,) = sess.run(None, feeds)
    want = _onnx_rotary_reference(x, cos, sin, feeds.get("pid"), interleaved, n, rot)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ fusion, untyped values


def _linear_model(nodes, extra_inputs=(), hidden=16, inner=32):
    """X (b, 4, hidden) -> nodes -> Y; W (hidden, inner), B (inner,), W2 (inner, hidden) and
    the norms' G/Bt (inner,) are initializers. Only X and Y are typed: the values between
    the nodes are typed by inference (onnx's, and tritort's rules for contrib ops)."""
    rng = np.random.default_rng(7)
    inits = {"W": rng.standard_normal((hidden, inner)), "B": rng.standard_normal(inner),
             "W2": rng.standard_normal((inner, hidden)) / 4, "G": rng.standard_normal(inner),
             "Bt": rng.standard_normal(inner)}
    used = {v for n in nodes for v in n.input}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", 4, hidden])]
        + [helper.make_tensor_value_info(v, TensorProto.FLOAT, ["b", 4, inner])
           for v in extra_inputs],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()
         if k in used])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(MS, 1)])
    model.ir_version = 10
    return model


def _compare_with_ort(model, feeds, sess, tol=1e-4):
    (want,) = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"]).run(None, feeds)
    (got,) = sess.run(None, feeds)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("op", ["BiasGelu", "FastGelu"])
def test_bias_gelu_after_matmul_is_the_gemm_epilogue(op):
    model = _linear_model([
        helper.make_node("MatMul", ["X", "W"], ["m"], name="mm"),
        helper.make_node(op, ["m", "B"], ["g"], name="act", domain=MS),
        helper.make_node("MatMul", ["g", "W2"], ["Y"], name="mm2")])
    sess = _session(model)
    assert _kernels(sess) == [["mm", "act"], ["mm2"]]  # one launch for MatMul + bias + GELU
    _compare_with_ort(model, {"X": randn(3, 4, 16)}, sess)


def test_skip_layer_norm_after_matmul_and_bias():
    """The bias Add is the GEMM's epilogue; SkipLayerNormalization adds the residual as it
    loads its rows (two launches), and its untyped outputs are typed for the next MatMul."""
    model = _linear_model([
        helper.make_node("MatMul", ["X", "W"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "B"], ["mb"], name="bias"),
        helper.make_node("SkipLayerNormalization", ["mb", "R", "G", "Bt"], ["n", "", "", "s"],
                         name="sln", domain=MS, epsilon=1e-5),
        helper.make_node("FastGelu", ["n"], ["g"], name="act", domain=MS),
        helper.make_node("Add", ["g", "s"], ["gs"], name="res"),
        helper.make_node("MatMul", ["gs", "W2"], ["Y"], name="mm2")], extra_inputs=["R"])
    sess = _session(model)
    kernels = _kernels(sess)
    assert kernels[:2] == [["mm", "bias"], ["sln"]], kernels
    assert sorted(sum(kernels, [])) == ["act", "bias", "mm", "mm2", "res", "sln"]
    _compare_with_ort(model, {"X": randn(2, 4, 16), "R": randn(2, 4, 32)}, sess)


def test_contrib_outputs_are_typed_by_inference():
    """onnx's inference does not know com.microsoft ops: tritort's rules type their outputs
    (shapes too), so the nodes after them are typed as well."""
    from tritort import loader

    model = _linear_model([
        helper.make_node("MatMul", ["X", "W"], ["m"], name="mm"),
        helper.make_node("SkipSimplifiedLayerNormalization", ["m", "R", "G"],
                         ["n", "mean", "inv", "s"], name="sln", domain=MS),
        helper.make_node("QuickGelu", ["n"], ["q"], name="act", domain=MS),
        helper.make_node("MatMul", ["q", "W2"], ["Y"], name="mm2")], extra_inputs=["R"])
    loader.check_and_infer(model)
    types = {vi.name: vi.type.tensor_type for vi in list(model.graph.value_info)
             + list(model.graph.output)}

    def shape(name):
        return [d.dim_param or d.dim_value for d in types[name].shape.dim]

    assert shape("n") == shape("s") == shape("q") == ["b", 4, 32]
    assert shape("mean") == shape("inv") == ["b", 4, 1]
    assert types["inv"].elem_type == TensorProto.FLOAT
    assert shape("Y") == ["b", 4, 16]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("gelu,act", [("none", "BiasGelu"), ("tanh", "FastGelu")])
def test_ort_optimized_bert_on_triton(tmp_path, gelu, act):
    """onnxruntime's transformer optimizer's BERT: every SkipLayerNormalization and GELU runs
    on Triton (the GELU in its GEMM's epilogue), typed through the contrib ops before them."""
    import onnx

    from tests.test_contrib_ops_models import _export_and_optimize, _feeds

    _, path = _export_and_optimize(tmp_path, gelu)
    model = onnx.load(path)
    sess = _session(model)
    mine = [n.name for n in model.graph.node
            if n.domain == MS and n.op_type in ("SkipLayerNormalization", act)]
    assert len(mine) >= 4
    _placed_on_triton(sess, mine)
    op_of = {n.name: n.op_type for n in model.graph.node}
    gelu_kernels = [[op_of[n] for n in k] for k in _kernels(sess)
                    if any(op_of.get(n) == act for n in k)]
    assert gelu_kernels == [["MatMul", act]] * 2, gelu_kernels  # the up projection's epilogue
    feeds = _feeds(np.random.default_rng(0))
    (want,) = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, feeds)
    (got,) = sess.run(None, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bias_split_gelu_runs_on_triton():
    """It halves the last axis: not pointwise, so a template of its own takes it (more in
    tests/test_triton_bias_split_gelu.py)."""
    feeds = {"x": randn(2, 3, 8), "bias": randn(8)}
    model = build([ms("BiasSplitGelu", ["x", "bias"], ["y"], name="bsg")], feeds, ["y"],
                  out_types={"y": TensorProto.FLOAT})
    sess = _session(model)
    _placed_on_triton(sess, ["bsg"])
    assert _kernels(sess) == [["bsg"]]
    (got,) = sess.run(None, feeds)
    from scipy.special import erf
    y = feeds["x"].astype(np.float64) + feeds["bias"]
    right = y[..., 4:]
    np.testing.assert_allclose(got, y[..., :4] * 0.5 * right * (1 + erf(right / np.sqrt(2))),
                               rtol=1e-5, atol=1e-6)
