"""The flash-attention template on Triton (interpreter mode) against onnxruntime.

tritort's fused ScaledDotProductAttention is compared with onnxruntime running the unfused
graph the exporters write; ai.onnx Attention with onnxruntime's own Attention kernel, or with
onnx.reference where onnxruntime lacks a feature (masks shorter than the keys, 1-D masks,
sliding windows, bfloat16). Every node must have run on Triton.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnxruntime
import pytest
from onnx import helper

import tritort as ort
from tests import models
from tests.test_fused_attention_cpu import (TOL, attention_feeds, compare, data,
                                            exact_reference, fused_model, node_scale, reseed,
                                            unfused_model, unfused_reference)
from tests.triton_env import requires_triton, triton_session
from tritort import dtypes

pytestmark = requires_triton
TRITON = "TritonExecutionProvider"
PROVIDERS = [TRITON, "CPUExecutionProvider"]
_names = itertools.count()


@pytest.fixture(autouse=True)
def _seeded(request):
    reseed(request.node.name)


@pytest.fixture()
def launches(monkeypatch):
    """The (q, k, v, y, mask) views each attention launch received."""
    from tritort.codegen import attention

    seen = []
    real = attention.launch

    def spy(fn, q, k, v, y, mask, scale, interpreted, table, extra=()):
        seen.append((q, k, v, y, mask))
        return real(fn, q, k, v, y, mask, scale, interpreted, table, extra)

    monkeypatch.setattr(attention, "launch", spy)
    return seen


# ------------------------------------------------------------------ the fused op


def check_fused(feeds, scale=1.0, is_causal=0, **model_kw):
    sess = triton_session(fused_model(feeds, scale, is_causal, **model_kw))
    with np.errstate(invalid="ignore"):
        got = sess.run(None, feeds)[0]
    compare(got, feeds, unfused_reference(feeds, scale, is_causal))


@pytest.mark.parametrize("mask_shape", [None, (2, 1, 1, 37), (1, 1, 37, 37), (2, 2, 37, 37)])
@pytest.mark.parametrize("is_causal", [0, 1])
def test_fused_masks_and_causal_odd_sizes(mask_shape, is_causal):
    check_fused(attention_feeds(2, 2, 2, 37, 37, 24, mask_shape=mask_shape), 0.2, is_causal)


@pytest.mark.parametrize("sq, sk, is_causal", [(19, 41, 0), (41, 19, 1), (1, 40, 1), (5, 0, 0)])
def test_fused_cross_lengths(sq, sk, is_causal):
    check_fused(attention_feeds(1, 2, 2, sq, sk, 16, dv=20, mask_shape=(sk,)), 0.3, is_causal)


@pytest.mark.parametrize("h, hk", [(4, 2), (3, 1)])
def test_fused_grouped_query_heads(h, hk):
    check_fused(attention_feeds(1, h, hk, 21, 34, 16, mask_shape=(1, 1, 1, 34)), 0.25, 1)


def test_fused_size_one_batch_and_head_dims_broadcast():
    feeds = {"Q": data(2, 1, 17, 16), "KT": data(1, 3, 16, 20), "V": data(2, 1, 20, 8),
             "M": data(20)}
    check_fused(feeds, 0.3, 1, out_dims=("B", "H", "Q_2", "V_3"))


def test_fused_float16():
    check_fused(attention_feeds(1, 2, 1, 33, 40, 32, mask_shape=(1, 1, 33, 40),
                                dtype=np.float16), 0.18, 1)


def test_fused_bfloat16_against_float32_on_the_same_values():
    check_fused(attention_feeds(1, 2, 2, 20, 35, 24, mask_shape=(1, 1, 1, 35),
                                dtype=ml_dtypes.bfloat16), 0.2)


def test_fused_double_and_a_float16_mask():
    # 0.4 is no power of two: the node's float32 attribute is the scale the reference uses
    feeds = attention_feeds(1, 2, 2, 9, 17, 8, mask_shape=(9, 17), dtype=np.float64,
                            mask_dtype=np.float16)
    got = triton_session(fused_model(feeds, 0.4, 1)).run(None, feeds)[0]
    compare(got, feeds, exact_reference(feeds, node_scale(0.4), 1))


def test_double_graph_fuses_without_rounding_its_scale():
    # the optimizer's fused node keeps the float64 graph's exact 1/7, handed over as two halves
    feeds = attention_feeds(1, 2, 2, 9, 17, 8, mask_shape=(1, 1, 9, 17), dtype=np.float64)
    sess = triton_session(unfused_model(feeds, 1 / 7), on_triton=[])
    assert [u.unit.nodes[0].op_type for u in sess._program.units] == ["ScaledDotProductAttention"]
    assert sess._program.units[0].provider.name == TRITON
    compare(sess.run(None, feeds)[0], feeds, exact_reference(feeds, 1 / 7))


def test_fused_fully_masked_row_gives_nan_like_the_unfused_graph():
    feeds = attention_feeds(1, 2, 2, 18, 20, 16, mask_shape=(1, 1, 18, 20))
    feeds["M"][0, 0, 5, :] = -np.inf
    assert np.isnan(unfused_reference(feeds, 0.5)[0, :, 5]).all()
    check_fused(feeds, 0.5)


def test_kt_is_read_through_swapped_strides(launches):
    feeds = attention_feeds(2, 2, 2, 17, 19, 16, mask_shape=(1, 1, 1, 19))
    check_fused(feeds, 0.25)
    q, k, v, y, mask = launches[-1]
    hk, d, sk = feeds["KT"].shape[1:]
    assert tuple(k.shape) == (2, hk, sk, d) and tuple(k.stride()) == (hk * d * sk, d * sk, 1, sk)
    assert tuple(mask.stride()) == (0, 0, 0, 1)  # broadcast by zero strides, never copied


def test_transposed_key_from_a_transpose_node(launches):
    # K [B, Hk, Sk, D] -> Transpose -> KT: the view goes back to K's own strides
    feeds = attention_feeds(1, 2, 2, 10, 12, 16)
    key = np.ascontiguousarray(feeds.pop("KT").transpose(0, 1, 3, 2))
    sdpa = fused_model({"Q": feeds["Q"], "KT": key.transpose(0, 1, 3, 2), "V": feeds["V"]}, 0.5)
    node = sdpa.graph.node[0]
    transpose = helper.make_node("Transpose", ["K"], ["KT"], name="k_t", perm=[0, 1, 3, 2])
    inputs = [models.vi(k, dtypes.from_numpy(v.dtype).onnx, [f"{k}_{j}" for j in range(4)])
              for k, v in (("Q", feeds["Q"]), ("K", key), ("V", feeds["V"]))]
    model = models.make([transpose, node], inputs, list(sdpa.graph.output), opset=21)
    model.opset_import.extend(sdpa.opset_import[1:])
    run = {"Q": feeds["Q"], "K": key, "V": feeds["V"]}
    got = triton_session(model).run(None, run)[0]
    expected = unfused_reference({"Q": feeds["Q"], "KT": key.transpose(0, 1, 3, 2),
                                  "V": feeds["V"]}, 0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert launches[-1][1].is_contiguous()


def test_fused_source_skips_key_blocks_above_the_diagonal(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_DUMP_DIR", str(tmp_path))
    check_fused(attention_feeds(1, 1, 1, 40, 40, 16), 0.5, 1)
    source = (tmp_path / "scaleddotproductattention_0.py").read_text()
    assert "hi = tl.minimum(hi, (pid_m + 1) * BLOCK_M)" in source
    assert "m_new = tl.maximum(m_i, tl.max(s, axis=1))" in source


# ------------------------------------------------------------------ ai.onnx Attention


def attention_model(feeds, opset=23, **attrs):
    names = ["Q", "K", "V", "M"][:len(feeds)]
    inputs = [models.vi(n, dtypes.from_numpy(feeds[n].dtype).onnx,
                        [f"{n}_{j}" for j in range(feeds[n].ndim)]) for n in names]
    node = helper.make_node("Attention", names, ["Y"], name=f"attention_{next(_names)}",
                            **attrs)
    elem = dtypes.from_numpy(feeds["Q"].dtype).onnx
    return models.make([node], inputs, [models.vi("Y", elem, None)], opset=opset)


def attention_reference(model, feeds, oracle="onnxruntime"):
    if oracle == "onnxruntime":
        sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                            providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)[0]
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)[0]


def qkv(b, h, hk, sq, sk, d, dv=None, three_d=False, dtype=np.float32):
    dv = dv or d
    if three_d:
        return {"Q": data(b, sq, h * d, dtype=dtype), "K": data(b, sk, hk * d, dtype=dtype),
                "V": data(b, sk, hk * dv, dtype=dtype)}
    return {"Q": data(b, h, sq, d, dtype=dtype), "K": data(b, hk, sk, d, dtype=dtype),
            "V": data(b, hk, sk, dv, dtype=dtype)}


def check_attention(feeds, opset=23, oracle="onnxruntime", **attrs):
    model = attention_model(feeds, opset, **attrs)
    got = triton_session(model).run(None, feeds)[0]
    if feeds["Q"].dtype == ml_dtypes.bfloat16:  # the same values as float32
        wide = {k: v.astype(np.float32) if v.dtype != np.bool_ else v for k, v in feeds.items()}
        expected = attention_reference(attention_model(wide, opset, **attrs), wide, oracle)
    else:
        expected = attention_reference(model, feeds, oracle)
    assert got.dtype == feeds["Q"].dtype and got.shape == expected.shape
    rtol, atol = TOL[got.dtype]
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=rtol,
                               atol=atol)


def boolean(*shape, keep=0.7):
    return np.random.default_rng(len(shape)).random(shape) < keep


@pytest.mark.parametrize("mask", [None, "float_2d", "float_4d", "float_3d", "bool_2d",
                                  "bool_4d"])
@pytest.mark.parametrize("is_causal", [0, 1])
def test_attention_4d_masks(mask, is_causal):
    feeds = qkv(2, 2, 2, 37, 37, 24)
    shape = {"2d": (37, 37), "4d": (2, 1, 37, 37), "3d": (2, 37, 37)}
    if mask:
        kind, rank = mask.split("_")
        feeds["M"] = data(*shape[rank]) if kind == "float" else boolean(*shape[rank])
        if kind == "bool":
            feeds["M"][..., 0] = True  # keep a key per row: no fully masked rows here
    check_attention(feeds, is_causal=is_causal)


@pytest.mark.parametrize("attrs", [{}, {"scale": 0.3}, {"softcap": 2.0, "scale": 0.7},
                                   {"is_causal": 1, "softcap": 1.5}])
def test_attention_scale_and_softcap_gqa(attrs):
    feeds = qkv(1, 4, 2, 19, 33, 16, dv=24)
    feeds["M"] = data(19, 33)
    check_attention(feeds, **attrs)


@pytest.mark.parametrize("h, hk, is_causal", [(2, 2, 0), (4, 2, 1), (3, 1, 1)])
def test_attention_3d(h, hk, is_causal):
    feeds = qkv(2, h, hk, 21, 26, 8, dv=12, three_d=True)
    feeds["M"] = data(2, 1, 21, 26)
    check_attention(feeds, is_causal=is_causal, q_num_heads=h, kv_num_heads=hk)


def test_attention_fully_masked_rows_give_zeros():
    feeds = qkv(1, 2, 2, 17, 18, 16)
    feeds["M"] = boolean(1, 2, 17, 18)
    feeds["M"][0, 1, 3] = False
    expected = attention_reference(attention_model(feeds), feeds)
    assert (expected[0, 1, 3] == 0).all()
    check_attention(feeds)


@pytest.mark.parametrize("kind", ["float", "bool"])
def test_attention_short_mask_hides_the_keys_past_it(kind):
    # a mask covering the first keys only: the rest are masked out (onnxruntime refuses it)
    feeds = qkv(1, 2, 2, 18, 34, 16)
    feeds["M"] = data(18, 20) if kind == "float" else boolean(1, 2, 18, 20, keep=0.9)
    check_attention(feeds, oracle="onnx.reference", is_causal=1)


def test_attention_1d_mask():
    feeds = qkv(1, 2, 2, 9, 20, 16)
    feeds["M"] = data(20)
    check_attention(feeds, oracle="onnx.reference")


@pytest.mark.parametrize("left, right, is_causal", [(3, 0, 0), (2, 5, 0), (-1, 4, 0),
                                                    (4, -1, 1)])
def test_attention_sliding_window(left, right, is_causal):
    feeds = qkv(1, 2, 1, 37, 37, 16)
    feeds["M"] = data(37, 37)
    check_attention(feeds, opset=25, oracle="onnx.reference", is_causal=is_causal,
                    left_window_size=left, right_window_size=right)


def test_attention_float16():
    feeds = qkv(1, 4, 2, 33, 40, 32, dtype=np.float16)
    feeds["M"] = data(33, 40, dtype=np.float16)
    check_attention(feeds, is_causal=1)


def test_attention_bfloat16():
    feeds = qkv(1, 2, 2, 20, 24, 3 * 8, three_d=True, dtype=ml_dtypes.bfloat16)
    feeds["M"] = boolean(20, 24)
    feeds["M"][:, 0] = True
    # sqrt(scale) is exact in bf16: the spec rounds it to the input type, float32 does not
    check_attention(feeds, oracle="onnx.reference", q_num_heads=2, kv_num_heads=2, scale=0.25)


def test_attention_double():
    feeds = qkv(1, 2, 2, 9, 11, 8, dtype=np.float64)
    check_attention(feeds, oracle="onnx.reference", is_causal=1)


# ------------------------------------------------------------------ what stays on the CPU


def _declined(model) -> str:
    sess = ort.InferenceSession(model.SerializeToString(), providers=PROVIDERS)
    where = sess._program.partition.assignments[model.graph.node[0].name]
    assert where.provider.name == "CPUExecutionProvider"
    return where.declined[TRITON]


def test_kv_cache_and_extra_outputs_stay_on_the_cpu():
    feeds = qkv(1, 2, 2, 4, 5, 8)
    past = models.make(
        [helper.make_node("Attention", ["Q", "K", "V", "", "PK", "PV"], ["Y", "PKo", "PVo"],
                          name="cached")],
        [models.vi(n, 1, None) for n in ("Q", "K", "V", "PK", "PV")],
        [models.vi(n, 1, None) for n in ("Y", "PKo", "PVo")], opset=23)
    assert "past_key" in _declined(past)
    qk = models.make([helper.make_node("Attention", ["Q", "K", "V"], ["Y", "", "", "QK"],
                                       name="with_qk")],
                     [models.vi(n, 1, list(feeds[n].shape)) for n in ("Q", "K", "V")],
                     [models.vi("Y", 1, None), models.vi("QK", 1, None)], opset=23)
    assert "qk_matmul_output" in _declined(qk)


def test_fused_op_outside_its_domain_is_not_claimed():
    from tritort.codegen.templates import TEMPLATES

    class Node:
        op_type, domain, inputs, outputs, attrs, name = \
            "ScaledDotProductAttention", "", ["q", "k", "v"], ["y"], {}, "n"

    assert "domain" in TEMPLATES["ScaledDotProductAttention"].claim(Node(), None)
    Node.op_type, Node.domain = "Attention", "ai.tritort"
    assert "domain" in TEMPLATES["Attention"].claim(Node(), None)


def test_pick_config_heuristic():
    from dataclasses import astuple

    from tritort.codegen.attention import pick_config

    def pick(*args, interpreted=False):
        return astuple(pick_config(*args, interpreted))

    # the interpreter: small blocks, so ragged edges and several key blocks get exercised
    assert pick(37, 37, 4, 32, 4, interpreted=True)[:2] == (32, 32)
    # Hopper, fp16: 128 x 64 tiles; 8 warps for 128-wide heads
    assert pick(4096, 4096, 32, 64, 2) == (128, 64, 4, 3)
    assert pick(4096, 4096, 32, 128, 2) == (128, 64, 8, 3)
    # too few programs (BERT-base: 12 heads x 128 tokens) or a single query: smaller row blocks
    assert pick(128, 128, 12, 64, 2)[0] == 64
    assert pick(1, 4096, 32, 128, 2) == (16, 64, 4, 3)


# ------------------------------------------------------------------ the real compiler

_COMPILE_FOR_HOPPER = r"""
import importlib.util, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tritort.codegen.attention import Variant, attention_source
from tritort.codegen.attention_configs import _gpu_config

