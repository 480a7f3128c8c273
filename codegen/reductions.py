"""Reduction, Softmax and normalization kernel templates."""
from __future__ import annotations
