"""CPU int8 linear layers (labs.models.int8): accuracy, row independence and module replacement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from labs.models import int8
from labs.models.int8 import Int8Linear, cpu_has_int8_dot_product, int8_matmul, quantize_linears_int8, quantize_rows


def random(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def test_quantize_rows_reconstructs_within_half_a_step_per_row() -> None:
    """Symmetric rounding: every weight is within half of its row's step of q * scale."""
    weight = random(48, 80) * torch.linspace(0.01, 10.0, 48)[:, None]  # rows of very different ranges
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and q.shape == weight.shape
    assert scale.dtype == torch.float32 and scale.shape == (48,)
    error = (weight - q.float() * scale[:, None]).abs()
    assert (error <= scale[:, None] / 2 + 1e-6).all()
    # the largest magnitude of each row maps to +-127, so the full int8 range is used
    assert torch.equal(q.abs().amax(dim=1), torch.full((48,), 127, dtype=torch.int8))


def test_quantize_rows_stays_in_the_symmetric_int8_range() -> None:
    weight = random(16, 32, seed=1) * 1000
    weight[3] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantize_rows(weight)
    assert int(q.min()) >= -127 and int(q.max()) <= 127
    assert torch.isfinite(scale).all() and (scale > 0).all()
    assert torch.equal(q[3], torch.zeros(32, dtype=torch.int8))


def test_int8_matmul_is_close_to_the_fp32_matmul() -> None:
    x, weight = random(7, 256, seed=2), random(96, 256, seed=3)
    q, scale = quantize_rows(weight)
    out = int8_matmul(x, q.t(), scale)
    assert out.dtype == torch.float32 and out.shape == (7, 96)
    assert relative_error(out, x @ weight.t()) < 0.02


def test_int8_matmul_rows_are_independent_of_the_batch() -> None:
    """Per-token activation scales: a row gives bit-identical results alone or batched, which is
    what lets the engine give a request the same tokens alone or batched."""
    x, weight = random(9, 128, seed=4), random(64, 128, seed=5)
    x[2] *= 100.0  # a row with a much larger range must not change the others' scales
    q, scale = quantize_rows(weight)
    batched = int8_matmul(x, q.t(), scale)
    for i in range(x.shape[0]):
        assert torch.equal(batched[i], int8_matmul(x[i:i + 1], q.t(), scale)[0]), f"row {i}"


def test_int8_matmul_of_an_all_zero_row_is_zero() -> None:
    x, weight = random(3, 64, seed=6), random(32, 64, seed=7)
    x[1] = 0.0
    q, scale = quantize_rows(weight)
    out = int8_matmul(x, q.t(), scale)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros(32))
    assert out[0].abs().sum() > 0


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_matches_nn_linear(bias: bool) -> None:
    torch.manual_seed(8)
    linear = nn.Linear(96, 40, bias=bias)
    if bias:
        with torch.no_grad():
            linear.bias.mul_(10.0)  # large enough that a dropped bias would fail the tolerance
    layer = Int8Linear(linear)
    assert (layer.bias is not None) == bias
    x = random(2, 3, 96, seed=9)
    with torch.no_grad():
        expected = linear(x)
    out = layer(x)
    assert out.shape == (2, 3, 40) and out.dtype == torch.float32
    assert relative_error(out, expected) < 0.02


def test_int8_linear_keeps_a_low_precision_input_dtype() -> None:
    torch.manual_seed(10)
    linear = nn.Linear(64, 24)
    layer = Int8Linear(linear)
    x = random(2, 3, 64, seed=11).to(torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 24)
    with torch.no_grad():
        assert relative_error(out, linear(x.float())) < 0.03  # bf16 output rounding on top of int8


def test_quantize_linears_int8_replaces_linears_and_leaves_embeddings() -> None:
    torch.manual_seed(12)
    model = nn.ModuleDict({
        "embed": nn.Embedding(50, 32),
        "mlp": nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)),
        "inner": nn.ModuleDict({"head": nn.Linear(32, 50, bias=False)}),
        "lazy": nn.Linear(32, 32, device="meta"),  # not on CPU: left as it is
    })
    embedding_weight = model["embed"].weight.detach().clone()
    x = random(5, 32, seed=13)
    with torch.no_grad():
        expected = model["inner"]["head"](model["mlp"](x))
    assert quantize_linears_int8(model) == 3
    assert isinstance(model["mlp"][0], Int8Linear) and isinstance(model["mlp"][2], Int8Linear)
    assert isinstance(model["inner"]["head"], Int8Linear) and model["inner"]["head"].bias is None
    assert isinstance(model["mlp"][1], nn.ReLU)
    assert type(model["embed"]) is nn.Embedding and torch.equal(model["embed"].weight, embedding_weight)
    assert type(model["lazy"]) is nn.Linear
    assert relative_error(model["inner"]["head"](model["mlp"](x)), expected) < 0.03
    assert quantize_linears_int8(model) == 0  # nothing left to replace


def test_cpu_has_int8_dot_product_returns_a_bool() -> None:
    assert isinstance(cpu_has_int8_dot_product(), bool)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu vme sse2 avx2 avx512f avx512_vnni avx512_bf16", True),
        ("fpu sse2 avx2 avx_vnni", True),
        ("fpu sse2 avx2 amx_bf16 amx_int8 amx_tile", True),
        ("fpu vme sse2 avx2 avx512f avx512bw", False),
        ("fpu vme sse2 avx2 avx512_vnnix", False),  # a flag only starting like one does not count
    ],
)
def test_cpu_has_int8_dot_product_reads_the_cpu_flags(
    flags: str, expected: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\nbugs\t\t: none\n")
    monkeypatch.setattr(int8, "Path", lambda _path: cpuinfo)
    assert cpu_has_int8_dot_product() is expected


def test_cpu_has_int8_dot_product_is_false_without_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8, "Path", lambda _path: tmp_path / "missing")
    assert cpu_has_int8_dot_product() is False
