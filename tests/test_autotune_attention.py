"""Flash attention in autotuning: its config space, perf/autotune.py on a one-node ai.onnx
Attention model, and a later session launching with the stored config (interpreter mode:
timings mean nothing, the paths are real)."""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto as TP
from onnx import helper

import tritort as ort
from tritort.codegen import attention, tuning
from tritort.codegen.attention_configs import AttentionConfig, kernel_key, pick_config, problem_of
from tests import models
from tests.test_autotune import spy_launches
from tests.triton_env import requires_triton

pytestmark = requires_triton
TRITON = "TritonExecutionProvider"
GPU = tuning.DeviceInfo("some GPU", False, 227 * 1024)  # an H100's opt-in shared memory
INTERP = tuning.DeviceInfo(tuning.INTERPRETER, True, 1 << 30)
# 2 query heads over 1 kv head of 16, Sq 20 and Sk 24, an additive [Sq, Sk] mask
KERNEL = "attention:float32:d16:full:additive"
SHAPE = "bh2_q24_k24"
STORED = AttentionConfig(16, 16, 2, 1)  # not the heuristic's (32, 32, 4, 1)


@pytest.fixture(autouse=True)
def tuning_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_TUNING_DB", str(tmp_path / "tuning.json"))
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path / "kernels"))
    tuning.forget_tables()
    yield tmp_path / "tuning.json"
    tuning.forget_tables()


def attention_model(mask_type=TP.FLOAT, opset=23, **attrs):
    """One ai.onnx Attention: 3-D Q [1, sq, 2 * 16], K and V [1, sk, 16]."""
    node = helper.make_node("Attention", ["Q", "K", "V", "M"], ["Y"], name="attention",
                            q_num_heads=2, kv_num_heads=1, **attrs)
    inputs = [models.vi("Q", TP.FLOAT, [1, "sq", 32]), models.vi("K", TP.FLOAT, [1, "sk", 16]),
              models.vi("V", TP.FLOAT, [1, "sk", 16]), models.vi("M", mask_type, ["sq", "sk"])]
    return models.make([node], inputs, [models.vi("Y", TP.FLOAT, None)], opset=opset)


def feeds(sq, sk, mask_dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.standard_normal((sq, sk)).astype(np.float32) if mask_dtype == np.float32 \
        else rng.random((sq, sk)) < 0.8
    return {"Q": rng.standard_normal((1, sq, 32)).astype(np.float32),
            "K": rng.standard_normal((1, sk, 16)).astype(np.float32),
            "V": rng.standard_normal((1, sk, 16)).astype(np.float32), "M": mask}


def session(model):
    return ort.InferenceSession(model.SerializeToString(),
                                providers=[TRITON, "CPUExecutionProvider"])


def reference(model, inputs):
    if model.opset_import[0].version > 23:  # sliding windows: onnxruntime has no opset 25 yet
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model).run(None, inputs)[0]
    sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


# ------------------------------------------------------------------ the space


def test_keys():
    space = tuning.SPACES["attention"]
    assert space is attention.TUNING
    assert kernel_key("float16", 64, True, False, None) == "attention:float16:d64:causal:none"
    assert kernel_key("bfloat16", 128, True, True, "bool") == \
        "attention:bfloat16:d128:window:bool"
    assert space.shape_key(problem_of(2, 20, 24, 16, 16, 4)) == SHAPE
    # decoding: one query row shares the 16-row bucket; lengths land on 1.5x buckets
    assert space.shape_key(problem_of(96, 1, 1000, 128, 128, 2)) == "bh96_q16_k1024"
    assert space.shape_key(problem_of(12, 128, 130, 64, 64, 2)) == "bh12_q128_k192"


