"""Attention templates (filled in by the attention template work)."""
