"""MatMul and Gemm on the Triton provider (interpreter mode) against onnxruntime.

Inputs get symbolic dims, so each model also checks that one compiled kernel serves any size.
Non-contiguous inputs come from a Transpose (a view) in front of the op, or from Gemm's
transA / transB; a spy on the launch checks they reach the kernel as strided views.
"""
from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import onnxruntime
import pytest
from onnx import helper, numpy_helper

import tritort as ort
from tests import models
from tests.triton_env import requires_triton, triton_session
from tritort import dtypes

pytestmark = requires_triton
TRITON = "TritonExecutionProvider"
_names = itertools.count()
_rng = np.random.default_rng(0)


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, name=f"{op.lower()}_{next(_names)}", **attrs)


def data(*shape, dtype=np.float32):
    return _rng.standard_normal(shape).astype(dtype)


def build(nodes, feeds, output="Y", opset=21, inits=()):
    """A model whose inputs have symbolic dims (rank and type from the feeds)."""
    inputs = [models.vi(k, dtypes.from_numpy(v.dtype).onnx, [f"{k}_{j}" for j in range(v.ndim)])
              for k, v in feeds.items()]
    elem = dtypes.from_numpy(next(iter(feeds.values())).dtype).onnx
    return models.make(nodes, inputs, [models.vi(output, elem, None)], inits, opset=opset)


def matmul_model(feeds, opset=21):
    return build([node("MatMul", ["A", "B"], ["Y"])], feeds, opset=opset)


def gemm_model(feeds, opset=21, **attrs):
    return build([node("Gemm", list(feeds), ["Y"], **attrs)], feeds, opset=opset)


def reference(model, feeds):
    try:
        sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                            providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)[0]
    except (onnxruntime.capi.onnxruntime_pybind11_state.NotImplemented,
            onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph):
        from onnx.reference import ReferenceEvaluator  # ORT lacks some fp16 / old-opset kernels

        return ReferenceEvaluator(model).run(None, feeds)[0]


_TOL = {np.float32: (1e-5, 1e-5), np.float64: (1e-12, 1e-12), np.float16: (1e-2, 1e-2)}


def check(model, *feed_sets, sess=None):
    """Each feed set on tritort (Triton first) and onnxruntime: same dtype, shape, values."""
    sess = sess or triton_session(model)
    for feeds in feed_sets:
        got, exp = sess.run(None, feeds)[0], np.asarray(reference(model, feeds))
        assert got.dtype == exp.dtype and got.shape == exp.shape, \
            (got.dtype, got.shape, exp.dtype, exp.shape)
        rtol, atol = _TOL[exp.dtype.type]
        np.testing.assert_allclose(got.astype(np.float64), exp.astype(np.float64), rtol=rtol,
                                   atol=atol)
    return sess


@pytest.fixture()
def launches(monkeypatch):
    """The operand views each matmul launch received: (a, b, y) as torch tensors."""
    from tritort.codegen import gemm

    seen = []
    real = gemm.launch

    def spy(fn, a, b, y, *rest):
        seen.append((a, b, y))
        return real(fn, a, b, y, *rest)

    monkeypatch.setattr(gemm, "launch", spy)
    return seen


# ------------------------------------------------------------------ MatMul


@pytest.mark.parametrize("a_shape, b_shape", [
    ((3, 5), (5, 7)), ((2, 3, 5), (5, 7)), ((2, 1, 3, 5), (4, 5, 6)), ((3, 5), (2, 5, 4)),
    ((5,), (5,)), ((5,), (5, 7)), ((3, 5), (5,)), ((5,), (2, 5, 3)), ((2, 3, 5), (5,)),
    ((33, 65), (65, 17)),  # not multiples of any block
    ((4, 0), (0, 3)), ((2, 4, 0), (0, 3)),  # K == 0: zeros
    ((0, 5), (5, 3)), ((3, 5), (5, 0)), ((0, 3, 5), (5, 2)),  # empty outputs
])
def test_matmul_shapes(a_shape, b_shape):
    feeds = {"A": data(*a_shape), "B": data(*b_shape)}
    check(matmul_model(feeds), feeds)


@pytest.mark.parametrize("opset", [1, 9, 13])
def test_matmul_opsets(opset):
    feeds = {"A": data(2, 3, 4), "B": data(2, 4, 5)}
    check(matmul_model(feeds, opset=opset), feeds)


def test_batch_folded_into_rows_when_b_has_no_batch(launches):
    feeds = {"A": data(2, 3, 5), "B": data(5, 7)}
    check(matmul_model(feeds), feeds)
    a, _, y = launches[-1]
    assert tuple(a.shape) == (1, 6, 5) and tuple(y.shape) == (1, 6, 7)


