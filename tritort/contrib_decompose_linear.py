"""onnxruntime's com.microsoft FusedMatMul, FusedConv, MatMulIntegerToFloat and
DynamicQuantizeMatMul as ai.onnx ops both engines run on the device (rows of
:mod:`tritort.contrib_decompose`, which passes each rule its node's builder).

- FusedMatMul: Transposes for transA / transB / transBatchA / transBatchB (one perm each),
  MatMul, then Mul by alpha unless it is 1 (the kernel scales the float32 product once, as
  Mul does).
- FusedConv: Conv with its own attributes, Add of Z, then the activation as its ai.onnx op
  (Triton takes all three as the Conv's epilogue).
- MatMulIntegerToFloat: DequantizeLinear of A (per-tensor) and of B (per-tensor or per-column,
  axis 1 of a (K, N) B), MatMul, Add of the bias; Triton runs the DequantizeLinear pair and the
  MatMul as one int8 GEMM.
- DynamicQuantizeMatMul: DynamicQuantizeLinear of A (uint8, as the kernel quantizes it), then
  as MatMulIntegerToFloat.

Refused, the node left as it is: values other than float32 (the kernels compute float16 in
float32 and round once), opsets below 13 (per-axis DequantizeLinear, Clip's inputs), operands
of unknown rank, batched or >2-D quantized B, and transBatch forms whose ranks
are not known equal and at least 3.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

_F32 = TensorProto.FLOAT


def _inputs(n, count: int) -> list[str]:
    return list(n.inputs) + [""] * (count - len(n.inputs))


def _elem(graph, name: str):
    v = graph.value(name)
    return None if v is None else v.elem_type


def _out_shape(graph, name: str):
    v = graph.value(name)
    return None if v is None or v.shape is None else list(v.shape)


def _common(graph, floats) -> str | None:
    if graph.opsets.get("", 1) < 13:
        return "the opset is below 13"
    if any(_elem(graph, v) != _F32 for v in floats if v):
        return "only float32 values are decomposed exactly"
    return None


def _matmul_shape(sa: list, sb: list) -> list:
    """numpy matmul's result shape; None where load time cannot tell."""
    a, b = list(sa), list(sb)
    if len(a) == 1 and len(b) == 1:
        return []
    if len(a) == 1:
        return b[:-2] + [b[-1]]
    if len(b) == 1:
        return a[:-1]
    ba, bb = a[:-2], b[:-2]
    rank = max(len(ba), len(bb))
    ba, bb = [1] * (rank - len(ba)) + ba, [1] * (rank - len(bb)) + bb
    batch = [y if x == 1 else x if y == 1 or x == y else None for x, y in zip(ba, bb)]
    return batch + [a[-2], b[-1]]


# ------------------------------------------------------------------ FusedMatMul

def _operand_perm(rank: int, trans: bool, trans_batch: bool) -> list[int] | None:
    """The Transpose perm that reads an operand as FusedMatMul does; None: as it is."""
    perm = list(range(rank))
    if trans_batch and rank > 2:
        perm = perm[1:-1] + [perm[0], perm[-1]]
    if trans and rank >= 2:
        perm[-1], perm[-2] = perm[-2], perm[-1]
    return None if perm == list(range(rank)) else perm


def _fused_matmul(n, graph, b) -> str | None:
    a, bm = _inputs(n, 2)
    why = _common(graph, (a, bm))
    if why:
        return why
    av, bv = graph.value(a), graph.value(bm)
    if av is None or av.rank is None or bv is None or bv.rank is None:
        return "operands of unknown rank"
    batch_a, batch_b = bool(n.attrs.get("transBatchA", 0)), bool(n.attrs.get("transBatchB", 0))
    if (batch_a or batch_b) and (av.rank < 3 or av.rank != bv.rank):
        return "transBatch needs operands of equal rank, at least 3"
    operands, shapes = [], []
    for x, v, trans, batch in ((a, av, n.attrs.get("transA", 0), batch_a),
                               (bm, bv, n.attrs.get("transB", 0), batch_b)):
        perm = _operand_perm(v.rank, bool(trans), batch)
        shape = list(v.shape)
        if perm is not None:
            shape = [v.shape[p] for p in perm]
            x = b.op("Transpose", [x], _F32, shape, perm=perm)
        operands.append(x)
        shapes.append(shape)
    alpha = float(n.attrs.get("alpha", 1.0))
    shape = _out_shape(graph, n.outputs[0]) or _matmul_shape(*shapes)
    if alpha == 1.0:
        b.op("MatMul", operands, _F32, shape, out=n.outputs[0])
    else:
        y = b.op("MatMul", operands, _F32, shape)
        b.op("Mul", [y, b.const("alpha", np.array(alpha, np.float32))], _F32, shape,
             out=n.outputs[0])
    return None


# ------------------------------------------------------------------ FusedConv

