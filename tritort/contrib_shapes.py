"""Output types of onnxruntime's contrib operators, which onnx's shape inference does not know.

Without them every value a ``com.microsoft`` node makes (and everything computed from it)
would be untyped, and codegen claims only typed values. :func:`infer_with_contrib` runs the
given inference, types the outputs of the contrib nodes whose inputs are now typed by the
rules below and what follows them by the ai.onnx schemas' own inference (one walk in node
order), and runs the inference again with those types, until nothing more is learnt.

A rule maps the node's input types (``onnx.TypeProto`` or None) to its output types (None:
unknown). Shapes are copied dim by dim (values, parameters, or unknown dims).
"""
from __future__ import annotations

from typing import Callable, Sequence

import onnx

MS_DOMAIN = "com.microsoft"
FLOAT = onnx.TensorProto.FLOAT
DOUBLE = onnx.TensorProto.DOUBLE

Type = onnx.TypeProto
Rule = Callable[[onnx.NodeProto, Sequence[Type | None]], list[Type | None]]


def _tensor(elem: int, dims: Sequence[onnx.TensorShapeProto.Dimension] | None) -> Type:
    t = onnx.TypeProto()
    t.tensor_type.elem_type = elem
    if dims is not None:
        t.tensor_type.shape.SetInParent()
        for d in dims:
            t.tensor_type.shape.dim.add().CopyFrom(d)
    return t


def _dims(t: Type | None) -> list | None:
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    return list(t.tensor_type.shape.dim)


def _elem(t: Type | None) -> int:
    return t.tensor_type.elem_type if t is not None else 0


def _one() -> onnx.TensorShapeProto.Dimension:
    d = onnx.TensorShapeProto.Dimension()
    d.dim_value = 1
    return d


def _like_first(node, ins):
    return [_tensor(_elem(ins[0]), _dims(ins[0]))] if ins and ins[0] is not None else [None]


def _fresh(d: onnx.TensorShapeProto.Dimension) -> bool:
    """A dim that says nothing: unknown, or a name onnx's inference made up for one."""
    return not d.HasField("dim_value") and (
        not d.HasField("dim_param") or d.dim_param.startswith("unk__"))


def _merge(a: list | None, b: list | None, agree: bool) -> list | None:
    """Numpy broadcast of two dim lists, right-aligned. ``agree``: the spec says the dims are
    equal where both exist (or b's is 1), so a named or known dim on either side is the dim."""
    if a is None or b is None:
        return a if b is None else (b if a is None else None)
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else None
        y = b[-i] if i <= len(b) else None
        if x is None or y is None:
            out.append(x if y is None else y)
        elif _value(y) == 1 or (not _fresh(x) and _fresh(y) and (agree or _value(x) not in
                                                                  (None, 1))):
            out.append(x)
        elif _value(x) == 1 or (_fresh(x) and not _fresh(y) and (agree or _value(y) != 1)):
            out.append(y)
        elif x == y:
            out.append(x)
        else:
            out.append(onnx.TensorShapeProto.Dimension())
    return out[::-1]


def _skip_norm(node, ins):
    """(y, mean, inv_std_var, input_skip_bias_sum): statistics float32, (..., 1). The input
    and the skip have one shape (the skip may lack or be 1 in the batch), so what either
    knows of it is the output's shape."""
    x = ins[0]
    if x is None:
        return [None] * 4
    skip = ins[1] if len(ins) > 1 else None
    dims = _merge(_dims(x), _dims(skip), agree=True) if _dims(x) is not None else None
    stats = None if dims is None else dims[:-1] + [_one()]
    return [_tensor(_elem(x), dims), _tensor(FLOAT, stats), _tensor(FLOAT, stats),
            _tensor(_elem(x), dims)]


def _axis_stats(x: Type, axis: int, elem: int) -> Type:
    dims = _dims(x)
    if dims is None:
        return _tensor(elem, None)
    a = axis + len(dims) if axis < 0 else axis
    return _tensor(elem, dims[:a] + [_one() for _ in dims[a:]])


def _stash(node, x: Type) -> int:
    stash = next((a.i for a in node.attribute if a.name == "stash_type"), FLOAT)
    return DOUBLE if _elem(x) == DOUBLE else stash


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), -1)


