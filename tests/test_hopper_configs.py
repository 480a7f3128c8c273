"""Hopper configs and TF32: the ``use_tf32`` provider option, GEMM tiles that compile to
wgmma, split-K, and row-wise tiles that do not spill.

Outputs are checked in Triton's interpreter against onnxruntime; the sm_90 checks compile the
kernels with Triton's real compiler and its bundled ptxas (no GPU needed), specialized as a
launch specializes them (integer arguments equal to 1 as constants, 16-divisible integers and
pointers marked aligned), and read ptxas's -v report.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort as ort
from tests import models
from tests.triton_env import requires_triton
from tritort.codegen import gemm, gemm_configs, rowwise_launch
from tritort.codegen.gemm_configs import GemmConfig, pick_config

pytestmark = requires_triton
ROOT = Path(__file__).resolve().parents[1]
BERT = [(128, 768, 768), (128, 3072, 768), (128, 768, 3072), (128, 2304, 768)]  # M, N, K


def _ptxas() -> bool:
    try:
        from triton import knobs

        return Path(knobs.nvidia.ptxas.path).exists()
    except Exception:
        return False


needs_ptxas = pytest.mark.skipif(not _ptxas(), reason="needs Triton's bundled ptxas")


def _linear_model(elem=TP.FLOAT, k=96, n=40):
    """Y = Relu(X @ W + b): one GEMM kernel with its epilogue."""
    rng = np.random.default_rng(1)
    dt = np.float16 if elem == TP.FLOAT16 else np.float32
    w = numpy_helper.from_array((rng.standard_normal((k, n)) / 4).astype(dt), "W")
    b = numpy_helper.from_array(rng.standard_normal(n).astype(dt), "b")
    nodes = [helper.make_node("MatMul", ["X", "W"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["biased"], name="bias"),
             helper.make_node("Relu", ["biased"], ["Y"], name="relu")]
    return models.make(nodes, [models.vi("X", elem, ["B", k])], [models.vi("Y", elem, None)],
                       [w, b], opset=21)


def _session(model, options=None, provider="TritonExecutionProvider"):
    entry = (provider, options) if options is not None else provider
    return ort.InferenceSession(model.SerializeToString(),
                                providers=[entry, "CPUExecutionProvider"])


def _reference(model, feeds):
    sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


# ------------------------------------------------------------------ use_tf32


def test_use_tf32_takes_zero_or_one_also_through_the_cuda_alias():
    model = _linear_model()
    with pytest.raises(ort.InvalidArgument, match="use_tf32 is '0' or '1', got 'yes'"):
        _session(model, {"use_tf32": "yes"})
    triton = lambda s: next(p for p in s._providers if p.name == "TritonExecutionProvider")  # noqa
    assert triton(_session(model)).use_tf32  # onnxruntime's CUDA provider default
    assert not triton(_session(model, {"use_tf32": "0"}, "CUDAExecutionProvider")).use_tf32
    assert triton(_session(model, {"use_tf32": "1"}, "CUDAExecutionProvider")).use_tf32


def _conv_model():
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array((rng.standard_normal((8, 4, 3, 3)) / 4).astype(np.float32), "W")
    nodes = [helper.make_node("Conv", ["X", "W"], ["Y"], name="conv", pads=[1, 1, 1, 1])]
    return models.make(nodes, [models.vi("X", TP.FLOAT, [1, 4, 6, 6])],
                       [models.vi("Y", TP.FLOAT, None)], [w], opset=21)


def _attention_model():
    nodes = [helper.make_node("Attention", ["Q", "K", "V"], ["Y"], name="attention")]
    shape = [1, 2, 8, 16]
    return models.make(nodes, [models.vi(n, TP.FLOAT, shape) for n in "QKV"],
                       [models.vi("Y", TP.FLOAT, None)], opset=23)


@pytest.mark.parametrize("name", ["matmul", "conv", "attention"])
def test_use_tf32_picks_the_dots_input_precision(name, tmp_path, monkeypatch):
    """Both settings compile their own kernel (the precision is in the cached source); the
    interpreter does not round to TF32, so both match onnxruntime here, '0' tightly."""
    rng = np.random.default_rng(3)
    model, feeds = {
        "matmul": lambda: (_linear_model(), {"X": rng.standard_normal((20, 96), np.float32)}),
        "conv": lambda: (_conv_model(), {"X": rng.standard_normal((1, 4, 6, 6), np.float32)}),
        "attention": lambda: (_attention_model(), {n: rng.standard_normal((1, 2, 8, 16),
                                                                          np.float32)
                                                   for n in "QKV"}),
    }[name]()
    want = _reference(model, feeds)[0]
    kernels = {}
    for flag, mode, rtol in (("0", "ieee", 1e-5), ("1", "tf32", 1e-3)):
        monkeypatch.setenv("TRITORT_DUMP_DIR", str(tmp_path / flag))
        sess = _session(model, {"use_tf32": flag})
        assert set(sess.placement().values()) == {"TritonExecutionProvider"}
        np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=rtol, atol=rtol)
        [dumped] = (tmp_path / flag).glob("*.py")
        source = dumped.read_text()
        assert f'input_precision="{mode}"' in source
        assert 'input_precision="' + ("tf32" if mode == "ieee" else "ieee") not in source
        kernels[flag] = [k["kernel"] for k in sess._providers[0].kernels]
    assert kernels["0"] != kernels["1"]  # two cache entries, side by side


# ------------------------------------------------------------------ GEMM configs


@pytest.mark.parametrize("itemsize,tf32", [(2, False), (4, True), (1, False)])
def test_tensor_core_gemms_with_64_rows_take_warpgroup_tiles(itemsize, tf32):
    for m in (64, 128, 197, 512, 4096):
        for _, n, k in BERT:
            cfg = pick_config(m, n, k, 1, itemsize, False, tf32)
            assert cfg.block_m >= 64 and cfg.num_warps == 4 * (cfg.block_m // 64), (m, n, k, cfg)
    # fewer rows than a warpgroup's: mma.sync tiles, as before
    assert pick_config(16, 768, 768, 1, itemsize, False, tf32).block_m == 16


def test_split_k_fills_the_sms_when_tiles_are_few():
    sms = gemm_configs.DEFAULT_SMS
    for m, n, k in BERT:
        cfg = pick_config(m, n, k, 1, 2, False)
        tiles = -(-m // cfg.block_m) * -(-n // cfg.block_n)
        steps = -(-k // cfg.block_k)
        if 2 * tiles <= sms:
            assert cfg.split_k > 1 and tiles * cfg.split_k <= sms, (m, n, k, cfg)
            assert steps // cfg.split_k >= 4  # each program still walks a pipeline's worth
        else:
            assert cfg.split_k == 1, (m, n, k, cfg)
    assert pick_config(128, 768, 768, 1, 2, False).split_k == 3  # 24 tiles, 12 K steps
    assert pick_config(128, 768, 3072, 1, 2, False).split_k == 5  # 24 tiles, 48 K steps
    assert pick_config(4096, 4096, 4096, 1, 2, False).split_k == 1
    assert pick_config(128, 768, 64, 1, 2, False).split_k == 1  # K too short to share
    # float32 without TF32 keeps FMA tiles
    assert pick_config(128, 768, 768, 1, 4, False).block_m < 64


def test_stored_gemm_configs_without_split_k_still_parse():
    old = dict(block_m=64, block_n=64, block_k=32, group_m=8, num_warps=4, num_stages=3)
    assert gemm_configs.TUNING.parse(old) == GemmConfig(64, 64, 32, 8, 4, 3, 1)
    assert gemm_configs.TUNING.parse({**old, "split_k": 4}).split_k == 4
    with pytest.raises(ValueError, match="split_k=64 > 16"):
        gemm_configs.TUNING.parse({**old, "split_k": 64})


def _split_models():
    rng = np.random.default_rng(4)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    w = numpy_helper.from_array(f32(100, 24) / 4, "W")
    b = numpy_helper.from_array(f32(24), "b")
    gelu = models.make([helper.make_node("MatMul", ["X", "W"], ["mm"], name="mm"),
                        helper.make_node("Add", ["mm", "b"], ["biased"], name="bias"),
                        helper.make_node("Gelu", ["biased"], ["Y"], name="gelu")],
                       [models.vi("X", TP.FLOAT, ["M", 100])], [models.vi("Y", TP.FLOAT, None)],
                       [w, b], opset=21)
    batched = models.make([helper.make_node("MatMul", ["A", "B"], ["Y"], name="bmm")],
                          [models.vi("A", TP.FLOAT, [2, "M", 100]),
                           models.vi("B", TP.FLOAT, [2, 100, 24])],
                          [models.vi("Y", TP.FLOAT, None)], opset=21)
    gemm_model = models.make([helper.make_node("Gemm", ["A", "B", "C"], ["Y"], name="gemm",
                                               transB=1, alpha=0.5, beta=2.0)],
                             [models.vi("A", TP.FLOAT, ["M", 100]),
                              models.vi("B", TP.FLOAT, [24, 100]),
                              models.vi("C", TP.FLOAT, [24])],
                             [models.vi("Y", TP.FLOAT, None)], opset=21)
    half = _linear_model(TP.FLOAT16, k=100, n=24)
    return [(gelu, {"X": f32(20, 100)}), (batched, {"A": f32(2, 20, 100), "B": f32(2, 100, 24)}),
            (gemm_model, {"A": f32(20, 100), "B": f32(24, 100), "C": f32(24)}),
            (half, {"X": f32(20, 100).astype(np.float16)})]


@pytest.mark.parametrize("split", [2, 3])
def test_split_k_matches_onnxruntime_with_its_epilogue(split, monkeypatch):
    """Ragged tiles and K (100 = 7 steps of 16, unevenly shared); the epilogue (bias, GELU,
    Gemm's alpha / beta * C) runs once, on the full sum. The second run replays the bound
    plan: it is right only if the first left every arrival counter at zero."""
    monkeypatch.setattr(gemm, "pick_config",
                        lambda *a, **k: GemmConfig(16, 16, 16, 4, 4, 1, split_k=split))
    grids = []
    real = gemm.launch_kernel
    monkeypatch.setattr(gemm, "launch_kernel",
                        lambda fn, grid, *a, **kw: (grids.append(tuple(grid)),
                                                    real(fn, grid, *a, **kw))[1])
    for model, feeds in _split_models():
        want = _reference(model, feeds)[0]
        sess = _session(model, {"use_tf32": "0"})
        tol = 2e-3 if want.dtype == np.float16 else 1e-5
        for _ in range(3):
            np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=tol, atol=tol)
    assert grids and all(len(g) == 2 and g[1] == split for g in grids), grids


# ------------------------------------------------------------------ sm_90 compiles

_COMPILE = r"""
import contextlib, importlib.util, io, json, sys
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
sys.path.insert(0, sys.argv[2])
from perf.compile_check_ptxas import mma_kind, parse_ptxas_log
knobs.nvidia.dump_ptxas_log = True
for job in json.load(open(sys.argv[1])):
    spec = importlib.util.spec_from_file_location("k", job["path"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, job["name"])
    constexprs = {(i,): v for i, v in job["constexprs"]}
    attrs = {(i,): [["tt.divisibility", 16]] for i in job["aligned"]}
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(ASTSource(fn, job["signature"], constexprs, attrs),
                                  target=GPUTarget("cuda", 90, 32), options=job["options"])
    print(json.dumps({"mma": mma_kind(compiled.asm["ttir"], compiled.asm["ptx"]),
                      **parse_ptxas_log(log.getvalue())}))
"""
_POINTERS = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16", "int32": "*i32",
             "int64": "*i64", "bool": "*i1"}


def _job(fn, args, meta) -> dict:
    """A launch as Triton's launcher specializes it: ints equal to 1 become constants, ints
    divisible by 16 and pointers (torch's allocations are 16-byte aligned) are marked so."""
    import torch

    names = list(fn.arg_names)
    signature, constexprs, aligned = {}, [], []
    for i, (name, value) in enumerate(zip(names, args)):
        if isinstance(value, torch.Tensor):
            signature[name] = _POINTERS[str(value.dtype).removeprefix("torch.")]
            aligned.append(i)
        elif isinstance(value, int) and value == 1:
            signature[name] = "constexpr"
            constexprs.append((i, 1))
        else:
            signature[name] = "i32" if isinstance(value, int) else "fp32"
            if isinstance(value, int) and value % 16 == 0:
                aligned.append(i)
    for name, value in meta.items():
        if name in names:
            signature[name] = "constexpr"
            constexprs.append((names.index(name), value))
    path = Path(fn.fn.__code__.co_filename) if hasattr(fn, "fn") else Path(fn.__file__)
    return {"path": str(path), "name": path.stem, "signature": signature,
            "constexprs": constexprs, "aligned": aligned,
            "options": {k: meta[k] for k in ("num_warps", "num_stages") if k in meta}}


def _compile_sm90(jobs: list[dict], tmp_path) -> list[dict]:
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "TRITORT_GPU_SOURCES")}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    run = subprocess.run([sys.executable, "-c", _COMPILE, str(spec), str(ROOT)],
                         capture_output=True, text=True, timeout=900, env=env)
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0 and len(results) == len(jobs), run.stderr[-3000:]
    return results


def _record(monkeypatch, module) -> list:
    """(fn, args, meta) of every launch ``module`` makes, each launch still run."""
    seen = []
    real = module.launch_kernel

    def spy(fn, grid, *args, **meta):
        seen.append((fn, args, meta))
        return real(fn, grid, *args, **meta)

    monkeypatch.setattr(module, "launch_kernel", spy)
    return seen


def _distinct(launches) -> list[dict]:
    jobs = {}
    for fn, args, meta in launches:
        job = _job(fn, args, meta)
        jobs.setdefault(json.dumps(job, sort_keys=True), job)
    return list(jobs.values())


@needs_ptxas
def test_bert_gemms_and_rows_compile_to_wgmma_without_spills(tmp_path, monkeypatch):
    """A BERT-base layer's GEMM and row-wise shapes (128 tokens) in float16, run with the
    GPU's sources and configs: every GEMM is wgmma, split-K ones included; nothing spills."""
    monkeypatch.setenv("TRITORT_GPU_SOURCES", "1")
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path / "kernels"))
    rng = np.random.default_rng(5)
    h = lambda *s: (rng.standard_normal(s) / 16).astype(np.float16)  # noqa: E731
    inits = [numpy_helper.from_array(h(768, 3072), "W1"), numpy_helper.from_array(h(3072), "b1"),
             numpy_helper.from_array(h(3072, 768), "W2"), numpy_helper.from_array(h(768), "b2"),
             numpy_helper.from_array(h(768, 768), "W3"), numpy_helper.from_array(h(768), "g")]
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["m1"], name="ffn1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="ffn1_bias"),
             helper.make_node("Gelu", ["a1"], ["g1"], name="gelu"),
             helper.make_node("MatMul", ["g1", "W2"], ["m2"], name="ffn2"),
             helper.make_node("Add", ["m2", "b2"], ["a2"], name="ffn2_bias"),
             helper.make_node("Add", ["a2", "X"], ["res"], name="residual"),
             helper.make_node("LayerNormalization", ["res", "g", "b2"], ["ln"], name="ln",
                              axis=-1),
             helper.make_node("MatMul", ["ln", "W3"], ["Y"], name="proj"),
             helper.make_node("Softmax", ["S"], ["P"], name="softmax", axis=-1)]
    model = models.make(nodes, [models.vi("X", TP.FLOAT16, [128, 768]),
                                models.vi("S", TP.FLOAT16, [12, 128, 128])],
                        [models.vi("Y", TP.FLOAT16, None), models.vi("P", TP.FLOAT16, None)],
                        inits, opset=21)
    gemms, rows = _record(monkeypatch, gemm), _record(monkeypatch, rowwise_launch)
    sess = _session(model)
    assert set(sess.placement().values()) == {"TritonExecutionProvider"}
    sess.run(None, {"X": h(128, 768), "S": h(12, 128, 128)})
    gemm_jobs, row_jobs = _distinct(gemms), _distinct(rows)
    assert len(gemm_jobs) >= 2 and len(row_jobs) >= 2
    assert any(meta.get("SPLIT_K", 1) > 1 for _, _, meta in gemms)  # 768 x 768 splits K
    results = _compile_sm90(gemm_jobs + row_jobs, tmp_path)
    for job, result in zip(gemm_jobs + row_jobs, results):
        assert result["spills"] == 0, (job, result)
    assert all(r["mma"] == "wgmma" for r in results[:len(gemm_jobs)]), results
    assert all(r["mma"] == "none" for r in results[len(gemm_jobs):]), results


