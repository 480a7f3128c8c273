"""tritort's fused ScaledDotProductAttention on the CPU provider against the unfused graph.

onnxruntime runs the graph the exporters write (MatMul(Q, KT) -> Mul(scale) -> Add(mask) ->
Softmax -> MatMul(V), grouped heads repeated by Unsqueeze/Expand/Reshape, causality as an
added -inf triangle); tritort runs a model holding the fused node itself. The builders here
are shared with tests/test_triton_attention.py.
"""
from __future__ import annotations

import itertools
import zlib

import ml_dtypes
import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import tritort as ort
from tests import models
from tritort import dtypes
from tritort.contracts import INTERNAL_DOMAIN

_rng = np.random.default_rng(0)
_names = itertools.count()
CPU = ["CPUExecutionProvider"]


def reseed(test_name: str) -> None:
    """Each test draws the same data whatever ran before it (xdist reorders tests)."""
    global _rng
    _rng = np.random.default_rng(zlib.crc32(test_name.encode()))


@pytest.fixture(autouse=True)
def _seeded(request):
    reseed(request.node.name)


def data(*shape, dtype=np.float32):
    return _rng.standard_normal(shape).astype(dtype)


def attention_feeds(b, h, hk, sq, sk, d, dv=None, mask_shape=None, dtype=np.float32,
                    mask_dtype=None):
    feeds = {"Q": data(b, h, sq, d, dtype=dtype), "KT": data(b, hk, d, sk, dtype=dtype),
             "V": data(b, hk, sk, dv or d, dtype=dtype)}
    if mask_shape is not None:
        feeds["M"] = data(*mask_shape, dtype=mask_dtype or dtype)
    return feeds


def _elem(array) -> int:
    return dtypes.from_numpy(array.dtype).onnx


def fused_model(feeds, scale=1.0, is_causal=0, out_dims=("Q_0", "Q_1", "Q_2", "V_3")):
    """The fused node alone; inputs have symbolic dims, Y a value_info tying them together."""
    inputs = [models.vi(k, _elem(v), [f"{k}_{j}" for j in range(v.ndim)])
              for k, v in feeds.items()]
    attrs = {"scale": float(scale)} if scale != 1.0 else {}
    if is_causal:
        attrs["is_causal"] = 1
    node = helper.make_node("ScaledDotProductAttention", list(feeds), ["Y"],
                            name=f"sdpa_{next(_names)}", domain=INTERNAL_DOMAIN, **attrs)
    out = models.vi("Y", _elem(feeds["Q"]), list(out_dims))
    model = models.make([node], inputs, [out], opset=21)
    model.opset_import.append(helper.make_opsetid(INTERNAL_DOMAIN, 1))
    return model


def unfused_model(feeds, scale=1.0, is_causal=0):
    """The exporters' graph for the same computation, with concrete shapes."""
    q, kt, v = feeds["Q"], feeds["KT"], feeds["V"]
    elem = _elem(q)
    b, h, sq, _ = q.shape
    hk, d, sk = kt.shape[1:]
    dv = v.shape[3]
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def repeat_heads(x, inner):  # [B, Hk, a, c] -> [B, H, a, c], kv head h // (H / Hk)
        if not 1 < hk < h:  # equal heads, or size-1 dims MatMul broadcasts itself
            return x
        group = h // hk
        nodes.extend([
            helper.make_node("Unsqueeze", [x, const(f"{x}_ax", np.array([2]))], [f"{x}_u"]),
            helper.make_node("Expand", [f"{x}_u", const(f"{x}_es", np.array(
                [b, hk, group, *inner]))], [f"{x}_e"]),
            helper.make_node("Reshape", [f"{x}_e", const(f"{x}_rs", np.array(
                [b, h, *inner]))], [f"{x}_r"])])
        return f"{x}_r"

    kt_all, v_all = repeat_heads("KT", [d, sk]), repeat_heads("V", [sk, dv])
    nodes.append(helper.make_node("MatMul", ["Q", kt_all], ["scores"]))
    nodes.append(helper.make_node("Mul", ["scores", const("scale", np.array(
        scale, dtype=q.dtype))], ["scaled"]))
    last = "scaled"
    if "M" in feeds:
        mask = "M"
        if feeds["M"].dtype != q.dtype:
            nodes.append(helper.make_node("Cast", ["M"], ["M_cast"], to=elem))
            mask = "M_cast"
        nodes.append(helper.make_node("Add", [last, mask], ["masked"]))
        last = "masked"
    if is_causal:
        tri = np.triu(np.full((sq, sk), -np.inf, dtype=np.float32), k=1).astype(q.dtype)
        nodes.append(helper.make_node("Add", [last, const("causal", tri)], ["causal_out"]))
        last = "causal_out"
    nodes.append(helper.make_node("Softmax", [last], ["probs"], axis=-1))
    nodes.append(helper.make_node("MatMul", ["probs", v_all], ["Y"]))
    inputs = [models.vi(k, _elem(x), list(x.shape)) for k, x in feeds.items()]
    return models.make(nodes, inputs, [models.vi("Y", elem, None)], inits, opset=21)


