"""RotaryEmbedding nodes computed inside the attention launch that reads their output.

When a RotaryEmbedding's output is read only by a MultiHeadAttention or GroupQueryAttention
as its query or key (or by tritort's ScaledDotProductAttention as its Q: its KT reaches it
through a Transpose), the attention template takes the node as an operand prologue (the
fusion planner asks :func:`takes_rotary`): Q is rotated on each tile the flash kernel loads,
K as the append kernel writes it into present (or on each loaded K tile when there is no
cache). The node's own semantics are kept, not GroupQueryAttention's do_rotary ones: the
angle's row is position_ids[b, s] (every token's), com.microsoft's one-element offset + s,
or, for ai.onnx without position_ids, the caches' own (b, s) row; interleaved or halves;
the rotated width ``rotary_embedding_dim`` (ai.onnx) or twice the caches' (com.microsoft).
Positions outside the caches give 0, as :mod:`.rotary`'s kernel.

Each side's runtime parameters carry a prefix (``qr_`` / ``kr_``): Q and K may come from
different nodes, with caches and positions of their own.
"""
from __future__ import annotations

from dataclasses import dataclass

from .emit import acc_type, storage_type
from .keys import op_key
from .rotary import _Rotary
from .templates import TEMPLATES


def _rule(node) -> _Rotary | None:
    """The node's RotaryEmbedding template (its inputs' and attributes' meaning), or None."""
    template = TEMPLATES.get(op_key(node))
    return template if isinstance(template, _Rotary) else None


@dataclass(frozen=True)
class Rope:
    """A RotaryEmbedding node as an attention side computes it."""

    node: object
    source: str  # the node's input X: what the attention reads instead of its output
    cos: str
    sin: str
    positions: str  # '' for ai.onnx's (B, S, R/2) caches
    interleaved: bool

    @property
    def inputs(self) -> list[str]:
        return [self.cos, self.sin, self.positions]

    def text(self) -> str:
        where = "position_ids" if self.positions else "caches per (b, s)"
        return (f"{self.node.name} ({'interleaved' if self.interleaved else 'halves'}, "
                f"{where})")


def rope_of(node) -> Rope:
    rule = _rule(node)
    cos, sin = rule.caches(node)
    return Rope(node, node.inputs[0], cos, sin, rule.positions(node) or "",
                bool(node.attrs.get("interleaved", 0)))


def takes_rotary(producer, ctx, heads: int, layout_ranks: tuple[int, ...]) -> bool:
    """Can an attention side whose input has one of ``layout_ranks`` (3: (B, S, heads * H),
    4: (B, heads, S, H)) rotate it as a RotaryEmbedding ``producer`` would?"""
    if _rule(producer) is None:
        return False
    x, out = producer.inputs[0], producer.outputs[0]
    rank = ctx.rank_of(x)
    if rank not in layout_ranks or ctx.dtype_of(x) != ctx.dtype_of(out):
        return False
    if rank == 4:
        shape = ctx.shape_of(x)
        return shape is not None and shape[1] == heads
    declared = int(producer.attrs.get("num_heads", 0))
    if declared:
        return declared == heads
    # com.microsoft without num_heads: the head size is the rotated width 2 * caches'
    x_shape, cos_shape = ctx.shape_of(x), ctx.shape_of(rope_of(producer).cos)
    return x_shape is not None and cos_shape is not None and isinstance(x_shape[2], int) \
        and isinstance(cos_shape[-1], int) and 2 * cos_shape[-1] * heads == x_shape[2]


def ropes(fusion) -> tuple[Rope | None, Rope | None]:
    """The RotaryEmbedding nodes fusion gives an attention for its query and key."""
    operands = fusion.operands if fusion is not None else {}
    return tuple(rope_of(operands[i]) if i in operands else None for i in (0, 1))


def side_args(rope: Rope | None, values: tuple, b: int, s: int, head: int,
              batch_broadcast: bool = False) -> tuple:
    """:func:`args` for one side, or nothing where that side is not rotated; ``values``: the
    node's (cos, sin, position_ids) tensors."""
    return () if rope is None else args(rope, *values, b, s, head, batch_broadcast)


def node_inputs(inputs: list[str], rope_q: Rope | None, rope_k: Rope | None) -> list[str]:
    """An attention node's launcher inputs with its fused rotary sides: each rotary node's
    input in place of its output (query, key), then both nodes' caches and positions."""
    if rope_q is None and rope_k is None:
        return inputs
    inputs = list(inputs)
    for index, rope in enumerate((rope_q, rope_k)):
        if rope is not None:
            inputs[index] = rope.source
    return inputs + [v for rope in (rope_q, rope_k)
                     for v in (rope.inputs if rope is not None else ["", "", ""])]


def params(prefix: str, rope: Rope) -> list[str]:
    names = ["cos", "sin", "cr", "cb", "cs", "cc", "sr", "sb", "ss", "sc", "max", "rot"]
    if rope.positions:
        names += ["pids", "pb", "ps", "add"]
    return [prefix + n for n in names]


