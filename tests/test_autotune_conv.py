"""Conv in autotuning: its config space, perf/autotune.py on a small CNN, and a later session
launching with the stored configs (interpreter mode: timings mean nothing, the paths are real)."""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort as ort
from tritort.codegen import conv, tuning
from tritort.codegen.conv_configs import ConvConfig, problem_of
from tests import models
from tests.test_autotune import spy_launches
from tests.triton_env import requires_triton

pytestmark = requires_triton
TRITON = "TritonExecutionProvider"
GPU = tuning.DeviceInfo("some GPU", False, 48 * 1024)
# the model's three convs (X [1, 3, 6, 6], 'same' padding: 36 rows each) in launch order
FLAT = ("conv:tf32:flat:2d", "g1_r48_c16_k32_t12")  # 3 -> 16 channels, 3x3
DIRECT = ("conv:float32:direct:2d", "g16_r48_c16_k12_t12")  # depthwise 3x3 over 16
TAP_MAJOR = ("conv:tf32:tap_major:2d", "g1_r48_c16_k16_t1")  # 16 -> 8 channels, 1x1
# distinctive configs the second session must launch with (none is a heuristic's choice)
STORED = {FLAT: ConvConfig(16, 16, 16, 2, 1), DIRECT: ConvConfig(16, 4, 1, 2, 1),
          TAP_MAJOR: ConvConfig(16, 16, 16, 1, 1)}


@pytest.fixture(autouse=True)
def tuning_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITORT_TUNING_DB", str(tmp_path / "tuning.json"))
    monkeypatch.setenv("TRITORT_CACHE_DIR", str(tmp_path / "kernels"))
    tuning.forget_tables()
    yield tmp_path / "tuning.json"
    tuning.forget_tables()


def small_cnn():
    """Conv(3->16, 3x3)+Relu, depthwise Conv(16, 3x3)+Relu, Conv(16->8, 1x1): one conv of each
    variant (flat, direct, tap_major), the Relus fused as epilogues."""
    rng = np.random.default_rng(1)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32),
                                       name)

    nodes = [helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], name="dw", group=16, pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "W3", "B3"], ["Y"], name="pointwise")]
    return models.make(nodes, [models.vi("X", TP.FLOAT, [1, 3, 6, 6])],
                       [models.vi("Y", TP.FLOAT, None)],
                       [init("W1", 16, 3, 3, 3), init("B1", 16), init("W2", 16, 1, 3, 3),
                        init("W3", 8, 16, 1, 1), init("B3", 8)])


def inputs():
    return {"X": np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)}


def reference(model, feeds):
    sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


# ------------------------------------------------------------------ the space


def test_keys_and_pruning_per_variant():
    space = tuning.SPACES["conv"]
    assert space is conv.TUNING
    assert space.shape_key(problem_of(36, 16, 27, 1, 9, 4, "flat")) == FLAT[1]
    assert space.shape_key(problem_of(3136, 4, 9, 32, 9, 2, "direct")) == "g32_r4096_c4_k12_t12"
    # tap_major, 40 output channels, fp16 on a 48 KiB GPU
    problem = problem_of(3136, 40, 256, 1, 9, 2, "tap_major")
    default = conv.pick_config(3136, 40, 256, 1, 2, "tap_major", False)
    kept, dropped = space.pruned(problem, GPU, default)
    assert kept[0] == default and len(set(kept)) == len(kept) > 5
    assert all(c.block_n <= 64 and min(c.block_m, c.block_n, c.block_k) >= 16 for c in kept)
    assert all((c.block_m + c.block_n) * c.block_k * 2 * c.num_stages <= 48 * 1024 for c in kept)
    reasons = " ".join(r for _, r in dropped)
    assert "block_n=128 > cols=40" in reasons and "shared memory" in reasons
    # direct: narrow channel tiles are fine, nothing staged in shared memory
    problem = problem_of(12544, 96, 9, 96, 9, 2, "direct")
    kept, dropped = space.pruned(problem, GPU, conv.pick_config(12544, 96, 9, 96, 2, "direct",
                                                                False))
    assert any(c.block_n == 8 for c in kept) and all(c.block_k == 1 for c in kept)
    assert not any("shared memory" in r or "tl.dot" in r for _, r in dropped)
    # the interpreter tries a few small tiles only
    small, _ = space.pruned(problem_of(36, 16, 27, 1, 9, 4, "flat"), tuning.DeviceInfo(
        tuning.INTERPRETER, True, 1 << 30), conv.pick_config(36, 16, 27, 1, 4, "flat", True))
    assert 1 < len(small) <= 5 and all(c.num_stages == 1 and c.block_m <= 32 for c in small)


