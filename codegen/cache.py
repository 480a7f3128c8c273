"""The on-disk kernel cache: generated source keyed by sha256(source, triton version, device).

Writes are atomic (write to a temporary file, then rename), so concurrent sessions and
processes can share the folder. ``TRITORT_CACHE_DIR`` moves it; the default is under the
user's cache folder.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

_loaded: dict[str, Any] = {}
_lock = threading.Lock()


def cache_dir() -> Path:
    env = os.environ.get("TRITORT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tritort" / "kernels"


def cache_key(source: str, device: str) -> str:
    import triton

    h = hashlib.sha256()
    for part in (source, triton.__version__, device):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def load(source: str, name: str, device: str) -> tuple[Any, Path, bool]:
    """The jitted function for ``source``; (function, file, was it already on disk)."""
    key = cache_key(source, device)
    folder = cache_dir()
    path = folder / f"{name}_{key[:20]}.py"
    with _lock:
        if str(path) in _loaded:
            return _loaded[str(path)], path, True
        hit = path.is_file()
        if not hit:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".py")
            with os.fdopen(fd, "w") as f:
                f.write(source)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(f"tritort_kernel_{key[:20]}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fn = getattr(module, name)
        _loaded[str(path)] = fn
        return fn, path, hit
