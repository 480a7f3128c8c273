"""Which providers exist, and ORT's ``providers``/``provider_options`` arguments resolved
into provider objects."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

from ..errors import InvalidArgument, InvalidArgumentValue
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
    if isinstance(providers, (str, bytes)):
        raise InvalidArgumentValue(f"'providers' should be a sequence of provider names or "
                                   f"(name, options dict) tuples, not a string ({providers!r})")
    providers = list(providers or [CPU])
    if provider_options is not None:
        if any(isinstance(p, tuple) for p in providers):
            raise InvalidArgumentValue("options were given both inside 'providers' and as "
                                       "'provider_options'; use one form")
        if len(provider_options) != len(providers):
            raise InvalidArgumentValue(
                f"'providers' and 'provider_options' should be the same length if both are "
                f"given: 'providers' has {len(providers)} entries, 'provider_options' "
                f"{len(provider_options)}")
    for i, p in enumerate(providers):
        if isinstance(p, tuple):
            if len(p) != 2 or not isinstance(p[1], dict):
                raise InvalidArgumentValue(f"'providers' values must be either strings or "
                                           f"(string, dict) tuples; got {p!r}")
            name, opts = p
        else:
            name, opts = p, (provider_options[i] if provider_options is not None else {})
        if not isinstance(name, str):
            raise InvalidArgumentValue(f"provider names are strings, got "
                                       f"{type(name).__name__}")
        if not isinstance(opts, dict):
            raise InvalidArgumentValue(f"'provider_options' values must be dicts, got "
                                       f"{type(opts).__name__} for {name}")
        names_opts.append((name, dict(opts)))
    seen: list[ExecutionProvider] = []
    asked: set[str] = set()
    for name, opts in names_opts:
        name = ALIASES.get(name, name)
        if name not in registry:
            if name in ALL_PROVIDER_NAMES:
                # ORT's Python layer warns and goes on without it, so lists written for
                # several builds (TensorRT, CUDA, CPU) work everywhere
                warnings.warn(f"Specified provider '{name}' is not in available provider "
                              f"names. Available providers: '{', '.join(available_providers())}'",
                              UserWarning, stacklevel=4)
                continue
            raise InvalidArgument(f"Unknown Provider Type: {name} (an unknown provider; known "
                                  f"providers: {ALL_PROVIDER_NAMES})")
        if name in asked:
            warnings.warn(f"Duplicate provider '{name}' encountered, ignoring.", UserWarning,
                          stacklevel=4)
            continue
        asked.add(name)
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
