"""Run node cases straight through the NumPy kernel registry, without a session.

A development aid for kernel authors: ``python tests/direct_kernels.py Relu Cast ...``
runs every case whose graph uses only those ops (no subgraphs) and prints failures.
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx  # noqa: E402

from tritort.fallback_cpu import REGISTRY, NodeContext  # noqa: E402
from tests.conformance import assert_same, case_ops, node_cases, to_value  # noqa: E402
from tritort.graph import Node  # noqa: E402


def run_case(case) -> None:
    model = case.model
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type for vi in list(inferred.graph.input) + list(inferred.graph.value_info)
             + list(inferred.graph.output)}
    for inputs, outputs in case.data_sets:
        inputs, outputs = to_value(list(inputs)), to_value(list(outputs))
        env = dict(zip([i.name for i in model.graph.input], inputs))
        for i, proto in enumerate(model.graph.node):
            node = Node.from_proto(proto, i)
            opset = opsets.get(node.domain, 1)
            row = REGISTRY.lookup(node.domain, node.op_type, opset)
            assert row is not None, f"no kernel for {node.op_type} opset {opset}"
            ctx = NodeContext(node.op_type, node.domain, node.name, node.attrs, opset, row[0],
                              node.inputs, node.outputs, [types.get(n) for n in node.inputs],
                              [types.get(n) for n in node.outputs], proto, opsets)
            fn = row[1](ctx)
            res = fn(*[env.get(n) if n else None for n in node.inputs])
            for name, val in zip(node.outputs, res):
                if name:
                    env[name] = val
        for vi, expected in zip(model.graph.output, outputs):
            assert_same(expected, env[vi.name], case.rtol, case.atol, vi.name)


def main(ops: list[str]) -> int:
    wanted = set(ops)
    failed = passed = 0
    for name, case in sorted(node_cases().items()):
        if not case_ops(case) <= wanted or any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                for n in case.model.graph.node for a in n.attribute):
            continue
        try:
            run_case(case)
            passed += 1
        except Exception as e:  # report and continue: this is a survey tool
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:300]}")
            if "-v" in sys.argv:
                traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main([a for a in sys.argv[1:] if a != "-v"]))
