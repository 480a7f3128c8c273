"""The Triton provider's way into codegen: claim a node, compile the nodes it claimed.

Both are pure functions of their arguments: the graph (or the compile stage's view of it:
``value(name)`` for parsed types, ``initializers``, ``opsets``, ``position``, ``escapes``),
the nodes, and the session's :class:`Device`. Values computed from shapes are found by one
pre-pass over the graph (:func:`host_shape_values`), whatever order claims come in.
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tritort import dtypes
from tritort.contracts import INTERNAL_DOMAIN
from tritort.graph import Graph, Node, ValueInfo
from tritort.units import CompiledUnit

from . import target
from .fusion import AnchorGroup, AnchorPlanner, broadcast_shape, check_acyclic, \
    check_partition, fuse
from .keys import op_key
from .templates import TEMPLATES, Template, TemplateContext, dump

_SHAPE_OPS = ("Shape", "Size")
_DOMAINS = ("", INTERNAL_DOMAIN)
_SHAPE_DTYPES = ("int64", "int32")


@dataclass(frozen=True)
class Device:
    """What a session's kernels are built for: where they run, the tuned configs they use."""

    name: str  # the kernel cache's device key: 'cuda:0', 'triton-interpreter'
    torch_device: Any
    tuning: Any  # the codegen.tuning.TuningTable every launcher takes its configs from
    use_tf32: bool = False  # float32 GEMMs / Convs / attention dots on TF32 tensor cores


class Types:
    """Element types and shapes as codegen reads them, from ``value(name) -> ValueInfo``."""

    def __init__(self, value: Callable[[str], ValueInfo | None]) -> None:
        self.value = value

    def dtype(self, name: str) -> str | None:
        """The element type's name; None unless a tensor of known rank and type."""
        info = self.value(name)
        if info is None or not info.is_tensor or info.shape is None:
            return None
        row = dtypes.BY_ONNX.get(info.elem_type)
        return row.name if row is not None else None

    def shape(self, name: str) -> tuple | None:
        """Ints and dim_param names; None unless every dim is one of those."""
        info = self.value(name)
        if info is None or info.shape is None or any(d is None for d in info.shape):
            return None
        return info.shape

    def rank(self, name: str) -> int:
        return len(self.value(name).shape)


def template_context(types: Types, initializers: dict, opset: int,
                     device: Device) -> TemplateContext:
    return TemplateContext(types.dtype, types.shape, initializers.get, device.name,
                           device.torch_device, target.interpreted(), opset, device.tuning,
                           device.use_tf32)


# ------------------------------------------------------------------ values computed from shapes


def _shape_arithmetic(node: Node, types: Types, host: set[str] | frozenset[str]) -> bool:
    """Computes on a shape: reads a host shape value, and every value is an int64 or int32
    vector or scalar. On the device each such node would cost a launch, then a copy back for
    the Reshape that reads it (int32: LLM builders cast a dimension for GroupQueryAttention's
    total_sequence_length, which it reads on the host)."""
    if node.domain not in _DOMAINS or node.op_type in _SHAPE_OPS or \
            not any(v in host for v in node.inputs):
        return False
    values = [v for v in node.inputs + node.outputs if v]
    return all(types.dtype(v) in _SHAPE_DTYPES and types.rank(v) <= 1 for v in values)


def _scan_host_shapes(nodes: Sequence[Node], types: Types) -> frozenset[str]:
    host: set[str] = set()
    changed = True
    while changed:  # one pass when the nodes are in topological order, as ONNX wants
        changed = False
        for node in nodes:
            outputs = [o for o in node.outputs if o and o not in host]
            if outputs and ((node.op_type in _SHAPE_OPS and node.domain in _DOMAINS)
                            or _shape_arithmetic(node, types, host)):
                host.update(outputs)
                changed = True
    return frozenset(host)


_host_shapes: dict[int, tuple[weakref.ref, int, frozenset[str]]] = {}


def _forget_graph(key: int, ref: weakref.ref) -> None:
    if _host_shapes.get(key, (None,))[0] is ref:
        del _host_shapes[key]


