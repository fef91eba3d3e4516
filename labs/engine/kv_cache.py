"""Preallocated key/value storage, sized from a memory budget.

One tensor per layer for keys and one for values, shaped [kv_heads, num_blocks * block_size,
head_dim]: writing a step's new keys is one `index_copy_` per layer, and a block of one kv head
is contiguous, so gathering contexts is a single `index_select` of large runs (see attention.py).
Allocated once, never grown.

The geometry (layers, kv heads, key and value widths) is not read from the config, whose names
and meanings vary by architecture (GPT-2 has no num_key_value_heads; multi-head latent attention
has keys of qk_nope_head_dim + qk_rope_head_dim and values of v_head_dim): `cache_shape_for` runs
the model's forward once on a few tokens and records what its attention layers receive. Kinds of
model the engine cannot serve are refused there, each with a one-line reason.
"""

from __future__ import annotations

import logging
import math
import mmap
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from labs.engine.errors import UnsupportedModelError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheShape:
    num_layers: int
    kv_heads: int
    head_dim: int  # the width of a key (and of a value, unless value_head_dim says otherwise)
    dtype: torch.dtype
    value_head_dim: int | None = None  # multi-head latent attention (DeepSeek V2/V3): values narrower than keys

    @property
    def value_dim(self) -> int:
        return self.head_dim if self.value_head_dim is None else self.value_head_dim

    @property
    def bytes_per_token(self) -> int:
        return self.num_layers * self.kv_heads * (self.head_dim + self.value_dim) * torch.finfo(self.dtype).bits // 8


# Models without attention (state-space and recurrent) or whose layers are not all attention (hybrids):
# the paged cache holds keys and values, nothing of a recurrent state.
STATE_SPACE_MODEL_TYPES = frozenset({"mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm", "recurrent_gemma"})
HYBRID_MODEL_TYPES = frozenset({"jamba", "bamba", "zamba", "zamba2", "falcon_h1", "nemotron_h", "granitemoehybrid", "lfm2",
                                "lfm2_moe", "qwen3_next", "kimi_linear", "olmo_hybrid", "bailing_hybrid", "minimax"})
ATTENTION_LAYER_TYPES = frozenset({"full_attention", "sliding_attention", "attention"})
_SHAPE_PROBE = "labs_shape_probe"
_geometry: "weakref.WeakKeyDictionary[Any, CacheShape]" = weakref.WeakKeyDictionary()


def cache_shape_for(model: Any, context_length: int) -> CacheShape:
    """The cache geometry, read from what the model's attention layers really receive; refuse what
    the paged engine cannot run (UnsupportedModelError, one line naming the architecture)."""
    shape = _geometry.get(model)
    if shape is None or shape.dtype != _dtype_of(model):
        refuse_known_unsupported(model)
        if is_labs_model(model):  # known by construction
            layers, kv_heads, head_dim = model.kv_cache_geometry()
            shape = CacheShape(layers, kv_heads, head_dim, _dtype_of(model))
        else:
            shape = _record_attention_shapes(model)
        _geometry[model] = shape
    return shape


def is_labs_model(model: Any) -> bool:
    """labs' own modules (labs.models.lean_llama): they declare their cache geometry and run only
    through the fused forward; transformers' modules are probed and attend through the engine."""
    return callable(getattr(model, "kv_cache_geometry", None))


def text_config(model: Any) -> Any:
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def describe(model: Any) -> str:
    """How refusals name a model: its class and model type."""
    return f"{type(model).__name__} ({getattr(text_config(model), 'model_type', None) or 'unknown type'})"