@needs_ptxas
def test_float32_gemm_uses_tensor_cores_only_with_tf32(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_GPU_SOURCES", "1")
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path / "kernels"))
    model = _linear_model(k=768, n=768)
    x = np.random.default_rng(6).standard_normal((128, 768), np.float32)
    jobs = []
    for flag in ("1", "0"):
        seen = _record(monkeypatch, gemm)
        _session(model, {"use_tf32": flag}).run(None, {"X": x})
        jobs.append(_job(*seen[0]))
        monkeypatch.undo()
        monkeypatch.setenv("TRITORT_GPU_SOURCES", "1")
        monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path / "kernels"))
    tf32, ieee = _compile_sm90(jobs, tmp_path)
    assert tf32["mma"] in ("wgmma", "mma") and tf32["spills"] == 0, tf32
    assert ieee["mma"] == "fma", ieee


@needs_ptxas
def test_float32_fma_gemm_tiles_compile_without_spills(tmp_path, monkeypatch):
    """use_tf32=0: a projection of 3-D activations (BERT's out-projection at batch 8 spilled
    16 B at 64x64 with 4 warps) compiles as FFMA without spills at every 64-row-or-more
    tile."""
    monkeypatch.setenv("TRITORT_GPU_SOURCES", "1")
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path / "kernels"))
    rng = np.random.default_rng(11)
    w = numpy_helper.from_array((rng.standard_normal((128, 128)) / 8).astype(np.float32), "W")
    model = models.make([helper.make_node("MatMul", ["X", "W"], ["Y"], name="proj")],
                        [models.vi("X", TP.FLOAT, ["B", "S", 128])],
                        [models.vi("Y", TP.FLOAT, None)], [w], opset=21)
    x = rng.standard_normal((2, 32, 128)).astype(np.float32)
    seen = _record(monkeypatch, gemm)
    sess = _session(model, {"use_tf32": "0"})
    np.testing.assert_allclose(sess.run(None, {"X": x})[0], _reference(model, {"X": x})[0],
                               rtol=1e-4, atol=1e-4)
    (job,) = _distinct(seen)
    names = list(job["signature"])
    jobs = []
    for cfg in (c for c in gemm_configs.CONFIGS[4] if c.block_m >= 64):
        blocks = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k}
        jobs.append(dict(job, constexprs=[(i, blocks.get(names[i], v))
                                          for i, v in job["constexprs"]],
                         options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}))
    for job, result in zip(jobs, _compile_sm90(jobs, tmp_path)):
        assert result["mma"] == "fma" and result["spills"] == 0, (job["options"], result)


