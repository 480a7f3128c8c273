"""IOBinding: inputs and outputs bound ahead of a run, on the CPU or a CUDA device.

Inputs bind without copies: numpy arrays, torch tensors (bfloat16 and float8 included), any
DLPack producer, OrtValues, or raw pointers (a numpy view on the CPU, a torch tensor through
a DLPack capsule on CUDA). The binding keeps a reference, not a snapshot: a run reads the
memory as it is then.

Outputs bind to a device (the runtime allocates; ``get_outputs()`` returns OrtValues that
``torch.from_dlpack`` views without a copy) or to the caller's memory (a pointer, a tensor, an
OrtValue): the results are copied into it after the run, which checks element type and shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import dlpack, dtypes
from .errors import InvalidArgument
from .graph import ValueInfo
from .ortvalue import OrtValue, _element


@dataclass
class _Output:
    device: tuple[str, int]  # where a runtime-allocated result is placed
    target: OrtValue | None  # the caller's memory, or None to allocate


class IOBinding:
    """ORT's IOBinding (``session.io_binding()``), with torch-friendly forms of bind_*."""

    def __init__(self, session) -> None:
        self._session = session
        self._inputs: dict[str, Any] = {}
        self._outputs: dict[str, _Output] = {}
        self._results: list[OrtValue] = []

    # -- inputs ---------------------------------------------------------------------------------
    def bind_cpu_input(self, name: str, arr_on_cpu: Any) -> None:
        """Bind host data (numpy, ml_dtypes, torch CPU tensor, list) without copying arrays."""
        spec = self._input_spec(name)
        value = arr_on_cpu
        if dlpack.is_torch(value):
            if value.device.type != "cpu":
                raise InvalidArgument(f"bind_cpu_input('{name}'): the tensor is on "
                                      f"{value.device}; use bind_input for device tensors")
        elif not isinstance(value, (np.ndarray, OrtValue)):
            value = np.asarray(value, dtype=spec.dtype if spec.dtype not in (None, object)
                               else None)
        self._check_input(spec, value)
        self._inputs[name] = value

    def bind_input(self, name: str, device_type: Any = "cpu", device_id: int = 0,
                   element_type: Any = None, shape: Any = None,
                   buffer_ptr: int | None = None) -> None:
        """ORT's form (a device buffer by pointer), or ``bind_input(name, tensor)``.

        ``element_type`` is a numpy dtype or an ONNX TensorProto enum (so bfloat16 and float8
        can be named); element type, shape and pointer are all required together.
        """
        spec = self._input_spec(name)
        if not isinstance(device_type, str):  # bind_input(name, tensor): any DLPack producer
            value = device_type
            if isinstance(value, OrtValue):
                value = value._tensor()
            elif not isinstance(value, np.ndarray):
                if not dlpack.is_dlpack_producer(value):
                    raise InvalidArgument(f"bind_input('{name}', value): expected a device type "
                                          f"name or a DLPack producer (torch tensor, numpy "
                                          f"array, OrtValue), got {type(value).__name__}")
                value = dlpack.as_tensor(value)
            self._check_input(spec, value)
            self._inputs[name] = value
            return
        device = dlpack.parse_device(device_type, device_id)
        if buffer_ptr is None or element_type is None or shape is None:
            missing = [n for n, v in (("element_type", element_type), ("shape", shape),
                                      ("buffer_ptr", buffer_ptr)) if v is None]
            raise InvalidArgument(f"bind_input('{name}'): a buffer needs element_type, shape "
                                  f"and buffer_ptr together; missing {missing}")
        value = dlpack.from_pointer(buffer_ptr, element_type, shape, device)
        self._check_input(spec, value)
        self._inputs[name] = value

    def bind_ortvalue_input(self, name: str, ortvalue: OrtValue) -> None:
        spec = self._input_spec(name)
        if not isinstance(ortvalue, OrtValue):
            raise InvalidArgument(f"bind_ortvalue_input('{name}') expects an OrtValue, got "
                                  f"{type(ortvalue).__name__}")
        if ortvalue.is_tensor():
            self._check_input(spec, ortvalue._value)
        self._inputs[name] = ortvalue

    def _input_spec(self, name: str):
        spec = self._session._specs.get(name)
        if spec is None:
            raise InvalidArgument(f"Invalid input name: {name}. Valid inputs: "
                                  f"{list(self._session._specs)}")
        return spec

    @staticmethod
    def _check_input(spec, value: Any) -> None:
        if isinstance(value, np.ndarray) or dlpack.is_torch(value):
            if spec.kind == "tensor_type":
                spec.check(_element(value), tuple(value.shape))

    # -- outputs --------------------------------------------------------------------------------
    def bind_output(self, name: str, device_type: Any = "cpu", device_id: int = 0,
                    element_type: Any = None, shape: Any = None,
                    buffer_ptr: int | None = None) -> None:
        """Allocate on a device (``bind_output('Y', 'cuda')``), write into a buffer given by
        pointer (element_type, shape and buffer_ptr together), or ``bind_output(name, tensor)``.
        """
        self._check_output_name(name)
        if not isinstance(device_type, str):  # bind_output(name, tensor)
            target = device_type if isinstance(device_type, OrtValue) else \
                OrtValue.from_dlpack(device_type) if dlpack.is_dlpack_producer(device_type) \
                else None
            if target is None:
                raise InvalidArgument(f"bind_output('{name}', value): expected a device type "
                                      f"name or a DLPack producer, got "
                                      f"{type(device_type).__name__}")
            self.bind_ortvalue_output(name, target)
            return
        device = dlpack.parse_device(device_type, device_id)
        given = [v is not None for v in (element_type, shape, buffer_ptr)]
        if not any(given):
            self._outputs[name] = _Output(device, None)
            return
        if not all(given):
            missing = [n for n, v in (("element_type", element_type), ("shape", shape),
                                      ("buffer_ptr", buffer_ptr)) if v is None]
            raise InvalidArgument(f"bind_output('{name}'): element_type, shape and buffer_ptr "
                                  f"must be given together; missing {missing}")
        target = OrtValue(dlpack.from_pointer(buffer_ptr, element_type, shape, device))
        self.bind_ortvalue_output(name, target)

    def bind_ortvalue_output(self, name: str, ortvalue: OrtValue) -> None:
        self._check_output_name(name)
        if not isinstance(ortvalue, OrtValue):
            raise InvalidArgument(f"bind_ortvalue_output('{name}') expects an OrtValue, got "
                                  f"{type(ortvalue).__name__}")
        value = ortvalue._tensor()
        self._check_output(name, _element(value), tuple(value.shape))
        self._outputs[name] = _Output(dlpack.device_of(value), ortvalue)

    def _check_output_name(self, name: str) -> None:
        valid = self._session._output_names
        if name not in valid:
            raise InvalidArgument(f"Invalid Output Name:{name}. Valid outputs: {valid}")

    def _check_output(self, name: str, dt: dtypes.DType, shape: tuple) -> None:
        """A bound buffer against the model's declared output type and static dims."""
        vi = next(o for o in self._session._outputs_meta if o.name == name)
        declared = ValueInfo.of(vi.type)
        if not declared.is_tensor:
            raise InvalidArgument(f"output '{name}' is {dtypes.type_string(vi.type)}; only "
                                  "tensors can be written into a bound buffer")
        if declared.elem_type and declared.elem_type != dt.onnx:
            raise InvalidArgument(f"output '{name}': the bound buffer holds tensor({dt.name}), "
                                  f"the model produces "
                                  f"{dtypes.onnx_type_name(declared.elem_type)}")
        dims = declared.shape
        if dims is not None and (len(dims) != len(shape) or any(
                isinstance(d, int) and d != s for d, s in zip(dims, shape))):
            shown = [d if isinstance(d, int) else "?" for d in dims]
            raise InvalidArgument(f"output '{name}': the bound buffer has shape "
                                  f"{list(shape)}, the model declares {shown}")

    # -- running --------------------------------------------------------------------------------
    def _run(self, run_options) -> None:
        if not self._outputs:
            raise InvalidArgument("no outputs are bound; call bind_output first")
        session = self._session
        names = list(self._outputs)
        feeds = session._feeds(dict(self._inputs))
        # outputs bound to the caller's memory are copied there at once: no clone needed
        written = all(self._outputs[n].target is not None for n in names)
        targets = {n: self._outputs[n].target._tensor() for n in names
                   if self._outputs[n].target is not None and
                   dlpack.is_torch(self._outputs[n].target._tensor())}
        results = session._run(names, feeds, run_options, on_device=True, borrowed=written,
                               targets=targets)
        for name, value in zip(names, results):  # every check before any write
            target = self._outputs[name].target
            if target is not None:
                _check_fits(name, target._tensor(), value)
        outputs = []
        for name, value in zip(names, results):
            bound = self._outputs[name]
            if bound.target is not None:
                _write(bound.target._tensor(), value)
                outputs.append(bound.target)
            else:
                outputs.append(OrtValue(_place(value, bound.device)))
        self._results = outputs

    # -- results --------------------------------------------------------------------------------
    def get_outputs(self) -> list[OrtValue]:
        """The OrtValues of the last run (the same objects on every call)."""
        return list(self._results)

    def copy_outputs_to_cpu(self) -> list[Any]:
        """Host copies of the last run's outputs (numpy; ml_dtypes for bfloat16/float8)."""
        out = []
        for v in self._results:
            value = v._value
            if isinstance(value, np.ndarray):
                out.append(value.copy())
            elif dlpack.is_torch(value):
                host = dlpack.to_host(value)
                out.append(host.copy() if value.device.type == "cpu" else host)
            else:
                out.append(dlpack.to_host(value))
        return out

    def clear_binding_inputs(self) -> None:
        self._inputs.clear()

    def clear_binding_outputs(self) -> None:
        self._outputs.clear()
        self._results = []

    def synchronize_inputs(self) -> None:
        """Wait until work queued on the session's device stream is done (no-op on CPU)."""
        self._session._synchronize()

    def synchronize_outputs(self) -> None:
        """Wait until the outputs are ready for the host (no-op on CPU)."""
        self._session._synchronize()