def args(rope: Rope, cos, sin, pids, b: int, s: int, head: int,
         batch_broadcast: bool = False) -> tuple:
    """The runtime values of :func:`params`, for (b, s) tokens of heads of ``head``
    channels; a clear error where the node itself would fail. ``batch_broadcast``: the
    node's output (batch 1) is read for every batch entry, so every entry reads row 0."""
    rule = _rule(rope.node)
    rot = rule.rotated(int(rope.node.attrs.get("rotary_embedding_dim", 0)), head, cos)
    if rot > head or rot % 2:
        raise ValueError(f"{rope.node.name}: the rotary width {rot} does not fit the head "
                         f"size {head}")
    if rope.positions:
        pos = rule.position_args(pids, b, s)
        if batch_broadcast:
            pos[1] = 0
        cache = (cos.stride(0), 0, 0, cos.stride(1), sin.stride(0), 0, 0, sin.stride(1))
        return (cos, sin, *cache, cos.shape[0], rot, *pos)
    batch = 0 if batch_broadcast else 1
    cache = (0, cos.stride(0) * batch, *cos.stride()[1:], 0, sin.stride(0) * batch,
             *sin.stride()[1:])
    return (cos, sin, *cache, 1, rot)


def _pair(p: str, d: str, interleaved: bool) -> list[str]:
    """``{p}first`` (the channel takes ``x cos - partner sin``), ``{p}col`` (its cache
    column), ``{p}partner``, for channel index ``d``."""
    if interleaved:
        return [f"{p}first = ({d} % 2) == 0", f"{p}col = {d} // 2",
                f"{p}partner = tl.where({p}first, {d} + 1, {d} - 1)"]
    half = f"({p}rot // 2)"
    return [f"{p}first = {d} < {half}", f"{p}col = tl.where({p}first, {d}, {d} - {half})",
            f"{p}partner = tl.where({p}first, {d} + {half}, {d} - {half})"]


def _position(p: str, rope: Rope, batch: str, token: str, inside: str) -> list[str]:
    """``{p}pos``: the cache row of token ``token`` of batch entry ``batch``."""
    if not rope.positions:
        return [f"{p}pos = {token} * 0"]
    return [f"{p}pos = tl.load({p}pids + ({batch} * {p}pb + {token} * {p}ps), mask={inside}, "
            f"other=0).to(tl.int64) + {token} * {p}add"]


def _row_ok(p: str, rope: Rope) -> str:
    if not rope.positions:
        return f"({p}pos == 0)"
    return f"(({p}pos >= 0) & ({p}pos < {p}max))"


def _rotate(p: str, rope: Rope, dtype: str, value: str, partner: str, batch: str,
            token: str, inside: str, rows: str, cols: str) -> list[str]:
    """Lines rotating ``value`` in place: elements of tokens ``token`` (inside: ``inside``)
    by channels ``offs_d`` (or ``i3``); ``partner``: the load of the partner channel given
    its index ``{p}partner`` (indexed by ``cols``); ``rows`` / ``cols`` index a token / a
    channel vector into the value's shape ('' for an element)."""
    channel = "i3" if not cols else "offs_d"
    ct = acc_type(dtype)
    pos, col, first = f"{p}pos{rows}", f"{p}col{cols}", f"{p}first{cols}"
    rotated = f"({channel} < {p}rot){cols}"

    def cache(which: str) -> str:
        c = which[0]
        at = f"{pos} * {p}{c}r + {batch} * {p}{c}b + {token}{rows} * {p}{c}s + {col} * {p}{c}c"
        return f"tl.load({p}{which} + ({at}), mask={p}ok, other=0.0).to({ct})"

    return [*_pair(p, channel, rope.interleaved),
            *_position(p, rope, batch, token, inside),
            f"{p}in = ({inside}){rows} & {rotated}",
            f"{p}ok = {p}in & {_row_ok(p, rope)}{rows}",
            f"{p}w = tl.load({partner}, mask={p}in, other=0.0).to({ct})",
            f"{p}c = {cache('cos')}",
            f"{p}s = {cache('sin')}",
            f"{p}x = {value}.to({ct})",
            f"{p}y = tl.where({first}, {p}x * {p}c - {p}w * {p}s, {p}x * {p}c + {p}w * {p}s)",
            f"{value} = tl.where({rotated}, {p}y, {p}x).to({storage_type(dtype)})"]


def q_tile_lines(rope: Rope, dtype: str) -> list[str]:
    """Rotate the flash kernel's ``q_tile`` [BLOCK_M, D] of rows ``rows`` as loaded."""
    partner = ("q + (b * sqb + h * sqh + rows[:, None] * sqm + "
               "qr_partner[None, :] * sqd)")
    return _rotate("qr_", rope, dtype, "q_tile", partner, "b", "rows", "in_m", "[:, None]",
                   "[None, :]")


def k_tile_lines(rope: Rope, dtype: str) -> list[str]:
    """Rotate the flash kernel's ``k_tile`` [D, BLOCK_N] of keys ``keys`` as loaded (no
    cache: K is read where it is)."""
    partner = "k_head + (keys[None, :] * skn + kr_partner[:, None] * skd)"
    return _rotate("kr_", rope, dtype, "k_tile", partner, "b", "keys", "in_n", "[None, :]",
                   "[:, None]")


def append_lines(rope: Rope, dtype: str, at: str) -> list[str]:
    """Rotate ``x``, the new K row element (batch ``i0``, new row ``rs``, channel ``i3``) the
    append kernel writes (rounded as the node stores it); ``at`` its row's offset in
    ``knew``."""
    return _rotate("kr_", rope, dtype, "x", f"knew + ({at} + kr_partner * ks3)", "i0", "rs",
                   "kin & new", "", "")
