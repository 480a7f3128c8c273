"""Pooling templates (filled in by the pooling template work)."""