def _simplified_layer_norm(node, ins):
    """(Y in the scale's type, inv_std_var in the stash type) over axis..end."""
    x, scale = (list(ins) + [None, None])[:2]
    if x is None or scale is None:
        return [None, None]
    return [_tensor(_elem(scale), _dims(x)), _axis_stats(x, _axis(node), _stash(node, x))]


def _layer_norm(node, ins):
    """onnxruntime's LayerNormalization-1: Y like X, mean and inv_std_var in the stash type."""
    x = ins[0] if ins else None
    if x is None:
        return [None] * 3
    stats = _axis_stats(x, _axis(node), _stash(node, x))
    return [_tensor(_elem(x), _dims(x)), stats, stats]


def _bias_split_gelu(node, ins):
    x = ins[0] if ins else None
    if x is None:
        return [None]
    dims = _dims(x)
    if dims is not None and dims:
        last = onnx.TensorShapeProto.Dimension()
        if dims[-1].HasField("dim_value"):
            last.dim_value = dims[-1].dim_value // 2
        dims = dims[:-1] + [last]
    return [_tensor(_elem(x), dims)]


def _ints(node, name: str) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == name), [])


def _int(node, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _attention(node, ins):
    """Output (B, S, V hidden); present and the rest left to the kernel."""
    x, weights = (list(ins) + [None, None])[:2]
    if x is None:
        return [None]
    sizes = _ints(node, "qkv_hidden_sizes")
    w = _dims(weights)
    if sizes:
        hidden = sizes[2]
    elif w is not None and len(w) == 2 and w[1].HasField("dim_value"):
        hidden = w[1].dim_value // 3
    else:
        return [_tensor(_elem(x), None)]
    dims = _dims(x)
    return [_tensor(_elem(x), None if dims is None else dims[:2] + [_dim(hidden)])]


def _value(d: onnx.TensorShapeProto.Dimension | None) -> int | None:
    return d.dim_value if d is not None and d.HasField("dim_value") else None


def _known(value: int | None) -> onnx.TensorShapeProto.Dimension:
    return _dim(value) if value is not None else onnx.TensorShapeProto.Dimension()


def _cache(elem: int, batch, heads: int, head_size: int | None) -> Type:
    """present_key / present_value (B, N, L, H): the length depends on the run's values."""
    return _tensor(elem, [batch if batch is not None else _known(None), _known(heads or None),
                          _known(None), _known(head_size)])


def _multi_head_attention(node, ins):
    """Output (B, S, V hidden) for 3-D query and value (value's last dim), packed QKV
    (B, S, N, 3, H) or a value in heads (B, N, L, Hv); presents (B, N, L, H) with their
    length unknown; qk in the query's type."""
    ins = list(ins) + [None] * 3
    q, key, value = ins[:3]
    if q is None:
        return [None] * 4
    heads = _int(node, "num_heads")
    elem = _elem(q)
    qd, kd, vd = _dims(q), _dims(key), _dims(value)
    out, hk, hv = None, None, None
    if qd is not None and len(qd) == 5:
        hk = hv = _value(qd[4])
        out = qd[:2] + [_known(None if hv is None else heads * hv)]
    elif qd is not None and len(qd) == 3:
        if kd is not None and len(kd) == 5:
            hk = hv = _value(kd[4])
        else:
            width = _value(kd[-1]) if kd else None
            hk = width if kd is not None and len(kd) == 4 else \
                (width // heads if width is not None and heads else None)
            vwidth = _value(vd[-1]) if vd else None
            hv = vwidth if vd is not None and len(vd) == 4 else \
                (vwidth // heads if vwidth is not None and heads else None)
        out = qd[:2] + [vd[2] if vd is not None and len(vd) == 3 else
                        _known(None if hv is None else heads * hv)]
    batch = qd[0] if qd else None
    past_k, past_v, shared = (ins + [None] * 9)[6:9]
    if shared is not None:  # past_sequence_length: the presents are the shared past buffers
        return [_tensor(elem, out), _like_cache(past_k, elem), _like_cache(past_v, elem),
                _tensor(elem, None)]
    return [_tensor(elem, out), _cache(elem, batch, heads, hk), _cache(elem, batch, heads, hv),
            _tensor(elem, None)]


def _like_cache(past: Type | None, elem: int) -> Type:
    """A present that is its past buffer: the past's element type and shape."""
    return _tensor(_elem(past) if past is not None else elem, _dims(past))


def _group_query_attention(node, ins):
    """Output (B, S, N * Hv), presents (B, N_kv, L, H) with L unknown (it depends on
    total_sequence_length's value), output_qk in the query's type."""
    ins = list(ins) + [None] * 3
    q, key, value = ins[:3]
    if q is None:
        return [None] * 4
    n, nk = _int(node, "num_heads"), _int(node, "kv_num_heads")
    elem = _elem(q)
    qd, vd = _dims(q), _dims(value)
    width = _value(qd[2]) if qd is not None and len(qd) == 3 else None
    h = hv = None
    if key is None and width is not None and n + 2 * nk > 0:
        h = hv = width // (n + 2 * nk)
    elif width is not None and n:
        h = width // n
        vwidth = _value(vd[2]) if vd is not None and len(vd) == 3 else None
        hv = vwidth // nk if vwidth is not None and nk else None
    out = None if qd is None or len(qd) != 3 else \
        qd[:2] + [_known(None if hv is None else n * hv)]
    batch = qd[0] if qd else None
    past_k, past_v = ins[3:5]
    caches = []
    for past, size in ((past_k, h), (past_v, hv)):
        if past is None:
            caches.append(_cache(elem, batch, nk, size))
            continue
        # the past's element type (a quantized cache stays int8 / packed uint8) and row width
        # (4-bit caches pack two values a byte); window-sized caches keep its length too
        pd = _dims(past)
        row = pd[3] if pd is not None and len(pd) == 4 else _known(size)
        length = pd[2] if pd is not None and len(pd) == 4 and \
            _int(node, "sliding_window_cache") else _known(None)
        caches.append(_tensor(_elem(past), [batch if batch is not None else _known(None),
                                            _known(nk or None), length, row]))
    return [_tensor(elem, out), *caches, _tensor(elem, None)]


def _embed_layer_norm(node, ins):
    """(output (B, S, hidden) in the tables' type, mask_index int32 (B), embedding_sum)."""
    ids = ins[0] if ins else None
    table = ins[2] if len(ins) > 2 else None
    if ids is None or table is None:
        return [None] * 3
    idd, td = _dims(ids), _dims(table)
    dims = None if idd is None or td is None or len(td) != 2 else idd + [td[1]]
    mask = None if idd is None else idd[:1]
    return [_tensor(_elem(table), dims), _tensor(onnx.TensorProto.INT32, mask),
            _tensor(_elem(table), dims)]


def _matmul_n_bits(node, ins):
    """A (..., K) times the packed (K, N) weights: (..., N) in A's type."""
    a = ins[0] if ins else None
    if a is None:
        return [None]
    dims = _dims(a)
    return [_tensor(_elem(a), None if dims is None else dims[:-1] + [_dim(_int(node, "N"))])]


# ------------------------------------------------------------------ the QOperator set
# Outputs are in the y zero point's type where one is given, else in the quantized input's
# (the spec ties them: T for both); shapes as the float op's.

def _quantized(ins, zero_point: int, like: Type | None, dims) -> Type | None:
    zp = ins[zero_point] if len(ins) > zero_point else None
    elem = _elem(zp) or _elem(like)
    return _tensor(elem, dims) if elem else None


def _qlinear_binary(node, ins):
    """QLinearAdd/QLinearMul (A, sa, za, B, sb, zb, sc[, zc]): A and B broadcast."""
    a, b = ins[0] if ins else None, ins[3] if len(ins) > 3 else None
    if a is None:
        return [None]
    return [_quantized(ins, 7, a, None if b is None else _merge(_dims(a), _dims(b), False))]


def _qlinear_unary(node, ins):
    """(X, sx[, zx], sy[, zy]) -> Y of X's shape: Sigmoid, LeakyRelu, Softmax."""
    x = ins[0] if ins else None
    return [None if x is None else _quantized(ins, 4, x, _dims(x))]


def _qlinear_global_average_pool(node, ins):
    """(N, C, 1, ...) or, channels_last, (N, 1, ..., C)."""
    x = ins[0] if ins else None
    if x is None:
        return [None]
    dims = _dims(x)
    if dims is not None and len(dims) >= 3:
        if _int(node, "channels_last"):
            dims = dims[:1] + [_one() for _ in dims[1:-1]] + dims[-1:]
        else:
            dims = dims[:2] + [_one() for _ in dims[2:]]
    return [_quantized(ins, 4, x, dims)]


def _qlinear_average_pool(node, ins):
    """AveragePool's output shape (onnx's own inference, on the channels-first dims)."""
    x = ins[0] if ins else None
    if x is None:
        return [None]
    dims, last = _dims(x), bool(_int(node, "channels_last"))
    out = None
    if dims is not None and len(dims) >= 3:
        first = dims[:1] + dims[-1:] + dims[1:-1] if last else dims
        pool = onnx.helper.make_node("AveragePool", ["x"], ["y"])
        pool.attribute.extend(a for a in node.attribute if a.name != "channels_last")
        try:
            result = onnx.shape_inference.infer_node_outputs(
                onnx.defs.get_schema("AveragePool", 19, ""), pool,
                {"x": _tensor(FLOAT, first)})
            out = _dims(result.get("y"))
        except Exception:  # the kernel names what is wrong with the attributes
            out = None
        if out is not None and last:
            out = out[:1] + out[2:] + out[1:2]
    return [_quantized(ins, 4, x, out)]


def _qlinear_concat(node, ins):
    """(sy, zy, X0, sx0, zx0, ...): the Xs joined along ``axis``, in zy's type."""
    xs = [ins[i] if i < len(ins) else None for i in range(2, len(node.input), 3)]
    zy = ins[1] if len(ins) > 1 else None
    if zy is None or not xs:
        return [None]
    shapes = [_dims(x) for x in xs]
    dims = None
    if all(d is not None for d in shapes) and len({len(d) for d in shapes}) == 1:
        rank = len(shapes[0])
        axis = _int(node, "axis")
        axis = axis + rank if axis < 0 else axis
        if 0 <= axis < rank:
            dims = list(shapes[0])
            for i in range(rank):
                if i == axis:
                    sizes = [_value(d[i]) for d in shapes]
                    dims[i] = _known(None if None in sizes else sum(sizes))
                else:
                    dims[i] = next((d[i] for d in shapes if not _fresh(d[i])), dims[i])
    return [_tensor(_elem(zy), dims)]


def _qgemm(node, ins):
    """(A, sa, za, B, sb, zb[, C, sy, zy]): (M, N) by transA/transB; float without sy."""
    ins = list(ins) + [None] * 9
    a, b = ins[0], ins[3]
    if a is None:
        return [None]
    ad, bd = _dims(a), _dims(b)
    dims = None
    if ad is not None and bd is not None and len(ad) == 2 and len(bd) == 2:
        dims = [ad[1] if _int(node, "transA") else ad[0],
                bd[0] if _int(node, "transB") else bd[1]]
    if len(node.input) < 8 or not node.input[7]:
        return [_tensor(FLOAT, dims)]
    return [_quantized(ins, 8, a, dims)]


CONTRIB_RULES: dict[str, Rule] = {
    "Attention": _attention, "MultiHeadAttention": _multi_head_attention,
    "GroupQueryAttention": _group_query_attention,
    "EmbedLayerNormalization": _embed_layer_norm, "MatMulNBits": _matmul_n_bits,
    "Gelu": _like_first, "BiasGelu": _like_first, "FastGelu": _like_first,
    "QuickGelu": _like_first, "BiasAdd": _like_first, "RotaryEmbedding": _like_first,
    "BiasSplitGelu": _bias_split_gelu,
    "SkipLayerNormalization": _skip_norm, "SkipSimplifiedLayerNormalization": _skip_norm,
    "QLinearAdd": _qlinear_binary, "QLinearMul": _qlinear_binary,
    "QLinearSigmoid": _qlinear_unary, "QLinearLeakyRelu": _qlinear_unary,
    "QLinearSoftmax": _qlinear_unary, "QLinearConcat": _qlinear_concat,
    "QLinearAveragePool": _qlinear_average_pool,
    "QLinearGlobalAveragePool": _qlinear_global_average_pool, "QGemm": _qgemm,
}
# onnxruntime's default-domain ops (the loader checks them under a stand-in domain)
DEFAULT_DOMAIN_RULES: dict[str, Rule] = {
    "SimplifiedLayerNormalization": _simplified_layer_norm, "LayerNormalization": _layer_norm,
}


def _known_types(graph: onnx.GraphProto) -> dict[str, Type]:
    known = {t.name: _tensor(t.data_type, [_dim(d) for d in t.dims]) for t in graph.initializer}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            known[vi.name] = vi.type
    return known


def _dim(value: int) -> onnx.TensorShapeProto.Dimension:
    d = onnx.TensorShapeProto.Dimension()
    d.dim_value = value
    return d


def _has_shape(t: Type | None) -> bool:
    return t is not None and t.tensor_type.HasField("shape")


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Values known at load time, for the shape computations of the nodes walked."""
    data = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                data[node.output[0]] = value
    return data


def propagate(model: onnx.ModelProto, graph: onnx.GraphProto,
              domains: dict[str, dict[str, Rule]]) -> dict[str, Type]:
    """One walk in node order typing what ``graph`` (inferred as far as onnx goes) leaves
    untyped or shapeless: contrib nodes by the rules, ai.onnx nodes after them by their
    schemas' inference, so one walk crosses every chain of contrib nodes."""
    known = _known_types(graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    data = None
    learnt: dict[str, Type] = {}
    for node in graph.node:
        outputs = [o for o in node.output if o]
        if all(_has_shape(known.get(o)) for o in outputs):
            continue
        rule = domains.get(node.domain, {}).get(node.op_type)
        ins = [known.get(v) if v else None for v in node.input]
        if rule is not None:
            types = rule(node, ins)
        elif node.domain in ("", "ai.onnx") and all(t is not None or not v for t, v in
                                                     zip(ins, node.input)) and \
                not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                        for a in node.attribute):
            data = _constants(graph) if data is None else data
            try:
                schema = onnx.defs.get_schema(node.op_type, opset, "")
                result = onnx.shape_inference.infer_node_outputs(
                    schema, node, {v: t for v, t in zip(node.input, ins) if v},
                    {v: data[v] for v in node.input if v in data},
                    opset_imports=list(model.opset_import), ir_version=model.ir_version)
            except Exception:  # the full inference after the walk reports model errors
                continue
            types = [result.get(o) for o in node.output]
        else:
            continue
        for name, t in zip(node.output, types):
            have = known.get(name)
            if not name or t is None or not t.HasField("tensor_type") or \
                    (have is not None and (_has_shape(have) or not _has_shape(t))):
                continue
            if have is not None and _elem(have) != _elem(t):
                continue  # the declared type wins; the checker or the kernel says why
            learnt[name] = known[name] = t
    return learnt


def infer_with_contrib(model: onnx.ModelProto, infer: Callable[[onnx.ModelProto],
                       onnx.ModelProto], stand_in_domain: str) -> onnx.ModelProto:
    """``infer(model)``, rerun with what :func:`propagate` learns from there, until it
    learns nothing more (once or twice: each walk crosses every contrib node it can)."""
    domains = {MS_DOMAIN: CONTRIB_RULES, stand_in_domain: DEFAULT_DOMAIN_RULES}
    if not any(n.domain in domains for n in model.graph.node):
        return infer(model)
    work = None
    inferred = infer(model)
    for _ in range(len(model.graph.node)):
        learnt = propagate(model, inferred.graph, domains)
        if not learnt:
            break
        if work is None:
            work = onnx.ModelProto()
            work.CopyFrom(model)
        outputs = {o.name: o for o in work.graph.output}
        for name, t in learnt.items():
            if name in outputs:  # declared without a shape: the rule's shape fills it in
                outputs[name].type.CopyFrom(t)
            else:
                work.graph.value_info.append(onnx.helper.make_value_info(name, t))
        inferred = infer(work)
    return inferred
