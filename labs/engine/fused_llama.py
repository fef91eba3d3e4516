"""A lean forward for Llama-family models (Llama, Mistral, Qwen2, SmolLM): the same math as the
Hugging Face code with a fraction of its operations.

Why: on CPU a decode step of a small model is dominated by per-operation overhead, not by
arithmetic: the HF forward spends ~120 tensor operations and a dozen Python modules per layer.
This path fuses q/k/v and gate/up into one matmul each (views of the model's own weights, so no
memory is duplicated), applies rotary embeddings to queries and keys in one pass, computes the
norm and the output head only for the rows that are sampled, and calls the paged attention
directly. It is used only when `supports()` says the model's layout is exactly the one it
implements; everything else runs the model's own forward (`fused_forward = false` forces that).

With int8 weights on CPU, `kernels` (labs.engine.native, when built) replaces each group of
elementwise operations around the matmuls by one fused pass; the PyTorch spelling stays the
reference and the path used until (or unless) the kernels are there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labs.engine.attention import PagedBatch, paged_attention
from labs.engine.decode_buffer import DenseDecodeRows
from labs.engine.kv_cache import available_ram
from labs.engine.lora import LoraBatch, LoraSlot
from labs.models.int8 import Int8Linear, int8_matmul

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class FusedLinear:
    """Several linear layers that read the same input, run as one matmul (fp or int8 weights)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.int8 = isinstance(layers[0], Int8Linear)
        if any(isinstance(layer, Int8Linear) != self.int8 for layer in layers):
            raise ValueError("cannot fuse int8 and floating-point linear layers")
        self.sizes = [layer.out_features for layer in layers]
        self.rowsum: torch.Tensor | None = None  # int8: each weight row's sum, for the few-rows kernels
        self.packed: torch.Tensor | None = None  # int8: the weight in int8_matmul_packed's layout, when packed
        if self.int8:
            self.weight = _fuse_and_share(layers, "qweight")
            self.weight_scale = _fuse_and_share(layers, "weight_scale")
            self.rowsum = _row_sums(self.weight)
        else:
            self.weight = _fuse_and_share(layers, "weight")
        biases = [layer.bias for layer in layers]
        if all(bias is None for bias in biases):
            self.bias = None
        else:
            self.bias = torch.cat([
                bias.detach() if bias is not None else torch.zeros(size, dtype=self.weight.dtype if not self.int8 else torch.float32, device=self.weight.device)
                for bias, size in zip(biases, self.sizes)
            ])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8:
            out = int8_matmul(x.float(), self.weight.t(), self.weight_scale)
            return (out if self.bias is None else out.add_(self.bias)).to(x.dtype)
        return F.linear(x, self.weight, self.bias)


def _fuse_and_share(layers: list[nn.Module], attribute: str) -> torch.Tensor:
    """Concatenate one tensor of each layer along the output dimension, then point every layer
    at its slice of the result, so the fused and the separate layers share memory."""
    parts = [getattr(layer, attribute) for layer in layers]
    if len(parts) == 1:
        return parts[0].detach()
    adjacent = _adjacent(parts)
    if adjacent is not None:  # already side by side in one tensor (labs.models.lean_record's int8 weights)
        return adjacent
    fused = torch.cat([part.detach() for part in parts])
    start = 0
    for layer, part in zip(layers, parts):
        view = fused[start:start + part.shape[0]]
        start += part.shape[0]
        if isinstance(part, nn.Parameter):
            setattr(layer, attribute, nn.Parameter(view, requires_grad=False))
        else:
            layer.register_buffer(attribute, view)
    return fused


def _row_sums(weight: torch.Tensor) -> torch.Tensor:
    """Each int8 row's exact sum (int32), as one int8 matmul with a block of ones: ~10x faster than
    torch's int8 sum into int32 (32 ms for SmolLM2's head here, 4 ms this way)."""
    if weight.device.type != "cpu" or weight.shape[0] <= 16:
        return weight.sum(dim=1, dtype=torch.int32)
    ones = torch.ones(weight.shape[1], 8, dtype=torch.int8, device=weight.device)
    return torch._int_mm(weight.contiguous(), ones)[:, 0].contiguous()


