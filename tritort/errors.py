"""ONNX Runtime's exception classes, by the same names, in one place.

Code written for onnxruntime catches ``onnxruntime.capi.onnxruntime_pybind11_state.X``;
the same classes are reachable here as ``tritort.X`` and under ``tritort.capi``.
"""
from __future__ import annotations


class OrtError(RuntimeError):
    """Base of every error tritort raises on purpose."""


class Fail(OrtError):
    pass


class InvalidArgument(OrtError):
    pass


class NoSuchFile(OrtError):
    pass


class NoModel(OrtError):
    pass


class EngineError(OrtError):
    pass


class RuntimeException(OrtError):
    pass


class InvalidProtobuf(OrtError):
    pass


class ModelLoaded(OrtError):
    pass


class NotImplemented(OrtError):  # noqa: A001  (ORT's name)
    pass


class InvalidGraph(OrtError):
    pass


class EPFail(OrtError):
    pass


class ModelLoadCanceled(OrtError):
    pass


class ModelRequiresCompilation(OrtError):
    pass


class NotFound(OrtError):
    pass


class InvalidArgumentValue(InvalidArgument, ValueError):
    """An ``InvalidArgument`` that onnxruntime's Python layer raises as ``ValueError``
    (required inputs missing from a run's feed; malformed ``providers`` arguments): code
    written for onnxruntime catches it with ``except ValueError``, and ``except
    InvalidArgument``/``RuntimeError`` still catch it as every other argument error."""


def node_failure(node_desc: str, op_type: str, exc: BaseException) -> Fail:
    """The error for a kernel that raised while running a node (ORT's class and wording)."""
    return Fail(
        f"Non-zero status code returned while running {op_type} node. Name:'{node_desc}' "
        f"Status Message: {type(exc).__name__}: {exc}")


def node_error(node_desc: str, op_type: str, exc: BaseException) -> OrtError:
    """:func:`node_failure`, keeping the class of an ORT error the kernel raised itself, as
    ORT keeps a kernel's status code (an index out of range is ``InvalidArgument``)."""
    if not isinstance(exc, OrtError):
        return node_failure(node_desc, op_type, exc)
    return type(exc)(
        f"Non-zero status code returned while running {op_type} node. Name:'{node_desc}' "
        f"Status Message: {exc}")


__all__ = [
    "OrtError", "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError",
    "RuntimeException", "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph",
    "EPFail", "ModelLoadCanceled", "ModelRequiresCompilation", "NotFound",
    "InvalidArgumentValue", "node_failure",
    "node_error",
]
