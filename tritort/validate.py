"""Load-time validation beyond onnx's checker, with ONNX Runtime's classes and wording.

The loader calls these on the model it has parsed, before any kernel exists:

- :func:`check_initializers`: every initializer holds as many values as its dims say (the
  checker only sees the small ones: the loader hands it the model without its weights);
- :func:`check_types`: every node input's type against its op schema's type constraints
  (``onnx.defs``), each type parameter bound to one type per node, and only optional
  inputs left empty;
- :func:`check_attribute_choices`: string and int attributes that name one of a few
  choices, where ORT's kernels refuse the others when they are created;
- :func:`check_before_inference`: nodes onnx's shape inference would abort the process on
  (a C++ assertion), refused before it runs;
- :func:`strict_inference`: onnx's shape inference in strict mode, whose errors ORT raises
  too (it runs the same inference functions while resolving the graph).

Classes follow ORT: a type outside an op's constraints is ``InvalidGraph``; a type parameter
bound to two types, an output type that contradicts its declaration, shape inference errors,
bad attribute choices and initializer data are ``Fail``. Messages name the node (unnamed nodes
by the name the runtime gives them, ``OpType_index``), the input, attribute or initializer,
and show what was expected against what the model has.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterator

import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from .errors import Fail, InvalidGraph

_A = AttributeProto
_VARIADIC = onnx.defs.OpSchema.FormalParameterOption.Variadic
_OPTIONAL = onnx.defs.OpSchema.FormalParameterOption.Optional


# ---------------------------------------------------------------------------------- helpers


def elem_name(elem_type: int) -> str:
    """ONNX's name of an element type, as in type strings: 'float', 'int64', 'float8e4m3fn'."""
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"undefined({elem_type})"


def type_str(tp: onnx.TypeProto | None) -> str | None:
    """The schema type string of a tensor, sequence or optional type ('tensor(float)',
    'seq(tensor(int64))', 'optional(tensor(float))'); None where not known or not checked
    (maps and sparse tensors)."""
    if tp is None:
        return None
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        e = tp.tensor_type.elem_type
        return f"tensor({elem_name(e)})" if e else None
    if which == "sequence_type":
        inner = type_str(tp.sequence_type.elem_type)
        return f"seq({inner})" if inner else None
    if which == "optional_type":
        inner = type_str(tp.optional_type.elem_type)
        return f"optional({inner})" if inner else None
    return None


def node_names(graph: onnx.GraphProto) -> list[str]:
    """The name each node goes by in the runtime and its messages (graph.py's rule)."""
    return [n.name or f"{n.op_type}_{i}" for i, n in enumerate(graph.node)]


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for a in node.attribute:
        if a.type == _A.GRAPH:
            yield a.name, a.g
        elif a.type == _A.GRAPHS:
            for g in a.graphs:
                yield a.name, g


_schemas: dict[tuple[str, str, int], Any] = {}


def schema_of(op_type: str, domain: str, opset: int | None):
    """The op's schema at the model's opset (cached), or None (custom domains, unknown ops)."""
    if opset is None:
        return None
    domain = "" if domain == "ai.onnx" else domain
    key = (domain, op_type, opset)
    if key not in _schemas:
        try:
            _schemas[key] = onnx.defs.get_schema(op_type, opset, domain)
        except Exception:  # onnx.defs.SchemaError: no such op in this domain at this opset
            _schemas[key] = None
    return _schemas[key]


# ---------------------------------------------------------------------------------- opsets


def check_opset_imports(model: onnx.ModelProto) -> None:
    """A model imports at least one opset (ORT's class and wording), and every node's domain
    is imported (the checker's rule, kept here for nodes the loader shows the checker under
    a stand-in domain)."""
    if not model.opset_import:
        raise Fail("Missing opset in the model. All ModelProtos MUST have at least one entry "
                   "that specifies which version of the ONNX OperatorSet is being imported.")
    imported = {"" if o.domain == "ai.onnx" else o.domain for o in model.opset_import}
    _check_domains(model.graph, imported)


def _check_domains(graph: onnx.GraphProto, imported: set[str]) -> None:
    for name, node in zip(node_names(graph), graph.node):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain not in imported:
            raise InvalidGraph(f"This is an invalid model. In Node '{name}' ({node.op_type}): "
                               f"No opset import for domain '{domain or 'ai.onnx'}'; the model "
                               f"imports {sorted(d or 'ai.onnx' for d in imported)}")
        for _, g in _subgraphs(node):
            _check_domains(g, imported)