def test_transposed_inputs_are_read_through_strides(launches):
    # A^T @ B^T with both transposes as views: the kernel gets the permuted strides
    feeds = {"A": data(5, 3), "B": data(7, 5)}
    model = build([node("Transpose", ["A"], ["At"]), node("Transpose", ["B"], ["Bt"]),
                   node("MatMul", ["At", "Bt"], ["Y"])], feeds)
    check(model, feeds, {"A": data(9, 4), "B": data(6, 9)})
    a, b, _ = launches[-1]
    assert tuple(a.stride()) == (1, 4) and tuple(b.stride()) == (1, 9)


def test_batched_transposed_and_broadcast_operands(launches):
    # [2, 1, 5, 3]^T(-1, -2) @ [4, 5, 6]: a strided view broadcast over a batch dim
    feeds = {"A": data(2, 1, 5, 3), "B": data(4, 5, 6)}
    model = build([node("Transpose", ["A"], ["At"], perm=[0, 1, 3, 2]),
                   node("MatMul", ["At", "B"], ["Y"])], feeds)
    check(model, feeds)
    a, b, _ = launches[-1]
    assert tuple(a.shape) == (2, 4, 3, 5) and a.stride()[1] == 0 and a.stride()[2] == 1
    assert b.stride()[0] == 0 or b.shape[0] == 1


def test_symbolic_shapes_one_session_two_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path))
    small = {"A": data(2, 3, 5), "B": data(2, 5, 4)}
    large = {"A": data(3, 40, 37), "B": data(3, 37, 50)}
    check(matmul_model(small), small, large, small)
    assert len(list(tmp_path.glob("k_*.py"))) == 1  # one kernel file, named by its hash


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_matmul_fp16_fp64(dtype):
    feeds = {"A": data(2, 17, 33, dtype=dtype), "B": data(33, 20, dtype=dtype)}
    check(matmul_model(feeds), feeds)


def _check_bf16_against_fp32(model_fn, feeds):
    """bf16 on Triton vs the float32 model on onnxruntime fed the same (exact) values."""
    bf = {k: v.astype(ml_dtypes.bfloat16) for k, v in feeds.items()}
    got = triton_session(model_fn(bf)).run(None, bf)[0]
    assert got.dtype == ml_dtypes.bfloat16
    f32 = {k: v.astype(np.float32) for k, v in bf.items()}
    exp = reference(model_fn(f32), f32)
    # one rounding to bf16 on store (8 significant bits)
    np.testing.assert_allclose(got.astype(np.float32), exp, rtol=2 ** -8, atol=1e-6)


def test_matmul_bf16():
    _check_bf16_against_fp32(matmul_model, {"A": data(2, 19, 40), "B": data(40, 21)})


def test_integer_matmul_declines_with_a_reason():
    feeds = {"A": np.arange(6, dtype=np.int32).reshape(2, 3),
             "B": np.arange(12, dtype=np.int32).reshape(3, 4)}
    model = matmul_model(feeds)
    sess = ort.InferenceSession(model.SerializeToString(), providers=[TRITON,
                                                                      "CPUExecutionProvider"])
    placed = sess._program.partition.assignments[model.graph.node[0].name]
    assert placed.provider.name == "CPUExecutionProvider"
    assert "integer MatMul" in placed.declined[TRITON]
    np.testing.assert_array_equal(sess.run(None, feeds)[0], feeds["A"] @ feeds["B"])


# ------------------------------------------------------------------ Gemm


@pytest.mark.parametrize("c_shape", [None, (), (1,), (6,), (1, 6), (5, 1), (5, 6)])
def test_gemm_c_shapes(c_shape):
    feeds = {"A": data(5, 7), "B": data(7, 6)}
    if c_shape is not None:
        feeds["C"] = data(*c_shape)
    check(gemm_model(feeds, alpha=0.5, beta=2.0), feeds)


@pytest.mark.parametrize("trans_a, trans_b", [(0, 1), (1, 0), (1, 1)])
def test_gemm_transposes_are_strides(trans_a, trans_b, launches):
    m, k, n = 9, 33, 17
    feeds = {"A": data(*((k, m) if trans_a else (m, k))),
             "B": data(*((n, k) if trans_b else (k, n))), "C": data(n)}
    check(gemm_model(feeds, transA=trans_a, transB=trans_b, alpha=1.5, beta=-1.0), feeds)
    a, b, _ = launches[-1]
    assert tuple(a.stride()) == ((1, m) if trans_a else (k, 1))
    assert tuple(b.stride()) == ((1, k) if trans_b else (n, 1))


def test_gemm_beta_zero_ignores_c():
    feeds = {"A": data(4, 3), "B": data(3, 5), "C": np.full((4, 5), np.nan, np.float32)}
    check(gemm_model(feeds, beta=0.0), feeds)


