"""IOBinding: inputs and outputs bound ahead of a run (CPU memory in this build)."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import dtypes
from .errors import InvalidArgument
from .ortvalue import OrtValue, _check_device


class IOBinding:
    def __init__(self, session) -> None:
        self._session = session
        self._inputs: dict[str, Any] = {}
        self._outputs: dict[str, OrtValue | None] = {}
        self._results: list[OrtValue] = []

    # -- inputs ---------------------------------------------------------------------------------
    def bind_cpu_input(self, name: str, arr_on_cpu) -> None:
        self._inputs[name] = arr_on_cpu

    def bind_input(self, name: str, device_type: Any = "cpu", device_id: int = 0,
                   element_type: Any = None, shape=None, buffer_ptr: int | None = None) -> None:
        if not isinstance(device_type, str):  # bind_input(name, tensor): any array-like
            self._inputs[name] = device_type
            return
        _check_device(device_type, device_id)
        if buffer_ptr is None or element_type is None or shape is None:
            raise InvalidArgument(f"bind_input('{name}'): a buffer needs element_type, shape and "
                                  "buffer_ptr together")
        self._inputs[name] = _view_pointer(buffer_ptr, element_type, shape)

    def bind_ortvalue_input(self, name: str, ortvalue: OrtValue) -> None:
        if not isinstance(ortvalue, OrtValue):
            raise InvalidArgument(f"bind_ortvalue_input('{name}') expects an OrtValue")
        self._inputs[name] = ortvalue

    # -- outputs --------------------------------------------------------------------------------
    def bind_output(self, name: str, device_type: Any = "cpu", device_id: int = 0,
                    element_type: Any = None, shape=None, buffer_ptr: int | None = None) -> None:
        self._check_output_name(name)
        if not isinstance(device_type, str):
            self._outputs[name] = OrtValue(np.asarray(device_type))
            return
        _check_device(device_type, device_id)
        if buffer_ptr is None:
            self._outputs[name] = None
            return
        if element_type is None or shape is None:
            raise InvalidArgument(f"bind_output('{name}'): a buffer needs element_type and shape")
        self._outputs[name] = OrtValue(_view_pointer(buffer_ptr, element_type, shape))

    def bind_ortvalue_output(self, name: str, ortvalue: OrtValue) -> None:
        self._check_output_name(name)
        if not isinstance(ortvalue, OrtValue):
            raise InvalidArgument(f"bind_ortvalue_output('{name}') expects an OrtValue")
        self._outputs[name] = ortvalue

    def _check_output_name(self, name: str) -> None:
        valid = [o.name for o in self._session.get_outputs()]
        if name not in valid:
            raise InvalidArgument(f"Invalid Output Name:{name}. Valid outputs: {valid}")

    # -- results --------------------------------------------------------------------------------
    def _run(self, run_options) -> None:
        if not self._outputs:
            raise InvalidArgument("no outputs are bound; call bind_output first")
        names = list(self._outputs)
        results = self._session.run(names, dict(self._inputs), run_options)
        for name, value in zip(names, results):
            bound = self._outputs[name]
            if bound is not None and bound.is_tensor():
                dst = bound.numpy()
                if dst.shape != value.shape or dst.dtype != value.dtype:
                    raise InvalidArgument(
                        f"output '{name}': the bound buffer is {dst.dtype}{list(dst.shape)}, the "
                        f"result is {value.dtype}{list(value.shape)}")
                dst[...] = value
        self._results = [self._outputs[n] if self._outputs[n] is not None else OrtValue(r)
                         for n, r in zip(names, results)]

    def get_outputs(self) -> list[OrtValue]:
        return list(self._results)

    def copy_outputs_to_cpu(self) -> list[Any]:
        return [np.array(v.numpy(), copy=True) if v.is_tensor() else v.numpy()
                for v in self._results]

    def clear_binding_inputs(self) -> None:
        self._inputs.clear()

    def clear_binding_outputs(self) -> None:
        self._outputs.clear()
        self._results = []

    def synchronize_inputs(self) -> None:
        """CPU values need no synchronization."""

    def synchronize_outputs(self) -> None:
        """CPU values need no synchronization."""


def _view_pointer(ptr: int, element_type: Any, shape) -> np.ndarray:
    """A numpy view of host memory at ``ptr`` (the caller keeps it alive)."""
    import ctypes

    dt = dtypes.from_any(element_type)
    shape = tuple(int(d) for d in shape)
    count = int(np.prod(shape)) if shape else 1
    buf = (ctypes.c_char * (count * dt.itemsize)).from_address(int(ptr))
    return np.frombuffer(buf, dtype=dt.numpy, count=count).reshape(shape)