# ----------------------------------------------------------------------------- initializers

# element type -> (TensorProto field of its typed values, values per element as a fraction)
_FIELDS = {
    TensorProto.FLOAT: ("float_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1), TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1), TensorProto.STRING: ("string_data", 1),
}
for _t in ("INT32", "INT16", "INT8", "UINT16", "UINT8", "BOOL", "FLOAT16", "BFLOAT16",
           "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0"):
    _FIELDS[getattr(TensorProto, _t)] = ("int32_data", 1)
_PACKED = {}  # sub-byte types: elements per byte (and per int32_data entry)
for _t, _per in (("INT4", 2), ("UINT4", 2), ("FLOAT4E2M1", 2), ("INT2", 4), ("UINT2", 4)):
    if hasattr(TensorProto, _t):
        _PACKED[getattr(TensorProto, _t)] = _per
        _FIELDS[getattr(TensorProto, _t)] = ("int32_data", 1)
_BYTES = {TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.INT64: 8,
          TensorProto.UINT64: 8, TensorProto.INT32: 4, TensorProto.UINT32: 4,
          TensorProto.INT16: 2, TensorProto.UINT16: 2, TensorProto.FLOAT16: 2,
          TensorProto.BFLOAT16: 2, TensorProto.COMPLEX64: 8, TensorProto.COMPLEX128: 16}


def _item_bytes(elem_type: int) -> int | None:
    if elem_type in _BYTES:
        return _BYTES[elem_type]
    if elem_type in _FIELDS and _FIELDS[elem_type][0] == "int32_data" \
            and elem_type not in _PACKED:
        return 1  # int8, uint8, bool, float8
    return None


def tensor_data_error(t: TensorProto, read_raw: bool = True) -> str | None:
    """Why ``t``'s stored values do not fill its dims, or None. External data is not read;
    with ``read_raw`` False neither is raw_data (reading it copies it)."""
    if t.data_location == TensorProto.EXTERNAL or t.HasField("segment"):
        return None
    dims = list(t.dims)
    shape = f"dims {dims} ({elem_name(t.data_type)})"
    if any(d < 0 for d in dims):
        return f"{shape}: a dimension is negative"
    count = math.prod(dims)
    if t.data_type not in _FIELDS:
        return None if t.data_type in _PACKED or t.data_type else f"{shape}: no element type"
    per = _PACKED.get(t.data_type)
    if t.HasField("raw_data"):
        if t.data_type == TensorProto.STRING:
            return f"{shape}: strings cannot be stored in raw_data"
        item = _item_bytes(t.data_type)
        expected = -(-count // per) if per else (count * item if item else None)
        if read_raw and expected is not None and len(t.raw_data) != expected:
            return (f"{shape} need {expected} bytes of raw_data, the initializer has "
                    f"{len(t.raw_data)}")
        return None
    field, values_per = _FIELDS[t.data_type]
    have = len(getattr(t, field))
    expected = -(-count // per) if per else count * values_per
    if count and have != expected:
        return f"{shape} need {expected} values in {field}, the initializer has {have}"
    return None


def initializer_error(t: TensorProto, why: str) -> Fail:
    return Fail(f"Initializer '{t.name}': {why}. The data does not match the declared shape; "
                "fix the initializer in the model.")


def check_initializers(graph: onnx.GraphProto, raw_limit: int) -> None:
    """Every initializer's data matches its dims, in this graph and its subgraphs. The
    raw_data of initializers over ``raw_limit`` elements is left to :func:`to_array`."""
    for t in graph.initializer:
        why = tensor_data_error(t, read_raw=math.prod(t.dims) <= raw_limit)
        if why is not None:
            raise initializer_error(t, why)
    for n in graph.node:
        for _, g in _subgraphs(n):
            check_initializers(g, raw_limit)


def to_array(t: TensorProto) -> Any:
    """``numpy_helper.to_array``, whose failures on malformed data are ``Fail`` naming the
    initializer."""
    try:
        return numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001  (ValueError, TypeError, ... from numpy)
        why = tensor_data_error(t) or f"its data cannot be read ({type(e).__name__}: {e})"
        raise initializer_error(t, why) from None


# ------------------------------------------------------------------------------------ types


def _graph_types(graph: onnx.GraphProto, outer: dict[str, onnx.TypeProto]
                 ) -> dict[str, onnx.TypeProto]:
    types = dict(outer)
    for t in graph.initializer:
        types[t.name] = onnx.helper.make_tensor_type_proto(t.data_type, None)
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.WhichOneof("value") is not None:
            types[vi.name] = vi.type
    return types


def check_types(graph: onnx.GraphProto, opsets: dict[str, int],
                outer: dict[str, onnx.TypeProto] | None = None) -> None:
    """Each node's input types against its schema (``graph`` carries inferred value_info)."""
    types = _graph_types(graph, outer or {})
    for name, node in zip(node_names(graph), graph.node):
        schema = schema_of(node.op_type, node.domain, opsets.get(
            "" if node.domain == "ai.onnx" else node.domain))
        if schema is not None:
            _check_node_types(node, name, schema, types)
        for _, g in _subgraphs(node):
            check_types(g, opsets, types)


def _check_node_types(node, name: str, schema, types) -> None:
    formal = list(schema.inputs)
    if not formal:
        return
    constraints = {tc.type_param_str: [s.replace(" ", "") for s in tc.allowed_type_strs]
                   for tc in schema.type_constraints}
    bound: dict[str, tuple[str, str]] = {}
    for i, value in enumerate(node.input):
        if i >= len(formal) and formal[-1].option != _VARIADIC:
            break  # too many inputs: the checker's error
        param = formal[min(i, len(formal) - 1)]
        if not value and param.option != _OPTIONAL:
            raise InvalidGraph(
                f"This is an invalid model. In Node '{name}' ({node.op_type}): input {i} "
                f"('{param.name}') is empty, but only optional inputs may be omitted; it is "
                f"{'variadic' if param.option == _VARIADIC else 'required'}.")
        actual = type_str(types.get(value)) if value else None
        if actual is None:
            continue
        allowed = constraints.get(param.type_str, [param.type_str.replace(" ", "")])
        if actual not in allowed:
            raise InvalidGraph(
                f"This is an invalid model. Type Error: Type '{actual}' of input parameter "
                f"({value}) of operator ({node.op_type}) in node ({name}) is invalid: input "
                f"{i} ('{param.name}', type {param.type_str}) of {node.op_type}-"
                f"{schema.since_version} accepts {_choices(allowed)}.")
        if param.type_str in constraints and (param.option != _VARIADIC or
                                              param.is_homogeneous):
            first = bound.setdefault(param.type_str, (actual, value))
            if first[0] != actual:
                raise Fail(
                    f"Type Error: Type parameter ({param.type_str}) of Optype ({node.op_type}) "
                    f"bound to different types ({first[0]} and {actual}) in node ({name}): "
                    f"input '{first[1]}' is {first[0]}, input '{value}' is {actual}; "
                    f"they must be the same type.")


def _choices(allowed: list[str], limit: int = 12) -> str:
    if len(allowed) <= limit:
        return ", ".join(allowed)
    return ", ".join(allowed[:limit]) + f", ... ({len(allowed)} types)"


# -------------------------------------------------------------------------- attribute choices

_AUTO_PAD = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
_RESIZE = {
    "mode": ("nearest", "linear", "cubic"),
    "coordinate_transformation_mode": (
        "half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
        "asymmetric", "tf_crop_and_resize", "tf_half_pixel_for_nn"),
    "nearest_mode": ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"),
    "keep_aspect_ratio_policy": ("stretch", "not_larger", "not_smaller"),
}
_REDUCTION = ("none", "add", "mul", "max", "min")
_RNN_DIRECTION = ("forward", "reverse", "bidirectional")

# (domain, op_type) -> {attribute: the values some version of the op accepts}. ORT's kernels
# refuse other values when they are created; the schemas' inference does not always.
ATTRIBUTE_CHOICES: dict[tuple[str, str], dict[str, tuple]] = {
    ("", "BitShift"): {"direction": ("LEFT", "RIGHT")},
    ("", "LpNormalization"): {"p": (1, 2)},
    ("", "Cast"): {"round_mode": ("up", "down", "nearest")},
    ("", "CastLike"): {"round_mode": ("up", "down", "nearest")},
    ("", "Resize"): _RESIZE,
    ("", "Upsample"): {"mode": ("nearest", "linear", "bilinear")},
    ("", "Pad"): {"mode": ("constant", "reflect", "edge", "wrap")},
    ("", "DepthToSpace"): {"mode": ("DCR", "CRD")},
    ("", "ScatterElements"): {"reduction": _REDUCTION},
    ("", "ScatterND"): {"reduction": _REDUCTION},
    ("", "GridSample"): {"mode": ("bilinear", "nearest", "bicubic", "linear", "cubic"),
                         "padding_mode": ("zeros", "border", "reflection")},
    ("", "RNN"): {"direction": _RNN_DIRECTION, "layout": (0, 1)},
    ("", "GRU"): {"direction": _RNN_DIRECTION, "layout": (0, 1)},
    ("", "LSTM"): {"direction": _RNN_DIRECTION, "layout": (0, 1)},
    ("", "Gelu"): {"approximate": ("none", "tanh")},
    ("", "RoiAlign"): {"mode": ("avg", "max"),
                       "coordinate_transformation_mode": ("half_pixel", "output_half_pixel")},
    ("", "StringNormalizer"): {"case_change_action": ("LOWER", "UPPER", "NONE")},
    ("", "NonMaxSuppression"): {"center_point_box": (0, 1)},
    ("", "Mod"): {"fmod": (0, 1)},
    ("", "CumSum"): {"exclusive": (0, 1), "reverse": (0, 1)},
    ("", "CumProd"): {"exclusive": (0, 1), "reverse": (0, 1)},
    ("", "TensorScatter"): {"mode": ("linear", "circular")},
    # onnx's reference computes batch statistics for any non-zero value, onnxruntime only
    # for 1: the two disagree on the numbers, so only the values both read alike load
    ("", "BatchNormalization"): {"training_mode": (0, 1)},
    ("ai.onnx.ml", "CastMap"): {"cast_to": ("TO_FLOAT", "TO_INT64", "TO_STRING"),
                                "map_form": ("DENSE", "SPARSE")},
    ("ai.onnx.ml", "Normalizer"): {"norm": ("MAX", "L1", "L2")},
}
for _op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "AveragePool", "MaxPool",
            "LpPool"):
    ATTRIBUTE_CHOICES[("", _op)] = {"auto_pad": _AUTO_PAD}


def check_attribute_choices(graph: onnx.GraphProto) -> None:
    for name, node in zip(node_names(graph), graph.node):
        domain = "" if node.domain == "ai.onnx" else node.domain
        choices = ATTRIBUTE_CHOICES.get((domain, node.op_type))
        if choices:
            for a in node.attribute:
                allowed = choices.get(a.name)
                if allowed is None:
                    continue
                value = a.s.decode("utf-8", "replace") if a.type == _A.STRING else \
                    a.i if a.type == _A.INT else None
                if value is not None and value not in allowed:
                    raise Fail(f"{node.op_type} node '{name}': attribute '{a.name}' is "
                               f"{value!r}; expected one of {', '.join(map(repr, allowed))}")
        for _, g in _subgraphs(node):
            check_attribute_choices(g)


# -------------------------------------------------------- before onnx's inference sees a node


def _split_outputs(node: onnx.NodeProto) -> str | None:
    for a in node.attribute:
        if a.name == "num_outputs" and a.type == _A.INT and a.i != len(node.output):
            return (f"num_outputs is {a.i}, but the node has {len(node.output)} outputs; they "
                    "must be equal")
    return None


# (domain, op_type) -> the check of a node that onnx's shape inference would abort the
# process on (a C++ assertion, SIGABRT) rather than raise: such nodes never reach it
INFERENCE_PRECONDITIONS = {
    ("", "Split"): _split_outputs,
}


def check_before_inference(graph: onnx.GraphProto) -> None:
    for name, node in zip(node_names(graph), graph.node):
        check = INFERENCE_PRECONDITIONS.get(("" if node.domain == "ai.onnx" else node.domain,
                                             node.op_type))
        why = check(node) if check is not None else None
        if why is not None:
            raise Fail(f"Node ({name}) Op ({node.op_type}) [ShapeInferenceError] {why}")
        for _, g in _subgraphs(node):
            check_before_inference(g)


# -------------------------------------------------------------------------- strict inference

_ERROR = re.compile(r"\(op_type:(?P<op>[^,)]*)(?:, node name: (?P<name>[^)]*))?\): "
                    r"(?P<msg>[^\n]*)")
_ELEM_DIFF = re.compile(r"Inferred elem type differs from existing elem type: \((\d+)\) vs "
                        r"\((\d+)\)")
_SHAPE_CONFLICT = "Inferred shape and existing shape differ"


def strict_inference(model: onnx.ModelProto, opsets: dict[str, int]) -> bool:
    """onnx's shape inference in strict mode (on a copy): its errors raise ``Fail``. True
    when the model's declared shapes contradict the inferred ones (see below): the caller
    then types the graph from inference without them.

    Two places where strict mode is stricter than ORT about a model ORT runs:

    - a value's declared shape that contradicts the inferred one (in ``value_info``, graph
      outputs or a body's declarations): ORT warns and merges leniently, so on such an error
      the declared shapes (not types) are dropped and inference runs once more;
    - an op defined by a function body that reads an attribute the node leaves at its
      default (MeanVarianceNormalization's ``axes``): onnx does not apply the default inside
      the body, so the probe copy spells those defaults out.
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    _prepare(probe.graph, opsets)
    try:
        _infer(probe)
        return False
    except Exception as e:  # noqa: BLE001  (onnx raises InferenceError and others)
        error = e
    if _SHAPE_CONFLICT in str(error):
        drop_declared_shapes(probe.graph)
        try:
            _infer(probe)
            return True
        except Exception as e:  # noqa: BLE001
            error = e
    raise _inference_error(error, probe.graph) from None


def _infer(model: onnx.ModelProto) -> None:
    # data_prop: shapes computed by Shape -> Gather/Slice/Concat reach Reshape and Expand,
    # as in ORT's inference, which refuses what they contradict
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def _prepare(graph: onnx.GraphProto, opsets: dict[str, int]) -> None:
    """Name unnamed nodes as the runtime does; spell out defaults for function-bodied ops."""
    for name, node in zip(node_names(graph), graph.node):
        if not node.name:
            node.name = name
        schema = schema_of(node.op_type, node.domain, opsets.get(
            "" if node.domain == "ai.onnx" else node.domain))
        if schema is not None and schema.has_function and \
                not schema.has_type_and_shape_inference_function:
            present = {a.name for a in node.attribute}
            for attr_name, attr in schema.attributes.items():
                default = attr.default_value
                if attr_name not in present and default.type != _A.UNDEFINED:
                    filled = onnx.AttributeProto()
                    filled.CopyFrom(default)
                    filled.name = attr_name
                    node.attribute.append(filled)
        for _, g in _subgraphs(node):
            _prepare(g, opsets)


def drop_declared_shapes(graph: onnx.GraphProto, top: bool = True) -> None:
    """Clear the shapes (not the types) declared for values: ``value_info``, outputs, and
    inside bodies their inputs too."""
    values = list(graph.value_info) + list(graph.output) + ([] if top else list(graph.input))
    for vi in values:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    for node in graph.node:
        for _, g in _subgraphs(node):
            drop_declared_shapes(g, top=False)


def _declared(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    out = {vi.name: vi.type for vi in list(graph.value_info) + list(graph.output)}
    for node in graph.node:
        for _, g in _subgraphs(node):
            out.update(_declared(g))
    return out


def _find_node(graph: onnx.GraphProto, name: str) -> onnx.NodeProto | None:
    for node in graph.node:
        if node.name == name:
            return node
        for _, g in _subgraphs(node):
            found = _find_node(g, name)
            if found is not None:
                return found
    return None


def _inference_error(e: Exception, graph: onnx.GraphProto) -> Fail:
    text = str(e).strip()
    m = _ERROR.search(text)
    if m is None:
        return Fail(f"shape inference failed: {' '.join(text.split())[:800]}")
    op, name, msg = m.group("op"), m.group("name") or "", m.group("msg").strip()
    diff = _ELEM_DIFF.search(msg)
    if diff is not None:
        inferred, declared = int(diff.group(1)), int(diff.group(2))
        node = _find_node(graph, name)
        declared_types = _declared(graph)
        arg = next((o for o in (node.output if node is not None else []) if o and
                    declared_types.get(o) is not None and
                    declared_types[o].tensor_type.elem_type == declared), "?")
        return Fail(f"Type Error: Type (tensor({elem_name(declared)})) of output arg ({arg}) of "
                    f"node ({name}) does not match expected type (tensor({elem_name(inferred)})"
                    f"): {op} computes tensor({elem_name(inferred)}) there, the model declares "
                    f"tensor({elem_name(declared)}).")
    return Fail(f"Node ({name}) Op ({op}) {msg}")