def unfused_reference(feeds, scale=1.0, is_causal=0):
    """onnxruntime on the unfused graph; bfloat16 values run there as (exact) float32."""
    low = feeds["Q"].dtype == ml_dtypes.bfloat16
    if low:
        feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    sess = onnxruntime.InferenceSession(unfused_model(feeds, scale, is_causal)
                                        .SerializeToString(), providers=CPU)
    return sess.run(None, feeds)[0]


def exact_reference(feeds, scale=1.0, is_causal=0):
    """The attention computed in float64 with NumPy: kv heads repeated, the mask broadcast,
    causality upper-left; fully masked rows give NaN like the unfused graph."""
    q, kt, v = (feeds[k].astype(np.float64) for k in ("Q", "KT", "V"))
    group = q.shape[1] // kt.shape[1]
    kt, v = np.repeat(kt, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.matmul(q, kt) * scale
    if "M" in feeds:
        scores = scores + feeds["M"].astype(np.float64)
    if is_causal:
        sq, sk = scores.shape[-2:]
        scores = scores + np.triu(np.full((sq, sk), -np.inf), k=1)
    with np.errstate(invalid="ignore"):
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
    return np.matmul(probs, v)


def node_scale(scale: float) -> float:
    """The scale a fused node written as an ONNX proto carries: its attribute is float32."""
    return float(np.float32(scale))


TOL = {np.dtype(np.float32): (1e-5, 1e-5), np.dtype(np.float16): (1e-2, 2e-3),
       np.dtype(ml_dtypes.bfloat16): (2 ** -7, 2e-3), np.dtype(np.float64): (1e-12, 1e-12)}


def compare(got, feeds, expected):
    assert got.dtype == feeds["Q"].dtype and got.shape == expected.shape, \
        (got.dtype, got.shape, expected.shape)
    rtol, atol = TOL[got.dtype]
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=rtol,
                               atol=atol)  # NaN where the reference has NaN


def check_cpu(feeds, scale=1.0, is_causal=0, **model_kw):
    sess = ort.InferenceSession(fused_model(feeds, scale, is_causal, **model_kw)
                                .SerializeToString(), providers=CPU)
    with np.errstate(invalid="ignore"):
        got = sess.run(None, feeds)[0]
    compare(got, feeds, unfused_reference(feeds, scale, is_causal))


# ------------------------------------------------------------------ masks and causality

B, H, SQ, SK, D = 2, 3, 5, 7, 8


@pytest.mark.parametrize("mask_shape", [None, (B, 1, 1, SK), (1, 1, SQ, SK), (B, H, SQ, SK),
                                        (SK,), (SQ, 1), (H, 1, SK)])
@pytest.mark.parametrize("is_causal", [0, 1])
def test_masks_and_causal(mask_shape, is_causal):
    check_cpu(attention_feeds(B, H, H, SQ, SK, D, mask_shape=mask_shape), 0.35, is_causal)


