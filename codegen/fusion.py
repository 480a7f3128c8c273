"""Fusion: which pointwise nodes share a kernel.

A group is a run of nodes that are consecutive in the graph's topological order (so no
path can leave the group and come back: the groups are cycle-free by construction) and
whose outputs all have the group's iteration shape, known symbolically at load time.
Broadcasting then happens only where group inputs are loaded. Independent siblings of
the same shape fuse too (horizontal fusion).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from tritort import dtypes
from tritort.graph import Node

from .keys import op_key
from .templates import TEMPLATES, Template

Shape = tuple  # of ints and dim_param strings

MAX_NODES = 64
MAX_INPUTS = 16


def fuse(nodes: Sequence[Node], position: dict[str, int],
         shape_of: Callable[[str], Shape | None]) -> list[list[Node]]:
    groups: list[list[Node]] = []
    group_shape: Shape | None = None
    for node in nodes:
        shapes = {shape_of(o) for o in node.outputs if o}
        shape = shapes.pop() if len(shapes) == 1 else None
        if groups and shape is not None and shape == group_shape and _fits(groups[-1], node) \
                and position[node.name] == position[groups[-1][-1].name] + 1:
            groups[-1].append(node)
            continue
        groups.append([node])
        group_shape = shape
    check_partition(nodes, groups)
    return groups


def _fits(group: list[Node], node: Node) -> bool:
    if len(group) >= MAX_NODES:
        return False
    produced = {o for n in group for o in n.outputs}
    external = {i for n in group + [node] for i in n.inputs if i and i not in produced}
    return len(external) <= MAX_INPUTS


def check_partition(nodes: Sequence[Node], groups: list[list[Node]]) -> None:
    """The groups must hold every node exactly once."""
    flat = [n.name for g in groups for n in g]
    if sorted(flat) != sorted(n.name for n in nodes) or len(set(flat)) != len(flat):
        raise AssertionError(f"fusion groups do not partition the nodes: {flat}")


# ------------------------------------------------- pointwise work fused into template kernels
#
# A template declares what it takes (codegen.templates.Template): a row-wise one (a Reduce*,
# Softmax, the normalizations) computes a pointwise prologue on the tiles it loads and a
# pointwise epilogue on the rows it reduced to (or, for Softmax and the normalizations, on
# each element of its result), so neither the data it reduces nor its raw result has to be
# written to memory and read back. A tiled one (MatMul, Gemm, Conv) takes an epilogue
# on its output tile (bias, activation, residual, cast) and a GEMM a converting prologue per
# operand; an attention takes a RotaryEmbedding (a template node that takes no fusion itself)
# on its query and key the same way, by its template's own rule.
#
# Why the groups stay cycle-free (and so can run as one kernel each):
# - prologue values are read only by the prologue and the anchor, except the data itself (a
#   residual stream the kernel stores), so the values leaving the group all depend on the
#   anchor or on that data. A path from them back into a prologue input would be a cycle in
#   the graph itself.
# - every epilogue node reads a group value, and its other inputs are produced before the
#   anchor in topological order (or, when a node this provider does not run produces them,
#   no such node sits between the anchor and the epilogue node), so they cannot depend on it;
#   with the data stored, before the prologue, and so are the anchor's other inputs.
# check_acyclic re-checks the result over the nodes this provider runs.

# A symbolic dimension counts as this many elements when estimating bytes.
ASSUMED_DIM = 1024
_NOT_FUSED_TYPES = dtypes.FLOAT8_OCP_TYPES  # special values need the pointwise emitter


def template_of(node: Node) -> Template | None:
    """The node's template (its declarations), or None for a pointwise node."""
    return TEMPLATES.get(op_key(node))


def estimated_bytes(shape: Shape, dtype: str) -> int:
    import numpy as np

    numel = 1
    for d in shape:
        numel *= d if isinstance(d, int) else ASSUMED_DIM
    return numel * np.dtype(dtypes.BY_NAME[dtype].numpy).itemsize


