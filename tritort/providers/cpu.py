"""The NumPy CPU provider: claims every node the fallback_cpu registry has a kernel for."""
from __future__ import annotations

from typing import Sequence

from ..graph import Graph, Node
from . import CPU, CompiledUnit, CompileInfo, ExecutionProvider


class CPUExecutionProvider(ExecutionProvider):
    name = CPU
    device = "cpu"
    option_docs: dict[str, str] = {}

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self._threads = 0

    def configure(self, session_options) -> None:
        """intra_op_num_threads sizes numpy's BLAS pool during runs (0: left as it is);
        enable_cpu_mem_arena keeps freed temporaries in the process heap (glibc), as an
        arena would: once per process, see fallback_cpu.memory."""
        from tritort.fallback_cpu.memory import keep_freed_memory

        self._threads = session_options.intra_op_num_threads
        if session_options.enable_cpu_mem_arena:
            keep_freed_memory()

    def run_scope(self):
        if self._threads <= 0:
            return None
        from tritort.fallback_cpu.threads import blas_threads

        return blas_threads(self._threads)

    def claim(self, node: Node, graph: Graph) -> str | None:
        from tritort.fallback_cpu import missing_kernel

        return missing_kernel(node.domain, node.op_type, graph.opsets)

    def compile(self, nodes: Sequence[Node], info: CompileInfo) -> list[CompiledUnit]:
        from tritort.fallback_cpu import build_kernel

        units = []
        for node in nodes:
            fn = build_kernel(node, info.opsets, info.value_types, _subgraph_builder(node, info))
            shape_only = frozenset(node.inputs) if getattr(fn, "reads_only_shapes", False) \
                else frozenset()
            units.append(CompiledUnit(node.name, [node], node.inputs + node.implicit_inputs,
                                      node.outputs, fn, shape_inputs=shape_only))
        return units


def _subgraph_builder(node: Node, info: CompileInfo):
    if not node.subgraphs:
        return None
    return lambda attr_name: info.build_subgraph(node.attrs[attr_name], info)
