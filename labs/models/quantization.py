"""Quantization choices: bitsandbytes 4-bit / 8-bit loading and labs' CPU int8 layers, with a
clear error wherever a choice cannot work."""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

from labs.errors import ConfigError
from labs.models.device import DTYPES


def build_quantization_config(quantization: SimpleNamespace, device: str) -> Any | None:
    """A `BitsAndBytesConfig` for the [quantization] settings, or None when both are off."""
    if not (quantization.load_in_4bit or quantization.load_in_8bit):
        return None
    mode = "load_in_4bit" if quantization.load_in_4bit else "load_in_8bit"
    if device == "mps":
        raise ConfigError(f"{mode} is not supported on Apple MPS by bitsandbytes: set device_map=cpu or turn {mode} off")
    _require_bitsandbytes(mode)
    from transformers import BitsAndBytesConfig

    if quantization.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=quantization.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=DTYPES[quantization.bnb_4bit_compute_dtype],
    )


def _require_bitsandbytes(mode: str) -> None:
    try:
        importlib.import_module("bitsandbytes")
    except ImportError:
        raise ConfigError(
            f"{mode} needs bitsandbytes, which is not installed: run `uv sync --extra quantization` "
            "(or `pip install bitsandbytes`), or turn quantization off"
        ) from None
    except Exception as error:  # bitsandbytes raises RuntimeError when its native library cannot load
        raise ConfigError(f"{mode}: bitsandbytes cannot run on this machine ({error}); turn quantization off") from None


def use_cpu_int8(quantization: SimpleNamespace, device: str, source: str = "cpu_int8") -> bool:
    """Whether to run the linear layers in int8 (labs.models.int8) for this placement.

    `on` where it cannot apply is an error rather than a silent fp32 run; `auto` turns it on only
    where it is a clear win (a CPU with int8 dot products, no bitsandbytes mode).
    """
    from labs.models.int8 import cpu_has_int8_dot_product

    bitsandbytes = quantization.load_in_4bit or quantization.load_in_8bit
    if quantization.cpu_int8 == "off":
        return False
    if quantization.cpu_int8 == "auto":
        return device == "cpu" and not bitsandbytes and cpu_has_int8_dot_product()
    if device != "cpu":
        raise ConfigError(
            f"cpu_int8=on ({source}) runs only on CPU but the model is placed on {device}: "
            "set device_map=cpu, or use load_in_8bit / load_in_4bit on GPUs"
        )
    if bitsandbytes:
        raise ConfigError(f"cpu_int8=on ({source}) and a bitsandbytes mode (load_in_4bit / load_in_8bit) are both set: choose one")
    return True
