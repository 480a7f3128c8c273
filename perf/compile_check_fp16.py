"""A float16 copy of a float32 ONNX model, for compiling its kernels as an fp16 deployment would.

Every float32 initializer, Constant, ConstantOfShape value, Cast target and graph input/output
becomes float16 (values clipped to float16's range, so -3.4e38 mask fills stay finite); the
inputs that ONNX requires in float32 whatever the model's type (Resize's roi and scales) keep
it. Stale value_info is dropped so that the loader infers types afresh. onnxconverter-common
would do this too; it is not installed here, and these few rules cover the exported
benchmark models.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_FP16_MAX = float(np.finfo(np.float16).max)
# (op_type, input position): inputs that stay float32 in every model
_FLOAT32_INPUTS = {("Resize", 1), ("Resize", 2)}


def _half(tensor: onnx.TensorProto) -> onnx.TensorProto:
    values = np.clip(numpy_helper.to_array(tensor), -_FP16_MAX, _FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(values, tensor.name)


def _convert_graph(graph: onnx.GraphProto) -> None:
    keep = {node.input[i] for node in graph.node for op, i in _FLOAT32_INPUTS
            if node.op_type == op and len(node.input) > i}
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            graph.initializer[i].CopyFrom(_half(init))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _convert_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _convert_graph(g)
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        elif node.op_type in ("Constant", "ConstantOfShape") and not set(node.output) & keep:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(_half(attr.t))
                elif attr.name == "value_float":
                    half = np.float16(np.clip(attr.f, -_FP16_MAX, _FP16_MAX))
                    node.ClearField("attribute")
                    node.attribute.append(helper.make_attribute(
                        "value", numpy_helper.from_array(np.array(half))))
                    break
    # statistics a LayerNormalization keeps in float32 (stash_type 1) stay float32
    stats = {o for node in graph.node if node.op_type == "LayerNormalization"
             for o in node.output[1:]}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        tensor = value.type.tensor_type
        if tensor.elem_type == TensorProto.FLOAT and value.name not in keep | stats:
            tensor.elem_type = TensorProto.FLOAT16  # value_info kept: its symbolic dims


def convert(src: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """Write ``src``'s float16 copy to ``dst`` (default: beside it, ``-fp16`` added) unless a
    copy newer than ``src`` is there; its path."""
    src = Path(src)
    dst = Path(dst) if dst else src.with_name(f"{src.stem}-fp16.onnx")
    if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    model = onnx.load(str(src))
    _convert_graph(model.graph)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, dst)
    return dst


def half_feeds(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float32 inputs as float16; others as they are."""
    return {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()}
