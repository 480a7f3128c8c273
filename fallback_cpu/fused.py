"""Kernels for the ops the optimizer writes when it fuses a pattern (filled in by the attention work)."""
