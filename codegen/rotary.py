"""RotaryEmbedding (ai.onnx since 23, and com.microsoft's) as one Triton kernel per node,
unless an attention reads its output alone as Q or K: that attention's launch then rotates
them (:mod:`.attention_rotary`, reading this module's rules for the node's inputs).

The input is viewed as (B, S, N, H) through strides: a (B, N, S, H) input permuted, a
(B, S, N*H) one split into heads. Each output element reads its own input element, its
rotation partner (the other half's, or the other of its interleaved pair) and one cos and
one sin value; channels past the rotated width are copied. The angle's row is chosen by

- ``positions``: a position tensor indexed by (b, s) with runtime strides, plus ``s`` when it
  holds one offset (com.microsoft's one-element form: stride 0 and ``add_s`` 1), into
  (max_positions, R/2) caches;
- ``direct``: ai.onnx's caches without position_ids are already (B, S, R/2).

Positions outside the caches read 0 (the NumPy provider raises on them: a kernel cannot).
Values compute in float32 (float64 for double) and are rounded once.
"""
from __future__ import annotations

from tritort.dtypes import FLOAT_TYPES

from .emit import acc_type, helper_source, stored
from .keys import contrib
from .movement import launch, render_kernel
from .rowwise import check_dtypes
from .templates import KernelSpec, Template, load_source, template


def rotary_source(name: str, node, interleaved: bool, direct: bool, dtype: str):
    ct = acc_type(dtype)
    ir_text = (f"{name}: RotaryEmbedding '{node.name}' over (B, S, N, H), "
               f"{'interleaved pairs' if interleaved else 'halves'}, "
               f"{'caches indexed by (b, s)' if direct else 'cache rows at positions'}\n"
               "y[j] = x[j] cos[c(j)] -+ x[partner(j)] sin[c(j)] for j < rot, else x[j]")
    params = ["x", "pos_ptr", "cos", "sin", "out", "numel", "d0", "d1", "d2", "d3",
              "xs0", "xs1", "xs2", "xs3", "ys0", "ys1", "ys2", "ys3", "ps0", "ps1", "add_s",
              "max_pos", "cr", "cb", "cs", "cc", "sr", "sb", "ss", "sc", "rot"]
    if interleaved:
        pair = ["    first = (i3 % 2) == 0", "    col = i3 // 2",
                "    partner = tl.where(first, i3 + 1, i3 - 1)"]
    else:
        pair = ["    half = rot // 2", "    first = i3 < half",
                "    col = tl.where(first, i3, i3 - half)",
                "    partner = tl.where(first, i3 + half, i3 - half)"]
    if direct:
        where = ["    ok = rotated", "    pos = i0 * 0"]
    else:
        where = ["    pos = tl.load(pos_ptr + (i0 * ps0 + i1 * ps1), mask=rotated).to(tl.int64)"
                 " + i1 * add_s",
                 "    ok = rotated & (pos >= 0) & (pos < max_pos)"]
    body = ["    rotated = mask & (i3 < rot)", *pair, *where,
            "    base = i0 * xs0 + i1 * xs1 + i2 * xs2",
            f"    v = tl.load(x + (base + i3 * xs3), mask=mask).to({ct})",
            f"    w = tl.load(x + (base + partner * xs3), mask=rotated).to({ct})",
            f"    c = tl.load(cos + (pos * cr + i0 * cb + i1 * cs + col * cc), mask=ok).to({ct})",
            f"    s = tl.load(sin + (pos * sr + i0 * sb + i1 * ss + col * sc), mask=ok).to({ct})",
            "    y = tl.where(first, v * c - w * s, v * c + w * s)",
            "    y = tl.where(i3 < rot, y, v)",
            f"    tl.store(out + (i0 * ys0 + i1 * ys1 + i2 * ys2 + i3 * ys3), "
            f"{stored('y', dtype)}, mask=mask)"]
    source = render_kernel(name, node, ir_text, params, 4, body)
    helper = helper_source(source)  # bfloat16's rounding store
    return source.replace("\n\n@triton.jit\n", helper + "\n\n@triton.jit\n", 1), ir_text


