"""Which machine the generated sources and launch configs are written for."""
from __future__ import annotations

import os


def interpreted() -> bool:
    """True for Triton's interpreter (TRITON_INTERPRET=1): small tiles, and workarounds for
    what it computes differently (bf16 products). ``TRITORT_GPU_SOURCES=1`` keeps the GPU's
    sources and configs even there, so perf/compile_check.py can run a model's kernels in
    the interpreter and then compile the very same sources for a GPU target."""
    return os.environ.get("TRITON_INTERPRET") == "1" and \
        os.environ.get("TRITORT_GPU_SOURCES") != "1"
