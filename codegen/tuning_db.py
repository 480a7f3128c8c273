"""The tuning database file: one JSON document holding a table per (device, Triton version).

By default ``tuning.json`` next to the kernel cache (``cache_dir().parent``), moved with
``TRITORT_TUNING_DB``::

    {"format": "tritort-tuning", "version": 1,
     "tables": [{"device": "NVIDIA H100 80GB HBM3", "triton": "3.5.0",
                 "results": {"matmul:float16:batch0": {"b1_m512_n768_k64_nn": {
                     "config": {"block_m": 128, "block_n": 128, "block_k": 64,
                                "group_m": 8, "num_warps": 4, "num_stages": 4},
                     "default": {...}, "default_ms": 0.031, "tuned_ms": 0.022,
                     "problem": {"batch": 1, "M": 500, ...}, "tritort": "0.1.0"}}}}]}

``device`` is ``torch.cuda.get_device_name()`` or ``"triton-interpreter"``. Only the table of
the current (device, triton version) is read; the others are kept as they are when the file is
rewritten. Writes merge into what is on disk and replace the file atomically. A file that is not
valid JSON is ignored with a warning (and moved aside to ``*.corrupt`` on the next save); one
from a newer format version is never overwritten.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from . import cache

log = logging.getLogger("tritort.tuning")

FORMAT = "tritort-tuning"
VERSION = 1


class TuningDBError(ValueError):
    def __init__(self, message: str, newer: bool = False) -> None:
        super().__init__(message)
        self.newer = newer  # written by a newer tritort: never overwrite it


def db_path() -> Path:
    env = os.environ.get("TRITORT_TUNING_DB")
    return Path(env) if env else cache.cache_dir().parent / "tuning.json"


def empty_doc() -> dict:
    return {"format": FORMAT, "version": VERSION, "tables": []}


def read_db(path: Path) -> dict:
    """The parsed file (an empty document if there is none); TuningDBError if unusable."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return empty_doc()
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise TuningDBError(f"tuning database {path} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or \
            not isinstance(doc.get("tables"), list):
        raise TuningDBError(f"tuning database {path} is not a {FORMAT} file (expected "
                            f"{{'format': '{FORMAT}', 'version': {VERSION}, 'tables': [...]}})")
    version = doc.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise TuningDBError(f"tuning database {path} has format version {version!r}; this "
                            f"tritort reads version {VERSION}",
                            newer=isinstance(version, int))
    return doc


def write_db(path: Path, doc: dict) -> None:
    """Atomic: a temporary file in the same folder, then a rename over the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_tuning_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def table_of(doc: dict, device: str, triton: str) -> dict | None:
    for table in doc["tables"]:
        if isinstance(table, dict) and table.get("device") == device and \
                table.get("triton") == triton:
            return table
    return None


def well_formed(results: Any, where: str) -> dict:
    """``{kernel: {shape: entry-with-a-config-dict}}``, malformed parts dropped with a warning."""
    good: dict = {}
    if not isinstance(results, dict):
        log.warning("%s: 'results' is not a dict; ignored", where)
        return good
    for kernel, shapes in results.items():
        if not isinstance(shapes, dict):
            log.warning("%s: entries of %s are not a dict; ignored", where, kernel)
            continue
        for shape, entry in shapes.items():
            if isinstance(entry, dict) and isinstance(entry.get("config"), dict):
                good.setdefault(kernel, {})[shape] = entry
            else:
                log.warning("%s: %s %s has no 'config' dict; ignored", where, kernel, shape)
    return good