class _Rotary(Template):
    kind = "movement"

    def _attrs(self, node) -> tuple[bool, int, int]:
        return (bool(node.attrs.get("interleaved", 0)), int(node.attrs.get("num_heads", 0)),
                int(node.attrs.get("rotary_embedding_dim", 0)))

    def claim(self, node, ctx) -> str | None:
        x = node.inputs[0]
        why = check_dtypes(ctx, [x] + self.caches(node), FLOAT_TYPES, node.op_type)
        if why:
            return why
        positions = self.positions(node)
        if positions:
            if ctx.dtype_of(positions) not in ("int64", "int32"):
                return f"position_ids of type {ctx.dtype_of(positions)}"
            if ctx.rank_of(positions) not in (0, 1, 2):
                return f"position_ids of rank {ctx.rank_of(positions)}"
        rank = ctx.rank_of(x)
        if rank not in (3, 4):
            return f"input of rank {rank}"
        return self.refuses(node, rank)

    def build(self, node, ctx, name, fusion=None) -> KernelSpec:
        import torch

        x_name = node.inputs[0]
        interleaved, heads, rot_attr = self._attrs(node)
        positions = self.positions(node)
        direct = positions is None
        source, ir_text = rotary_source(name, node, interleaved, direct, ctx.dtype_of(x_name))
        fn, path, cached = load_source(source, name, ctx)
        head_of = self.head_size

        def run(x, cos, sin, pos=None):
            if x.dim() == 4:  # (B, N, S, H)
                x4 = x.permute(0, 2, 1, 3)
            else:
                b, s, hidden = x.shape
                head = head_of(hidden, heads, rot_attr, cos)
                if head <= 0 or hidden % head:
                    raise ValueError(f"hidden size {hidden} is not a multiple of the head size "
                                     f"{head}")
                x4 = x.view(b, s, hidden // head, head)
            rot = self.rotated(rot_attr, x4.shape[3], cos)
            if rot > x4.shape[3] or rot % 2:
                raise ValueError(f"the rotary width {rot} does not fit the head size "
                                 f"{x4.shape[3]}")
            out = torch.empty(x.shape, dtype=x.dtype, device=ctx.torch_device)
            y4 = out.permute(0, 2, 1, 3) if x.dim() == 4 else out.view(x4.shape)
            b, s = x4.shape[:2]
            if direct:  # (B, S, R/2) caches
                pos_args = [x, 0, 0, 0, 1]
                cache = [0, cos.stride(0), cos.stride(1), cos.stride(2),
                         0, sin.stride(0), sin.stride(1), sin.stride(2)]
            else:
                pos_args = self.position_args(pos, b, s) + [cos.shape[0]]
                cache = [cos.stride(0), 0, 0, cos.stride(1), sin.stride(0), 0, 0, sin.stride(1)]
            numel = out.numel()
            launch(fn, numel, [x, pos_args[0], cos, sin, out, numel, *x4.shape, *x4.stride(),
                               *y4.stride(), *pos_args[1:], *cache, rot])
            return (out,)

        inputs = [x_name, *self.caches(node)] + ([positions] if positions else [])
        return KernelSpec(name, run, inputs, ir_text, source, path, cached)

    @staticmethod
    def position_args(pos, b: int, s: int) -> list:
        """[tensor, stride over b, stride over s, add_s]: (B, S) ids, or one offset."""
        if pos.numel() == 1 and tuple(pos.shape) != (b, s):
            return [pos, 0, 0, 1]
        if tuple(pos.shape) != (b, s):
            raise ValueError(f"position_ids must have one element or shape ({b}, {s}), got "
                             f"{list(pos.shape)}")
        return [pos, pos.stride(0), pos.stride(1), 0]


@template("RotaryEmbedding")
class RotaryEmbedding(_Rotary):
    """ai.onnx's: inputs (X, cos_cache, sin_cache, position_ids?); rotated width
    ``rotary_embedding_dim`` or the head size; 3-D input needs ``num_heads``."""

    def caches(self, node):
        return list(node.inputs[1:3])

    def positions(self, node):
        return node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None

    def refuses(self, node, rank: int) -> str | None:
        if rank == 3 and not node.attrs.get("num_heads"):
            return "3-D input without num_heads"
        return None

    @staticmethod
    def head_size(hidden, heads, rot_attr, cos) -> int:
        return hidden // heads

    @staticmethod
    def rotated(rot_attr, head, cos) -> int:
        return rot_attr or head


@template(contrib("RotaryEmbedding"))
class ContribRotaryEmbedding(_Rotary):
    """com.microsoft's: inputs (input, position_ids, cos_cache, sin_cache); the rotated width
    is twice the caches'; a 3-D input's head size is hidden / num_heads, else the rotated
    width."""

    def caches(self, node):
        return list(node.inputs[2:4])

    def positions(self, node):
        return node.inputs[1]

    def refuses(self, node, rank: int) -> str | None:
        # is_packed_batching: onnxruntime reads a packed batch in the usual layout with
        # per-row positions, as this kernel does
        if rank == 3 and node.attrs.get("rotary_embedding_dim") and \
                not node.attrs.get("num_heads"):
            return "rotary_embedding_dim without num_heads for 3-D input"
        return None

    @staticmethod
    def head_size(hidden, heads, rot_attr, cos) -> int:
        return hidden // heads if heads else 2 * cos.shape[1]

    @staticmethod
    def rotated(rot_attr, head, cos) -> int:
        if rot_attr and rot_attr != 2 * cos.shape[1]:
            raise ValueError(f"rotary_embedding_dim {rot_attr} does not match the caches' "
                             f"width {cos.shape[1]} (half the rotated width)")
        return 2 * cos.shape[1]
