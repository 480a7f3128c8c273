"""The NumPy CPU provider: claims every node the fallback_cpu registry has a kernel for."""
from __future__ import annotations

from typing import Sequence

from ..errors import Fail, OrtError
from ..graph import Graph, Node
from . import CPU, CompiledUnit, CompileInfo, ExecutionProvider


class CPUExecutionProvider(ExecutionProvider):
    name = CPU
    device = "cpu"
    option_docs: dict[str, str] = {}

    def __init__(self, options=None) -> None:
        super().__init__(options)
        import fallback_cpu  # registers every kernel family on first use

        self._registry = fallback_cpu.REGISTRY
        self._threads = 0

    def configure(self, session_options) -> None:
        """intra_op_num_threads sizes numpy's BLAS pool during runs (0: left as it is);
        enable_cpu_mem_arena keeps freed temporaries in the process heap (glibc), as an
        arena would: once per process, see fallback_cpu.memory."""
        from fallback_cpu.memory import keep_freed_memory

        self._threads = session_options.intra_op_num_threads
        if session_options.enable_cpu_mem_arena:
            keep_freed_memory()

    def run_scope(self):
        if self._threads <= 0:
            return None
        from fallback_cpu.threads import blas_threads

        return blas_threads(self._threads)

    def claim(self, node: Node, graph: Graph) -> str | None:
        opset = graph.opsets.get(node.domain)
        if opset is None:
            return f"the model imports no opset for domain '{node.domain}'"
        if self._registry.lookup(node.domain, node.op_type, opset) is None:
            return f"no NumPy kernel for {node.domain or 'ai.onnx'}::{node.op_type} at opset {opset}"
        return None

    def compile(self, nodes: Sequence[Node], info: CompileInfo) -> list[CompiledUnit]:
        from fallback_cpu import NodeContext

        units = []
        for node in nodes:
            opset = info.opsets[node.domain]
            since, factory = self._registry.lookup(node.domain, node.op_type, opset)
            ctx = NodeContext(
                op_type=node.op_type, domain=node.domain, name=node.name, attrs=node.attrs,
                opset=opset, since_version=since, input_names=node.inputs,
                output_names=node.outputs,
                input_types=[info.value_types.get(n) for n in node.inputs],
                output_types=[info.value_types.get(n) for n in node.outputs],
                proto=node.proto, opsets=info.opsets,
                subgraph=_subgraph_builder(node, info), implicit_inputs=node.implicit_inputs)
            try:
                fn = factory(ctx)
            except OrtError:
                raise
            except Exception as e:  # a kernel refusing its attributes is a model error
                raise Fail(f"{node.describe()}: cannot build its kernel: "
                           f"{type(e).__name__}: {e}") from e
            units.append(CompiledUnit(node.name, [node], node.inputs + node.implicit_inputs,
                                      node.outputs, fn))
        return units


def _subgraph_builder(node: Node, info: CompileInfo):
    if not node.subgraphs:
        return None
    return lambda attr_name: info.build_subgraph(node.attrs[attr_name], info)
