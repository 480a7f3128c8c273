"""What tuning is about: devices, and each tunable template's space of launch configs.

A config is a frozen dataclass of ints (tiles, group size, num_warps, num_stages). A
:class:`ConfigSpace` lists a template's candidate configs for a problem, the rules that prune
them on a device, the shape key its results are stored under and the check a stored config
must pass. :mod:`tritort.codegen.tuning` says which config a launch uses.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

INTERPRETER = "triton-interpreter"
DEFAULT_SMS = 132  # an H100 SXM's SMs: what configs assume where no GPU says otherwise
SPACES: dict[str, "ConfigSpace"] = {}  # template name (a kernel key's first part) -> space

# ------------------------------------------------------------------ devices


@dataclass(frozen=True)
class DeviceInfo:
    name: str  # the database's device key
    interpreted: bool
    shared_memory: int  # bytes one program may use
    sms: int = DEFAULT_SMS  # streaming multiprocessors


_devices: dict[tuple, DeviceInfo] = {}


def device_info(torch_device: Any) -> DeviceInfo:
    key = (torch_device.type, torch_device.index)
    info = _devices.get(key)
    if info is None:
        if torch_device.type != "cuda":  # Triton's interpreter on torch CPU tensors
            info = DeviceInfo(INTERPRETER, True, 1 << 30)
        else:
            import torch

            index = torch_device.index if torch_device.index is not None else \
                torch.cuda.current_device()
            info = DeviceInfo(torch.cuda.get_device_name(index), False, _shared_memory(index),
                              torch.cuda.get_device_properties(index).multi_processor_count)
        _devices[key] = info
    return info


def _shared_memory(index: int) -> int:
    try:
        import triton

        return int(triton.runtime.driver.active.utils.get_device_properties(index)
                   ["max_shared_mem"])
    except Exception:  # an older driver API: torch's figure, else a common floor
        import torch

        props = torch.cuda.get_device_properties(index)
        return int(getattr(props, "shared_memory_per_block_optin", 48 * 1024))


def triton_version() -> str:
    import triton

    return triton.__version__


# ------------------------------------------------------------------ config spaces

Rule = Callable[[Any, dict, DeviceInfo], "str | None"]


def bucket(n: int, floor: int = 1) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (2**k and 1.5 * 2**k) >= n."""
    n = max(int(n), floor, 1)
    pow2 = 1 << (n - 1).bit_length()
    three_quarters = 3 * pow2 // 4
    return three_quarters if pow2 >= 4 and three_quarters >= n else pow2


def pow2_at_least(n: int, floor: int = 16) -> int:
    return max(floor, 1 << max(int(n) - 1, 0).bit_length())


def stored_config_check(blocks: Sequence[str], low: int = 1, high: int = 1 << 30,
                        most: dict[str, int] | None = None):
    """A ``check`` for :class:`ConfigSpace`: why a stored config can never launch (block
    fields not powers of two in [low, high], num_warps not a power of two <= 32, more than 8
    stages, a ``most`` field over its bound), or None."""
    def check(cfg) -> str | None:
        for name in blocks:
            v = getattr(cfg, name)
            if v < low or v & (v - 1) or v > high:
                return f"{name}={v} is not a power of two in [{low}, {high}]"
        for name, bound in (most or {}).items():
            if getattr(cfg, name) > bound:
                return f"{name}={getattr(cfg, name)} > {bound}"
        if cfg.num_warps not in (1, 2, 4, 8, 16, 32):
            return f"num_warps={cfg.num_warps} is not a power of two <= 32"
        return f"num_stages={cfg.num_stages} > 8" if cfg.num_stages > 8 else None

    return check


def dot_blocks(*fields: str) -> Rule:
    """tl.dot needs every block dim >= 16."""
    def rule(cfg, problem, device):
        small = [f"{f}={getattr(cfg, f)}" for f in fields if getattr(cfg, f) < 16]
        return f"{', '.join(small)} < 16 (tl.dot)" if small else None
    return rule


def within_problem(**dims: str) -> Rule:
    """Drop tiles larger than their problem dim rounded up to a power of two (>= 16)."""
    def rule(cfg, problem, device):
        for f, dim in dims.items():
            if getattr(cfg, f) > pow2_at_least(problem[dim]):
                return f"{f}={getattr(cfg, f)} > {dim}={problem[dim]}"
        return None
    return rule


def shared_memory(estimate: Callable[[Any, dict], int]) -> Rule:
    """Drop configs whose staged tiles (``estimate(cfg, problem)`` bytes) overflow the device."""
    def rule(cfg, problem, device):
        need = estimate(cfg, problem)
        if need > device.shared_memory:
            return f"shared memory {need // 1024} KiB > {device.shared_memory // 1024} KiB"
        return None
    return rule


def config_dict(cfg: Any) -> dict:
    """A config as stored: fields with defaults (added later) only where they differ, so
    entries written before them read back the same."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.default is dataclasses.MISSING or getattr(cfg, f.name) != f.default}


def describe(cfg: Any) -> str:
    short = {"num_warps": "warps", "num_stages": "stages"}
    return " ".join(f"{short.get(f.name, f.name.removeprefix('block_'))}={getattr(cfg, f.name)}"
                    for f in dataclasses.fields(cfg))


@dataclass(frozen=True, eq=False)
class ConfigSpace:
    """One tunable template's configs: candidates, pruning rules, shape key (see
    :mod:`tritort.codegen.tuning` for plugging a template in)."""

    template: str
    config_type: type
    candidates: Callable[[dict, DeviceInfo], Iterable[Any]]
    rules: tuple = ()
    shape_key: Callable[[dict], str] = str
    check: Callable[[Any], "str | None"] | None = None

    def __post_init__(self) -> None:
        SPACES[self.template] = self

    def pruned(self, problem: dict, device: DeviceInfo, default: Any = None,
               limit: int | None = None) -> tuple[list, list[tuple[Any, str]]]:
        """(configs to try, default first; [(config, why dropped)])."""
        kept, dropped, seen = [], [], set()
        for cfg in ([default] if default is not None else []) + list(
                self.candidates(problem, device)):
            if cfg in seen:
                continue
            seen.add(cfg)
            reason = next((r for rule in self.rules if (r := rule(cfg, problem, device))), None)
            if reason is not None and cfg != default:  # the default runs anyway
                dropped.append((cfg, reason))
            elif limit is not None and len(kept) >= limit:
                dropped.append((cfg, f"over the limit of {limit} candidates"))
            else:
                kept.append(cfg)
        return kept, dropped

    def parse(self, value: Any) -> Any:
        """A config from its JSON dict; ValueError saying what is wrong."""
        fields = dataclasses.fields(self.config_type)
        names = [f.name for f in fields]
        # fields added later have defaults: entries stored before them stay valid
        optional = {f.name for f in fields if f.default is not dataclasses.MISSING}
        if not isinstance(value, dict):
            raise ValueError(f"a {self.template} config is a dict of {names}, got "
                             f"{type(value).__name__}")
        if not set(names) - optional <= set(value) <= set(names):
            raise ValueError(f"a {self.template} config has the fields {names}, got "
                             f"{sorted(map(str, value))}")
        bad = [k for k, v in value.items() if type(v) is not int or v <= 0]
        if bad:
            raise ValueError(f"{self.template} config fields {bad} must be positive ints")
        cfg = self.config_type(**value)
        reason = self.check(cfg) if self.check is not None else None
        if reason:
            raise ValueError(f"invalid {self.template} config {value}: {reason}")
        return cfg
