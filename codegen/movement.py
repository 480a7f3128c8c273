"""Data-movement kernel templates: views as strides, copies as index math."""
from __future__ import annotations
