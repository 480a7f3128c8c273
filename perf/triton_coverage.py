"""How much of the ONNX node conformance suite the Triton provider takes.

    TRITON_INTERPRET=1 python perf/triton_coverage.py

Counts the cases with at least one node placed on Triton, the share of all nodes placed
there, and the most common reasons nodes fell back to the CPU.
"""
from __future__ import annotations

import collections
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        try:
            import torch

            if not torch.cuda.is_available():
                os.environ["TRITON_INTERPRET"] = "1"
        except ImportError:
            pass
    import tritort as ort
    from tests.conformance import node_cases

    warnings.simplefilter("ignore")
    cases = node_cases()
    with_triton = 0
    nodes = on_triton = 0
    reasons: collections.Counter = collections.Counter()
    for case in cases.values():
        try:
            sess = ort.InferenceSession(case.model.SerializeToString(),
                                        providers=["TritonExecutionProvider",
                                                   "CPUExecutionProvider"])
        except Exception:  # counted as not placed; correctness is the test suite's job
            continue
        placed = sess._program.partition.assignments.values()
        here = sum(a.provider.name == "TritonExecutionProvider" for a in placed)
        with_triton += here > 0
        nodes += len(placed)
        on_triton += here
        for a in placed:
            reason = a.declined.get("TritonExecutionProvider")
            if reason:
                reasons[reason.split("(")[0].split("'")[0].strip()] += 1
    print(f"cases with at least one node on Triton: {with_triton} / {len(cases)}")
    print(f"nodes placed on Triton: {on_triton} / {nodes} ({100 * on_triton / max(nodes, 1):.1f}%)")
    print("most common reasons for CPU fallback:")
    for reason, count in reasons.most_common(12):
        print(f"  {count:5d}  {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
