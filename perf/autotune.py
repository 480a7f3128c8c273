"""Tune the Triton kernels of one model into the tuning database: tritort.autotune as a
script (the same as ``tritort autotune``; ``--help`` lists the options).

    python perf/autotune.py MODEL.onnx [--shapes NAME=D0,D1,... ...] [--budget SECONDS]
                            [--db PATH] [--max-candidates N] [--seed S]
"""
from __future__ import annotations

from tritort import autotune


def main(argv: list[str] | None = None) -> int:
    return autotune.main(argv, prog="perf/autotune.py")


if __name__ == "__main__":
    raise SystemExit(main())
