import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Without a GPU, every Triton kernel runs in Triton's interpreter on torch CPU tensors.
# This must be decided before triton is imported anywhere.
if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