def test_stored_configs_are_checked():
    space = tuning.SPACES["conv"]
    good = dict(block_m=32, block_n=8, block_k=1, num_warps=2, num_stages=1)
    assert space.parse(good) == ConvConfig(32, 8, 1, 2, 1)
    with pytest.raises(ValueError, match="block_n=24 is not a power of two"):
        space.parse({**good, "block_n": 24})
    with pytest.raises(ValueError, match="num_warps=3"):
        space.parse({**good, "num_warps": 3})
    with pytest.raises(ValueError, match="has the fields"):
        space.parse({**good, "group_m": 8})
    assert conv.unusable(ConvConfig(32, 8, 1, 2, 1), "direct") is None
    assert "block_n, block_k < 16" in conv.unusable(ConvConfig(32, 8, 1, 2, 1), "tap_major")


# ------------------------------------------------------------------ end to end


def test_autotune_tunes_convs_then_a_new_session_uses_the_db(tmp_path, monkeypatch, capsys):
    from perf import autotune

    model, feeds = small_cnn(), inputs()
    path = tmp_path / "cnn.onnx"
    onnx.save(model, path)
    db = tmp_path / "tuned.json"
    assert autotune.main([str(path), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "3 kernel/shape pairs" in out
    for kernel, shape in (FLAT, DIRECT, TAP_MAJOR):
        assert re.search(rf"^{kernel}\s+{shape}\s", out, re.M)
    [table] = json.loads(db.read_text())["tables"]
    assert table["device"] == tuning.INTERPRETER
    results = table["results"]
    assert set(results) == {FLAT[0], DIRECT[0], TAP_MAJOR[0]}
    for kernel, shape in (FLAT, DIRECT, TAP_MAJOR):
        entry = results[kernel][shape]
        assert entry["default_ms"] > 0 and entry["tuned_ms"] <= entry["default_ms"]
        assert entry["problem"]["variant"] == kernel.split(":")[2]
        tuning.SPACES["conv"].parse(entry["config"])  # what was stored reads back
    # make every entry distinctive, then a fresh session must launch with them, timing nothing
    for (kernel, shape), cfg in STORED.items():
        results[kernel][shape]["config"] = {f: getattr(cfg, f) for f in cfg.__annotations__}
    db.write_text(json.dumps({"format": tuning.FORMAT, "version": 1, "tables": [table]}))
    monkeypatch.setenv("TRITORT_TUNING_DB", str(db))
    tuning.forget_tables()
    sess = ort.InferenceSession(model.SerializeToString(),
                                providers=[TRITON, "CPUExecutionProvider"])
    used = spy_launches(monkeypatch, conv)
    got = sess.run(None, feeds)[0]
    np.testing.assert_allclose(got, reference(model, feeds), rtol=1e-4, atol=1e-4)
    assert used == [STORED[FLAT], STORED[DIRECT], STORED[TAP_MAJOR]]
    assert sess.get_tuning_results()[0]["results"][DIRECT[0]][DIRECT[1]] == \
        dict(block_m=16, block_n=4, block_k=1, num_warps=2, num_stages=1)


def test_a_config_unfit_for_its_variant_falls_back_to_the_heuristic(monkeypatch, caplog):
    model, feeds = small_cnn(), inputs()
    sess = ort.InferenceSession(model.SerializeToString(),
                                providers=[TRITON, "CPUExecutionProvider"])
    # a direct-style config (block_n 8 < 16) under the tap_major kernel's key: valid as a
    # conv config, but tl.dot cannot take it
    direct_style = dict(block_m=16, block_n=8, block_k=1, num_warps=1, num_stages=1)
    item = {"ep": TRITON, "results": {TAP_MAJOR[0]: {TAP_MAJOR[1]: direct_style}},
            "validators": tuning.active_table(torch.device("cpu")).validators()}
    sess.set_tuning_results([item], error_on_invalid=True)
    used = spy_launches(monkeypatch, conv)
    with caplog.at_level(logging.WARNING, logger="tritort.tuning"):
        got = sess.run(None, feeds)[0]
    np.testing.assert_allclose(got, reference(model, feeds), rtol=1e-4, atol=1e-4)
    assert "block_n, block_k < 16 (tl.dot)" in caplog.text
    heuristic = conv.pick_config(36, 8, 16, 1, 4, "tap_major", True)
    assert used[2] == heuristic and used[2] != ConvConfig(**direct_style)
