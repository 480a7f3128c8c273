"""Conv's launch configs: the size heuristic and the autotuning space.

A Conv launch is ``groups`` GEMMs of ``rows`` (n, output position) x ``cols`` (output channels
of a group; every output channel for the ``direct`` variant) over ``K`` (a group's channels for
``tap_major``, channels x taps for ``flat``, taps for ``direct``). :func:`pick_config` is the
heuristic a launch uses when the tuning database has nothing for it; :data:`TUNING` is what
``tritort autotune`` tries (see :mod:`tritort.codegen.tuning`).

Kernel key ``conv:<dtype>:<variant>:<rank>d`` (``conv:float16:tap_major:2d``): the variant and
spatial rank change the generated loops; kernel size, strides, bias and epilogue do not enter
it (they do not change the tiling). Shape key ``g1_r4096_c64_k64_t9``: groups, rows, cols, K
and taps, each rounded up to a :func:`tritort.codegen.tuning_space.bucket` (cols and K at least
16 for the dot variants, whose tiles are never smaller).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from . import tuning_space

DOT_VARIANTS = ("tap_major", "flat")
_MIN_DOT_BLOCK = 16  # tl.dot needs every block dim >= 16
_MAX_BLOCK = 1024


@dataclass(frozen=True)
class ConvConfig:
    block_m: int
    block_n: int
    block_k: int  # unused by the direct variant (1 there)
    num_warps: int
    num_stages: int


# GPU candidates per element size in bytes ("tf32": float32 dots on TF32 tensor cores),
# largest tiles first (float32 with input_precision="ieee" runs tl.dot as FMA, so its
# tiles stay smaller). BLOCK_K is capped by the K a program walks. Tensor-core tiles of 64
# rows or more run as Hopper's wgmma (4 warps per 64 rows); the 64 x 16 tile keeps the
# small late-stage convs on it. No 128-column tile: with a fused residual epilogue they
# spilled on sm_90, as did float32 64 x 64 tiles of 3x3 convs (ptxas, perf/compile_check.py).
CONFIGS: dict[int | str, tuple[ConvConfig, ...]] = {
    # int8 tiles (tl.dot with int32 accumulation): an int8 MMA's K step is 32
    1: (ConvConfig(128, 128, 64, 8, 3), ConvConfig(128, 64, 64, 4, 3),
        ConvConfig(64, 64, 64, 4, 3), ConvConfig(64, 32, 32, 4, 2), ConvConfig(32, 32, 32, 4, 2),
        ConvConfig(32, 16, 32, 4, 2)),
    2: (ConvConfig(128, 64, 64, 8, 3), ConvConfig(64, 64, 64, 4, 3),
        ConvConfig(64, 32, 32, 4, 3), ConvConfig(64, 16, 32, 4, 3),
        ConvConfig(32, 32, 32, 4, 2), ConvConfig(32, 16, 32, 4, 2)),
    "tf32": (ConvConfig(128, 64, 32, 8, 3), ConvConfig(64, 32, 32, 4, 3),
             ConvConfig(64, 16, 32, 4, 3), ConvConfig(32, 32, 32, 4, 2),
             ConvConfig(32, 16, 32, 4, 2)),
    # float32 FMA dots: 8 warps from 64 rows, two stages. With 4 warps (or 3 stages) ptxas
    # spilled ResNet-50's convs (8-512 B at batch 1 and 8); 8 warps keep them at <= 187.
    4: (ConvConfig(128, 64, 32, 8, 2), ConvConfig(64, 64, 32, 8, 2),
        ConvConfig(64, 32, 32, 8, 2), ConvConfig(32, 32, 32, 4, 2), ConvConfig(32, 16, 32, 4, 2)),
    8: (ConvConfig(64, 32, 16, 4, 2), ConvConfig(32, 32, 16, 4, 2), ConvConfig(32, 16, 16, 4, 2)),
}
WGMMA_KINDS = (2, "tf32")  # fp16 / bf16 and TF32 dots: wgmma from 64 rows
_WGMMA_ROWS = 64  # Hopper's warpgroup MMA: 64 rows per 4 warps
# the direct (depthwise) kernel: many positions, a few channels, no tl.dot
DIRECT_CONFIGS = (ConvConfig(256, 8, 1, 4, 1), ConvConfig(128, 8, 1, 4, 1),
                  ConvConfig(64, 8, 1, 4, 1), ConvConfig(32, 8, 1, 2, 1))
_MIN_PROGRAMS = 128  # enough to fill a large GPU; below that smaller tiles buy parallelism
_INTERPRETER_MAX_BLOCK = 32


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _fit(n: int, cap: int) -> int:
    """The power-of-two block (>= 16, <= cap) that covers n."""
    return min(max(_MIN_DOT_BLOCK, _pow2(n)), cap)


@functools.lru_cache(maxsize=4096)  # launches repeat their problems
def pick_config(rows: int, cols: int, k: int, groups: int, itemsize: int, variant: str,
                interpreted: bool, tf32: bool = False) -> ConvConfig:
    """Block sizes for one launch of ``groups`` GEMMs of rows x cols over K = k, used when
    the tuning database has no entry: the largest listed tile that still gives enough
    programs; tensor-core dots (fp16 / bf16, float32 with ``tf32``) of 64 rows or more keep
    64-row tiles (wgmma) even when that leaves fewer programs."""
    if variant == "direct":
        if interpreted:  # small tiles keep ragged edges exercised
            return ConvConfig(_fit(rows, _INTERPRETER_MAX_BLOCK), min(_pow2(cols), 8), 1, 1, 1)
        fitting = [c for c in DIRECT_CONFIGS if c.block_m <= _pow2(rows)] or [DIRECT_CONFIGS[-1]]
        chosen = next((c for c in fitting
                       if math.ceil(rows / c.block_m) * math.ceil(cols / c.block_n)
                       >= _MIN_PROGRAMS), fitting[-1])
        return ConvConfig(chosen.block_m, min(chosen.block_n, _pow2(cols)), 1,
                          chosen.num_warps, 1)
    if interpreted:
        cap = _INTERPRETER_MAX_BLOCK
        return ConvConfig(_fit(rows, cap), _fit(cols, cap), _fit(k, cap), 4, 1)
    kind = "tf32" if tf32 and itemsize == 4 else itemsize
    candidates = CONFIGS[kind]
    fitting = [c for c in candidates
               if c.block_m <= _fit(rows, 256) and c.block_n <= _fit(cols, 256)] \
        or [candidates[-1]]
    if kind in WGMMA_KINDS and rows >= _WGMMA_ROWS:
        fitting = [c for c in fitting if c.block_m >= _WGMMA_ROWS] or fitting
    chosen = next((c for c in fitting
                   if groups * math.ceil(rows / c.block_m) * math.ceil(cols / c.block_n)
                   >= _MIN_PROGRAMS), fitting[-1])
    block_k = min(chosen.block_k, _fit(k, 256))
    return ConvConfig(chosen.block_m, chosen.block_n, max(block_k, 32 if itemsize == 1 else 16),
                      chosen.num_warps, chosen.num_stages)


# ------------------------------------------------------------------ the tuning space

# (block_m, block_n, block_k) per element size, each at several pipeline depths. Narrow
# block_n tiles matter here: grouped convs often have 16-32 output channels per group.
_TUNING_TILES = {
    2: ((128, 128, 64), (128, 128, 32), (128, 64, 64), (128, 64, 32), (64, 128, 32),
        (256, 64, 32), (64, 64, 64), (64, 64, 32), (128, 32, 32), (64, 32, 32), (32, 64, 32),
        (32, 32, 64), (32, 32, 32), (64, 16, 32), (32, 16, 32), (16, 32, 32)),
    4: ((128, 64, 32), (64, 128, 32), (128, 128, 16), (64, 64, 32), (128, 32, 32),
        (64, 32, 32), (32, 64, 32), (64, 64, 16), (32, 32, 32), (64, 16, 32), (32, 16, 32),
        (16, 32, 32)),
    8: ((64, 64, 16), (64, 32, 16), (32, 64, 16), (32, 32, 16), (32, 32, 32), (64, 16, 16),
        (32, 16, 16), (16, 32, 16), (16, 16, 16)),
}
_TUNING_TILES[1] = tuple(t for t in _TUNING_TILES[2] if t[2] >= 32) + ((64, 64, 128),)
_TUNING_STAGES = {1: (2, 3, 4), 2: (2, 3, 4), 4: (2, 3, 4), 8: (2, 3)}
# direct: (positions, channels); no shared memory staging, so one stage
_DIRECT_TILES = ((512, 8), (256, 8), (256, 16), (128, 8), (128, 16), (128, 32), (64, 8),
                 (64, 16), (64, 32), (32, 8), (32, 16))
_INTERPRETER_TILES = ((16, 16, 16), (32, 32, 32), (16, 32, 32), (32, 16, 16))
_INTERPRETER_DIRECT = ((16, 8), (32, 4), (16, 16), (32, 8))


def kernel_key(dtype: str, variant: str, rank: int) -> str:
    """``conv:float32:tap_major:2d``; ``dtype`` as torch names it (``float32``), or
    ``tf32`` for float32 dots on TF32 tensor cores."""
    return f"conv:{dtype}:{variant}:{rank}d"


def problem_of(rows: int, cols: int, k: int, groups: int, taps: int, itemsize: int,
               variant: str) -> dict:
    """What the shape key and the pruning rules read."""
    return {"rows": rows, "cols": cols, "K": k, "groups": groups, "taps": taps,
            "itemsize": itemsize, "variant": variant}


def _warps(bm: int, bn: int) -> int:
    return 8 if bm * bn >= 128 * 128 else 4


def _tuning_candidates(problem: dict, device: tuning_space.DeviceInfo) -> list[ConvConfig]:
    cols_cap = _pow2(problem["cols"])
    if problem["variant"] == "direct":
        if device.interpreted:  # timings mean nothing there: a few small tiles prove the path
            return [ConvConfig(bm, min(bn, cols_cap), 1, 1, 1) for bm, bn in _INTERPRETER_DIRECT]
        return [ConvConfig(bm, min(bn, cols_cap), 1, warps, 1) for bm, bn in _DIRECT_TILES
                for warps in ((2, 4) if bm * bn <= 1024 else (4, 8))]
    fit_k = _fit(problem["K"], 256)
    if device.interpreted:
        return [ConvConfig(bm, bn, min(bk, fit_k), 4, 1) for bm, bn, bk in _INTERPRETER_TILES]
    size = problem["itemsize"]
    return [ConvConfig(bm, bn, min(bk, fit_k), _warps(bm, bn), stages)
            for bm, bn, bk in _TUNING_TILES[size] for stages in _TUNING_STAGES[size]]


def _dot_blocks(cfg: ConvConfig, problem: dict, device) -> str | None:
    if problem["variant"] == "direct":
        return None
    return tuning_space.dot_blocks("block_m", "block_n", "block_k")(cfg, problem, device)


def _staged_bytes(cfg: ConvConfig, problem: dict) -> int:
    """The dot variants stage an A and a B tile per pipeline stage; direct stages nothing."""
    if problem["variant"] == "direct":
        return 0
    return (cfg.block_m + cfg.block_n) * cfg.block_k * problem["itemsize"] * cfg.num_stages


def _registers(cfg: ConvConfig, problem: dict, device) -> str | None:
    """The accumulator tile (and direct's input tile beside it) lives in registers: at most
    128 fp32 words per thread."""
    tiles = 2 if problem["variant"] == "direct" else 1
    words = tiles * cfg.block_m * cfg.block_n * (2 if problem["itemsize"] == 8 else 1)
    per_thread = words // (32 * cfg.num_warps)
    return f"tiles need {per_thread} registers per thread" if per_thread > 128 else None


def unusable(cfg: ConvConfig, variant: str) -> str | None:
    """Why ``cfg`` (valid by the space's stored-config check) cannot run this variant: the
    dot variants need every block dim >= 16 (a direct config stored under a dot kernel's key
    would not)."""
    if variant in DOT_VARIANTS:
        small = [n for n in ("block_m", "block_n", "block_k")
                 if getattr(cfg, n) < _MIN_DOT_BLOCK]
        if small:
            return f"{', '.join(small)} < {_MIN_DOT_BLOCK} (tl.dot)"
    return None


def _shape_key(p: dict) -> str:
    b = tuning_space.bucket
    floor = 1 if p["variant"] == "direct" else _MIN_DOT_BLOCK  # no dot tile is below 16
    return (f"g{b(p['groups'])}_r{b(p['rows'], 16)}_c{b(p['cols'], floor)}"
            f"_k{b(p['K'], floor)}_t{b(p['taps'])}")


TUNING = tuning_space.ConfigSpace(
    "conv", ConvConfig, _tuning_candidates,
    rules=(_dot_blocks, tuning_space.within_problem(block_m="rows", block_n="cols"),
           tuning_space.shared_memory(_staged_bytes), _registers),
    shape_key=_shape_key,
    check=tuning_space.stored_config_check(("block_m", "block_n", "block_k"), high=_MAX_BLOCK))
