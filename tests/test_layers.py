"""The import layers at run time: the engines and the core load without torch or triton.

(`.ci/lint-layers` checks who imports whom statically; this checks that codegen's torch and
triton imports really are lazy, so a CPU-only session never pays for them.)"""
from __future__ import annotations

import subprocess
import sys

_PROBE = """
import importlib, pkgutil, sys
import tritort.codegen, tritort.fallback_cpu
core = ["dtypes", "graph", "windows", "errors", "contracts", "profiling", "version"]
names = ["tritort." + m for m in core]
for pkg in (tritort.codegen, tritort.fallback_cpu):
    names += [pkg.__name__ + "." + m.name for m in pkgutil.iter_modules(pkg.__path__)]
for name in names:
    importlib.import_module(name)
print(len(names), sorted(m for m in ("torch", "triton") if m in sys.modules))
"""


def test_engines_and_core_import_without_torch_or_triton():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[0]) > 50 and out[1:] == ["[]"], out


def test_a_cpu_session_runs_without_torch_or_triton():
    probe = """
import sys, numpy as np, onnx
from onnx import helper, TensorProto
import tritort as ort
g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
y = ort.InferenceSession(m.SerializeToString()).run(None, {"x": np.array([-1, 2], np.float32)})[0]
print(y.tolist(), sorted(m for m in ("torch", "triton") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[0.0, 2.0] []", out