@pytest.mark.parametrize("sq, sk", [(1, 9), (9, 4), (6, 6)])
def test_causal_is_upper_left_for_any_lengths(sq, sk):
    # query i sees keys j <= i, whatever the lengths (ai.onnx Attention's rule, no cache)
    check_cpu(attention_feeds(1, 2, 2, sq, sk, D, mask_shape=(1, 1, 1, sk)), 0.5, 1)


@pytest.mark.parametrize("h, hk", [(4, 2), (6, 1)])
def test_grouped_query_heads(h, hk):
    check_cpu(attention_feeds(2, h, hk, 5, 6, 8, dv=4, mask_shape=(2, 1, 1, 6)), 0.25, 1)


@pytest.mark.parametrize("q_bh, kt_bh, v_bh", [
    ((2, 3), (1, 3), (2, 1)),  # keys shared by the batch, one value head
    ((1, 3), (2, 3), (2, 3)),  # one query batch entry against two
    ((2, 1), (2, 3), (1, 3)),  # one query head against three kv heads
])
def test_size_one_batch_and_head_dims_broadcast_like_matmul(q_bh, kt_bh, v_bh):
    feeds = {"Q": data(*q_bh, 4, 8), "KT": data(*kt_bh, 8, 6), "V": data(*v_bh, 6, 5),
             "M": data(1, 1, 1, 6)}
    # the unfused graph's MatMuls broadcast them themselves
    check_cpu(feeds, 0.5, out_dims=("B", "H", "Q_2", "V_3"))


@pytest.mark.parametrize("shape", [
    (2, 4, 4, 9, 24, 8),  # Q is the smallest operand: the scale goes into Q
    (1, 4, 1, 10, 9, 16),  # one kv head: KT is the smallest
    (2, 3, 3, 1, 9, 16),  # a single query: the scores are the smallest
])
def test_scale_on_any_operand(shape):
    b, h, hk, sq, sk, d = shape
    check_cpu(attention_feeds(b, h, hk, sq, sk, d, mask_shape=(b, 1, 1, sk)), 0.125)


def test_float16():
    check_cpu(attention_feeds(2, 4, 2, 6, 10, 16, mask_shape=(2, 1, 1, 10), dtype=np.float16),
              0.25, 1)


def test_bfloat16_against_float32_on_the_same_values():
    check_cpu(attention_feeds(1, 2, 2, 5, 9, 8, mask_shape=(1, 1, 5, 9),
                              dtype=ml_dtypes.bfloat16), 0.5)


def test_double_against_an_exact_reference():
    # 0.3 is no power of two: the node's float32 attribute is the scale the reference uses
    feeds = attention_feeds(1, 2, 1, 4, 6, 8, mask_shape=(6,), dtype=np.float64)
    sess = ort.InferenceSession(fused_model(feeds, 0.3, 1).SerializeToString(), providers=CPU)
    compare(sess.run(None, feeds)[0], feeds, exact_reference(feeds, node_scale(0.3), 1))


@pytest.mark.parametrize("scale", [0.3, 1 / 7, 0.125])
def test_double_graph_fuses_without_rounding_its_scale(scale):
    # the optimizer fuses the exported float64 graph and keeps the graph's exact scale
    feeds = attention_feeds(2, 2, 2, 5, 7, 8, mask_shape=(1, 1, 5, 7), dtype=np.float64)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    sess = ort.InferenceSession(unfused_model(feeds, scale).SerializeToString(), so,
                                providers=CPU)
    ops = [n.op_type for s in sess.get_provider_graph_assignment_info() for n in s.get_nodes()]
    assert ops == ["ScaledDotProductAttention"], ops
    compare(sess.run(None, feeds)[0], feeds, exact_reference(feeds, scale))


def test_mask_of_another_float_type():
    check_cpu(attention_feeds(1, 2, 2, 4, 6, 8, mask_shape=(1, 1, 4, 6), mask_dtype=np.float16),
              0.5)


# ------------------------------------------------------------------ rows the softmax must redo


def test_fully_masked_rows_give_nan_like_the_unfused_graph():
    feeds = attention_feeds(1, 2, 2, 4, 6, 8, mask_shape=(1, 1, 4, 6))
    feeds["M"][0, 0, 2, :] = -np.inf
    expected = unfused_reference(feeds, 0.5)
    assert np.isnan(expected[0, :, 2]).all() and not np.isnan(expected[0, :, :2]).any()
    check_cpu(feeds, 0.5)


