"""Load stage: bytes or path -> checked, inlined, shape-inferred model and its Graph."""
from __future__ import annotations

import heapq
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, inliner, numpy_helper

from . import contrib_shapes, validate
from .errors import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile
from .graph import Graph, outer_scope_names

# Newest opset this runtime knows, per domain, taken from the onnx schemas it was built on.
SUPPORTED_OPSETS: dict[str, int] = {}
for _schema in onnx.defs.get_all_schemas_with_history():
    _d = "" if _schema.domain == "ai.onnx" else _schema.domain
    SUPPORTED_OPSETS[_d] = max(SUPPORTED_OPSETS.get(_d, 0), _schema.since_version)
SUPPORTED_OPSETS[""] = max(SUPPORTED_OPSETS[""], onnx.defs.onnx_opset_version())


@dataclass
class ModelMetadata:
    producer_name: str
    graph_name: str
    domain: str
    description: str
    graph_description: str
    version: int
    custom_metadata_map: dict[str, str]


@dataclass
class LoadedModel:
    proto: onnx.ModelProto
    graph: Graph
    opsets: dict[str, int]
    metadata: ModelMetadata
    model_dir: Path | None


def read_model(source: Any) -> tuple[onnx.ModelProto, Path | None]:
    """Parse a path, PathLike, bytes or ModelProto without touching external data."""
    if isinstance(source, onnx.ModelProto):
        return source, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse(bytes(source), "<bytes>"), None
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.fspath(source))
        if not path.is_file():
            raise NoSuchFile(f"Load model from {path} failed: file does not exist")
        return _parse(path.read_bytes(), str(path)), path.resolve().parent
    raise InvalidArgument(f"a model is a path, bytes or onnx.ModelProto, got {type(source).__name__}")


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError has no stable import path
        raise InvalidProtobuf(f"Load model from {where} failed: protobuf parsing failed ({e})") from None
    if not model.HasField("graph"):
        raise InvalidProtobuf(f"Load model from {where} failed: no graph in the model "
                              f"({len(data)} bytes parsed)")
    return model


def opset_map(model: onnx.ModelProto) -> dict[str, int]:
    return {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in model.opset_import}


def check_opsets(opsets: dict[str, int]) -> None:
    for domain, version in opsets.items():
        newest = SUPPORTED_OPSETS.get(domain)
        if newest is not None and version > newest:
            raise InvalidGraph(f"the model imports opset {version} of domain "
                               f"'{domain or 'ai.onnx'}', newer than the newest supported ({newest})")


