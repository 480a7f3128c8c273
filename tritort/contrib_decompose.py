"""onnxruntime's com.microsoft Attention and EmbedLayerNormalization as ops both engines run on
the device (optimize stage, EXTENDED and above, before the rewriter's fusions).

- Attention: the packed QKV projection stays one MatMul (+ bias Add, a GEMM epilogue on
  Triton), Split into Q, K, V, heads as Reshape/Transpose views, the internal
  ``ScaledDotProductAttention`` (one flash-attention launch) with the scale written out and
  ``unidirectional`` as ``is_causal``, then back to (B, S, hidden). ``mask_index`` (B, T) or
  (B, S, T) becomes the additive mask ``Where(mask > 0, 0, mask_filter_value)``, (B) key
  lengths (also the first B entries of the (3B + 2) form) ``Where(arange(T) < length, 0,
  mask_filter_value)``; ``attention_bias`` is added to it. This is the NumPy kernel's math
  (:mod:`tritort.fallback_cpu.contrib_attention`).
- EmbedLayerNormalization: Gathers of the word, position (default positions 0..S-1: the
  table's first S rows) and segment embeddings, summed in the kernel's order, then ai.onnx
  LayerNormalization; ``mask_index`` as the count of mask entries equal to 1 per row (int32,
  as onnxruntime counts).

Attention with past / present state becomes the projection and one MultiHeadAttention with
past_key/past_value (which the flash-attention template runs with its KV append); with
``past_present_share_buffer`` the MultiHeadAttention takes ``past_sequence_length`` too, its
shared-buffer form (the new rows written at that offset of the (B, N, M, H) buffers, read
on the device).

Refused, the node left as it is (:func:`decompose` returns why): ``past_sequence_length``
without ``past_present_share_buffer`` and past (or the reverse), ``do_rotary``, without past
the (2B) and 4-D mask forms, non-float32 values (the kernels compute float16 in float32 and
round once, which a chain of float16 ops would not), opsets too old for the ops written (13),
and shapes not known well enough to tell the mask form apart.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto

from . import dtypes
from .contrib_decompose_linear import RULES as _LINEAR_RULES
from .contracts import ATTENTION_OP, INTERNAL_DOMAIN
from .graph import Graph, Node

MS_DOMAIN = "com.microsoft"
_MASK_FILTER = -10000.0
_EMBED_EPSILON = 1e-12  # the contrib schema's default


class _Builder:
    """New nodes, values and constants for one rewritten node; written into the graph only
    when the rewrite completes (:meth:`commit`)."""

    def __init__(self, graph: Graph, node: Node) -> None:
        self.graph, self.node = graph, node
        self.nodes: list[Node] = []
        self.types: dict[str, onnx.TypeProto] = {}
        self.inits: dict[str, np.ndarray] = {}
        self.shapes: dict[str, list] = {}  # of the values written

    def _fresh(self, base: str) -> str:
        name, i = base, 0
        while (name in self.graph.initializers or name in self.graph.value_types
               or name in self.types):
            i += 1
            name = f"{base}_{i}"
        return name

    def const(self, what: str, value: np.ndarray) -> str:
        name = self._fresh(f"{self.node.name}__{what}")
        self.inits[name] = value
        self.types[name] = onnx.helper.make_tensor_type_proto(
            dtypes.from_numpy(value.dtype).onnx, value.shape)
        return name

    def op(self, op_type: str, inputs: list[str], elem: int, shape, out: str | None = None,
           domain: str = "", **attrs) -> str:
        """One node with one output of type ``elem`` and ``shape`` (dims int, symbolic name or
        None); ``out`` names it (a final output of the rewritten node)."""
        return self.multi(op_type, inputs, [(elem, shape)], [out], domain, **attrs)[0]

    def multi(self, op_type, inputs, types, outs, domain="", **attrs) -> list[str]:
        names = []
        for out, (elem, shape) in zip(outs, types):
            name = out or self._fresh(f"{self.node.name}__{op_type.lower()}")
            # an unknown dim gets a name of its own: later stages read the rank from shapes
            shape = [f"{name}_dim{i}" if d is None else d for i, d in enumerate(shape)]
            self.types[name] = onnx.helper.make_tensor_type_proto(elem, shape)
            self.shapes[name] = shape
            names.append(name)
        proto = onnx.helper.make_node(op_type, inputs, names, domain=domain,
                                      name=f"{self.node.name}/{op_type}_{len(self.nodes)}",
                                      **attrs)
        new = Node.from_proto(proto, len(self.nodes))
        if domain == INTERNAL_DOMAIN and "scale" in attrs:
            new.attrs["scale"] = float(attrs["scale"])  # exact; the proto holds float32
        self.nodes.append(new)
        return names

    def unsqueeze(self, x: str, axes: list[int], elem: int, shape) -> str:
        if self.graph.opsets.get("", 1) >= 13:
            return self.op("Unsqueeze", [x, self.const("axes", np.array(axes, np.int64))],
                           elem, shape)
        return self.op("Unsqueeze", [x], elem, shape, axes=axes)

    def commit(self) -> list[Node]:
        self.graph.value_types.update(self.types)
        self.graph.initializers.update(self.inits)
        return self.nodes


def decompose(graph: Graph) -> dict[str, str]:
    """Rewrite every com.microsoft node of a row here or in
    :mod:`tritort.contrib_decompose_linear` that can be written
    exactly; returns node name -> why it was left as it is, for the others."""
    refused: dict[str, str] = {}
    kept: list[Node] = []
    done = 0
    for n in graph.nodes:
        rule = _RULES.get(n.op_type) if n.domain == MS_DOMAIN else None
        if rule is None:
            kept.append(n)
            continue
        builder = _Builder(graph, n)
        why = rule(n, graph, builder)
        if why is None:
            kept.extend(builder.commit())
            done += 1
        else:
            refused[n.name] = why
            kept.append(n)
    if done:
        graph.nodes = kept
        graph.opsets.setdefault(INTERNAL_DOMAIN, 1)
    return refused


def _inputs(n: Node, count: int) -> list[str]:
    return list(n.inputs) + [""] * (count - len(n.inputs))


def _elem(graph: Graph, name: str) -> int | None:
    v = graph.value(name)
    return None if v is None else v.elem_type


def _same_dim(a, b) -> bool:
    """Dims known equal at load time: equal ints or the same symbolic name."""
    return a is not None and a == b


# ------------------------------------------------------------------ Attention

def _attention(n: Node, graph: Graph, b: _Builder) -> str | None:
    x, w, bias, mask, past, attn_bias, past_len = _inputs(n, 7)
    outs = list(n.outputs) + [""]
    # the shared form needs both: the NumPy kernel ignores a lone past_sequence_length and
    # raises without one, which the contrib node keeps doing
    shared = bool(past and n.attrs.get("past_present_share_buffer", 0))
    if bool(past_len) != shared:
        return ("past_sequence_length without past_present_share_buffer and past" if past_len
                else "past_present_share_buffer without past_sequence_length")
    if n.attrs.get("do_rotary", 0):
        return "do_rotary is not decomposed"
    if graph.opsets.get("", 1) < 13:
        return "the opset is below 13 (Split / ReduceSum forms)"
    if any(_elem(graph, v) != TensorProto.FLOAT for v in (x, w, bias, attn_bias, past) if v):
        return "only float32 Attention is decomposed exactly"
    xv, wv = graph.value(x), graph.value(w)
    if xv is None or xv.rank != 3 or wv is None or wv.rank != 2 or \
            not isinstance(wv.shape[1], int):
        return "input (B, S, D) and weights (D, Q+K+V) of known width are needed"
    heads = int(n.attrs["num_heads"])
    sizes = n.attrs.get("qkv_hidden_sizes")
    qh, kh, vh = (int(s) for s in sizes) if sizes else (wv.shape[1] // 3,) * 3
    if qh + kh + vh != wv.shape[1] or qh != kh or qh % heads or vh % heads:
        return "qkv_hidden_sizes do not fit the weights and num_heads"
    filter_value = float(n.attrs.get("mask_filter_value", _MASK_FILTER))
    causal = int(bool(n.attrs.get("unidirectional", 0)))
    bdim, sdim = xv.shape[0], xv.shape[1]
    hq, hv = qh // heads, vh // heads
    if past or outs[1]:
        if qh != vh:
            return "with past state Q, K and V hidden sizes must be equal"
        return _attention_with_past(n, graph, b, (x, w, bias, mask, past, attn_bias,
                                                  past_len), outs,
                                    (bdim, sdim, heads, qh, wv.shape[1]))

    additive = None
    if mask:
        additive = _attention_mask(graph, b, mask, x, bdim, sdim, filter_value)
        if isinstance(additive, tuple):
            return additive[0]
    if attn_bias:
        av = graph.value(attn_bias)
        if av is None or av.rank != 4:
            return "attention_bias of unknown rank"
        additive = attn_bias if additive is None else b.op(
            "Add", [additive, attn_bias], TensorProto.FLOAT,
            _broadcast(b.shapes[additive], av.shape))

    f32 = TensorProto.FLOAT
    proj = b.op("MatMul", [x, w], f32, [bdim, sdim, wv.shape[1]])
    if bias:
        proj = b.op("Add", [proj, bias], f32, [bdim, sdim, wv.shape[1]])
    q, k, v = b.multi("Split", [proj, b.const("split", np.array([qh, kh, vh], np.int64))],
                      [(f32, [bdim, sdim, c]) for c in (qh, kh, vh)], [None] * 3, axis=2)

    def heads_of(t, size, perm, shape):
        r = b.op("Reshape", [t, b.const("shape", np.array([0, 0, heads, size], np.int64))],
                 f32, [bdim, sdim, heads, size])
        return b.op("Transpose", [r], f32, shape, perm=perm)

    q4 = heads_of(q, hq, [0, 2, 1, 3], [bdim, heads, sdim, hq])
    kt = heads_of(k, hq, [0, 2, 3, 1], [bdim, heads, hq, sdim])
    v4 = heads_of(v, hv, [0, 2, 1, 3], [bdim, heads, sdim, hv])
    scale = n.attrs.get("scale")
    scale = 1 / math.sqrt(hq) if scale is None else float(scale)
    y4 = b.op(ATTENTION_OP, [q4, kt, v4] + ([additive] if additive else []), f32,
              [bdim, heads, sdim, hv], domain=INTERNAL_DOMAIN, scale=scale, is_causal=causal)
    y = b.op("Transpose", [y4], f32, [bdim, sdim, heads, hv], perm=[0, 2, 1, 3])
    b.op("Reshape", [y, b.const("shape", np.array([0, 0, vh], np.int64))], f32,
         [bdim, sdim, vh], out=outs[0])
    return None


def _attention_with_past(n: Node, graph: Graph, b: _Builder, inputs, outs, dims) -> None:
    """Attention with past / present state as the projection GEMM, Split, and one
    MultiHeadAttention over past_key = past[0], past_value = past[1] (mask_index as its
    key_padding_mask, the same forms over the same total length); present stacks its
    present_key and present_value. ``past_len``: the shared buffer's past_sequence_length
    (present then has the past's shape)."""
    x, w, bias, mask, past, attn_bias, past_len = inputs
    bdim, sdim, heads, hidden, width = dims
    f32 = TensorProto.FLOAT
    proj = b.op("MatMul", [x, w], f32, [bdim, sdim, width])
    if bias:
        proj = b.op("Add", [proj, bias], f32, [bdim, sdim, width])
    q, k, v = b.multi("Split", [proj, b.const("split", np.array([hidden] * 3, np.int64))],
                      [(f32, [bdim, sdim, hidden])] * 3, [None] * 3, axis=2)
    head = hidden // heads
    inputs = [q, k, v, "", mask, attn_bias]
    total = None
    if past:
        pv = graph.value(past)
        cached = pv.shape[3] if pv is not None and pv.rank == 5 else None
        total = cached + sdim if isinstance(cached, int) and isinstance(sdim, int) else None
        inputs += [b.op("Gather", [past, b.const("which", np.array(i, np.int64))], f32,
                        [bdim, heads, cached, head], axis=0) for i in (0, 1)]
        if past_len:
            total = cached
            inputs.append(past_len)
    elif isinstance(sdim, int):
        total = sdim
    while not inputs[-1]:
        inputs.pop()
    attrs = {"num_heads": heads, "unidirectional": int(bool(n.attrs.get("unidirectional", 0))),
             "mask_filter_value": float(n.attrs.get("mask_filter_value", _MASK_FILTER))}
    if n.attrs.get("scale") is not None:
        attrs["scale"] = float(n.attrs["scale"])
    cache = (f32, [bdim, heads, total, head])
    if not outs[1]:
        b.op("MultiHeadAttention", inputs, f32, [bdim, sdim, hidden], out=outs[0],
             domain=MS_DOMAIN, **attrs)
        return None
    _, present_k, present_v = b.multi("MultiHeadAttention", inputs,
                                      [(f32, [bdim, sdim, hidden]), cache, cache],
                                      [outs[0], None, None], MS_DOMAIN, **attrs)
    stacked = [b.unsqueeze(t, [0], f32, [1, bdim, heads, total, head])
               for t in (present_k, present_v)]
    b.op("Concat", stacked, f32, [2, bdim, heads, total, head], out=outs[1], axis=0)
    return None


def _attention_mask(graph: Graph, b: _Builder, mask: str, x: str, bdim, sdim,
                    filter_value: float):
    """The additive mask (B, 1, 1 or S, T) of a mask_index, or (why not,)."""
    mv = graph.value(mask)
    if mv is None or mv.shape is None or mv.elem_type != TensorProto.INT32:
        return ("mask_index of unknown type or rank",)
    f32, bool_ = TensorProto.FLOAT, TensorProto.BOOL
    if mv.rank in (2, 3):
        if not _same_dim(mv.shape[0], bdim) and not all(isinstance(d, int) or d is None
                                                        for d in (mv.shape[0], bdim)):
            return ("mask_index batch does not match the input's",)
        # without past state there are S keys (and S queries for the 3-D form)
        if any(isinstance(d, int) and isinstance(sdim, int) and d != sdim
               for d in mv.shape[1:]):
            return (f"mask_index {list(mv.shape)} does not fit {sdim} keys",)
        allowed = b.op("Greater", [mask, b.const("zero", np.zeros((), np.int32))], bool_,
                       list(mv.shape))
        axes = [1, 2] if mv.rank == 2 else [1]
        out_shape = [mv.shape[0], 1, 1, mv.shape[1]] if mv.rank == 2 else \
            [mv.shape[0], 1, mv.shape[1], mv.shape[2]]
    elif mv.rank == 1:
        # (B) lengths and (2B) end/start pairs differ only in length: the dim must be B's;
        # (3B + 2) starts with the lengths (the packed batch's offsets after them go unread)
        if isinstance(bdim, int) and mv.shape[0] == 3 * bdim + 2:
            mask = b.op("Slice", [mask, b.const("zero", np.array([0], np.int64)),
                                  b.const("batch", np.array([bdim], np.int64))],
                        TensorProto.INT32, [bdim])
        elif not _same_dim(mv.shape[0], bdim):
            return ("1-D mask_index not known to be (B) key lengths or (3B + 2)",)
        lengths = b.op("Cast", [mask], TensorProto.INT64, [bdim], to=TensorProto.INT64)
        lengths = b.op("Reshape", [lengths, b.const("shape", np.array([-1, 1], np.int64))],
                       TensorProto.INT64, [bdim, 1])
        if isinstance(sdim, int):
            keys = b.const("keys", np.arange(sdim, dtype=np.int64))
        else:
            shape = b.op("Shape", [x], TensorProto.INT64, [3])
            t = b.op("Gather", [shape, b.const("axis", np.array(1, np.int64))],
                     TensorProto.INT64, [])
            keys = b.op("Range", [b.const("zero", np.array(0, np.int64)), t,
                                  b.const("one", np.array(1, np.int64))],
                        TensorProto.INT64, [sdim])
        allowed = b.op("Less", [keys, lengths], bool_, [bdim, sdim])
        axes, out_shape = [1, 2], [bdim, 1, 1, sdim]
    else:
        return (f"mask_index of rank {mv.rank} (the 4-D form) is not decomposed",)
    additive = b.op("Where", [allowed, b.const("open", np.zeros((), np.float32)),
                              b.const("filter", np.array(filter_value, np.float32))],
                    f32, _squeezed(out_shape, axes))
    return b.unsqueeze(additive, axes, f32, out_shape)


def _broadcast(a, b) -> list:
    """Numpy broadcasting of two equal-rank shapes; None where load time cannot tell."""
    out = []
    for x, y in zip(a, b):
        out.append(y if x == 1 else x if y == 1 or x == y else None)
    return out


def _squeezed(shape, axes):
    return [d for i, d in enumerate(shape) if i not in axes]


# ------------------------------------------------------------------ EmbedLayerNormalization

def _embed_layer_normalization(n: Node, graph: Graph, b: _Builder) -> str | None:
    ids, seg_ids, word, pos, seg, gamma, beta, mask, pos_ids = _inputs(n, 9)
    outs = list(n.outputs) + ["", ""]
    # below opset 17 LayerNormalization is onnxruntime's default-domain form (since 1), the
    # same computation, which both engines run
    if graph.opsets.get("", 1) < 13:
        return "the opset is below 13 (ReduceSum's axes input)"
    if any(_elem(graph, v) != TensorProto.FLOAT for v in (word, pos, seg, gamma, beta) if v):
        return "only float32 embeddings are decomposed exactly"
    iv, wv = graph.value(ids), graph.value(word)
    if iv is None or iv.rank != 2 or wv is None or wv.rank != 2 or not gamma:
        return "input_ids (B, S), a 2-D word table and gamma are needed"
    bdim, sdim = iv.shape
    hidden = wv.shape[1]
    if mask and (_elem(graph, mask) is None or graph.value(mask).rank != 2):
        return "mask of unknown type or not 2-D"
    if outs[1] and not mask and not isinstance(bdim, int):
        return "mask_index without a mask needs a known batch size"
    f32 = TensorProto.FLOAT
    total = b.op("Gather", [word, ids], f32, [bdim, sdim, hidden], axis=0)
    if pos_ids:
        pv = graph.value(pos_ids)
        positions = b.op("Gather", [pos, pos_ids], f32,
                         [None if pv is None or pv.shape is None else pv.shape[0], sdim,
                          hidden], axis=0)
    else:  # positions 0..S-1: the table's first S rows, broadcast over the batch
        if isinstance(sdim, int):
            end = b.const("end", np.array([sdim], np.int64))
        else:
            end = b.op("Shape", [ids], TensorProto.INT64, [1], start=1, end=2)
        positions = b.op("Slice", [pos, b.const("start", np.array([0], np.int64)), end,
                                   b.const("axis", np.array([0], np.int64))],
                         f32, [sdim, hidden])
    with_segments = bool(seg_ids and seg)
    total = b.op("Add", [total, positions], f32, [bdim, sdim, hidden],
                 out=None if with_segments else outs[2] or None)
    if with_segments:
        segments = b.op("Gather", [seg, seg_ids], f32, [bdim, sdim, hidden], axis=0)
        total = b.op("Add", [total, segments], f32, [bdim, sdim, hidden], out=outs[2] or None)
    b.op("LayerNormalization", [total, gamma] + ([beta] if beta else []), f32,
         [bdim, sdim, hidden], out=outs[0],
         epsilon=float(n.attrs.get("epsilon", _EMBED_EPSILON)), axis=-1)
    if outs[1]:
        i32 = TensorProto.INT32
        if mask:
            # onnxruntime counts the entries equal to 1 (not the nonzero ones)
            one = b.const("one", np.ones((), dtypes.from_onnx(_elem(graph, mask)).numpy))
            mshape = graph.value(mask).shape
            ones = b.op("Equal", [mask, one], TensorProto.BOOL, mshape)
            counts = b.op("Cast", [ones], i32, mshape, to=i32)
            b.op("ReduceSum", [counts, b.const("axes", np.array([1], np.int64))], i32, [bdim],
                 out=outs[1], keepdims=0)
        else:
            zeros = b.const("mask_index", np.zeros(bdim, np.int32))
            b.op("Identity", [zeros], i32, [bdim], out=outs[1])
    return None


_RULES = {"Attention": _attention, "EmbedLayerNormalization": _embed_layer_normalization,
          **_LINEAR_RULES}
