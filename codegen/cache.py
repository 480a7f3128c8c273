"""The on-disk kernel cache, keyed by what a kernel computes, not by what asked for it.

A generated kernel's source has two parts. Its leading comment lines are a description for
people (the unit it was built for, the ONNX nodes it covers, their values' names): they are
written to the dump (``TRITORT_DUMP_DIR``) only. The rest is the *body* (imports, helpers,
the ``@triton.jit`` function) with that function renamed to the neutral :data:`KERNEL`, so a
body depends on the code alone: the same MatMul + bias + Gelu in every layer of a model is
one body. The key is sha256(body, triton version, device); the function is named
``k_<first 12 hex digits of the key>``, in the file of that name. Identical bodies share the
file and, within a process, one loaded function object (so Triton compiles it once per
signature): a 12-layer model compiles what a 1-layer one does.

Writes are atomic (write to a temporary file, then rename), so concurrent sessions and
processes can share the folder; a file whose text is not what its key says (truncated,
edited) is written again. ``TRITORT_CACHE_DIR`` moves the folder; the default is under the
user's cache folder.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, NamedTuple

KERNEL = "kernel"  # the jitted function's name in a hashed body
PREFIX, DIGITS = "k_", 12  # a loaded kernel's name: PREFIX + the key's first DIGITS hex digits

_loaded: dict[tuple[str, str], Any] = {}  # (folder, key) -> the loaded function
_lock = threading.Lock()


class Loaded(NamedTuple):
    fn: Any  # the jitted function
    path: Path  # its cache file
    hit: bool  # already on disk (or loaded in this process)

    @property
    def name(self) -> str:
        """The kernel's name: its function's and its file's, ``k_`` + 12 hex digits."""
        return self.path.stem


def cache_dir() -> Path:
    env = os.environ.get("TRITORT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tritort" / "kernels"


def split(source: str) -> tuple[str, str]:
    """(header, rest): the source's leading comment lines, then everything after them."""
    lines = source.splitlines(keepends=True)
    n = 0
    while n < len(lines) and lines[n].startswith("#"):
        n += 1
    return "".join(lines[:n]), "".join(lines[n:])


def rename(text: str, old: str, new: str) -> str:
    """``text`` with its one ``def old(`` (at the start of a line) renamed ``def new(``."""
    renamed, count = re.subn(rf"^def {re.escape(old)}\(", f"def {new}(", text, flags=re.M)
    if count != 1:
        raise ValueError(f"a kernel source defines {count} functions named {old!r}, not one")
    return renamed


def body(source: str, name: str) -> str:
    """What is hashed: ``source`` without its header, its function ``name`` renamed to
    :data:`KERNEL`."""
    return rename(split(source)[1], name, KERNEL)


def cache_key(body: str, device: str) -> str:
    import triton

    h = hashlib.sha256()
    for part in (body, triton.__version__, device):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def kernel_name(key: str) -> str:
    return PREFIX + key[:DIGITS]


def load(source: str, name: str, device: str) -> Loaded:
    """The jitted function of ``source`` (whose ``@triton.jit def name`` may have any name and
    a header of comment lines), named and cached by its body's key."""
    text = body(source, name)
    key = cache_key(text, device)
    kname = kernel_name(key)
    text = rename(text, KERNEL, kname)
    folder = cache_dir()
    path = folder / f"{kname}.py"
    with _lock:
        fn = _loaded.get((str(folder), key))
        if fn is not None:
            return Loaded(fn, path, True)
        try:
            hit = path.read_text() == text
        except OSError:
            hit = False
        if not hit:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".py")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(f"tritort_kernel_{key[:20]}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fn = getattr(module, kname)
        _loaded[(str(folder), key)] = fn
        return Loaded(fn, path, hit)
