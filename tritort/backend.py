"""The ONNX backend API (onnx.backend.base), as ``onnxruntime.backend`` offers it."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidArgument
from .options import RunOptions, SessionOptions
from .session import InferenceSession


class BackendRep:
    def __init__(self, session: InferenceSession) -> None:
        self._session = session

    def run(self, inputs: Any, **kwargs: Any) -> list[Any]:
        options = RunOptions()
        for k, v in kwargs.items():
            if not hasattr(options, k):
                raise InvalidArgument(f"unknown run option '{k}'")
            setattr(options, k, v)
        names = [i.name for i in self._session.get_inputs()]
        if isinstance(inputs, dict):
            feed = inputs
        elif isinstance(inputs, (list, tuple)):
            if len(inputs) != len(names):
                raise InvalidArgument(f"expected {len(names)} inputs {names}, got {len(inputs)}")
            feed = dict(zip(names, inputs))
        elif isinstance(inputs, np.ndarray) and len(names) == 1:
            feed = {names[0]: inputs}
        else:
            raise InvalidArgument(f"inputs must be a list, dict or array, got {type(inputs).__name__}")
        return self._session.run(None, feed, options)


def supports_device(device: str) -> bool:
    from . import get_device

    return device.upper() == "CPU" or device.upper() == get_device()


def is_compatible(model: Any, device: str | None = None, **kwargs: Any) -> bool:
    return supports_device(device or "CPU")


def prepare(model: Any, device: str | None = None, **kwargs: Any) -> BackendRep:
    if isinstance(model, InferenceSession):
        return BackendRep(model)
    if device is not None and not supports_device(device):
        raise InvalidArgument(f"device '{device}' is not supported by this build")
    options = SessionOptions()
    for k, v in kwargs.items():
        if not hasattr(options, k):
            raise InvalidArgument(f"unknown session option '{k}'")
        setattr(options, k, v)
    return BackendRep(InferenceSession(model, options))


def run(model: Any, inputs: Any, device: str | None = None, **kwargs: Any) -> list[Any]:
    rep = model if isinstance(model, BackendRep) else prepare(model, device)
    return rep.run(inputs, **kwargs)


run_model = run
