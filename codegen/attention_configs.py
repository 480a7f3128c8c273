"""Flash attention's launch configs: the size heuristic and the autotuning space.

A launch runs ``ceil(Sq / BLOCK_M) x bh`` programs (``bh``: batch x query heads); each holds a
[BLOCK_M, D] query tile and walks the keys BLOCK_N at a time, staging a [BLOCK_N, D] K tile and
a [BLOCK_N, Dv] V tile per pipeline stage. :func:`pick_config` is the heuristic a launch uses
when the tuning database has nothing for it; :data:`TUNING` is what ``tritort autotune`` tries
(see :mod:`tritort.codegen.tuning`).

Kernel key ``attention:<dtype>:d<head block>:<span>:<mask>`` (``attention:float16:d64:causal:
none``): the padded head dim (max of D and Dv, a power of two >= 16) sizes every tile; the
span (``full``, ``causal``, or ``window`` for a sliding window, causal or not) bounds the key
loop; the mask (``none``, ``additive``, ``bool``) adds a load per key block. Scale, softcap and
what empty rows give do not enter it: they cost the same whatever the tiling. Shape key
``bh24_q128_k128``: batch x heads, query and key lengths, each rounded up to a
:func:`tritort.codegen.tuning_space.bucket` (the lengths at least 16: no tile is smaller).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from . import tuning_space


@dataclass(frozen=True)
class AttentionConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


_MIN_BLOCK = 16  # tl.dot needs every block dim >= 16
_MAX_BLOCK = 1024
_INTERPRETER_BLOCK = 32
_ENOUGH_PROGRAMS = 132  # one per SM of an H100 (SXM)
_REGISTERS = 255  # per thread on NVIDIA GPUs: tiles past that spill


def _fit(n: int, cap: int) -> int:
    """The power-of-two block (>= 16, <= cap) that covers n."""
    return min(max(_MIN_BLOCK, 1 << max(n - 1, 0).bit_length()), cap)


def _gpu_config(itemsize: int, head_block: int, fma: bool) -> AttentionConfig:
    """Hopper-sized tiles: fp16/bf16 run on tensor cores, so a 128-row block with 64 keys
    keeps the MMA units busy; wide heads halve the tiles (registers hold the [M, D]
    accumulator). fp32 on TF32 tensor cores and fp32 on FMA (``fma``: input_precision
    'ieee', whose dot operands also sit in registers: 64-row tiles spilled on sm_90) and
    fp64 take smaller tiles."""
    if itemsize == 2:
        if head_block <= 64:
            return AttentionConfig(128, 64, 4, 3)
        if head_block <= 128:
            return AttentionConfig(128, 64, 8, 3)
        return AttentionConfig(64, 32, 4, 2)
    if itemsize == 4 and fma:
        return AttentionConfig(32, 32, 4, 2) if head_block <= 64 else \
            AttentionConfig(16, 32, 4, 2)
    if itemsize == 4:
        return AttentionConfig(64, 32, 4, 2) if head_block <= 64 else \
            AttentionConfig(32, 32, 4, 2)
    return AttentionConfig(16, 32, 4, 1)


@functools.lru_cache(maxsize=4096)  # launches repeat their problems
def pick_config(q_len: int, kv_len: int, heads: int, head_block: int, itemsize: int,
                interpreted: bool, fma: bool = False) -> AttentionConfig:
    """The block sizes of one launch when the tuning database has no entry: ``heads``
    (batch x query heads) programs per row block; ``head_block``: the padded head dim (max
    of D, Dv); ``fma``: float32 dots in full precision (no TF32)."""
    if interpreted:  # numpy underneath: small blocks keep ragged edges and key loops exercised
        return AttentionConfig(_fit(q_len, _INTERPRETER_BLOCK), _fit(kv_len, _INTERPRETER_BLOCK),
                               4, 1)
    cfg = _gpu_config(itemsize, head_block, fma)
    block_m = min(cfg.block_m, _fit(q_len, 256))
    if block_m > 64 and heads * math.ceil(q_len / block_m) < _ENOUGH_PROGRAMS:
        block_m = 64  # too few programs to fill the GPU: halve the rows per program
    warps = cfg.num_warps if block_m > 64 else min(cfg.num_warps, 4)  # 16 rows per warp
    return AttentionConfig(block_m, min(cfg.block_n, _fit(kv_len, 256)), warps, cfg.num_stages)


# ------------------------------------------------------------------ the tuning space

# (block_m, block_n) per element size, largest first. Small row blocks serve short query
# lengths (decoding); the pruning rules drop what the problem or the device cannot take.
_TUNING_TILES = {
    2: ((128, 128), (128, 64), (128, 32), (64, 128), (64, 64), (64, 32), (32, 64), (32, 32),
        (16, 128), (16, 64), (16, 32)),
    4: ((128, 64), (128, 32), (64, 64), (64, 32), (32, 64), (32, 32), (16, 64), (16, 32)),
    8: ((64, 32), (32, 32), (32, 16), (16, 32), (16, 16)),
}
_TUNING_STAGES = {2: (2, 3, 4), 4: (2, 3), 8: (1, 2)}
_INTERPRETER_TILES = ((16, 16), (32, 32), (16, 32), (32, 16))


def kernel_key(dtype: str, head_block: int, causal: bool, windowed: bool,
               mask: str | None) -> str:
    """``attention:float32:d64:causal:none``; ``dtype`` as torch names it (``float32``)."""
    span = "window" if windowed else "causal" if causal else "full"
    return f"attention:{dtype}:d{head_block}:{span}:{mask or 'none'}"


def problem_of(heads: int, q_len: int, kv_len: int, block_d: int, block_dv: int,
               itemsize: int) -> dict:
    """What the shape key and the pruning rules read (``heads``: batch x query heads)."""
    return {"bh": heads, "Sq": q_len, "Sk": kv_len, "D": block_d, "DV": block_dv,
            "itemsize": itemsize}


def _warps(block_m: int) -> tuple[int, ...]:
    """An MMA covers 16 rows per warp: 8 warps only on 128-row blocks; small row blocks
    also try fewer warps."""
    return (4, 8) if block_m >= 128 else (4,) if block_m == 64 else (2, 4)


def _tuning_candidates(problem: dict, device: tuning_space.DeviceInfo) -> list[AttentionConfig]:
    if device.interpreted:  # timings mean nothing there: a few small tiles prove the path
        return [AttentionConfig(bm, bn, 4, 1) for bm, bn in _INTERPRETER_TILES]
    size = problem["itemsize"]
    return [AttentionConfig(bm, bn, warps, stages) for bm, bn in _TUNING_TILES[size]
            for warps in _warps(bm) for stages in _TUNING_STAGES[size]]


def _staged_bytes(cfg: AttentionConfig, problem: dict) -> int:
    """The K and V tiles of every pipeline stage, plus the query tile."""
    kv = cfg.block_n * (problem["D"] + problem["DV"]) * cfg.num_stages
    return (kv + cfg.block_m * problem["D"]) * problem["itemsize"]


def _registers(cfg: AttentionConfig, problem: dict, device) -> str | None:
    """The output accumulator [M, Dv] and the scores [M, N] live in registers, in fp32
    (fp64 for double)."""
    words = cfg.block_m * (problem["DV"] + cfg.block_n) * (2 if problem["itemsize"] == 8 else 1)
    per_thread = words // (32 * cfg.num_warps)
    return f"tiles need {per_thread} registers per thread" if per_thread > _REGISTERS else None


def _shape_key(p: dict) -> str:
    b = tuning_space.bucket
    return f"bh{b(p['bh'])}_q{b(p['Sq'], _MIN_BLOCK)}_k{b(p['Sk'], _MIN_BLOCK)}"


TUNING = tuning_space.ConfigSpace(
    "attention", AttentionConfig, _tuning_candidates,
    rules=(tuning_space.dot_blocks("block_m", "block_n"),
           tuning_space.within_problem(block_m="Sq", block_n="Sk"),
           tuning_space.shared_memory(_staged_bytes), _registers),
    shape_key=_shape_key,
    check=tuning_space.stored_config_check(("block_m", "block_n"), low=_MIN_BLOCK, high=_MAX_BLOCK))