def host_shape_values(graph: Graph) -> frozenset[str]:
    """The values of ``graph`` computed from shapes (Shape, Size, and int64 vector
    arithmetic on their results), which stay on the host where Reshape, Expand and the like
    read them. Scanned once per graph object (while it lives with as many nodes)."""
    key = id(graph)
    hit = _host_shapes.get(key)
    if hit is not None and hit[0]() is graph and hit[1] == len(graph.nodes):
        return hit[2]
    values = _scan_host_shapes(graph.nodes, Types(graph.value))
    _host_shapes[key] = (weakref.ref(graph, functools.partial(_forget_graph, key)),
                         len(graph.nodes), values)
    return values


# ------------------------------------------------------------------ claiming


def claim(node: Node, graph: Graph, device: Device) -> str | None:
    """None if codegen takes ``node`` of ``graph``, else why not."""
    from .lowering import LOWERINGS

    key = op_key(node)
    if key is None:
        return f"no Triton lowering for domain '{node.domain}'"
    types = Types(graph.value)
    if _shape_arithmetic(node, types, host_shape_values(graph)):
        return "shape arithmetic (integer vectors) stays on the host, where Reshape, " \
               "Expand and the like read it"
    template = TEMPLATES.get(key)
    if template is not None:
        return template.claim(node, template_context(types, graph.initializers,
                                                     graph.opsets[""], device))
    row = LOWERINGS.get(key)
    if row is None:
        return f"no Triton lowering for {key}"
    present = [i for i in node.inputs if i]
    if len(present) < row.min_inputs:
        return f"{node.op_type} with {len(present)} inputs"
    for value in present + [o for o in node.outputs if o]:
        dt = types.dtype(value)
        if dt is None:
            return f"element type or rank of '{value}' unknown at load time"
        if dt not in row.dtypes:
            return f"Triton's {node.op_type} does not take {dt} ('{value}')"
    if row.refuses_shapes is not None:
        reason = row.refuses_shapes(node.attrs, [types.shape(v) if v else None
                                                 for v in node.inputs])
        if reason:
            return reason
    if row.refuses is not None:
        return row.refuses(node.attrs, [types.dtype(v) for v in present])
    return None


# ------------------------------------------------------------------ compiling


def compile_nodes(nodes: Sequence[Node], info: Any,
                  device: Device) -> tuple[list[CompiledUnit], list[dict]]:
    """Units covering exactly ``nodes`` (claimed by :func:`claim`, in topological order): one
    per template node with the nodes fused into it (pointwise ones; a template node an anchor
    computes an operand from, as attention a RotaryEmbedding), then one per group of the
    remaining pointwise nodes; and a report of each unit (name, kernel, kind, nodes, cache
    path). ``info``: the compile stage's view of the graph."""
    types = Types(info.value)
    ctx = template_context(types, info.initializers, info.opsets[""], device)
    anchor_groups = AnchorPlanner(
        nodes, info.position, types.shape, types.dtype, info.escapes,
        lambda n, anchor, index, made_by: TEMPLATES[op_key(anchor)].takes_operand(
            n, ctx, anchor, index, made_by)).plan()
    anchors = {g.anchor.name: g for g in anchor_groups}
    # template nodes an anchor computes its operands from (RotaryEmbedding into attention)
    absorbed = {n.name for g in anchor_groups for n in g.prologue}
    units: list[CompiledUnit] = []
    reports: list[dict] = []
    template_groups: list[list[Node]] = []
    fused_names: set[str] = set()
    for index, node in enumerate(n for n in nodes
                                 if op_key(n) in TEMPLATES and n.name not in absorbed):
        template = TEMPLATES[op_key(node)]
        group = anchors.get(node.name)
        fusion = _tile_fusion(group, template, info, types) if group else None
        _check_declared(node, template, fusion)
        spec = template.build(node, ctx, f"{node.op_type.lower()}_{index}", fusion)
        members, outputs = [node], list(node.outputs)
        if fusion is not None:
            members, outputs = group.nodes, fusion.kernel_outputs(node.outputs)
            fused_names.update(n.name for n in members)
        template_groups.append(members)
        dump(spec.name, spec.ir_text, spec.source, spec.path, members)
        units.append(CompiledUnit(spec.name, members, spec.inputs, outputs, spec.fn,
                                  frozenset(spec.host_inputs)))
        reports.append(_report(spec.name, spec.kernel, template.kind, members, spec.path,
                               spec.cached))
    pointwise = [n for n in nodes if op_key(n) not in TEMPLATES and n.name not in fused_names]
    groups = fuse(pointwise, info.position, types.shape)
    check_partition(nodes, template_groups + groups)
    check_acyclic(template_groups + groups)
    for index, group in enumerate(groups):
        unit, report = _pointwise_kernel(group, index, info, types, device)
        units.append(unit)
        reports.append(report)
    return units, reports


