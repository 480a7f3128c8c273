"""MatMul / Gemm launch configs: the size heuristic and the autotuner's config space.

Without a tuning-database entry, :func:`pick_config` chooses from :data:`CONFIGS`: the
largest tiles that still give enough programs to fill the GPU. :data:`TUNING` lists what
``tritort autotune`` tries and the rules that prune it (see :mod:`tritort.codegen.tuning`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from . import tuning_space

@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


# GPU candidates per element size in bytes, largest tiles first. float32 uses
# input_precision="ieee" (FMA, no TF32), so its tiles stay smaller; fp64 tiles smaller still
# (the accumulator lives in registers). Shared memory per stage stays under ~50 KB.
CONFIGS: dict[int, tuple[GemmConfig, ...]] = {
    1: (GemmConfig(128, 256, 128, 8, 8, 3), GemmConfig(128, 128, 128, 8, 4, 4),
        GemmConfig(64, 128, 128, 8, 4, 4), GemmConfig(64, 64, 128, 8, 4, 4),
        GemmConfig(32, 64, 128, 8, 4, 4), GemmConfig(16, 64, 128, 8, 4, 4)),  # float8
    2: (GemmConfig(128, 256, 64, 8, 8, 3), GemmConfig(128, 128, 64, 8, 4, 4),
        GemmConfig(64, 128, 64, 8, 4, 4), GemmConfig(64, 64, 64, 8, 4, 4),
        GemmConfig(32, 64, 64, 8, 4, 4), GemmConfig(16, 64, 128, 8, 4, 4)),
    4: (GemmConfig(128, 128, 32, 8, 8, 3), GemmConfig(64, 128, 32, 8, 4, 4),
        GemmConfig(64, 64, 32, 8, 4, 4), GemmConfig(32, 64, 32, 8, 4, 4),
        GemmConfig(16, 64, 32, 8, 4, 4)),
    8: (GemmConfig(64, 64, 16, 8, 4, 3), GemmConfig(32, 64, 16, 8, 4, 3),
        GemmConfig(16, 64, 16, 8, 4, 3)),
}
# Enough programs to fill a large GPU; below that, smaller tiles buy parallelism.
_MIN_PROGRAMS = 128
_MIN_BLOCK = 16  # tl.dot needs every block dim >= 16
_INTERPRETER_MAX_BLOCK = 32


def _fit(n: int, cap: int) -> int:
    """The power-of-two block (>= 16, <= cap) that covers n."""
    return min(max(_MIN_BLOCK, 1 << max(n - 1, 0).bit_length()), cap)


@functools.lru_cache(maxsize=4096)  # launches repeat their problems
def pick_config(m: int, n: int, k: int, batch: int, itemsize: int,
                interpreted: bool) -> GemmConfig:
    """The config for one launch: the largest tiles that still give enough programs."""
    if interpreted:  # numpy underneath: small tiles keep ragged edges and K loops exercised
        cap = _INTERPRETER_MAX_BLOCK
        return GemmConfig(_fit(m, cap), _fit(n, cap), _fit(k, cap), 4, 4, 1)
    candidates = CONFIGS[itemsize]
    fitting = [c for c in candidates
               if c.block_m <= _fit(m, 256) and c.block_n <= _fit(n, 256)] or [candidates[-1]]
    chosen = fitting[-1]
    for c in fitting:
        if batch * math.ceil(m / c.block_m) * math.ceil(n / c.block_n) >= _MIN_PROGRAMS:
            chosen = c
            break
    return GemmConfig(chosen.block_m, chosen.block_n, min(chosen.block_k, _fit(k, 256)),
                      chosen.group_m, chosen.num_warps, chosen.num_stages)


# What the tuner tries, per element size: (block_m, block_n, block_k) tiles, each at several
# pipeline depths; 8 warps from 128x128 tiles up. The rules below prune per problem.
_TUNING_TILES = {
    1: ((128, 256, 128), (128, 128, 128), (128, 128, 64), (64, 256, 128), (64, 128, 128),
        (128, 64, 128), (64, 64, 128), (64, 64, 64), (32, 64, 128), (32, 32, 128),
        (16, 64, 128), (16, 32, 128)),
    2: ((128, 256, 64), (256, 128, 64), (128, 128, 64), (128, 128, 32), (64, 256, 32),
        (128, 64, 64), (64, 128, 64), (64, 64, 64), (64, 64, 32), (32, 64, 64),
        (64, 32, 64), (32, 32, 64), (16, 64, 128), (16, 32, 64)),
    4: ((128, 128, 32), (128, 64, 32), (64, 128, 32), (64, 64, 32), (32, 64, 32),
        (64, 32, 32), (32, 32, 32), (16, 64, 32), (128, 128, 16), (64, 64, 16), (16, 32, 32)),
    8: ((64, 64, 16), (32, 64, 16), (64, 32, 16), (32, 32, 16), (16, 64, 16), (32, 32, 32),
        (16, 32, 16)),
}
_TUNING_STAGES = {1: (3, 4), 2: (3, 4), 4: (2, 3, 4), 8: (2, 3)}
_INTERPRETER_TILES = ((16, 16, 16), (32, 32, 32), (16, 32, 32), (32, 16, 16))


def _tuning_candidates(problem: dict, device: tuning_space.DeviceInfo) -> list[GemmConfig]:
    fit_k = _fit(problem["K"], 256)
    if device.interpreted:  # timings mean nothing there: a few small tiles prove the path
        return [GemmConfig(bm, bn, min(bk, fit_k), 4, 4, 1) for bm, bn, bk in _INTERPRETER_TILES]
    size = problem["itemsize"]
    return [GemmConfig(bm, bn, min(bk, fit_k), 8, 8 if bm * bn >= 128 * 128 else 4, stages)
            for bm, bn, bk in _TUNING_TILES[size] for stages in _TUNING_STAGES[size]]


def _staged_bytes(cfg: GemmConfig, problem: dict) -> int:
    return (cfg.block_m + cfg.block_n) * cfg.block_k * problem["itemsize"] * cfg.num_stages


def _registers(cfg: GemmConfig, problem: dict, device) -> str | None:
    """The accumulator tile lives in registers: at most 128 (fp32) per thread."""
    words = cfg.block_m * cfg.block_n * (2 if problem["itemsize"] == 8 else 1)
    per_thread = words // (32 * cfg.num_warps)
    return f"accumulator needs {per_thread} registers per thread" if per_thread > 128 else None


def _shape_key(p: dict) -> str:
    b = tuning_space.bucket
    return f"b{b(p['batch'])}_m{b(p['M'], 16)}_n{b(p['N'], 16)}_k{b(p['K'], 16)}_{p['layout']}"


TUNING = tuning_space.ConfigSpace(
    "matmul", GemmConfig, _tuning_candidates,
    rules=(tuning_space.dot_blocks("block_m", "block_n", "block_k"),
           tuning_space.within_problem(block_m="M", block_n="N"),
           tuning_space.shared_memory(_staged_bytes), _registers),
    shape_key=_shape_key,
    check=tuning_space.stored_config_check(("block_m", "block_n", "block_k"), low=_MIN_BLOCK))
