"""Preallocated key/value storage, sized from a memory budget.

One tensor per layer for keys and one for values, shaped [kv_heads, num_blocks * block_size,
head_dim]: writing a step's new keys is one `index_copy_` per layer, and a block of one kv head
is contiguous, so gathering contexts is a single `index_select` of large runs (see attention.py).
Allocated once, never grown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from labs.errors import LabsError

logger = logging.getLogger(__name__)


class UnsupportedModelError(LabsError):
    """The model's attention cannot run on the paged cache (the reason says why)."""

    exit_code = 2


@dataclass(frozen=True)
class CacheShape:
    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        return self.num_layers * 2 * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8


def cache_shape_for(model: Any, context_length: int) -> CacheShape:
    """Read the attention geometry from the model config; refuse what paged attention would get wrong."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if getattr(config, "attention_chunk_size", None):  # Llama 4's chunked attention
        raise UnsupportedModelError("chunked attention (attention_chunk_size) is not supported by the paged engine")
    layers = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "config") and m.__class__.__name__.endswith("Attention")]
    if len(layers) != config.num_hidden_layers:
        raise UnsupportedModelError(
            f"the labs engine cannot run {type(model).__name__}: found {len(layers)} attention layers with a "
            f"layer index, expected {config.num_hidden_layers} (its attention does not go through transformers' attention interface)"
        )
    return CacheShape(config.num_hidden_layers, kv_heads, head_dim, next(model.parameters()).dtype)


class KVCache:
    def __init__(self, shape: CacheShape, num_blocks: int, block_size: int, device: torch.device) -> None:
        self.shape = shape
        self.num_blocks = num_blocks
        self.block_size = block_size
        slots = num_blocks * block_size
        self.key = [torch.zeros(shape.kv_heads, slots, shape.head_dim, dtype=shape.dtype, device=device) for _ in range(shape.num_layers)]
        self.value = [torch.zeros(shape.kv_heads, slots, shape.head_dim, dtype=shape.dtype, device=device) for _ in range(shape.num_layers)]
        logger.info("KV cache: %d blocks of %d tokens (%.2f GiB)", num_blocks, block_size, self.nbytes / 1024**3)

    @property
    def nbytes(self) -> int:
        return self.num_blocks * self.block_size * self.shape.bytes_per_token

    def copy_block(self, src: int, dst: int) -> None:
        """Copy-on-write for forked sequences."""
        size = self.block_size
        for tensors in (self.key, self.value):
            for layer in tensors:
                layer[:, dst * size:(dst + 1) * size] = layer[:, src * size:(src + 1) * size]


def num_blocks_for_budget(shape: CacheShape, block_size: int, budget_bytes: int) -> int:
    return budget_bytes // (shape.bytes_per_token * block_size)


AUTO_CPU_BUDGET = 2 * 1024**3
AUTO_GPU_FRACTION = 0.8


def budget_bytes(setting: str | int | float, device: torch.device) -> int:
    """`kv_cache_memory`: auto, bytes, or a fraction (<= 1) of free GPU memory / available RAM."""
    if setting == "auto":
        setting = AUTO_GPU_FRACTION if device.type == "cuda" else AUTO_CPU_BUDGET
    if isinstance(setting, float) and setting <= 1:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
        else:
            free = _available_ram()
        return int(free * setting)
    return int(setting)


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
