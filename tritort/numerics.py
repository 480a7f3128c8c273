"""``tritort.debug.check_numerics = "1"``: run each compiled kernel and its NumPy reference.

Part of the compile stage: the units of every provider but the CPU one are wrapped. The
reference is the CPU provider's units for the same nodes, run on host copies of the kernel's
inputs. A mismatch raises Fail naming the kernel, the output and the error.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from .errors import Fail
from .providers import CompiledUnit, CompileInfo, ExecutionProvider

CHECK_NUMERICS_KEY = "tritort.debug.check_numerics"

# (rtol, atol) by result dtype: low-precision results round once, references round per op
_TOLERANCE = {np.dtype(np.float64): (1e-9, 1e-12), np.dtype(np.float32): (1e-4, 1e-5),
              np.dtype(np.float16): (1e-2, 1e-3)}
_LOW_PRECISION = (2e-2, 1e-2)
# float32 products on TF32 tensor cores (inputs rounded to 10 mantissa bits)
_TF32 = (2e-3, 1e-3)


def wants_check(info: CompileInfo) -> bool:
    return info.options.get(CHECK_NUMERICS_KEY) == "1"


def checked(unit: CompiledUnit, info: CompileInfo, to_host: Callable,
            cpu: ExecutionProvider, tf32: bool = False) -> CompiledUnit:
    """The same unit, whose callable also runs and compares the CPU provider's units;
    ``tf32``: the provider's float32 products round their inputs to TF32."""
    reference = cpu.compile(unit.nodes, info)
    kernel = unit.fn

    def run(*inputs):
        outs = kernel(*inputs)
        env = {name: to_host(x) for name, x in zip(unit.inputs, inputs)}
        for ref in reference:
            results = ref.fn(*[env.get(n) if n else None for n in ref.inputs])
            env.update((n, r) for n, r in zip(ref.outputs, results) if n)
        for name, out in zip(unit.outputs, outs):
            if name:
                _compare(unit.name, name, to_host(out), np.asarray(env[name]), tf32)
        return outs

    return dataclasses.replace(unit, fn=run)


def _compare(kernel: str, name: str, got: np.ndarray, want: np.ndarray,
             tf32: bool = False) -> None:
    if got.shape != want.shape or got.dtype != want.dtype:
        raise Fail(f"check_numerics: kernel {kernel} output '{name}' is {got.dtype}"
                   f"{list(got.shape)}, the NumPy reference {want.dtype}{list(want.shape)}")
    if got.dtype.kind in "biu":
        bad = got != want
    else:
        rtol, atol = _TF32 if tf32 and got.dtype == np.float32 else \
            _TOLERANCE.get(got.dtype, _LOW_PRECISION)
        g, w = got.astype(np.float64), want.astype(np.float64)
        bad = ~np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise Fail(f"check_numerics: kernel {kernel} output '{name}' differs from the NumPy "
                   f"reference at {int(bad.sum())} of {bad.size} elements; first at index "
                   f"{list(index)}: kernel {got[index]!r}, reference {want[index]!r}")
