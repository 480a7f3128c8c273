"""Per-run host overhead on a one-node model: tritort vs onnxruntime, side by side.

    python perf/overhead.py [--runs 20000] [--rounds 7]

Alternates the two runtimes round by round in one process and reports medians; the ratio is
the number to quote (these machines are noisy).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one_node_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["Y"])], "one_node",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model.SerializeToString()


def per_run_us(sess, feed, runs: int) -> float:
    run = sess.run
    t0 = time.perf_counter()
    for _ in range(runs):
        run(None, feed)
    return (time.perf_counter() - t0) / runs * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    import onnxruntime

    import tritort

    data = one_node_model()
    feed = {"X": np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)}
    sessions = {
        "tritort": tritort.InferenceSession(data),
        "onnxruntime": onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]),
    }
    for s in sessions.values():
        per_run_us(s, feed, 1000)  # warm-up
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for name, s in sessions.items():
            samples[name].append(per_run_us(s, feed, args.runs))
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}")
    for name, v in samples.items():
        print(f"{name:12s} median {med[name]:7.2f} us/run  (min {min(v):.2f}, max {max(v):.2f}, "
              f"{args.rounds} rounds x {args.runs} runs)")
    print(f"ratio tritort/onnxruntime: {med['tritort'] / med['onnxruntime']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