def _check_fits(name: str, dst: Any, value: Any) -> None:
    if not (isinstance(value, np.ndarray) or dlpack.is_torch(value)):
        raise InvalidArgument(f"output '{name}' is {type(value).__name__}, not a tensor; bind "
                              "it to a device instead of a buffer")
    want, got = _element(dst), _element(value)
    if want.onnx != got.onnx or tuple(dst.shape) != tuple(value.shape):
        raise InvalidArgument(f"output '{name}': the bound buffer is tensor({want.name})"
                              f"{list(dst.shape)}, the result is tensor({got.name})"
                              f"{list(value.shape)}")


def _write(dst: Any, value: Any) -> None:
    """Copy a result into bound memory (numpy or torch, any device, any layout); nothing
    when the run already wrote it there."""
    if value is dst:
        return
    if isinstance(dst, np.ndarray):
        np.copyto(dst, dlpack.to_host(value))
        return
    if isinstance(value, np.ndarray):
        value = dlpack.numpy_to_torch(value)
    dst.copy_(value)


def _place(value: Any, device: tuple[str, int]) -> Any:
    """A runtime-allocated result on the bound device."""
    if not (isinstance(value, np.ndarray) or dlpack.is_torch(value)):
        return value  # sequences and maps live on the host
    here = dlpack.device_of(value)
    if here == device:
        return value
    if device[0] == "cpu":
        return dlpack.to_host(value)
    if isinstance(value, np.ndarray):
        value = dlpack.numpy_to_torch(value)
    return value.to(dlpack.device_text(device))
