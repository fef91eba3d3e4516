"""Device and dtype choice."""

from __future__ import annotations

import pytest
import torch

from labs.errors import ConfigError
from labs.models import device


def test_auto_on_cpu_follows_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert device.resolve_dtype("auto", "cpu")[0] == torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    dtype, reason = device.resolve_dtype("auto", "cpu")
    assert dtype == torch.float32 and "no native bf16" in reason


def test_auto_on_cpu_with_int8_linear_layers_is_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 matmuls with fp32 around them (the native kernels) beat bf16 activations, even where
    the CPU has native bf16; an explicit dtype still wins, and GPUs are not affected."""
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    dtype, reason = device.resolve_dtype("auto", "cpu", int8_linear=True)
    assert dtype == torch.float32 and "int8" in reason
    assert device.resolve_dtype("bf16", "cpu", int8_linear=True) == (torch.bfloat16, "bf16 as configured")
    assert device.resolve_dtype("auto", "mps", int8_linear=True)[0] == torch.float16


def test_placement_asks_about_int8_for_the_resolved_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    asked: list[str] = []

    def int8_here(where: str) -> bool:
        asked.append(where)
        return where == "cpu"

    placement = device.resolve_placement("cpu", "auto", int8_linear=int8_here)
    assert asked == ["cpu"] and placement.int8_linear and placement.dtype == torch.float32
    plain = device.resolve_placement("cpu", "auto")
    assert not plain.int8_linear and plain.dtype == torch.bfloat16


def test_show_config_names_the_linear_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    from labs.cli.effective import effective_config
    from labs.config import load_settings

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv("LABS_DEVICE_MAP", "cpu")
    monkeypatch.setenv("LABS_CPU_INT8", "off")
    resolved = effective_config(load_settings())["resolved"]
    assert resolved["dtype"].startswith("bf16 (auto: the CPU") and resolved["linear layers"] == "bf16"
    monkeypatch.setenv("LABS_CPU_INT8", "on")
    resolved = effective_config(load_settings())["resolved"]
    assert resolved["dtype"].startswith("fp32 (auto: the linear layers run in int8")
    assert resolved["linear layers"] == "int8 (cpu_int8)"


def test_explicit_dtype_wins() -> None:
    assert device.resolve_dtype("fp16", "cpu") == (torch.float16, "fp16 as configured")
    assert device.resolve_dtype("fp32", "cuda")[0] == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"device_map=cuda \(env LABS_DEVICE_MAP\) but no CUDA device is visible"):
        device.resolve_placement("cuda", "auto", "env LABS_DEVICE_MAP")


def test_auto_device_is_cpu_here_or_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert device.resolve_device("auto") == expected