_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _fused_conv(n, graph, b) -> str | None:
    x, w, bias, z = _inputs(n, 4)
    why = _common(graph, (x, w, bias, z))
    if why:
        return why
    xv, wv = graph.value(x), graph.value(w)
    if xv is None or xv.rank is None or wv is None or wv.shape is None:
        return "X or W of unknown rank"
    act = n.attrs.get("activation") or None
    if isinstance(act, bytes):
        act = act.decode()
    params = [float(p) for p in n.attrs.get("activation_params") or []]
    if act not in (None, "Identity", "Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip",
                   "HardSigmoid"):
        return f"activation {act!r} is not decomposed"
    shape = _out_shape(graph, n.outputs[0]) or \
        [xv.shape[0], wv.shape[0]] + [None] * (xv.rank - 2)
    attrs = {k: n.attrs[k] for k in _CONV_ATTRS if k in n.attrs}
    if isinstance(attrs.get("auto_pad"), bytes):
        attrs["auto_pad"] = attrs["auto_pad"].decode()
    last = act in (None, "Identity")
    y = b.op("Conv", [x, w] + ([bias] if bias else []), _F32, shape,
             out=n.outputs[0] if last and not z else None, **attrs)
    if z:
        y = b.op("Add", [y, z], _F32, shape, out=n.outputs[0] if last else None)
    if last:
        return None
    out = n.outputs[0]
    if act in ("Relu", "Tanh", "Sigmoid"):
        b.op(act, [y], _F32, shape, out=out)
    elif act == "LeakyRelu":
        b.op(act, [y], _F32, shape, out=out, alpha=params[0] if params else 0.01)
    elif act == "HardSigmoid":
        b.op(act, [y], _F32, shape, out=out, alpha=params[0] if params else 0.2,
             beta=params[1] if len(params) > 1 else 0.5)
    else:  # Clip: missing bounds stay open
        bounds = [b.const(what, np.array(params[i], np.float32)) if len(params) > i else ""
                  for i, what in enumerate(("min", "max"))]
        while bounds and not bounds[-1]:
            bounds.pop()
        b.op("Clip", [y] + bounds, _F32, shape, out=out)
    return None


# ------------------------------------------------------------------ quantized products

def _dequantize(graph, b, x: str, scale: str, zero: str, per_column_axis: int):
    """DequantizeLinear of ``x`` with a per-tensor (one element) or per-column (1-D)
    ``scale``/``zero``; the name, or (why not,)."""
    s_shape, x_shape = _shape(graph, b, scale), _shape(graph, b, x)
    if s_shape is None or x_shape is None:
        return ("scale or operand of unknown shape",)
    count = int(np.prod(s_shape)) if all(isinstance(d, int) for d in s_shape) else None
    if zero and _shape(graph, b, zero) != s_shape:
        return ("zero point not shaped as its scale",)
    attrs = {}
    if count == 1:
        if s_shape:  # per-tensor: the scalar form DequantizeLinear asks for
            scalar = b.const("shape", np.zeros(0, np.int64))
            scale = b.op("Reshape", [scale, scalar], _F32, [])
            if zero:
                zero = b.op("Reshape", [zero, scalar], _elem(graph, zero), [])
    elif len(s_shape) == 1 and per_column_axis is not None and \
            s_shape[0] == x_shape[per_column_axis]:
        attrs["axis"] = per_column_axis
    else:
        return (f"scale of shape {s_shape} is neither per-tensor nor per-column",)
    return b.op("DequantizeLinear", [x, scale] + ([zero] if zero else []), _F32,
                x_shape, **attrs)


def _shape(graph, b, name: str):
    """The shape of a graph value or of one the builder wrote; None if unknown."""
    if name in b.shapes:
        return list(b.shapes[name])
    v = graph.value(name)
    return None if v is None or v.shape is None else list(v.shape)


def _quantized_product(n, graph, b, a_q, a_scale, a_zero, bm, b_scale, b_zero, bias):
    bv = graph.value(bm)
    if bv is None or bv.rank != 2 or not isinstance(bv.shape[1], int):
        return "B must be 2-D (K, N) of known N"
    da = _dequantize(graph, b, a_q, a_scale, a_zero, None)
    if isinstance(da, tuple):
        return "A: " + da[0]
    db = _dequantize(graph, b, bm, b_scale, b_zero, 1)
    if isinstance(db, tuple):
        return "B: " + db[0]
    shape = _out_shape(graph, n.outputs[0]) or \
        _matmul_shape(b.shapes[da], list(bv.shape))
    y = b.op("MatMul", [da, db], _F32, shape, out=None if bias else n.outputs[0])
    if bias:
        b.op("Add", [y, bias], _F32, shape, out=n.outputs[0])
    return None


def _matmul_integer_to_float(n, graph, b) -> str | None:
    a, bm, a_scale, b_scale, a_zero, b_zero, bias = _inputs(n, 7)
    why = _common(graph, (a_scale, b_scale, bias))
    return why or _quantized_product(n, graph, b, a, a_scale, a_zero, bm, b_scale, b_zero,
                                     bias)


def _dynamic_quantize_matmul(n, graph, b) -> str | None:
    a, bm, b_scale, b_zero, bias = _inputs(n, 5)
    why = _common(graph, (a, b_scale, bias))
    if why:
        return why
    av = graph.value(a)
    if av is None or av.shape is None:
        return "A of unknown shape"
    a_q, a_scale, a_zero = b.multi(
        "DynamicQuantizeLinear", [a],
        [(TensorProto.UINT8, list(av.shape)), (_F32, []), (TensorProto.UINT8, [])],
        [None] * 3)
    return _quantized_product(n, graph, b, a_q, a_scale, a_zero, bm, b_scale, b_zero, bias)


RULES = {"FusedMatMul": _fused_matmul, "FusedConv": _fused_conv,
         "MatMulIntegerToFloat": _matmul_integer_to_float,
         "DynamicQuantizeMatMul": _dynamic_quantize_matmul}