def test_row_tiles_give_every_sm_a_program_and_few_elements_per_thread():
    sms = gemm_configs.DEFAULT_SMS
    for rows, cols in [(1536, 128), (128, 768), (1024, 768), (128, 50257), (1576, 197), (7, 30)]:
        block_m, block_n, warps = rowwise_launch.block_sizes(rows, cols, False)
        programs = -(-rows // block_m)
        assert programs >= min(rows, sms), (rows, cols, block_m)
        assert block_m * block_n <= 8 * 32 * warps and warps <= 8, (rows, cols, warps)
    assert rowwise_launch.block_sizes(128, 768, False) == (1, 1024, 4)  # LayerNorm, 128 tokens
    assert rowwise_launch.block_sizes(12 * 128, 128, False) == (8, 128, 4)  # attention Softmax


def test_float32_fma_attention_takes_tiles_that_do_not_spill():
    """With use_tf32=0 a float32 dot is FMA with its operands in registers: 64-row tiles
    spilled on sm_90 (ViT's kernel 1124 B), 32x32 does not; TF32 keeps 64-row tiles."""
    from tritort.codegen.attention_configs import AttentionConfig, pick_config

    assert pick_config(197, 197, 12, 64, 4, False, fma=True) == AttentionConfig(32, 32, 4, 2)
    assert pick_config(128, 128, 12, 128, 4, False, fma=True).block_m == 16
    assert pick_config(197, 197, 12, 64, 4, False) == AttentionConfig(64, 32, 4, 2)
