"""The Triton provider: claims what codegen can lower, fuses it, compiles it with Triton.

On a CUDA machine values live in torch CUDA tensors. With ``TRITON_INTERPRET=1`` the same
kernels run in Triton's interpreter on torch CPU tensors, which is how CI covers codegen.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .. import dtypes
from ..contracts import INTERNAL_DOMAIN
from ..graph import Graph, Node
from . import TRITON, CompiledUnit, CompileInfo, ExecutionProvider


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class TritonExecutionProvider(ExecutionProvider):
    name = TRITON
    option_docs = {"device_id": "CUDA device ordinal to run on (default '0')",
                   "user_compute_stream": "address of a CUDA stream (cudaStream_t, as an "
                                          "integer) to run on instead of torch's current "
                                          "stream; ordered against it with events"}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import torch
            import triton  # noqa: F401
        except ImportError as e:
            return f"{e.name} is not installed (pip install 'tritort[gpu]')"
        if _interpreted():
            return None
        if not torch.cuda.is_available():
            return "torch sees no CUDA device (set TRITON_INTERPRET=1 to run in Triton's " \
                   "interpreter on the CPU)"
        return None

    def __init__(self, options=None) -> None:
        super().__init__(options)
        import torch

        device_id = self.options.get("device_id", "0")
        if not device_id.isdigit():
            raise ValueError(f"{TRITON}: device_id must be a non-negative integer, got "
                             f"'{device_id}'")
        self.torch_device = torch.device("cpu") if _interpreted() else \
            torch.device("cuda", int(device_id))
        self.device = "triton-interpreter" if _interpreted() else f"cuda:{device_id}"
        from tritort.codegen import tuning

        # tuned configs for this device; re-read here if the database changed on disk
        self.tuning = tuning.active_table(self.torch_device)
        self.tuning.refresh()
        self.kernels: list[dict[str, Any]] = []  # for the placement report
        self._types: dict = {}
        self._constants: dict = {}
        self._host_shapes: set[str] = set()  # values computed from shapes, on the host

    # -- claiming --------------------------------------------------------------------------
    def claim(self, node: Node, graph: Graph) -> str | None:
        from tritort.codegen.lowering import LOWERINGS
        from tritort.codegen.templates import TEMPLATES

        self._types = graph.value_types
        self._constants = graph.initializers
        if node.domain not in ("", INTERNAL_DOMAIN):
            return f"no Triton lowering for domain '{node.domain}'"
        if self._shape_arithmetic(node):
            return "shape arithmetic (int64 vectors) stays on the host, where Reshape, " \
                   "Expand and the like read it"
        if node.op_type in TEMPLATES:
            return TEMPLATES[node.op_type].claim(node, self._template_context(graph.opsets[""]))
        row = LOWERINGS.get(node.op_type)
        if row is None:
            return f"no Triton lowering for {node.op_type}"
        present = [i for i in node.inputs if i]
        if len(present) < row.min_inputs:
            return f"{node.op_type} with {len(present)} inputs"
        for value in present + [o for o in node.outputs if o]:
            dt = self._dtype(value)
            if dt is None:
                return f"element type or rank of '{value}' unknown at load time"
            if dt not in row.dtypes:
                return f"Triton's {node.op_type} does not take {dt} ('{value}')"
        if row.refuses is not None:
            return row.refuses(node.attrs, [self._dtype(v) for v in present])
        return None

    def _shape_arithmetic(self, node: Node) -> bool:
        """Computes on a shape: every value an int64 vector or scalar, and one of its inputs
        made by Shape / Size or by such a node (claims come in topological order). On the
        device each would cost a launch, then a copy back for the Reshape that reads it."""
        if node.op_type in ("Shape", "Size"):
            self._host_shapes.update(node.outputs)
            return False
        values = [v for v in node.inputs + node.outputs if v]
        if not any(v in self._host_shapes for v in node.inputs) or not all(
                self._dtype(v) == "int64" and len(self._types[v].tensor_type.shape.dim) <= 1
                for v in values):
            return False
        self._host_shapes.update(node.outputs)
        return True

    def _dtype(self, value: str) -> str | None:
        t = self._types.get(value)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        elem = t.tensor_type.elem_type
        return dtypes.BY_ONNX[elem].name if elem in dtypes.BY_ONNX else None

    # -- compiling -------------------------------------------------------------------------
    def compile(self, nodes: Sequence[Node], info: CompileInfo) -> list[CompiledUnit]:
        import torch

        from tritort.codegen import cache
        from tritort.codegen.emit import emit
        from tritort.codegen.fusion import AnchorPlanner, check_acyclic, check_partition, fuse
        from tritort.codegen.pointwise import PointwiseLauncher, build_kernel

        from tritort.codegen.templates import TEMPLATES, dump

        self._types = info.value_types
        self._constants = info.initializers
        ctx = self._template_context(info.opsets[""])
        from tritort.codegen.gemm import operand_prologue

        anchor_groups = AnchorPlanner(nodes, lambda n: n.op_type not in TEMPLATES, info.position,
                                self._shape, self._dtype, info.escapes,
                                lambda n: operand_prologue(n, ctx) is not None).plan()
        anchors = {g.anchor.name: g for g in anchor_groups}
        units = []
        template_groups: list[list] = []
        fused_names: set[str] = set()
        for index, node in enumerate(n for n in nodes if n.op_type in TEMPLATES):
            name = f"{node.op_type.lower()}_{index}"
            group = anchors.get(node.name)
            fusion = self._tile_fusion(group, info) if group else None
            if fusion is None:
                compiled = TEMPLATES[node.op_type].compile(node, ctx, name)
                members, outputs = [node], list(node.outputs)
            else:
                compiled = TEMPLATES[node.op_type].compile_fused(node, ctx, name, fusion)
                members = group.nodes
                outputs = list(node.outputs)
                if fusion.epilogue:  # the stored rows: the result if read elsewhere, then the rest
                    outputs = outputs[:1] if fusion.store_result else []
                    outputs += [v for v, _ in fusion.row_outputs]
                fused_names.update(n.name for n in members)
            template_groups.append(members)
            dump(compiled.name, compiled.ir_text, compiled.source)
            self.kernels.append({"name": compiled.name, "nodes": [n.name for n in members],
                                 "path": str(compiled.path), "cached": compiled.cached})
            units.append(CompiledUnit(compiled.name, members, compiled.inputs, outputs,
                                      compiled.fn, frozenset(compiled.host_inputs)))
        pointwise = [n for n in nodes if n.op_type not in TEMPLATES and n.name not in fused_names]
        groups = fuse(pointwise, info.position, self._shape)
        check_partition(nodes, template_groups + groups)
        check_acyclic(template_groups + groups)
        for index, group in enumerate(groups):
            names = {n.name for n in group}
            kernel = build_kernel(_kernel_name(group, index), group, self._dtype, self._rank,
                                  lambda v, names=names: info.escapes(v, names))
            source = emit(kernel)
            fn, path, hit = cache.load(source, kernel.name, self.device)
            dump(kernel.name, kernel.text(), source)
            out_types = [getattr(torch, dtypes.BY_NAME[p.dtype].torch) for p, _ in kernel.outputs]
            launcher = PointwiseLauncher(fn, kernel, out_types, self.torch_device)
            self.kernels.append({"name": kernel.name, "nodes": kernel.nodes, "path": str(path),
                                 "cached": hit})
            units.append(CompiledUnit(kernel.name, list(group), [p.name for p in kernel.inputs],
                                      [p.name for p, _ in kernel.outputs], launcher))
        return units

    def _tile_fusion(self, group, info: CompileInfo):
        """The group's pointwise nodes lowered for its template kernel, or None to run the
        anchor alone (nothing fused, or the prologue's loads would not span the data)."""
        from tritort.codegen.fusion import OPERAND_PROLOGUE_OPS, broadcast_shape
        from tritort.codegen.pointwise import build_kernel
        from tritort.codegen.rowwise import TileFusion

        if not group.prologue and not group.epilogue:
            return None
        anchor = group.anchor
        data, result = anchor.inputs[0], anchor.outputs[0]
        names = {n.name for n in group.nodes}
        prologue = epilogue = None
        operands = {}
        if anchor.op_type in OPERAND_PROLOGUE_OPS:  # one converting node per operand
            made = {o: n for n in group.prologue for o in n.outputs}
            operands = {i: made[v] for i, v in enumerate(anchor.inputs[:2]) if v in made}
        elif group.prologue:
            prologue = build_kernel(f"{anchor.name}_prologue", group.prologue, self._dtype,
                                    self._rank, lambda v: v == data)
            shapes = [self._shape(p.name) for p in prologue.inputs]
            if broadcast_shape(shapes) != self._shape(data) or len(prologue.outputs) != 1:
                return None
        if group.epilogue:
            epilogue = build_kernel(f"{anchor.name}_epilogue", group.epilogue, self._dtype,
                                    self._rank, lambda v: info.escapes(v, names))
        fused = [(n.name, n.op_type) for n in group.prologue + group.epilogue]
        return TileFusion(prologue, epilogue, result, info.escapes(result, names), fused,
                          operands)

    def _template_context(self, opset: int):
        from tritort.codegen import target
        from tritort.codegen.templates import TemplateContext

        return TemplateContext(self._dtype, self._shape, self._constants.get, self.device,
                               self.torch_device, target.interpreted(), opset, self.tuning)

    def _rank(self, value: str) -> int:
        return len(self._types[value].tensor_type.shape.dim)

    def _shape(self, value: str) -> tuple | None:
        t = self._types.get(value)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        dims = []
        for d in t.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                return None
        return tuple(dims)

    # -- moving values ---------------------------------------------------------------------
    def to_device(self, value: Any) -> Any:
        """Idempotent: a contiguous torch tensor already on this device passes through as is.

        Other torch tensors are moved (and made contiguous); numpy arrays become torch views
        of the same memory (ml_dtypes through a raw view) before the move.
        """
        import torch

        if value is None:
            return None
        if isinstance(value, torch.Tensor):
            if value.device != self.torch_device:
                value = value.to(self.torch_device)
            return value if value.is_contiguous() else value.contiguous()
        from ..dlpack import numpy_to_torch

        arr = np.asarray(value)  # kernels may hand over numpy scalars
        arr = arr if arr.flags.c_contiguous else arr.copy()  # keeps 0-d arrays 0-d
        return numpy_to_torch(arr).to(self.torch_device)

    def to_host(self, value: Any) -> Any:
        """Idempotent: numpy passes through; torch tensors become numpy (a view on the CPU)."""
        from ..dlpack import to_host

        return to_host(value)


def _kernel_name(group: Sequence[Node], index: int) -> str:
    ops = "_".join(dict.fromkeys(n.op_type.lower() for n in group))[:48]
    return f"fused_{index}_{ops}"
