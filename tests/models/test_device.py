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