def refuse_known_unsupported(model: Any) -> None:
    """Refuse, before running anything, the kinds of model the paged engine does not serve."""
    config = text_config(model)
    name = f"the labs engine cannot run {describe(model)}"
    model_type = getattr(config, "model_type", None)
    if getattr(model.config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{name}: it is an encoder-decoder model; the engine serves decoder-only causal LMs")
    if model_type in STATE_SPACE_MODEL_TYPES or not getattr(config, "num_attention_heads", None):
        raise UnsupportedModelError(f"{name}: it is a state-space (recurrent) model with no attention layers, and the engine "
                                    "only serves attention through its paged KV cache")
    if getattr(config, "attention_chunk_size", None):  # Llama 4's chunked attention
        raise UnsupportedModelError(f"{name}: chunked attention (attention_chunk_size) is not supported by the paged engine")
    other = sorted({str(kind) for kind in getattr(config, "layer_types", None) or ()} - ATTENTION_LAYER_TYPES)
    if model_type in HYBRID_MODEL_TYPES or other:
        kinds = f" (its layers include {', '.join(other)})" if other else ""
        raise UnsupportedModelError(f"{name}: it is a hybrid model whose layers are not all attention{kinds}; the engine's "
                                    "KV cache serves attention layers only")


def _record_attention_shapes(model: Any) -> CacheShape:
    """Run the model's own forward on a few tokens with an attention function that records the
    query/key/value shapes of every layer (and attends plainly, so the forward goes on)."""
    from transformers import AttentionInterface

    name = f"the labs engine cannot run {describe(model)}"
    config = text_config(model)
    calls: list[tuple[Any, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = []

    def record(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
               scaling: float | None = None, dropout: float = 0.0, **_: Any) -> tuple[torch.Tensor, None]:
        calls.append((getattr(module, "layer_idx", None), tuple(query.shape), tuple(key.shape), tuple(value.shape)))
        if key.shape[1] != query.shape[1]:
            group = query.shape[1] // max(key.shape[1], 1)
            key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1, scale=scaling)
        return out.transpose(1, 2), None

    bypassed = (f"{name}: its attention does not go through the labs engine (transformers' attention interface), so the "
                "engine would run the model's own attention on no cache")
    can_switch = getattr(type(model), "_can_set_attn_implementation", None)  # transformers' own test (it warns when it fails)
    if callable(can_switch) and not can_switch():
        raise UnsupportedModelError(bypassed)
    AttentionInterface.register(_SHAPE_PROBE, record)
    previous = model.config._attn_implementation
    model.set_attn_implementation(_SHAPE_PROBE)
    try:
        if model.config._attn_implementation != _SHAPE_PROBE:
            raise UnsupportedModelError(bypassed)
        rows = model.get_input_embeddings().num_embeddings
        ids = torch.arange(1, 4, device=model.get_input_embeddings().weight.device)[None] % rows
        try:
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False)
        except UnsupportedModelError:
            raise
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - one line for the user: the model cannot run this way
            raise UnsupportedModelError(f"{name}: its forward fails with the engine's attention ({_one_line(error)})") from None
    finally:
        model.set_attn_implementation(previous)
    if not calls:
        raise UnsupportedModelError(bypassed)
    layers = [layer for layer, *_ in calls]
    expected = int(getattr(config, "num_hidden_layers", len(calls)) or len(calls))
    if any(not isinstance(layer, int) for layer in layers):
        raise UnsupportedModelError(f"{name}: its attention layers have no layer index to address the KV cache by")
    if len(set(layers)) != len(layers):
        raise UnsupportedModelError(f"{name}: its layers call attention more than once each ({len(layers)} calls for "
                                    f"{len(set(layers))} layers, as differential attention does); the paged cache holds one "
                                    "key and value per layer and token")
    if sorted(layers) != list(range(len(layers))) or len(layers) != expected:
        raise UnsupportedModelError(f"{name}: {len(set(layers))} of its {expected} layers run attention through the engine "
                                    f"(layers {_ranges(sorted(set(layers)))}); the others are not attention the paged cache can serve")
    shapes = {(query[1], key[1], value[1], key[-1], value[-1]) for _, query, key, value in calls}
    if len(shapes) != 1:
        raise UnsupportedModelError(f"{name}: its layers' attention shapes differ (heads, kv heads, key and value widths: "
                                    f"{sorted(shapes)}); the paged cache has one shape for all layers")
    heads, kv_heads, value_heads, key_dim, value_dim = shapes.pop()
    if value_heads != kv_heads or kv_heads == 0 or heads % kv_heads:
        raise UnsupportedModelError(f"{name}: {heads} query heads cannot share {kv_heads} key and {value_heads} value heads")
    return CacheShape(len(layers), kv_heads, key_dim, _dtype_of(model), None if value_dim == key_dim else value_dim)


def _dtype_of(model: Any) -> torch.dtype:
    """The dtype of the activations (and of the cache): the first floating-point parameter's."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}{': ' + text if text else ''}"[:300]


def _ranges(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")


class KVCache:
    def __init__(self, shape: CacheShape, num_blocks: int, block_size: int, device: torch.device) -> None:
        self.shape = shape
        self.num_blocks = num_blocks
        self.block_size = block_size
        slots = num_blocks * block_size
        self.key = [zeros((shape.kv_heads, slots, shape.head_dim), shape.dtype, device) for _ in range(shape.num_layers)]
        self.value = [zeros((shape.kv_heads, slots, shape.value_dim), shape.dtype, device) for _ in range(shape.num_layers)]
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


def zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A zero-filled tensor. On the CPU it lives in anonymous memory that the OS hands out already
    zeroed as it is first touched: a cache sized for a whole context costs nothing until tokens
    fill it (`torch.zeros` writes every byte up front: 0.1 s for SmolLM2's 0.4 GiB one-user cache)."""
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if torch.device(device).type != "cpu" or size == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    # private: a forked child gets its own copy on write, never the parent's cache
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(memory, dtype=dtype).view(shape)


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
            free = available_ram()
        return int(free * setting)
    return int(setting)


def available_ram() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
