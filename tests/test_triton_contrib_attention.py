"""com.microsoft GroupQueryAttention and MultiHeadAttention on the Triton provider
(interpreter mode) against onnxruntime's CPU kernels, float32 at rtol/atol 1e-5.

Each node must land on Triton as one unit whose run is exactly one flash-attention launch,
plus one KV-append launch where the node writes present_key/present_value. Only what the
operators define is compared (as in tests/test_contrib_ops_gqa.py): output rows of valid
query tokens and present rows below each batch entry's total length.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import tritort as ort
from tests.test_contrib_ops import (  # noqa: F401  (_seeded: the autouse seeding fixture)
    _seeded, build, ms, randn, run_ort,
)
from tests.test_contrib_ops_gqa import NK, N, gqa_case
from tests.triton_env import requires_triton

pytestmark = requires_triton
TRITON = "TritonExecutionProvider"
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _session(model):
    return ort.InferenceSession(model.SerializeToString(),
                                providers=[TRITON, "CPUExecutionProvider"])


def _launches(sess, feeds, bind=None):
    """(outputs, the kernels launched by one run), the node checked to be on Triton."""
    from tritort.codegen import launch

    placed = sess._program.partition.assignments
    for name, where in placed.items():
        assert where.provider.name == TRITON, (name, where.declined)
    with launch.recording() as launches:
        got = sess.run(None, feeds)
    return got, [getattr(rec.fn, "__name__", "") for rec in launches]


def assert_one_flash_launch(kernels, append: bool):
    """One flash-attention launch, preceded by the KV append when the node writes a cache."""
    assert len(kernels) == 1 + append, kernels


def run_gqa(node, feeds, outputs, seqlens, s, tol=TOL):
    model = build([node], feeds, outputs,
                  out_types={o: TensorProto.FLOAT for o in outputs})
    node.name = node.name or "gqa"
    want = run_ort(model, feeds)
    got, kernels = _launches(_session(model), feeds)
    assert_one_flash_launch(kernels, append=True)
    totals = np.array(seqlens) + 1
    valid = np.minimum(s, totals)
    for i in range(len(seqlens)):
        np.testing.assert_allclose(got[0][i, :valid[i]], want[0][i, :valid[i]], **tol,
                                   err_msg=f"output, batch {i}")
        for j in (1, 2):
            assert got[j].shape == want[j].shape, (outputs[j], got[j].shape, want[j].shape)
            np.testing.assert_allclose(got[j][i, :, :totals[i]], want[j][i, :, :totals[i]],
                                       **tol, err_msg=f"{outputs[j]}, batch {i}")
    return got, want


# ------------------------------------------------------------------ GroupQueryAttention


@pytest.mark.parametrize("seqlens,past", [([4, 4], None), ([4, 1], 8)])
def test_gqa_prompt(seqlens, past):
    node, feeds, outputs = gqa_case(2, 5, seqlens, 5, past=past)
    run_gqa(node, feeds, outputs, seqlens, 5)


@pytest.mark.parametrize("buffer,total", [(3, 4), (8, 8)])
def test_gqa_decode_step(buffer, total):
    seqlens = [3, 1] if buffer > 3 else [3, 3]
    node, feeds, outputs = gqa_case(2, 1, seqlens, total, past=buffer)
    run_gqa(node, feeds, outputs, seqlens, 1)


@pytest.mark.parametrize("case", ["prompt", "decode", "chunk"])
def test_gqa_local_window(case):
    b, s, seqlens, total, past = {"prompt": (2, 6, [5, 5], 6, None),
                                  "decode": (2, 1, [6, 3], 7, 8),
                                  "chunk": (1, 3, [6], 7, 8)}[case]
    node, feeds, outputs = gqa_case(b, s, seqlens, total, past=past, local_window_size=3)
    run_gqa(node, feeds, outputs, seqlens, s)


@pytest.mark.parametrize("softcap,scale", [(2.0, None), (5.0, 0.7)])
def test_gqa_softcap_and_scale(softcap, scale):
    attrs = {"softcap": softcap} if softcap else {}
    if scale is not None:
        attrs["scale"] = scale
    node, feeds, outputs = gqa_case(2, 4, [3, 3], 4, **attrs)
    run_gqa(node, feeds, outputs, [3, 3], 4)


@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (1, N, 4, 6)])
def test_gqa_attention_bias(shape):
    total = shape[-1]
    b = 1 if total > 4 else 2
    node, feeds, outputs = gqa_case(b, 4, [3] * b, total, past=8 if total > 4 else None,
                                    attention_bias=randn(*shape), softcap=3.0)
    run_gqa(node, feeds, outputs, [3] * b, 4)


@pytest.mark.parametrize("sink,smooth", [(True, None), (False, 1)])
def test_gqa_head_sink_and_smooth_softmax(sink, smooth):
    attrs = {} if smooth is None else {"smooth_softmax": smooth}
    node, feeds, outputs = gqa_case(2, 4, [3, 2], 4, head_sink=randn(N) if sink else None,
                                    **attrs)
    run_gqa(node, feeds, outputs, [3, 2], 4)


def test_gqa_not_causal():
    node, feeds, outputs = gqa_case(2, 4, [3, 3], 4, causal=0)
    run_gqa(node, feeds, outputs, [3, 3], 4)


@pytest.mark.parametrize("packed,interleaved,h,rot,case", [
    (False, 0, 16, 16, "prompt"), (True, 1, 16, 16, "decode"), (False, 1, 32, 16, "prompt"),
    (True, 0, 32, 16, "decode")])
def test_gqa_rotary(packed, interleaved, h, rot, case):
    """RoPE on Q tiles in the flash launch and on K in the append launch; full and partial
    rotation (caches narrower than H / 2), halves and interleaved pairs."""
    b, s, seqlens, total, past = {"prompt": (2, 4, [3, 2], 4, None),
                                  "decode": (2, 1, [5, 2], 6, 8)}[case]
    node, feeds, outputs = gqa_case(b, s, seqlens, total, past=past, h=h, rot=rot,
                                    packed=packed, rotary_interleaved=interleaved)
    run_gqa(node, feeds, outputs, seqlens, s)


@pytest.mark.parametrize("case", ["prompt", "decode"])
def test_gqa_rotary_position_ids(case):
    b, s, seqlens, total, past = {"prompt": (2, 4, [3, 3], 4, None),
                                  "decode": (2, 1, [5, 2], 6, 8)}[case]
    pos = (np.array([[2, 3, 4, 5], [7, 8, 9, 10]], np.int64) if case == "prompt"
           else np.array([[11], [3]], np.int64))
    node, feeds, outputs = gqa_case(b, s, seqlens, total, past=past, h=16, rot=16,
                                    position_ids=pos)
    run_gqa(node, feeds, outputs, seqlens, s)


def test_gqa_packed_decode_with_window_and_softcap():
    node, feeds, outputs = gqa_case(2, 1, [6, 4], 8, past=8, packed=True, local_window_size=4,
                                    softcap=4.0)
    run_gqa(node, feeds, outputs, [6, 4], 1)
