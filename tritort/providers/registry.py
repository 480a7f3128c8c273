"""Which providers exist, and ORT's ``providers``/``provider_options`` arguments resolved
into provider objects."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

from ..errors import InvalidArgument
from . import CPU, TRITON, ExecutionProvider

# Every provider name ORT knows, so code that lists them finds ours among them.
ALL_PROVIDER_NAMES = [
    "TritonExecutionProvider", "TensorrtExecutionProvider", "CUDAExecutionProvider",
    "MIGraphXExecutionProvider", "ROCMExecutionProvider", "OpenVINOExecutionProvider",
    "DnnlExecutionProvider", "VitisAIExecutionProvider", "QNNExecutionProvider",
    "NnapiExecutionProvider", "CoreMLExecutionProvider", "ArmNNExecutionProvider",
    "ACLExecutionProvider", "DmlExecutionProvider", "RknpuExecutionProvider",
    "WebNNExecutionProvider", "WebGpuExecutionProvider", "XnnpackExecutionProvider",
    "CANNExecutionProvider", "AzureExecutionProvider", CPU,
]


# onnxruntime code asks for CUDA; on tritort that is the Triton provider.
ALIASES = {"CUDAExecutionProvider": TRITON}


def _registry() -> dict[str, type[ExecutionProvider]]:
    from .cpu import CPUExecutionProvider
    from .triton import TritonExecutionProvider

    return {TRITON: TritonExecutionProvider, CPU: CPUExecutionProvider}


def available_providers() -> list[str]:
    return [name for name, cls in _registry().items() if cls.unavailable_reason() is None]


def resolve(providers: Sequence[Any] | None,
            provider_options: Sequence[dict] | None) -> list[ExecutionProvider]:
    """Turn ORT's ``providers``/``provider_options`` arguments into provider objects.

    The CPU provider is always last, as in ORT: it takes whatever the others leave.
    """
    registry = _registry()
    names_opts: list[tuple[str, dict]] = []
    providers = list(providers or [CPU])
    if provider_options is not None:
        if any(isinstance(p, tuple) for p in providers):
            raise InvalidArgument("options were given both inside 'providers' and as "
                                  "'provider_options'; use one form")
        if len(provider_options) != len(providers):
            raise InvalidArgument(f"'providers' has {len(providers)} entries but "
                                  f"'provider_options' has {len(provider_options)}")
    for i, p in enumerate(providers):
        if isinstance(p, tuple):
            if len(p) != 2 or not isinstance(p[1], dict):
                raise InvalidArgument(f"provider entry {p!r} must be a name or (name, options dict)")
            name, opts = p
        else:
            name, opts = p, (provider_options[i] if provider_options is not None else {})
        if not isinstance(name, str):
            raise InvalidArgument(f"provider names are strings, got {type(name).__name__}")
        names_opts.append((name, dict(opts)))
    seen: list[ExecutionProvider] = []
    for name, opts in names_opts:
        name = ALIASES.get(name, name)
        if name not in registry:
            if name in ALL_PROVIDER_NAMES:
                raise InvalidArgument(f"{name} is not available in this build; available "
                                      f"providers: {list(registry)}")
            raise InvalidArgument(f"unknown provider '{name}'; known providers: "
                                  f"{ALL_PROVIDER_NAMES}")
        if any(ep.name == name for ep in seen):
            raise InvalidArgument(f"provider '{name}' is listed twice")
        reason = registry[name].unavailable_reason()
        if reason is not None:
            warnings.warn(f"{name} was requested but cannot be used: {reason}. Its nodes run "
                          f"on {CPU}; get_providers() lists only the providers in use.",
                          RuntimeWarning, stacklevel=3)
            continue
        seen.append(registry[name](opts))
    if not any(ep.name == CPU for ep in seen):
        seen.append(registry[CPU]({}))
    return seen