def resolve_external_data(model: onnx.ModelProto, model_dir: Path | None,
                          provided: dict[str, np.ndarray]) -> None:
    """Load external tensor data, refusing any location outside the model's folder.

    Tensors the session options provide are taken from there instead of from files."""
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        if tensor.name in provided:
            tensor.CopyFrom(numpy_helper.from_array(provided[tensor.name], tensor.name))
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        if model_dir is None:
            raise InvalidGraph(f"initializer '{tensor.name}' stores its data in "
                               f"'{info.location}', but the model was not loaded from a file; "
                               "load it by path or provide the tensor with "
                               "SessionOptions.add_external_initializers")
        target = (model_dir / info.location).resolve()
        if os.path.isabs(info.location) or not target.is_relative_to(model_dir):
            raise InvalidGraph(f"initializer '{tensor.name}': external data location "
                               f"'{info.location}' is outside the model folder {model_dir}")
        if not target.is_file():
            raise NoSuchFile(f"initializer '{tensor.name}': external data file {target} "
                             "does not exist")
        external_data_helper.load_external_data_for_tensor(tensor, str(model_dir))
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def run_checker(model: onnx.ModelProto) -> None:
    """onnx's checker, minus its demand that graph inputs and outputs declare a shape
    (a tensor of unknown rank is legal, and onnxruntime loads such models)."""
    shapeless = [vi.type.tensor_type for vi in list(model.graph.input) + list(model.graph.output)
                 if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape")]
    for t in shapeless:
        t.shape.SetInParent()
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise InvalidGraph(f"This is an invalid model. {_checker_message(e)}") from None
    finally:
        for t in shapeless:
            t.ClearField("shape")


WEIGHT_ELEMENTS = 1024  # larger initializers are weights: no shape computation reads them

# Ops onnxruntime registers in the default domain where onnx has no schema, with the first
# onnx opset that defines the op (None: none does). ORT-optimized models carry them as
# ai.onnx nodes (T5/LLaMA's SimplifiedLayerNormalization; LayerNormalization below opset 17),
# so the checker and inference see them under a stand-in domain, as custom ops.
ORT_DEFAULT_DOMAIN_OPS = {"SimplifiedLayerNormalization": None, "LayerNormalization": 17}
_STAND_IN_DOMAIN = "ai.tritort.ort_default_domain"


def _hide_ort_default_domain_ops(graph: onnx.GraphProto, opset: int) -> list[int]:
    """Move the top-level nodes of ORT_DEFAULT_DOMAIN_OPS that onnx cannot check at
    ``opset`` into the stand-in domain; returns their indices."""
    hidden = []
    for i, node in enumerate(graph.node):
        if node.domain in ("", "ai.onnx") and node.op_type in ORT_DEFAULT_DOMAIN_OPS:
            first = ORT_DEFAULT_DOMAIN_OPS[node.op_type]
            if first is None or opset < first:
                node.domain = _STAND_IN_DOMAIN
                hidden.append(i)
    return hidden


def check_and_infer(model: onnx.ModelProto) -> None:
    """The checker, shape inference and validation (``validate``), run on the model minus
    its weights.

    All serialize the model they are given; without the weights that is a few kilobytes,
    not the whole file. Weights become typed graph inputs for the duration; the inferred
    value types and node annotations are copied back. The inference that types the graph is
    lenient; the strict one that follows only validates.
    """
    skeleton = onnx.ModelProto()
    for field in ("ir_version", "opset_import", "producer_name", "domain", "model_version"):
        if model.HasField(field) if field != "opset_import" else True:
            if field == "opset_import":
                skeleton.opset_import.extend(model.opset_import)
            else:
                setattr(skeleton, field, getattr(model, field))
    src, dst = model.graph, skeleton.graph
    dst.name = src.name
    dst.node.extend(src.node)
    dst.input.extend(src.input)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)
    dst.sparse_initializer.extend(src.sparse_initializer)
    listed = {i.name for i in src.input}
    # before IR 4 the checker wants every initializer listed as an input too; onnxruntime
    # loads IR-3 models that do not list them (constants, as load() makes them)
    old_ir = model.ir_version < 4
    for t in src.initializer:
        small = int(np.prod(t.dims, dtype=np.int64)) <= WEIGHT_ELEMENTS
        if small:
            dst.initializer.append(t)
        if t.name not in listed and (not small or old_ir):
            dst.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    hidden = _hide_ort_default_domain_ops(dst, opset_map(model).get("", 1))
    if hidden:
        skeleton.opset_import.append(onnx.helper.make_opsetid(_STAND_IN_DOMAIN, 1))
    run_checker(skeleton)
    validate.check_before_inference(skeleton.graph)
    inferred = contrib_shapes.infer_with_contrib(skeleton, _lenient_inference, _STAND_IN_DOMAIN)
    opsets = opset_map(model)
    validate.check_types(inferred.graph, opsets)
    if validate.strict_inference(skeleton, opsets):
        # declared shapes that contradict inference: ORT merges leniently and runs the
        # model; the runtime types it from inference (kernels specialize on those shapes)
        relaxed = onnx.ModelProto()
        relaxed.CopyFrom(skeleton)
        validate.drop_declared_shapes(relaxed.graph)
        inferred = contrib_shapes.infer_with_contrib(relaxed, _lenient_inference,
                                                     _STAND_IN_DOMAIN)
    validate.check_attribute_choices(skeleton.graph)
    for i in hidden:  # back in the default domain, where the kernel registries look
        inferred.graph.node[i].domain = ""
    for field in ("node", "output", "value_info"):
        src.ClearField(field)
        getattr(src, field).extend(getattr(inferred.graph, field))


