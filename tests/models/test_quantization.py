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
from labs.models.quantization import build_quantization_config, use_cpu_int8


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


def int8_choice(cpu_int8: str, **overrides: object) -> SimpleNamespace:
    return quantization(cpu_int8=cpu_int8, **overrides)


def test_cpu_int8_off_is_off_everywhere() -> None:
    assert use_cpu_int8(int8_choice("off"), "cpu") is False


def test_cpu_int8_on_runs_on_cpu() -> None:
    assert use_cpu_int8(int8_choice("on"), "cpu") is True


def test_cpu_int8_on_with_a_gpu_placement_is_refused() -> None:
    """An explicit `on` that cannot apply is an error, not a silent fp32 run."""
    with pytest.raises(ConfigError, match=r"cpu_int8=on \(env LABS_CPU_INT8\) runs only on CPU but the model is placed on cuda") as caught:
        use_cpu_int8(int8_choice("on"), "cuda", "env LABS_CPU_INT8")
    assert "device_map=cpu" in str(caught.value)


@pytest.mark.parametrize("mode", ["load_in_8bit", "load_in_4bit"])
def test_cpu_int8_on_with_bitsandbytes_is_refused(mode: str) -> None:
    with pytest.raises(ConfigError, match=r"cpu_int8=on \(cpu_int8\) and a bitsandbytes mode .* are both set: choose one"):
        use_cpu_int8(int8_choice("on", **{mode: True}), "cpu")


def test_cpu_int8_auto_is_off_on_gpu_and_with_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("labs.models.int8.cpu_has_int8_dot_product", lambda: True)  # as on a VNNI machine
    assert use_cpu_int8(int8_choice("auto"), "cuda") is False
    assert use_cpu_int8(int8_choice("auto", load_in_4bit=True), "cpu") is False
    assert use_cpu_int8(int8_choice("auto"), "cpu") is True


def test_cpu_int8_auto_follows_the_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("labs.models.int8.cpu_has_int8_dot_product", lambda: False)
    assert use_cpu_int8(int8_choice("auto"), "cpu") is False


def test_cpu_int8_environment_value_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^LABS_CPU_INT8 = 'sometimes' \(env LABS_CPU_INT8\): expected one of auto, on, off"):
        load_settings(environ={"LABS_CPU_INT8": "sometimes"}, cwd=tmp_path)
    assert load_settings(environ={"LABS_CPU_INT8": "on"}, cwd=tmp_path).quantization.cpu_int8 == "on"


def test_fused_forward_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    assert load_settings(environ={}, cwd=tmp_path).engine.fused_forward is True
    assert load_settings(environ={"LABS_FUSED_FORWARD": "false"}, cwd=tmp_path).engine.fused_forward is False