def _adjacent(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """One view spanning `parts` when they are contiguous, of one storage, each starting where the
    previous ends (so the fused matrix needs no copy), else None."""
    first = parts[0]
    if any(not part.is_contiguous() or part.shape[1:] != first.shape[1:] or part.dtype != first.dtype
           or part.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() for part in parts):
        return None
    position = first.data_ptr()
    for part in parts:
        if part.data_ptr() != position:
            return None
        position += part.numel() * part.element_size()
    rows = sum(part.shape[0] for part in parts)
    return first.detach().as_strided((rows, *first.shape[1:]), first.stride())


# Up to this many rows, the native kernels multiply by the int8 weights faster than oneDNN's
# matmul: from the packed copy up to PACKED_ROWS (level at 64 rows, 1.3x slower at 128), else
# from the row-major weight up to FEW_ROWS (bound by reading it). Measured in docs/benchmarks.md.
PACKED_ROWS = 64
FEW_ROWS = 8
# The packed copy is a second copy of the int8 weights: made only while it takes at most this
# share of the memory available when the kernels arrive (a small model, where the step is
# bound by streaming its weights; a large one keeps its memory).
PACKED_SHARE_OF_RAM = 0.25


def int8_products(kernels: ModuleType, x: torch.Tensor, fused: FusedLinear) -> torch.Tensor:
    """The exact int32 products of int8 activations and a fused int8 weight (kernels.int8_products
    picks the fastest of its interchangeable paths, the same way DecodeStack does)."""
    return kernels.int8_products(x, fused.weight, fused.packed, fused.rowsum, PACKED_ROWS, FEW_ROWS)


@dataclass
class _Layer:
    index: int
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: FusedLinear
    o: FusedLinear
    gate_up: FusedLinear
    down: FusedLinear
    scale: float


def supports(model: Any) -> str | None:
    """None when the fused forward implements this model exactly, else why not."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"architecture {model_type!r} (fused forward covers {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "mlp_bias", False):
        return "MLP bias"
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) is not False and not window_covers_context(config):
        return "sliding-window attention"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb") or not hasattr(inner, "embed_tokens"):
        return "unexpected module layout"
    for layer in inner.layers:
        attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attention is None or mlp is None or not all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return "unexpected attention layout"
        if not all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")):
            return "unexpected MLP layout"
        if hasattr(attention, "q_norm") or hasattr(attention, "k_norm"):
            return "query/key norms"
        projections = [getattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
        projections += [getattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")]
        if not all(isinstance(p, Int8Linear) or p.weight.dtype.is_floating_point for p in projections):
            return "bitsandbytes-quantized layers (they run in their own modules)"
    return None


def window_covers_context(config: Any) -> bool:
    """A sliding window at least as long as the model's context never hides a key: it is full
    attention, which the fused forward computes."""
    window, context = getattr(config, "sliding_window", None), getattr(config, "max_position_embeddings", None)
    return isinstance(window, int) and isinstance(context, int) and window >= context


def lora_slots(model: Any) -> list[LoraSlot]:
    """Where the fused forward applies LoRA updates: its four matmuls per layer, by (layer, group)."""
    groups = (("qkv", "self_attn", ("q_proj", "k_proj", "v_proj")), ("o", "self_attn", ("o_proj",)),
              ("gate_up", "mlp", ("gate_proj", "up_proj")), ("down", "mlp", ("down_proj",)))
    slots = []
    for index, layer in enumerate(model.model.layers):
        for group, parent, names in groups:
            modules = [getattr(getattr(layer, parent), name) for name in names]
            slots.append(LoraSlot((index, group), tuple(f"model.layers.{index}.{parent}.{name}" for name in names),
                                  tuple(m.out_features for m in modules), modules[0].in_features))
    return slots


class FusedLlamaForward:
    """`forward(input_ids [T], position_ids [T], batch, keep, lora) -> logits [len(keep), vocab]` in fp32."""

    def __init__(self, model: Any) -> None:
        reason = supports(model)
        if reason is not None:
            raise ValueError(f"the fused forward does not support this model: {reason}")
        config = model.config
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.final_norm = inner.norm.weight
        self.eps = float(getattr(config, "rms_norm_eps", 1e-6))
        self.head = FusedLinear([model.get_output_embeddings()])
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = []
        for index, layer in enumerate(inner.layers):
            attention, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                index=index,
                input_norm=layer.input_layernorm.weight,
                post_norm=layer.post_attention_layernorm.weight,
                qkv=FusedLinear([attention.q_proj, attention.k_proj, attention.v_proj]),
                o=FusedLinear([attention.o_proj]),
                gate_up=FusedLinear([mlp.gate_proj, mlp.up_proj]),
                down=FusedLinear([mlp.down_proj]),
                scale=float(getattr(attention, "scaling", self.head_dim ** -0.5)),
            ))
        self.kernels: ModuleType | None = None  # set by the runner once labs.engine.native is loaded
        self.stack: Any = None  # kernels.DecodeStack: the layers of a decode-only step in one native call
        self.kernels_apply = (self.head.int8 and all(layer.qkv.int8 for layer in self.layers) and self.embed.weight.dtype == torch.float32
                              and self.embed.weight.device.type == "cpu")
        logger.info("fused forward for %s (%d layers%s)", config.model_type, len(self.layers), ", int8" if self.head.int8 else "")

    def linears(self) -> list[FusedLinear]:
        """The head, then each layer's four linears in DecodeStack's order (qkv, o, gate_up, down)."""
        return [self.head] + [fused for layer in self.layers for fused in (layer.qkv, layer.o, layer.gate_up, layer.down)]

    def use_kernels(self, kernels: ModuleType) -> None:
        """Run the native kernels from now on; where they multiply packed weights faster (AVX512
        VNNI), pack a copy of the int8 weights first, if it fits PACKED_SHARE_OF_RAM."""
        linears = self.linears()
        if kernels.packed_fast and self.head.int8:
            size = sum(fused.weight.numel() for fused in linears)
            available = available_ram()
            if size <= PACKED_SHARE_OF_RAM * available:
                for fused in linears:
                    fused.packed = kernels.pack_int8_weight(fused.weight)
                logger.info("int8 weights packed for the decode kernels (%.0f MiB)", size / 2**20)
            else:
                logger.info("int8 weights not packed: a second copy (%.0f MiB) would take more than %d%% of the available memory "
                            "(%.0f MiB); decode steps multiply the row-major weights", size / 2**20, PACKED_SHARE_OF_RAM * 100,
                            available / 2**20)
        if self.head.int8:
            self.stack = kernels.DecodeStack(
                [layer.input_norm for layer in self.layers], [layer.post_norm for layer in self.layers], [layer.scale for layer in self.layers],
                [(fused.weight, fused.packed, fused.rowsum, fused.weight_scale, fused.bias) for fused in linears[1:]],
                self.heads, self.kv_heads, self.head_dim, self.eps, PACKED_ROWS, FEW_ROWS)
        self.kernels = kernels

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as the HF code computes it: in fp32, then back to the model's dtype (free for
        fp32 models). Written out because F.rms_norm is ~10x slower for prefill-sized inputs on CPU."""
        wide = x.float()
        variance = wide.pow(2).mean(-1, keepdim=True).add_(self.eps)
        return (wide * torch.rsqrt(variance)).to(x.dtype).mul_(weight)

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, batch: PagedBatch, keep: torch.Tensor,
                 lora: LoraBatch | None = None) -> torch.Tensor:
        hidden = self.embed(input_ids)  # [T, hidden]
        cos, sin = self.rotary(hidden, position_ids[None, :])
        half = self.head_dim // 2
        cos, sin = cos[0], sin[0]  # [T, D]
        # rotate_half(x) * sin == roll(x, half) * sin with the first half's sign flipped
        sin_signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        if self.kernels is not None and self.kernels_apply:
            return self._layers_with_kernels(self.kernels, hidden, cos, sin_signed, batch, keep, lora)
        return self._layers(hidden, cos[:, None, :], sin_signed[:, None, :], batch, keep, lora)

    def _layers(self, hidden: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, batch: PagedBatch, keep: torch.Tensor,
                lora: LoraBatch | None) -> torch.Tensor:
        """The decoder layers and the head in PyTorch operations (any dtype and device)."""
        tokens, half = hidden.shape[0], self.head_dim // 2
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim

        def linear(fused: FusedLinear, x: torch.Tensor, index: int, group: str) -> torch.Tensor:
            out = fused(x)
            return out if lora is None else lora.add_to(out, x, (index, group))

        for layer in self.layers:
            qkv = linear(layer.qkv, self._norm(hidden, layer.input_norm), layer.index, "qkv")
            qk = qkv[:, :q_width + kv_width].view(tokens, self.heads + self.kv_heads, self.head_dim)
            qk = torch.addcmul(qk * cos, torch.roll(qk, half, dims=-1), sin_signed)
            value = qkv[:, q_width + kv_width:].view(tokens, self.kv_heads, self.head_dim)
            attended = paged_attention(layer.index, qk[:, :self.heads], qk[:, self.heads:], value, batch, layer.scale)
            hidden = hidden + linear(layer.o, attended.reshape(tokens, q_width), layer.index, "o")
            gate_up = linear(layer.gate_up, self._norm(hidden, layer.post_norm), layer.index, "gate_up")
            gate, up = gate_up.split(layer.gate_up.sizes, dim=-1)
            hidden = hidden + linear(layer.down, F.silu(gate).mul_(up), layer.index, "down")
        kept = self._norm(hidden.index_select(0, keep), self.final_norm)
        return self.head(kept).float()

    def _layers_with_kernels(self, kernels: ModuleType, hidden: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor,
                             batch: PagedBatch, keep: torch.Tensor, lora: LoraBatch | None) -> torch.Tensor:
        """The same layers with int8 weights and fp32 activations on CPU, each group of
        elementwise operations done by one native kernel: a layer is 4 int8 matmuls, 6 kernel
        calls and the attention (whose cache writes and decode softmax use them too).

        LoRA updates enter the kernels as a per-row addend (where the bias goes), computed by one
        more kernel from the int8 activations the base matmul multiplied. A step of decoding rows
        only, without LoRA, runs the same kernels in the same order in one native call
        (kernels.DecodeStack), so its bits are the same."""
        tokens = hidden.shape[0]

        def addend(x: torch.Tensor, x_scale: torch.Tensor, index: int, group: str, fused: FusedLinear) -> torch.Tensor | None:
            if lora is None or not lora.touches((index, group)):
                return fused.bias
            update = kernels.lora_update(x, x_scale, lora.row_adapters, *lora.stack.tables[(index, group)])
            return update if fused.bias is None else update.add_(fused.bias)

        hidden = hidden.contiguous()
        cos, sin_signed = cos.contiguous(), sin_signed.contiguous()
        batch.native = kernels
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        rotary_heads = self.heads + self.kv_heads
        x, x_scale = kernels.rms_norm_quantize(hidden, self.layers[0].input_norm, self.eps)
        decode = batch.decode
        if self.stack is not None and lora is None and not batch.prefills and isinstance(decode, DenseDecodeRows) and decode.count == tokens:
            self.stack.run(hidden, x, x_scale, cos, sin_signed, batch.key_cache, batch.value_cache, batch.slot_mapping, decode.keys,
                           decode.values, decode.lengths, decode.buffer_rows)
            return self._head_with_kernels(kernels, hidden, keep)
        for index, layer in enumerate(self.layers):
            qkv = kernels.dequantize_rotary(int8_products(kernels, x, layer.qkv), x_scale, layer.qkv.weight_scale,
                                            addend(x, x_scale, index, "qkv", layer.qkv), cos, sin_signed, rotary_heads, self.head_dim)
            query = qkv[:, :q_width].view(tokens, self.heads, self.head_dim)
            key = qkv[:, q_width:q_width + kv_width].view(tokens, self.kv_heads, self.head_dim)
            value = qkv[:, q_width + kv_width:].view(tokens, self.kv_heads, self.head_dim)
            attended = paged_attention(layer.index, query, key, value, batch, layer.scale)
            x, x_scale = kernels.quantize(attended.reshape(tokens, q_width).contiguous())
            x, x_scale = kernels.residual_rms_norm_quantize(int8_products(kernels, x, layer.o), x_scale, layer.o.weight_scale,
                                                            addend(x, x_scale, index, "o", layer.o), hidden, layer.post_norm, self.eps)
            x, x_scale = kernels.silu_mul_quantize(int8_products(kernels, x, layer.gate_up), x_scale, layer.gate_up.weight_scale,
                                                   addend(x, x_scale, index, "gate_up", layer.gate_up))
            down, down_addend = int8_products(kernels, x, layer.down), addend(x, x_scale, index, "down", layer.down)
            if index + 1 < len(self.layers):
                x, x_scale = kernels.residual_rms_norm_quantize(down, x_scale, layer.down.weight_scale, down_addend, hidden,
                                                                self.layers[index + 1].input_norm, self.eps)
            else:
                kernels.residual_add(down, x_scale, layer.down.weight_scale, down_addend, hidden)
        return self._head_with_kernels(kernels, hidden, keep)

    def _head_with_kernels(self, kernels: ModuleType, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x, x_scale = kernels.rms_norm_quantize(hidden.index_select(0, keep), self.final_norm, self.eps)
        return kernels.dequantize(int8_products(kernels, x, self.head), x_scale, self.head.weight_scale, self.head.bias)