def _report(name: str, kernel: str | None, kind: str, nodes: Sequence[Node], path: Any,
            cached: bool) -> dict:
    """One unit's line in the kernel reports: ``name`` the unit's (descriptive, as in the
    placement report and errors), ``kernel`` its jitted function's (``k_`` + the hash of its
    body, shared by every unit whose code is the same; None for a view)."""
    return {"name": name, "kernel": kernel, "kind": kind, "nodes": [n.name for n in nodes],
            "path": str(path), "cached": cached}


def _pointwise_kernel(group: list[Node], index: int, info: Any, types: Types,
                      device: Device) -> tuple[CompiledUnit, dict]:
    import torch

    from . import cache
    from .emit import emit
    from .pointwise import PointwiseLauncher, build_kernel

    names = {n.name for n in group}
    kernel = build_kernel(_kernel_name(group, index), group, types.dtype, types.rank,
                          lambda v: info.escapes(v, names))
    source = emit(kernel)
    fn, path, hit = cache.load(source, cache.KERNEL, device.name)
    dump(kernel.name, kernel.text(), source, path, group)
    out_types = [getattr(torch, dtypes.BY_NAME[p.dtype].torch) for p, _ in kernel.outputs]
    launcher = PointwiseLauncher(fn, kernel, out_types, device.torch_device)
    return (CompiledUnit(kernel.name, list(group), [p.name for p in kernel.inputs],
                         [p.name for p, _ in kernel.outputs], launcher),
            _report(kernel.name, path.stem, "pointwise", group, path, hit))


def _kernel_name(group: Sequence[Node], index: int) -> str:
    ops = "_".join(dict.fromkeys(n.op_type.lower() for n in group))[:48]
    return f"fused_{index}_{ops}"


def _check_declared(node: Node, template: Template, fusion: Any) -> None:
    """A template is given only the fused work it declares it takes."""
    given = {"prologue": fusion is not None and fusion.prologue is not None,
             "epilogue": fusion is not None and fusion.epilogue is not None,
             "operand_prologues": fusion is not None and bool(fusion.operands)}
    undeclared = [what for what, present in given.items()
                  if present and not getattr(template, what)]
    if undeclared:
        raise AssertionError(f"{node.describe()}: its template does not declare {undeclared}")


def _tile_fusion(group: AnchorGroup, template: Template, info: Any, types: Types):
    """The group's pointwise nodes lowered for its template kernel, or None to run the
    anchor alone (nothing fused, or the prologue's loads would not span the data)."""
    from .pointwise import build_kernel
    from .rowwise import TileFusion

    if not group.prologue and not group.epilogue:
        return None
    anchor = group.anchor
    data, result = anchor.inputs[0], anchor.outputs[0]
    names = {n.name for n in group.nodes}
    prologue = epilogue = None
    operands = {}
    if template.operand_prologues:  # one converting node per operand
        made = {o: n for n in group.prologue for o in n.outputs}
        operands = {i: made[anchor.inputs[i]] for i in template.operand_inputs
                    if i < len(anchor.inputs) and anchor.inputs[i] in made}
    elif group.prologue:
        prologue = build_kernel(f"{anchor.name}_prologue", group.prologue, types.dtype,
                                types.rank, lambda v: v == data)
        shapes = [types.shape(p.name) for p in prologue.inputs]
        if broadcast_shape(shapes) != types.shape(data) or len(prologue.outputs) != 1:
            return None
    if group.epilogue:
        epilogue = build_kernel(f"{anchor.name}_epilogue", group.epilogue, types.dtype,
                                types.rank, lambda v: info.escapes(v, names))
    fused = [(n.name, n.op_type) for n in group.prologue + group.epilogue]
    return TileFusion(prologue, epilogue, result, info.escapes(result, names), fused, operands,
                      data, prologue is not None and info.escapes(data, names),
                      template.per_element_epilogue)
