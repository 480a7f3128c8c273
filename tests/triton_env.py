"""Where the Triton provider runs in the tests: Triton's interpreter, or a CUDA device."""
from __future__ import annotations

import os

import pytest


def triton_runs() -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    try:
        import torch
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


requires_triton = pytest.mark.skipif(
    not triton_runs(), reason="needs TRITON_INTERPRET=1 (tests/conftest.py sets it without a GPU) "
                              "or a CUDA device")
interpreter_only = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                      reason="checks interpreter-mode behaviour")


def triton_session(model, on_triton=None, sess_options=None):
    """A Triton-first session; the nodes named (default: every node of the model) must have
    landed on Triton, else the assertion shows why Triton declined them."""
    import tritort as ort

    sess = ort.InferenceSession(model.SerializeToString(), sess_options,
                                providers=["TritonExecutionProvider", "CPUExecutionProvider"])
    placed = sess._program.partition.assignments
    for name in on_triton if on_triton is not None else [n.name for n in model.graph.node]:
        assert placed[name].provider.name == "TritonExecutionProvider", placed[name].declined
    return sess
