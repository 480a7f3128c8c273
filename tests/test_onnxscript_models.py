"""Models authored with onnxscript: their local functions are inlined at load."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from onnxscript import FLOAT, script
from onnxscript import opset18 as op
from onnxscript.values import Opset

local = Opset("this", 1)


@script(local)
def scaled_relu(x, alpha: float):
    return op.Mul(op.Relu(x), op.Constant(value_float=alpha))


@script()
def model(x: FLOAT["N"]) -> FLOAT["N"]:  # noqa: F821
    return op.Add(scaled_relu(x, alpha=2.0), x)


def test_local_functions_load_in_a_fresh_process(tmp_path):
    # a fresh interpreter imports only tritort: nothing else has loaded onnx's submodules
    proto = model.to_model_proto()
    assert len(proto.functions) == 1
    path = tmp_path / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    probe = (f"import numpy as np, tritort as ort\n"
             f"x = np.array([-1.5, 0.0, 2.0], np.float32)\n"
             f"print(ort.InferenceSession({str(path)!r}).run(None, {{'x': x}})[0].tolist())")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    x = np.array([-1.5, 0.0, 2.0], np.float32)
    expected = np.maximum(x, 0) * 2 + x
    np.testing.assert_array_equal(np.array(json.loads(r.stdout), np.float32), expected)
