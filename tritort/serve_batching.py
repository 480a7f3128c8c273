"""What ``tritort.serve`` needs that Ray does not: which dim of a model is its batch dim, which
requests may share one run, joining them and splitting the outputs back, and the HTTP bodies
(``.npz`` and JSON). Nothing here imports Ray, so it is tested without a cluster.

A model has a batch dim when every input's and every output's leading dim is the same
symbolic dim of the graph (``['batch', 'seq']`` and ``['batch', 32]``). Requests then share a
run when they feed the same inputs with the same dtypes and agree on every dim but the
leading one, and ask for the same outputs; the rest run in groups of their own.
"""
from __future__ import annotations

import io
import json
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np

from . import dtypes
from .errors import InvalidArgument
from .feeds import NodeArg, to_numpy

NPZ_TYPES = ("application/octet-stream", "application/x-npz", "application/npz")
JSON_TYPES = ("application/json",)


def batch_dim(inputs: Sequence[NodeArg], outputs: Sequence[NodeArg]) -> str | None:
    """The symbolic dim every input and output leads with, or None (served unbatched)."""
    leading = {arg.shape[0] if arg.shape else None for arg in (*inputs, *outputs)}
    if len(leading) != 1 or not inputs:
        return None
    (dim,) = leading
    return dim if isinstance(dim, str) and dim else None


def as_feeds(request: Any) -> dict[str, np.ndarray]:
    """A request's inputs as host arrays: a dict of numpy arrays, torch CPU tensors, OrtValues
    or nested lists (those become arrays here; the session checks their dtypes)."""
    if not isinstance(request, dict):
        raise InvalidArgument(f"a request is a dict of input name -> array, got "
                              f"{type(request).__name__}")
    feeds = {}
    for name, value in request.items():
        value = to_numpy(value)
        if not isinstance(value, np.ndarray):
            try:
                value = np.asarray(value)
            except (ValueError, TypeError) as e:
                raise InvalidArgument(f"input '{name}': not an array ({e})") from None
        feeds[str(name)] = value
    return feeds


def signature(feeds: dict[str, np.ndarray], output_names: Sequence[str] | None) -> Hashable:
    """Equal for requests that can share a run; None for one that must run alone (an input
    without a leading dim, or inputs that disagree on it)."""
    rows = {value.shape[0] if value.ndim else None for value in feeds.values()}
    if len(rows) != 1 or None in rows or any(value.dtype == object for value in feeds.values()):
        return None
    return (tuple(sorted((name, value.dtype.str, value.shape[1:])
                         for name, value in feeds.items())),
            None if output_names is None else tuple(output_names))


def rows_of(feeds: dict[str, np.ndarray]) -> int:
    return next(iter(feeds.values())).shape[0]


def group(signatures: Sequence[Hashable]) -> list[list[int]]:
    """Indices of requests that share a run, in arrival order; None signatures run alone."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    alone = []
    for i, sig in enumerate(signatures):
        if sig is None:
            alone.append([i])
        else:
            groups[sig].append(i)
    return sorted([*groups.values(), *alone], key=lambda g: g[0])


def concat(requests: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(requests) == 1:
        return requests[0]
    return {name: np.concatenate([r[name] for r in requests], axis=0) for name in requests[0]}


def split(outputs: Sequence[Any], sizes: Sequence[int]) -> list[list[np.ndarray]] | None:
    """Each request's rows of every output; None when an output does not lead with the
    batch's rows (the group then runs request by request)."""
    total = sum(sizes)
    if any(not isinstance(o, np.ndarray) or o.ndim == 0 or o.shape[0] != total
           for o in outputs):
        return None
    bounds = np.cumsum([0, *sizes])
    # copies, so no answer holds a view on (and keeps alive) another request's rows
    return [[o[a:b].copy() for o in outputs] for a, b in zip(bounds[:-1], bounds[1:])]


# -- HTTP bodies --------------------------------------------------------------------------------

@dataclass
class HttpRequest:
    feeds: dict[str, np.ndarray]
    output_names: list[str] | None
    as_json: bool


def decode_body(content_type: str, body: bytes, inputs: Sequence[NodeArg]) -> HttpRequest:
    """A POST body: an ``.npz`` archive of the inputs (output names may be asked for with a
    ``__outputs__`` array of strings), or JSON ``{"inputs": {name: nested lists}, "dtype":
    "float32" or {name: dtype}, "outputs": [names]}``; a JSON input without a dtype takes the
    model's element type for it."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in JSON_TYPES:
        return _decode_json(body, {arg.name: arg for arg in inputs})
    if kind in NPZ_TYPES or not kind:
        return _decode_npz(body)
    raise InvalidArgument(f"Content-Type '{content_type}' is not served: send an .npz archive "
                          f"({' or '.join(NPZ_TYPES[:2])}) or JSON (application/json)")


def _decode_npz(body: bytes) -> HttpRequest:
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            feeds = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InvalidArgument(f"the body is not an .npz archive of the inputs ({e})") from None
    if not isinstance(feeds, dict):
        raise InvalidArgument("the body is one .npy array; send an .npz archive naming inputs")
    outputs = feeds.pop("__outputs__", None)
    return HttpRequest(feeds, None if outputs is None else [str(o) for o in outputs.ravel()],
                       as_json=False)


def _decode_json(body: bytes, inputs: dict[str, NodeArg]) -> HttpRequest:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise InvalidArgument(f"the body is not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise InvalidArgument('a JSON body is {"inputs": {name: nested lists}, "dtype": ..., '
                              '"outputs": [names]}')
    given_dtype = doc.get("dtype")
    feeds = {}
    for name, value in doc["inputs"].items():
        want = given_dtype.get(name) if isinstance(given_dtype, dict) else given_dtype
        if want is None and name in inputs and inputs[name].type.startswith("tensor("):
            element = dtypes.BY_NAME.get(inputs[name].type[len("tensor("):-1])
            want = element.numpy if element is not None else None
        try:
            feeds[name] = np.asarray(value, dtype=want)
        except (ValueError, TypeError, OverflowError) as e:
            raise InvalidArgument(f"input '{name}': cannot read it as an array of "
                                  f"{want or 'numbers'} ({e})") from None
    outputs = doc.get("outputs")
    if outputs is not None and (not isinstance(outputs, list)
                                or not all(isinstance(o, str) for o in outputs)):
        raise InvalidArgument('"outputs" is a list of output names')
    return HttpRequest(feeds, outputs, as_json=True)


def encode_npz(outputs: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **outputs)
    return buf.getvalue()


def encode_json(outputs: dict[str, Any]) -> bytes:
    doc = {"outputs": {name: np.asarray(v).tolist() for name, v in outputs.items()},
           "dtypes": {name: str(np.asarray(v).dtype) for name, v in outputs.items()}}
    return json.dumps(doc).encode()


def http_status(error: BaseException) -> int:
    """400 for what the request got wrong (tritort's InvalidArgument and its kin), 500 for
    the server's own faults."""
    return 400 if isinstance(error, InvalidArgument) else 500
