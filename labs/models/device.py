"""Pick the device and dtype a model runs in, and say why (shown by --show-config)."""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from labs.errors import ConfigError

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda", "cpu" or "mps"
    dtype: torch.dtype
    reason: str


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 / AMX on x86, BF16 on Arm).

    Without it torch emulates bf16 and matrix products run several times slower than fp32
    (measured on this project's AVX-512 machine without AVX512-BF16: 61 vs 327 GFLOP/s).
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_device(device_map: str, source: str = "default") -> str:
    if device_map == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device_map == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device_map=cuda ({source}) but no CUDA device is visible to torch: use auto or cpu")
    if device_map == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device_map=mps ({source}) but Apple MPS is not available here: use auto or cpu")
    return device_map


def resolve_dtype(torch_dtype: str, device: str) -> tuple[torch.dtype, str]:
    if torch_dtype != "auto":
        dtype = DTYPES[torch_dtype]
        if device == "cpu" and dtype == torch.bfloat16 and not cpu_has_native_bf16():
            logger.warning("bf16 on a CPU without native bf16 is emulated and slower than fp32")
        return dtype, f"{torch_dtype} as configured"
    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: this GPU supports bf16"
        return torch.float16, "auto: this GPU lacks bf16, using fp16"
    if device == "mps":
        return torch.float16, "auto: fp16 on Apple MPS"
    if cpu_has_native_bf16():
        return torch.bfloat16, f"auto: the CPU ({platform.machine()}) has native bf16"
    return torch.float32, f"auto: the CPU ({platform.machine()}) has no native bf16, so fp32 is faster"


def resolve_placement(device_map: str, torch_dtype: str, device_source: str = "default") -> Placement:
    device = resolve_device(device_map, device_source)
    dtype, reason = resolve_dtype(torch_dtype, device)
    return Placement(device, dtype, reason)


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))
