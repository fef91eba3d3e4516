"""4-bit / 8-bit loading through bitsandbytes, and the errors where it cannot work."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from labs.config import CliValue, load_settings
from labs.errors import ConfigError
from labs.models import load_model
from labs.models.quantization import build_quantization_config


def quantization(**overrides: object) -> SimpleNamespace:
    values = dict(load_in_4bit=False, load_in_8bit=False, bnb_4bit_quant_type="nf4",
                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype="bf16")
    return SimpleNamespace(**(values | overrides))


def test_off_means_no_config() -> None:
    assert build_quantization_config(quantization(), "cpu") is None


def test_4bit_config_carries_the_bnb_settings() -> None:
    config = build_quantization_config(quantization(load_in_4bit=True, bnb_4bit_quant_type="fp4"), "cpu")
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4"
    assert config.bnb_4bit_use_double_quant and config.bnb_4bit_compute_dtype == torch.bfloat16


def test_missing_bitsandbytes_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ConfigError, match=r"load_in_8bit needs bitsandbytes, which is not installed: run `uv sync --extra quantization`"):
        build_quantization_config(quantization(load_in_8bit=True), "cpu")


def test_mps_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"load_in_4bit is not supported on Apple MPS"):
        build_quantization_config(quantization(load_in_4bit=True), "mps")


def test_tiny_model_loads_in_8bit_and_runs(tiny_model_dir: Path) -> None:
    settings = load_settings(
        {"generation.model_name": CliValue(str(tiny_model_dir), "--model")},
        environ={"LABS_LOAD_IN_8BIT": "true", "LABS_DEVICE_MAP": "cpu"},
    )
    loaded = load_model(settings)
    assert loaded.quantization == "8-bit"
    assert any("Linear8bitLt" in type(module).__name__ for module in loaded.model.modules())
    with torch.no_grad():
        logits = loaded.model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape[-1] == loaded.model.config.vocab_size and torch.isfinite(logits).all()