def test_pruning_on_a_gpu():
    space = tuning.SPACES["attention"]
    problem = problem_of(32, 4096, 4096, 128, 128, 2)
    default = pick_config(4096, 4096, 32, 128, 2, False)
    kept, dropped = space.pruned(problem, GPU, default)
    assert kept[0] == default and len(set(kept)) == len(kept) > 10
    # K and V tiles per stage plus the Q tile fit (the default runs anyway)
    assert all((c.block_n * 256 * c.num_stages + c.block_m * 128) * 2 <= 227 * 1024
               for c in kept[1:])
    assert all(c.block_m * (128 + c.block_n) // (32 * c.num_warps) <= 255 for c in kept[1:])
    reasons = " ".join(r for _, r in dropped)
    assert "shared memory" in reasons and "registers per thread" in reasons
    # a single query row: no row tile above 16, key tiles stay within the keys
    kept, dropped = space.pruned(problem_of(32, 1, 40, 64, 64, 2), GPU,
                                 pick_config(1, 40, 32, 64, 2, False))
    assert {c.block_m for c in kept} == {16} and max(c.block_n for c in kept) <= 64
    assert "block_m=128 > Sq=1" in " ".join(r for _, r in dropped)
    # the interpreter tries a few small tiles only
    small, _ = space.pruned(problem_of(2, 20, 24, 16, 16, 4), INTERP,
                            pick_config(20, 24, 2, 16, 4, True))
    assert 1 < len(small) <= 5 and all(c.num_stages == 1 and c.block_m <= 32 for c in small)


def test_stored_configs_are_checked():
    space = tuning.SPACES["attention"]
    good = dict(block_m=32, block_n=16, num_warps=2, num_stages=1)
    assert space.parse(good) == AttentionConfig(32, 16, 2, 1)
    with pytest.raises(ValueError, match="block_n=8 is not a power of two in"):
        space.parse({**good, "block_n": 8})
    with pytest.raises(ValueError, match="block_m=48 is not a power of two"):
        space.parse({**good, "block_m": 48})
    with pytest.raises(ValueError, match="num_warps=3"):
        space.parse({**good, "num_warps": 3})
    with pytest.raises(ValueError, match="has the fields"):
        space.parse({**good, "block_k": 16})


@pytest.mark.parametrize("mask_type, attrs, key", [
    (TP.FLOAT, {}, KERNEL),
    (TP.BOOL, {"is_causal": 1}, "attention:float32:d16:causal:bool"),
    (TP.BOOL, {"opset": 25, "left_window_size": 3, "is_causal": 1},
     "attention:float32:d16:window:bool")])
def test_launches_record_their_variant_key(mask_type, attrs, key):
    model = attention_model(mask_type, **attrs)
    inputs = feeds(20, 20 if attrs else 24, np.float32 if mask_type == TP.FLOAT else bool)
    sess = session(model)
    with sess._program.providers[0].tuning.recording() as recorder:  # what launchers hold
        got = sess.run(None, inputs)[0]
    np.testing.assert_allclose(got, reference(model, inputs), rtol=1e-4, atol=1e-4)
    [launch] = recorder.launches
    assert (launch.kernel, launch.shape) == (key, "bh2_q24_k24")


# ------------------------------------------------------------------ end to end


def test_autotune_tunes_attention_then_a_new_session_uses_the_db(tmp_path, monkeypatch,
                                                                  capsys):
    from perf import autotune

    model = attention_model()
    path = tmp_path / "attention.onnx"
    onnx.save(model, path)
    db = tmp_path / "tuned.json"
    assert autotune.main([str(path), "--db", str(db), "--shapes", "Q=1,20,32", "K=1,24,16",
                          "V=1,24,16", "M=20,24"]) == 0
    out = capsys.readouterr().out
    assert "1 kernel/shape pairs" in out
    # every candidate tried (the interpreter's limit of 3) matched the default's output
    assert re.search(rf"^{KERNEL}\s+{SHAPE}\s.*\s3/3$", out, re.M) and "skipped" not in out
    [table] = json.loads(db.read_text())["tables"]
    assert table["device"] == tuning.INTERPRETER
    entry = table["results"][KERNEL][SHAPE]
    assert entry["default_ms"] > 0 and entry["tuned_ms"] <= entry["default_ms"]
    assert entry["default"] == dict(block_m=32, block_n=32, num_warps=4, num_stages=1)
    assert entry["problem"] == problem_of(2, 20, 24, 16, 16, 4)
    tuning.SPACES["attention"].parse(entry["config"])  # what was stored reads back
    # make the entry distinctive; a fresh session on a neighbouring size (same buckets) must
    # launch with it, timing nothing
    entry["config"] = dict(block_m=STORED.block_m, block_n=STORED.block_n,
                           num_warps=STORED.num_warps, num_stages=STORED.num_stages)
    db.write_text(json.dumps({"format": tuning.FORMAT, "version": 1, "tables": [table]}))
    monkeypatch.setenv("TRITORT_TUNING_DB", str(db))
    tuning.forget_tables()
    sess = session(model)
    used = spy_launches(monkeypatch, attention)
    inputs = feeds(18, 23, seed=1)
    got = sess.run(None, inputs)[0]
    np.testing.assert_allclose(got, reference(model, inputs), rtol=1e-4, atol=1e-4)
    assert used == [STORED]
    assert sess.get_tuning_results()[0]["results"][KERNEL][SHAPE] == entry["config"]
