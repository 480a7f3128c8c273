"""Matrix-multiply kernel templates (MatMul, Gemm)."""
from __future__ import annotations