def test_rows_far_below_their_heads_max():
    # every row of a head shares one shift; rows hundreds below the head's max (and rows of
    # exporters' finfo.min padding, which the softmax makes uniform) are recomputed exactly
    feeds = attention_feeds(2, 2, 2, 5, 6, 8, mask_shape=(2, 1, 5, 6))
    feeds["M"][0, 0, 1, :] -= 300.0
    feeds["M"][1, 0, 3, :] = np.finfo(np.float32).min
    feeds["M"][1, 0, 4, :] += 200.0
    check_cpu(feeds, 0.5, 1)


def test_no_keys_gives_zeros_like_the_unfused_graph():
    check_cpu(attention_feeds(1, 2, 2, 3, 0, 4, mask_shape=(1, 1, 1, 0)), 0.5)


# ------------------------------------------------------------------ sessions and errors


def test_one_session_serves_any_size():
    small = attention_feeds(1, 2, 1, 3, 5, 8, mask_shape=(1, 1, 1, 5))
    large = attention_feeds(2, 4, 2, 11, 13, 8, dv=6, mask_shape=(2, 1, 1, 13))
    sess = ort.InferenceSession(fused_model(small, 0.3, 1).SerializeToString(), providers=CPU)
    for feeds in (small, large, small):
        compare(sess.run(None, feeds)[0], feeds, unfused_reference(feeds, 0.3, 1))


def test_kernel_is_registered_in_the_internal_domain():
    from tritort.fallback_cpu import REGISTRY

    assert REGISTRY.lookup(INTERNAL_DOMAIN, "ScaledDotProductAttention", 1) is not None
    assert REGISTRY.lookup("", "ScaledDotProductAttention", 99) is None


@pytest.mark.parametrize("change, message", [
    ({"KT": data(1, 2, 5, 6)}, "KT [1, 2, 5, 6] and V [1, 2, 6, 8] do not fit"),
    ({"KT": data(1, 3, 8, 6), "V": data(1, 3, 6, 8)}, "do not fit"),  # 4 % 3 heads
    ({"V": data(1, 2, 5, 8)}, "V [1, 2, 5, 8] do not fit"),
    ({"V": data(2, 2, 6, 8), "Q": data(3, 4, 3, 8)}, "(H a multiple of Hk; size-1 batch"),
    ({"M": data(3, 1, 1, 6)}, "mask [3, 1, 1, 6] does not broadcast"),
])
def test_shape_errors_name_the_op(change, message):
    feeds = attention_feeds(1, 4, 2, 3, 6, 8, mask_shape=(1, 1, 1, 6))
    sess = ort.InferenceSession(fused_model(feeds).SerializeToString(), providers=CPU)
    with pytest.raises(Exception, match="ScaledDotProductAttention") as info:
        sess.run(None, {**feeds, **change})
    assert message in str(info.value)


def test_model_output_type_is_kept():
    feeds = attention_feeds(1, 2, 2, 3, 4, 8, dtype=np.float16)
    model = fused_model(feeds)
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    sess = ort.InferenceSession(model.SerializeToString(), providers=CPU)
    assert sess.get_outputs()[0].type == "tensor(float16)"
    compare(sess.run(None, feeds)[0], feeds, unfused_reference(feeds))


def test_threads_each_keep_their_own_work_buffers():
    from concurrent.futures import ThreadPoolExecutor

    sets = [attention_feeds(1, 2, 2, n, n + 3, 8, mask_shape=(1, 1, 1, n + 3))
            for n in (4, 9, 16, 25)]
    model = fused_model(sets[0], 0.5, 1)
    sess = ort.InferenceSession(model.SerializeToString(), providers=CPU)
    expected = [unfused_reference(f, 0.5, 1) for f in sets]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: sess.run(None, sets[i % 4])[0], range(32)))
    for i, y in enumerate(got):
        compare(y, sets[i % 4], expected[i % 4])