def prologue_score(data_bytes: int, input_bytes: int, passes: int) -> int:
    """Bytes saved by computing a prologue inside its reduction (positive: fuse).

    Apart, the pointwise kernel reads its inputs once and writes the data, which the
    reduction reads on each of its passes. Fused, the data is never written nor read, but
    the prologue's inputs are read (and the prologue recomputed) on every pass.
    """
    apart = input_bytes + data_bytes + passes * data_bytes
    return apart - passes * input_bytes


def epilogue_score(result_bytes: int, result_stored: bool) -> int:
    """Bytes saved by an epilogue: the result is not re-read, nor written if nothing else
    reads it. The epilogue runs once per row either way: no recompute."""
    return result_bytes * (1 if result_stored else 2)


def broadcast_shape(shapes: Sequence[Shape]) -> Shape | None:
    """The numpy broadcast of symbolic shapes, or None where it depends on runtime sizes
    (two different non-1 dims: a dim_param may equal 1 or the other size)."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0} - {1}
        if len(dims) > 1:
            return None
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def broadcasts_to(shape: Shape, target: Shape) -> bool:
    return len(shape) <= len(target) and all(
        d == 1 or d == t for d, t in zip(reversed(shape), reversed(target)))


@dataclass
class AnchorGroup:
    """A template node (row-wise or tiled) with the pointwise nodes fused before and after it."""

    anchor: Node
    prologue: list[Node] = field(default_factory=list)
    epilogue: list[Node] = field(default_factory=list)
    score: int = 0

    @property
    def nodes(self) -> list[Node]:
        return self.prologue + [self.anchor] + self.epilogue


class AnchorPlanner:
    """Chooses each anchor's prologue and epilogue among the provider's nodes, as the
    anchors' templates declare they take them.

    ``nodes``: the nodes this provider runs, in topological order; ``position``: every
    node's index in the whole (partitioned) graph; ``escapes(value, names)``: is value read
    outside the named nodes, or returned by the graph? ``operand_prologue(node, anchor,
    index, producer)``: can the anchor's kernel compute its operand from this node as it
    loads it (the anchor's template's rule)?
    """

    def __init__(self, nodes: Sequence[Node], position: dict[str, int],
                 shape_of: Callable[[str], Shape | None],
                 dtype_of: Callable[[str], str | None],
                 escapes: Callable[[str, set[str]], bool],
                 operand_prologue: Callable[..., bool] = lambda *args: False) -> None:
        self.nodes, self.position = list(nodes), position
        self.shape_of, self.dtype_of, self.escapes = shape_of, dtype_of, escapes
        self.operand_prologue = operand_prologue
        self.producer = {o: n for n in self.nodes for o in n.outputs if o}
        ours = {n.name for n in self.nodes}
        self.foreign = sorted(p for name, p in position.items() if name not in ours)
        self.taken: set[str] = set()

    def plan(self) -> list[AnchorGroup]:
        groups = []
        for node in self.nodes:
            template = template_of(node)
            if template is not None and template.anchors_fusion() and \
                    node.name not in self.taken:
                group = AnchorGroup(node)
                self.taken.add(node.name)
                self._choose_operand_prologues(group)
                self._choose_prologue(group)
                self._choose_epilogue(group)
                self.taken.update(n.name for n in group.nodes)
                groups.append(group)
        return groups

    # -- legality ----------------------------------------------------------------------
    @staticmethod
    def is_pointwise(node: Node) -> bool:
        return template_of(node) is None

    def _known(self, value: str) -> Shape | None:
        shape = self.shape_of(value)
        dtype = self.dtype_of(value)
        if shape is None or dtype is None or dtype in _NOT_FUSED_TYPES:
            return None
        return shape

    def _free(self, node: Node, own_loads: bool = False) -> bool:
        """Pointwise and not yet taken; ``own_loads``: the template loads the node's inputs
        by a rule of its own (an operand prologue), so per-axis inputs are fine, and so is a
        template node that takes no fusion itself (the anchor's rule says which)."""
        template = template_of(node)
        kind_ok = template is None or (own_loads and not template.anchors_fusion())
        return kind_ok and node.name not in self.taken and \
            not node.subgraphs and all(o for o in node.outputs) and \
            (own_loads or not self._aligned(node))

    def _aligned(self, node: Node) -> bool:
        """Has per-axis inputs (a 1-D scale along a channel axis): templates load fused
        inputs by numpy broadcasting only, so such a node runs in a pointwise kernel."""
        from .lowering import aligned_inputs

        ranks = [len(self.shape_of(v)) if v and self.shape_of(v) is not None else None
                 for v in node.inputs]
        return bool(aligned_inputs(op_key(node), node.attrs, ranks))

    def _prologue_candidate(self, node: Node, members: set[str], target: Shape,
                            data: str) -> bool:
        """A free pointwise node whose outputs feed only the group; the data itself may be
        read elsewhere too (the kernel then stores it: a residual stream)."""
        if not self._free(node):
            return False
        for value in node.outputs:
            shape = self._known(value)
            if shape is None or not broadcasts_to(shape, target) or \
                    (value != data and self.escapes(value, members)):
                return False
        return all(self._known(v) is not None and broadcasts_to(self._known(v), target)
                   for v in node.inputs if v)

    # -- prologue ----------------------------------------------------------------------
    def _choose_prologue(self, group: AnchorGroup) -> None:
        anchor = group.anchor
        data = anchor.inputs[0]
        target = self._known(data)
        template = template_of(anchor)
        if target is None or not template.prologue:
            return
        passes = template.memory_passes(anchor, target)
        data_bytes = estimated_bytes(target, self.dtype_of(data))
        chosen: list[Node] = []
        best: list[Node] = []
        best_score = 0
        while len(chosen) < MAX_NODES:
            members = {anchor.name} | {n.name for n in chosen}
            produced = {o for n in chosen for o in n.outputs}
            wanted = [data] if not chosen else \
                [v for n in chosen for v in n.inputs if v and v not in produced]
            candidates = [self.producer[v] for v in wanted if v in self.producer]
            candidates = [n for n in candidates if n.name not in members and
                          self._prologue_candidate(n, members | {n.name}, target, data)]
            if not candidates:
                break
            chosen.append(max(candidates, key=lambda n: self.position[n.name]))
            inputs = _external_inputs(chosen)
            if len(inputs) > MAX_INPUTS:
                break
            size = {v: estimated_bytes(self.shape_of(v), self.dtype_of(v)) for v in inputs}
            # an input a pointwise node makes is written only because the prologue stops
            # there (that node would otherwise share the data's kernel)
            stops = sum(size[v] for v in inputs if v in self.producer and
                        self.is_pointwise(self.producer[v]))
            score = prologue_score(data_bytes, sum(size.values()), passes) - stops
            if self.escapes(data, members | {n.name for n in chosen}):
                score -= data_bytes  # still written, by the fused kernel
                # nodes after the prologue read the stored data: the anchor's other inputs
                # must not come from them (a cycle between kernels); earlier nodes only
                # make that stricter
                first = min(self.position[n.name] for n in chosen)
                if not all(self._ready_before(v, first, self.position[anchor.name])
                           for v in anchor.inputs[1:] if v):
                    break
            # on a tie the bigger prologue wins: its own inputs would otherwise be written
            # by another kernel and read back
            if score > 0 and score >= best_score:
                best, best_score = list(chosen), score
        group.prologue = sorted(best, key=lambda n: self.position[n.name])
        group.score += best_score

    def _choose_operand_prologues(self, group: AnchorGroup) -> None:
        """A GEMM reads an operand's source and converts each tile (an attention rotates
        Q and K): the computed operand is never written (no score needed: it only saves
        memory traffic and a launch)."""
        anchor = group.anchor
        template = template_of(anchor)
        if not template.operand_prologues:
            return
        chosen = {}
        for index in template.operand_inputs:
            value = anchor.inputs[index] if index < len(anchor.inputs) else ""
            node = self.producer.get(value) if value else None
            # a value read at two operands would need both rules: neither takes it
            if node is None or node in group.prologue or anchor.inputs.count(value) != 1 or \
                    not self._free(node, True) or len(node.outputs) != 1 or \
                    self.escapes(value, {anchor.name, node.name}) or \
                    not self.operand_prologue(node, anchor, index, self.producer.get):
                continue
            chosen[index] = node
        # a rule may need its partner operand's (int8 operands come in pairs): re-check
        # each against the producers actually chosen
        made = {v: n for n in chosen.values() for v in n.outputs}
        group.prologue += [n for i, n in chosen.items()
                           if self.operand_prologue(n, anchor, i, made.get)]

    # -- epilogue ----------------------------------------------------------------------
    def _choose_epilogue(self, group: AnchorGroup) -> None:
        anchor = group.anchor
        result = anchor.outputs[0]
        target = self._known(result)
        if not template_of(anchor).epilogue or target is None or len(anchor.outputs) != 1:
            return
        start = self.position[anchor.name]
        values = {result}
        # computed inside the kernel by the prologue: never a loaded input
        made_before = {o for n in group.prologue for o in n.outputs}
        # a stored prologue result is read by nodes after it: an epilogue input made after
        # the prologue could depend on it (a cycle between kernels)
        stored_data = group.prologue and self.escapes(
            anchor.inputs[0], {n.name for n in group.nodes})
        since = min(self.position[n.name] for n in group.prologue) if stored_data else start
        chosen: list[Node] = []
        for node in self.nodes:
            here = self.position[node.name]
            if here <= start or not self._free(node) or len(chosen) >= MAX_NODES or \
                    not any(v in values for v in node.inputs):
                continue
            outs_ok = all(self._known(o) == target for o in node.outputs)
            if outs_ok and all(self._epilogue_input_ok(v, target, since, here) and
                               v not in made_before for v in node.inputs
                               if v and v not in values) and \
                    len(_external_inputs(chosen + [node])) <= MAX_INPUTS:
                chosen.append(node)
                values.update(node.outputs)
        if not chosen:
            return
        names = {n.name for n in [anchor] + chosen}
        stored = self.escapes(result, names)
        score = epilogue_score(estimated_bytes(target, self.dtype_of(result)), stored)
        if score > 0:
            group.epilogue = chosen
            group.score += score

    def _epilogue_input_ok(self, value: str, target: Shape, anchor_at: int,
                           node_at: int) -> bool:
        """Broadcasts to the per-row result and cannot depend on the anchor (or on what the
        group writes before it: ``anchor_at`` is then the group's first position)."""
        shape = self._known(value)
        if shape is None or not broadcasts_to(shape, target):
            return False
        return self._ready_before(value, anchor_at, node_at)

    def _ready_before(self, value: str, start: int, end: int) -> bool:
        """Is value made before position ``start``, so that nothing from ``start`` on (up to
        the reader at ``end``) can feed it?"""
        made_by = self.producer.get(value)
        if made_by is not None:
            return self.position[made_by.name] < start
        # made by another provider's node (or a graph input): none may sit in between
        return not any(start < p < end for p in self.foreign)


def _external_inputs(group: Sequence[Node]) -> list[str]:
    produced = {o for n in group for o in n.outputs}
    return list(dict.fromkeys(v for n in group for v in n.inputs if v and v not in produced))


def check_acyclic(groups: Sequence[Sequence[Node]]) -> None:
    """The groups, as units, must not depend on each other in a cycle (through the values
    these nodes exchange; paths through other providers are ruled out by construction)."""
    owner = {o: i for i, g in enumerate(groups) for n in g for o in n.outputs if o}
    deps = [{owner[v] for n in g for v in n.inputs if v in owner} - {i}
            for i, g in enumerate(groups)]
    state = [0] * len(groups)  # 0 new, 1 on the stack, 2 done
    for root in range(len(groups)):
        stack = [(root, iter(deps[root]))]
        if state[root]:
            continue
        state[root] = 1
        while stack:
            i, it = stack[-1]
            j = next(it, None)
            if j is None:
                state[i] = 2
                stack.pop()
            elif state[j] == 1:
                raise AssertionError(f"fusion groups form a cycle through "
                                     f"{[n.name for n in groups[j]]}")
            elif state[j] == 0:
                state[j] = 1
                stack.append((j, iter(deps[j])))