def densify_sparse_initializers(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    """Sparse initializers become dense ones, as ORT makes them at load (every kernel reads
    dense tensors); indices outside the dims are ``Fail``, naming the initializer. A graph
    output of sparse type that one of them is is typed dense for checking and inference:
    returns those outputs' declared types, for :func:`restore_sparse_outputs`."""
    declared = {}
    densified = {sp.values.name for sp in graph.sparse_initializer}
    for output in graph.output:
        if output.name in densified and output.type.HasField("sparse_tensor_type"):
            declared[output.name] = onnx.TypeProto()
            declared[output.name].CopyFrom(output.type)
            sparse_type = output.type.sparse_tensor_type
            output.type.CopyFrom(onnx.helper.make_tensor_type_proto(
                sparse_type.elem_type, None))
            output.type.tensor_type.shape.CopyFrom(sparse_type.shape)
    for sp in list(graph.sparse_initializer):
        name, dims = sp.values.name, [int(d) for d in sp.dims]
        values = validate.to_array(sp.values).reshape(-1)
        indices = validate.to_array(sp.indices).astype(np.int64)
        size = int(np.prod(dims, dtype=np.int64))
        if indices.ndim == 2 and len(dims) > 1:
            if indices.shape[1] != len(dims) or (indices < 0).any() or \
                    (indices >= np.array(dims)).any():
                raise Fail(f"Sparse initializer '{name}': indices {indices.tolist()[:4]} do not "
                           f"address dims {dims}")
            indices = np.ravel_multi_index(tuple(indices.T), dims)
        indices = indices.reshape(-1)
        if indices.size != values.size or (indices < 0).any() or (indices >= size).any():
            raise Fail(f"Sparse initializer '{name}': {indices.size} indices for {values.size} "
                       f"values, each within the {size} elements of dims {dims}")
        dense = np.zeros(size, dtype=values.dtype)
        dense[indices] = values
        graph.initializer.append(numpy_helper.from_array(dense.reshape(dims), name))
    graph.ClearField("sparse_initializer")
    return declared


def restore_sparse_outputs(graph: onnx.GraphProto, declared: dict[str, onnx.TypeProto]) -> None:
    """Graph outputs back to their declared sparse types (the session returns them sparse)."""
    for output in graph.output:
        if output.name in declared:
            output.type.CopyFrom(declared[output.name])


def _lenient_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # inference errors are model errors, whatever their class
        raise InvalidGraph(f"shape inference failed: {_first_line(e)}") from None


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put the nodes of the main graph in topological order, as ORT does for a model whose
    nodes are listed out of order (the checker requires the order); the order of a sorted
    graph is kept. A cycle is ``Fail``, ORT's class. Like ORT, bodies are not sorted: the
    checker refuses one out of order."""
    produced = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    needs = [{produced[name] for name in _reads(n) if name in produced} for n in graph.node]
    if all(all(j < i for j in deps) for i, deps in enumerate(needs)):
        return
    # Kahn's algorithm, lowest index first: a sorted prefix keeps its order
    pending = [len(deps) for deps in needs]
    readers: list[list[int]] = [[] for _ in needs]
    for i, deps in enumerate(needs):
        for j in deps:
            readers[j].append(i)
    ready = [i for i, n in enumerate(pending) if n == 0]
    heapq.heapify(ready)
    order, placed = [], [False] * len(needs)
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        placed[i] = True
        for r in readers[i]:
            pending[r] -= 1
            if pending[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(needs):
        stuck = [graph.node[i] for i in range(len(needs)) if not placed[i]]
        names = ", ".join(f"{n.op_type} '{n.name}'" for n in stuck[:6])
        raise Fail(f"This is an invalid model. Error: the graph is not acyclic: {names} "
                   f"{'...' if len(stuck) > 6 else ''}read each other's outputs, directly or "
                   "through other nodes.")
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def _reads(node: onnx.NodeProto) -> set[str]:
    """What a node reads: its inputs and the outer-scope names its subgraphs use."""
    return {i for i in node.input if i} | outer_scope_names(node)


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give unnamed nodes the name the runtime knows them by (``OpType_index``), so every
    message, the checker's and inference's included, names the node."""
    for name, node in zip(validate.node_names(graph), graph.node):
        if not node.name:
            node.name = name
        for attr in node.attribute:
            for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                name_nodes(g)


def check_node_inputs(graph: onnx.GraphProto) -> None:
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    known |= {t.values.name for t in graph.sparse_initializer}
    known |= {o for n in graph.node for o in n.output if o}
    for n in graph.node:
        for name in n.input:
            if name and name not in known:
                raise InvalidGraph(f"{n.op_type} node '{n.name}': input '{name}' is not a graph "
                                   "input, an initializer, or the output of any node")
    for o in graph.output:
        if o.name not in known:
            raise InvalidGraph(f"graph output '{o.name}' is not produced by any node, input or "
                               "initializer")


def apply_free_dimension_overrides(model: onnx.ModelProto, by_name: dict[str, int],
                                   by_denotation: dict[str, int]) -> None:
    if not by_name and not by_denotation:
        return
    for vi in model.graph.input:
        if not vi.type.HasField("tensor_type"):
            continue
        for dim in vi.type.tensor_type.shape.dim:
            value = by_name.get(dim.dim_param) if dim.dim_param else None
            if value is None and dim.denotation:
                value = by_denotation.get(dim.denotation)
            if value is not None:
                dim.dim_value = value


def load(source: Any, *, initializers: dict[str, np.ndarray] | None = None,
         free_dims_by_name: dict[str, int] | None = None,
         free_dims_by_denotation: dict[str, int] | None = None,
         external_dir: str | None = None) -> LoadedModel:
    model, model_dir = read_model(source)
    if model_dir is None and external_dir:
        model_dir = Path(external_dir).resolve()
    initializers = dict(initializers or {})
    opsets = opset_map(model)
    check_opsets(opsets)
    if isinstance(source, onnx.ModelProto):
        model = _copy(model)  # the caller's proto is never modified
    resolve_external_data(model, model_dir, initializers)
    if model.functions:
        model = inliner.inline_local_functions(model)
    sparse_outputs = densify_sparse_initializers(model.graph)
    check_node_inputs(model.graph)
    name_nodes(model.graph)
    validate.check_opset_imports(model)
    sort_nodes(model.graph)
    validate.check_initializers(model.graph, WEIGHT_ELEMENTS)
    apply_free_dimension_overrides(model, free_dims_by_name or {}, free_dims_by_denotation or {})
    check_and_infer(model)
    restore_sparse_outputs(model.graph, sparse_outputs)
    graph_inits = {t.name: validate.to_array(t) for t in model.graph.initializer}
    for name, value in initializers.items():
        _check_override(model.graph, name, value, graph_inits)
        graph_inits[name] = value
    graph = Graph.from_proto(model.graph, opsets, graph_inits)
    if model.ir_version < 4:
        # before IR 4 every initializer had to be listed as an input too; they are constants
        graph.inputs = [vi for vi in graph.inputs if vi.name not in graph.initializers]
    return LoadedModel(model, graph, opsets, _metadata(model), model_dir)


def _check_override(graph: onnx.GraphProto, name: str, value: np.ndarray,
                    inits: dict[str, np.ndarray]) -> None:
    inputs = {i.name for i in graph.input}
    if name not in inits and name not in inputs:
        raise InvalidArgument(f"initializer '{name}' given in the session options is neither an "
                              f"initializer nor an input of the model; those are: "
                              f"{sorted(set(inits) | inputs)}")
    if name in inits:
        old = inits[name]
        if old.dtype != value.dtype or old.shape != value.shape:
            raise InvalidArgument(f"initializer '{name}': the model has {old.dtype}{list(old.shape)},"
                                  f" the session options give {value.dtype}{list(value.shape)}")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


_CHECKER_CONTEXT = re.compile(r"==> Context: Bad node spec for node\. Name: (.*?) OpType: (\S+)")


def _checker_message(e: Exception) -> str:
    """The checker's first lines, naming the node its context line names."""
    text = _first_line(e)
    m = _CHECKER_CONTEXT.search(str(e))
    if m is not None:
        return f"In Node '{m.group(1)}' ({m.group(2)}): {text}"
    return text


def _first_line(e: Exception) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip() and not ln.startswith("==>")]
    return " ".join(lines[:3]) if lines else type(e).__name__


def _metadata(model: onnx.ModelProto) -> ModelMetadata:
    return ModelMetadata(
        producer_name=model.producer_name,
        graph_name=model.graph.name,
        domain=model.domain,
        description=model.doc_string,
        graph_description=model.graph.doc_string,
        version=int(model.model_version),
        custom_metadata_map={p.key: p.value for p in model.metadata_props},
    )
