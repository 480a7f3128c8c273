"""MatMul / Gemm launch configs: the size heuristic and the autotuner's config space.

Without a tuning-database entry, :func:`pick_config` chooses from :data:`CONFIGS`: the
largest tiles that still give a program to every SM. Tensor-core GEMMs (float8/int8, fp16,
bf16, TF32) with M >= 64 keep 64-row tiles or larger (4 warps per 64 rows), which Hopper
runs as wgmma (one warpgroup per 64 rows); smaller ones compile to mma.sync. When the output
tiles still leave SMs idle and K is long, the K loop is split over programs (split-K, one
launch: see :func:`tritort.codegen.gemm._split_reduce`). :data:`TUNING` lists what
``tritort autotune`` tries and the rules that prune it (see :mod:`tritort.codegen.tuning`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from . import tuning_space
from .tuning_space import DEFAULT_SMS

@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int
    split_k: int = 1  # programs sharing one output tile's K loop


# GPU candidates per element size in bytes ("tf32": float32 on TF32 tensor cores), largest
# tiles first. Tensor-core tiles give each warp at most 64 fp32 accumulators (128 rows take 8
# warps: 128x256 tiles spilled); float32 with input_precision="ieee" (FMA) keeps smaller
# tiles, fp64 smaller still (the accumulator lives in registers). Shared memory per stage
# stays under ~50 KB.
CONFIGS: dict[int | str, tuple[GemmConfig, ...]] = {
    1: (GemmConfig(128, 128, 128, 8, 8, 3), GemmConfig(64, 128, 128, 8, 4, 3),
        GemmConfig(64, 64, 128, 8, 4, 4), GemmConfig(32, 64, 128, 8, 4, 4),
        GemmConfig(16, 64, 128, 8, 4, 4)),  # float8, int8
    2: (GemmConfig(128, 128, 64, 8, 8, 4), GemmConfig(64, 128, 64, 8, 4, 4),
        GemmConfig(64, 64, 64, 8, 4, 4), GemmConfig(32, 64, 64, 8, 4, 4),
        GemmConfig(16, 64, 128, 8, 4, 4)),
    "tf32": (GemmConfig(128, 128, 32, 8, 8, 3), GemmConfig(64, 128, 32, 8, 4, 3),
             GemmConfig(64, 64, 32, 8, 4, 4), GemmConfig(32, 64, 32, 8, 4, 4),
             GemmConfig(16, 64, 32, 8, 4, 4)),
    # float32 FMA dots: 8 warps from 64 rows (4 warps spilled 16 B at 64x64 with a residual
    # epilogue on sm_90: BERT's out-projection at batch 8)
    4: (GemmConfig(128, 128, 32, 8, 8, 3), GemmConfig(64, 128, 32, 8, 8, 3),
        GemmConfig(64, 64, 32, 8, 8, 4), GemmConfig(32, 64, 32, 8, 4, 4),
        GemmConfig(16, 64, 32, 8, 4, 4)),
    8: (GemmConfig(64, 64, 16, 8, 4, 3), GemmConfig(32, 64, 16, 8, 4, 3),
        GemmConfig(16, 64, 16, 8, 4, 3)),
}
TENSOR_CORE_KINDS = (1, 2, "tf32")
_WGMMA_ROWS = 64  # Hopper's warpgroup MMA: 64 rows per 4 warps
_MIN_BLOCK = 16  # tl.dot needs every block dim >= 16
_INTERPRETER_MAX_BLOCK = 32
# split-K: each program walks at least this many BLOCK_K steps, at most this many splits
_SPLIT_MIN_STEPS = 4
_MAX_SPLIT = 16
SPLIT_SLOTS = 1024  # split-K counters per launcher: launches with more programs do not split


def _fit(n: int, cap: int) -> int:
    """The power-of-two block (>= 16, <= cap) that covers n."""
    return min(max(_MIN_BLOCK, 1 << max(n - 1, 0).bit_length()), cap)


@functools.lru_cache(maxsize=4096)  # launches repeat their problems
def pick_config(m: int, n: int, k: int, batch: int, itemsize: int, interpreted: bool,
                tf32: bool = False, sms: int = DEFAULT_SMS) -> GemmConfig:
    """The config for one launch: the largest tiles that still give every SM a program
    (``sms`` of them), then split-K if the tiles leave half of them idle."""
    if interpreted:  # numpy underneath: small tiles keep ragged edges and K loops exercised
        cap = _INTERPRETER_MAX_BLOCK
        return GemmConfig(_fit(m, cap), _fit(n, cap), _fit(k, cap), 4, 4, 1)
    kind = "tf32" if tf32 and itemsize == 4 else itemsize
    candidates = CONFIGS[kind]
    fitting = [c for c in candidates
               if c.block_m <= _fit(m, 256) and c.block_n <= _fit(n, 256)] or [candidates[-1]]
    if kind in TENSOR_CORE_KINDS and m >= _WGMMA_ROWS:  # wgmma tiles, even if fewer programs
        fitting = [c for c in fitting if c.block_m >= _WGMMA_ROWS] or fitting

    def programs(c: GemmConfig) -> int:
        return batch * math.ceil(m / c.block_m) * math.ceil(n / c.block_n)

    chosen = next((c for c in fitting if programs(c) >= sms), fitting[-1])
    block_k = min(chosen.block_k, _fit(k, 256))
    return GemmConfig(chosen.block_m, chosen.block_n, block_k, chosen.group_m,
                      chosen.num_warps, chosen.num_stages,
                      split_for(programs(chosen), k, block_k, sms))


def split_for(programs: int, k: int, block_k: int, sms: int = DEFAULT_SMS) -> int:
    """How many programs share each output tile's K loop: enough to give the idle SMs work
    when the tiles fill less than half of them, each walking >= _SPLIT_MIN_STEPS K steps."""
    if programs * 2 > sms or programs > SPLIT_SLOTS:
        return 1
    steps = math.ceil(k / block_k)
    return max(1, min(sms // programs, steps // _SPLIT_MIN_STEPS, _MAX_SPLIT))


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
    found = []
    for bm, bn, bk in _TUNING_TILES[size]:
        bk = min(bk, fit_k)
        programs = problem["batch"] * math.ceil(problem["M"] / bm) * math.ceil(problem["N"] / bn)
        split = split_for(programs, problem["K"], bk, device.sms)
        for stages in _TUNING_STAGES[size]:
            warps = 8 if bm * bn >= 128 * 128 else 4
            found.append(GemmConfig(bm, bn, bk, 8, warps, stages))
            if split > 1:  # the same tile with its K loop split
                found.append(GemmConfig(bm, bn, bk, 8, warps, stages, split))
    return found


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
    check=tuning_space.stored_config_check(("block_m", "block_n", "block_k"), low=_MIN_BLOCK,
                                           most={"split_k": _MAX_SPLIT}))