def test_gemm_k_zero_gives_beta_c():
    # onnxruntime 1.31 returns C unscaled when K == 0; ONNX (and onnx.reference, and the CPU
    # provider) say beta * C
    from onnx.reference import ReferenceEvaluator

    feeds = {"A": data(4, 0), "B": data(0, 5), "C": data(4, 5)}
    model = gemm_model(feeds, alpha=3.0, beta=0.5)
    got = triton_session(model).run(None, feeds)[0]
    np.testing.assert_array_equal(got, ReferenceEvaluator(model).run(None, feeds)[0])


@pytest.mark.parametrize("opset, attrs, c_shape", [
    (6, {"broadcast": 1}, (5,)), (6, {}, (4, 5)), (7, {}, (5,)), (9, {}, (4, 1)),
    (11, {}, ()), (13, {}, (1, 5))])
def test_gemm_opsets(opset, attrs, c_shape):
    feeds = {"A": data(4, 3), "B": data(5, 3), "C": data(*c_shape)}
    check(gemm_model(feeds, opset=opset, transB=1, **attrs), feeds)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_gemm_fp16_fp64(dtype):
    feeds = {"A": data(20, 18, dtype=dtype), "B": data(18, 35, dtype=dtype),
             "C": data(1, 35, dtype=dtype)}
    check(gemm_model(feeds, alpha=0.25, beta=0.5), feeds)


def test_gemm_bf16():
    _check_bf16_against_fp32(lambda f: gemm_model(f, transA=1, alpha=0.5, beta=2.0),
                       {"A": data(40, 19), "B": data(40, 21), "C": data(21)})


def test_gemm_with_constant_weight_and_bias():
    w = numpy_helper.from_array(data(8, 6), "W")
    bias = numpy_helper.from_array(data(6), "bias")
    feeds = {"X": data(3, 8)}
    model = build([node("Gemm", ["X", "W", "bias"], ["Y"])], feeds, inits=[w, bias])
    check(model, feeds, {"X": data(11, 8)})


# ------------------------------------------------------------------ the kernel itself


def test_epilogue_hook_runs_extra_lines_before_the_store(tmp_path, monkeypatch):
    """A fusion pass's epilogue (here: relu) spliced in front of the store."""
    import torch

    from tritort.codegen import cache, gemm

    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path))
    ep = gemm.Epilogue(lines=["acc = tl.maximum(acc, 0.0)"])
    source = gemm.matmul_source("mm_relu", ["test"], 1, "float", "float", True, ep)
    assert "    acc = tl.maximum(acc, 0.0)\n    tl.store(y + y_offs" in source
    fn, _, _ = cache.load(source, "mm_relu", "triton-interpreter")
    a, b = torch.from_numpy(data(3, 20, 9)), torch.from_numpy(data(3, 9, 18))
    y = torch.empty(3, 20, 18)
    gemm.launch(fn, a, b, y, (), True, None)  # no tuning table: the heuristic's config
    exp = np.maximum(np.matmul(a.double().numpy(), b.double().numpy()), 0)
    np.testing.assert_allclose(y.numpy(), exp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("itemsize", [2, 4, 8])
def test_gpu_config_heuristic_picks_a_listed_tile(itemsize):
    from tritort.codegen.gemm_configs import CONFIGS, pick_config

    tiles = {(c.block_m, c.block_n) for c in CONFIGS[itemsize]}
    for m, n, k, batch in [(1, 4096, 4096, 1), (8192, 8192, 8192, 1), (64, 64, 16, 32),
                           (17, 5, 3, 1), (512, 1024, 256, 4)]:
        cfg = pick_config(m, n, k, batch, itemsize, interpreted=False)
        assert (cfg.block_m, cfg.block_n) in tiles
        assert 16 <= cfg.block_k and cfg.block_k & (cfg.block_k - 1) == 0
    assert pick_config(8192, 8192, 8192, 1, itemsize, False) == CONFIGS[itemsize][0]
    small = pick_config(33, 17, 65, 1, itemsize, interpreted=True)
    assert (small.block_m, small.block_n, small.block_k) == (32, 32, 32)


def test_zero_d_epilogue_inputs_are_loaded_as_one_scalar(tmp_path, monkeypatch):
    """GELU-tanh's constants (0-d initializers) in a GEMM epilogue: one scalar load each,
    not a tile of broadcast copies (six such tiles spilled GPT-2's fp16 FFN kernel)."""
    monkeypatch.setenv("TRITORT_DUMP_DIR", str(tmp_path))
    scalar = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa
    feeds = {"A": data(5, 12)}
    inits = [numpy_helper.from_array(data(12, 7), "W"), scalar("three", 3.0),
             scalar("half", 0.5)]
    model = build([node("MatMul", ["A", "W"], ["mm"]), node("Pow", ["mm", "three"], ["cube"]),
                   node("Mul", ["cube", "half"], ["Y"])], feeds, inits=inits)
    sess = check(model, feeds)
    assert set(sess.placement().values()) == {TRITON}
    [source] = [p.read_text() for p in tmp_path.glob("*.py")]
    assert "e0v = tl.load(e0)" in source and "e1v = tl.load(e1)" in source, source