POINTERS = {"float16": "*fp16", "bfloat16": "*bf16", "float": "*fp32"}
for variant, head in [(Variant("float16", "additive", True), 64),
                      (Variant("bfloat16", "bool", False, 3, 2, 2.0, "zero"), 128),
                      (Variant("float", None, True), 64)]:
    path = Path(tempfile.mkdtemp()) / "attn.py"
    path.write_text(attention_source("attn", ["aot"], variant, interpreted=False))
    spec = importlib.util.spec_from_file_location("attn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = module.attn
    mask = "*i1" if variant.mask == "bool" else "*fp32"
    signature = {p: POINTERS[variant.dtype] if p in ("q", "k", "vals", "y") else
                 mask if p == "mask" else "fp32" if p.startswith("scale") else
                 "constexpr" if p.startswith("BLOCK") else "i32" for p in fn.arg_names}
    cfg = _gpu_config(2 if variant.dtype != "float" else 4, head, variant.precision == "ieee")
    blocks = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_D": head, "BLOCK_DV": head}
    compiled = triton.compile(
        ASTSource(fn, signature, {(fn.arg_names.index(k),): b for k, b in blocks.items()}),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    print(variant.dtype, "wgmma" if "wgmma" in compiled.asm["ptx"] else "no-wgmma",
          compiled.metadata.shared)
"""


def test_sources_compile_for_hopper_without_a_gpu():
    """The GPU configs' sources through Triton's real compiler for sm_90 (no device needed):
    catches what the interpreter lets pass, and shows fp16/bf16 on Hopper's wgmma."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _COMPILE_FOR_HOPPER,
                          str(Path(__file__).resolve().parents[1])],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert lines["float16"].startswith("wgmma") and lines["bfloat16"].startswith("wgmma")
    for line in lines.values():  # within Hopper's 228 KB of shared memory per SM
        assert int(line.split()[1]) <= 228 * 1024
