"""Pick the device and dtype a model runs in, and say why (shown by --show-config)."""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
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
    int8_linear: bool = False  # the linear layers run in int8 (labs.models.int8), CPU only


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


def resolve_dtype(torch_dtype: str, device: str, int8_linear: bool = False) -> tuple[torch.dtype, str]:
    """The activation dtype; `int8_linear` says the linear layers will run in int8 on the CPU.

    With int8 linear layers the matrix products no longer run in the activation dtype, and what is
    left (norms, rotary, attention, quantizing activations) runs in labs' native kernels, which
    take fp32. bf16 activations there mean PyTorch's generic ops plus conversions at every layer:
    measured 1.6-2.1x slower than fp32 + int8 on a Sapphire Rapids Xeon (AMX) and 1.4-2.0x on an
    AMD EPYC with AVX512-BF16 (docs/benchmarks.md). Without int8, bf16 wins where the CPU has it.
    """
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
    if int8_linear:
        return torch.float32, ("auto: the linear layers run in int8 on this CPU, and fp32 around them runs the "
                               "native kernels (faster than bf16 there)")
    if cpu_has_native_bf16():
        return torch.bfloat16, f"auto: the CPU ({platform.machine()}) has native bf16"
    return torch.float32, f"auto: the CPU ({platform.machine()}) has no native bf16, so fp32 is faster"


def resolve_placement(device_map: str, torch_dtype: str, device_source: str = "default",
                      int8_linear: Callable[[str], bool] = lambda device: False) -> Placement:
    """Device, then whether int8 linear layers apply there (`int8_linear(device)`), then the dtype."""
    device = resolve_device(device_map, device_source)
    int8 = int8_linear(device)
    dtype, reason = resolve_dtype(torch_dtype, device, int8)
    return Placement(device, dtype, reason, int8)


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))
