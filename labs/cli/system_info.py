"""What `--show-gpu` reports: accelerators, their memory and bf16 support, and the CPU."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from labs.models.device import cpu_has_native_bf16


def accelerator_report() -> dict[str, Any]:
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
        "mps_available": bool(torch.backends.mps.is_available()),
        "cpu": {
            "machine": platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "native_bf16": cpu_has_native_bf16(),
        },
    }
    if report["cuda_available"]:
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            report["gpus"].append({
                "index": index,
                "name": properties.name,
                "compute_capability": f"{properties.major}.{properties.minor}",
                "memory_total_gib": round(total / 1024**3, 2),
                "memory_free_gib": round(free / 1024**3, 2),
                "bf16": properties.major >= 8,
            })
    return report
