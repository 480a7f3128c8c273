"""The package version: one place, read by the build (pyproject) and by every layer."""

__version__ = "0.1.0"
