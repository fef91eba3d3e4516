"""Int8 linear layers for CPU: int8 weights (one scale per output row) times int8 activations
(one scale per token), accumulated exactly in int32 by `torch._int_mm` (oneDNN, VNNI).

Why: on CPU a decode step is bound by reading the weights (one stream) or by matmul throughput
(a batch); int8 reads 4x fewer bytes than fp32 and VNNI multiplies int8 ~4x faster. Per-token
activation scales keep every row independent of the others in the batch, so a request gives the
same tokens alone or batched, and quality stays close to fp32 (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_has_int8_dot_product() -> bool:
    """True where the processor multiplies int8 natively (AVX512-VNNI, AVX-VNNI or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in flags.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return any(flag in present for flag in _VNNI_FLAGS)
    return False


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: `weight ~= q * scale[:, None]`; returns (q [N, K] int8, scale [N] fp32)."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def int8_matmul(x: torch.Tensor, weight_t: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """`x @ W.T` for 2-D fp32 `x` [M, K], with W given as its int8 transpose [K, N] and its row
    scales [N]. Each row of `x` is quantized with its own scale, so rows never influence one another.

    (Written as in-place float ops: multiplying the int32 product by a float tensor directly
    takes a slow mixed-dtype path, ~15x slower for prefill-sized inputs.)
    """
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-8).div_(127.0)
    xq = torch.div(x, scale).round_().to(torch.int8)
    return torch._int_mm(xq, weight_t).float().mul_(scale).mul_(weight_scale)


class Int8Linear(nn.Module):
    """Drop-in for `nn.Linear` (no grad) with int8 weights; inputs and outputs keep their dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        q, scale = quantize_rows(linear.weight)
        # Stored [N, K] contiguous and used through its transpose: the layout oneDNN multiplies fastest.
        self.register_buffer("qweight", q)
        self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    @classmethod
    def from_quantized(cls, qweight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> "Int8Linear":
        """The layer from weights quantized earlier (labs.models.lean_record keeps them between starts)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.out_features, layer.in_features = qweight.shape
        layer.register_buffer("qweight", qweight)
        layer.register_buffer("weight_scale", weight_scale)
        layer.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        out = int8_matmul(flat, self.qweight.t(), self.weight_scale)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def quantize_linears_int8(model: nn.Module) -> int:
    """Replace every `nn.Linear` of a CPU model (decoder layers and the output head) by `Int8Linear`.

    Embeddings stay in their dtype (a lookup reads one row per token). Returns how many layers
    were replaced; the fp32 weights they held are released unless still tied to an embedding.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.weight.device.type == "cpu":
                setattr(parent, name, Int8Linear(child))
                replaced += 1
    if replaced:
        logger.info("int8 weights: %d linear layers quantized", replaced)
    return replaced
