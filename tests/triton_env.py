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
