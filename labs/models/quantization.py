"""bitsandbytes 4-bit / 8-bit loading, with a clear error wherever it cannot work."""

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
