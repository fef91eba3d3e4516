"""Llama-family models (Llama, Mistral, Qwen2) built from their safetensors without transformers.

Why: importing transformers' modeling code takes ~2.5 s on every start, five times the work of
loading a small model. The engine runs these models through its fused forward, which reads only
their weights, the rotary frequencies and a few config values; this module builds exactly that:
modules with the names and shapes of transformers' (so int8 quantization, LoRA adapters and the
fused forward find what they look for), filled from the checkpoint, plus a plain eager forward
that the record compares with transformers' forward.

What cannot be read from config.json alone, the rotary frequencies transformers computed for the
model's rope type, comes from a record made when the model was first loaded through transformers
(labs.models.lean_record), which also checked that this model gives transformers' logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LEAN_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


class LeanConfig(SimpleNamespace):
    """config.json as attributes (what the engine and the API read of a model's config)."""

    def get_text_config(self) -> "LeanConfig":
        return self

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class Rotary:
    inv_freq: list[float]  # transformers' inverse frequencies for this rope type, fp32 values
    attention_scaling: float


def read_config(folder: Path) -> LeanConfig:
    return LeanConfig(**json.loads((folder / "config.json").read_text(encoding="utf-8")))


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.variance_epsilon = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        wide = hidden.float()
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * wide.to(hidden.dtype)


class RotaryEmbedding(nn.Module):
    """cos and sin of each position, computed as transformers' rotary embedding computes them."""

    def __init__(self, rotary: Rotary) -> None:
        super().__init__()
        # on the CPU even while the model is built on the meta device: the frequencies are known now
        self.register_buffer("inv_freq", torch.tensor(rotary.inv_freq, dtype=torch.float32, device="cpu"), persistent=False)
        self.attention_scaling = rotary.attention_scaling

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim = head_dim(config)
        bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=bool(getattr(config, "attention_bias", False)))
        self.scaling = self.head_dim ** -0.5

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden.shape

        def heads(x: torch.Tensor, count: int) -> torch.Tensor:
            return x.view(batch, length, count, self.head_dim).transpose(1, 2)

        query, key = heads(self.q_proj(hidden), self.heads), heads(self.k_proj(hidden), self.kv_heads)
        value = heads(self.v_proj(hidden), self.kv_heads)
        cos, sin = cos[:, None], sin[:, None]
        query, key = query * cos + _rotate_half(query) * sin, key * cos + _rotate_half(key) * sin
        group = self.heads // self.kv_heads
        key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
        attended = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=self.scaling)
        return self.o_proj(attended.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class MLP(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: Any, index: int) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.self_attn.layer_idx = index
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class DecoderStack(nn.Module):
    def __init__(self, config: Any, rotary: Rotary) -> None:
        super().__init__()
        # given its (meta) weight, so the embedding skips its random init, which on the meta device
        # imports ~1 s of torch's reference operators
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size), _freeze=True)
        self.layers = nn.ModuleList(DecoderLayer(config, index) for index in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(rotary)


class LeanCausalLM(nn.Module):
    """A Llama-family causal LM laid out as transformers lays it out (`model.layers.N.self_attn.q_proj`, ...)."""

    def __init__(self, config: LeanConfig, rotary: Rotary, generation: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.generation_config = SimpleNamespace(**generation)
        self.model = DecoderStack(config, rotary)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # set by the loader: how closely these modules' logits matched transformers' forward when the
        # model was recorded (labs.models.lean_record); the engine then skips its own load-time probe
        self.checked_against_transformers: float | None = None

    # the engine declares the geometry of its KV cache from this, instead of probing the forward
    def kv_cache_geometry(self) -> tuple[int, int, int]:
        """(layers, kv heads, head width) of the keys and values the attention layers cache."""
        first = self.model.layers[0].self_attn
        return len(self.model.layers), first.kv_heads, first.head_dim

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_attn_implementation(self, name: str) -> None:
        """Accepted as transformers' models accept it (the engine's load-time probe switches to eager
        and back); this forward always attends eagerly, and the engine runs its fused forward."""

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        """Logits [batch, length, vocab] for `input_ids` [batch, length] from position 0: the reference."""
        hidden = self.model.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand(input_ids.shape[0], -1)
        cos, sin = self.model.rotary_emb(hidden, positions)
        for layer in self.model.layers:
            hidden = layer(hidden, cos, sin)
        return SimpleNamespace(logits=self.lm_head(self.model.norm(hidden)))


def checkpoint_files(folder: Path) -> list[Path] | None:
    """The safetensors files holding the weights, or None when there are none."""
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / name for name in names]
    single = folder / WEIGHTS_FILE
    return [single] if single.is_file() else None


def build(folder: Path, rotary: Rotary, dtype: torch.dtype, device: str,
          int8: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> LeanCausalLM:
    """The model in `folder` with its weights in `dtype` on `device` (ValueError if the checkpoint
    does not hold exactly the weights this layout has). With `int8` (each linear layer's int8
    weight and scales, quantized at an earlier start) the linear layers are `Int8Linear`s made
    from them, and their floating-point weights are never read."""
    from safetensors import safe_open

    from labs.models.int8 import Int8Linear

    config = read_config(folder)
    generation_path = folder / "generation_config.json"
    generation = json.loads(generation_path.read_text(encoding="utf-8")) if generation_path.is_file() else {}
    generation.setdefault("eos_token_id", getattr(config, "eos_token_id", None))
    with torch.device("meta"):
        model = LeanCausalLM(config, rotary, generation)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    skipped = {f"{name}.weight" for name in linears} if int8 is not None else set()
    if tied:
        skipped.add("lm_head.weight")
    expected = {name: parameter for name, parameter in model.named_parameters() if name not in skipped}
    files = checkpoint_files(folder)
    if files is None:
        raise ValueError(f"no {WEIGHTS_FILE} in {folder}")
    loaded: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                if name.endswith("rotary_emb.inv_freq"):
                    continue  # older checkpoints saved the frequencies; they are the record's
                if name not in expected:
                    if name in skipped:
                        continue
                    raise ValueError(f"unexpected weight {name} in {path.name}")
                tensor = handle.get_tensor(name)
                if tuple(tensor.shape) != tuple(expected[name].shape):
                    raise ValueError(f"weight {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}")
                loaded[name] = tensor.to(device=device, dtype=dtype)
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} weights, e.g. {missing[0]}")
    modules = dict(model.named_modules())
    for name, tensor in loaded.items():
        owner, _, attribute = name.rpartition(".")
        setattr(modules[owner], attribute, nn.Parameter(tensor, requires_grad=False))
    if int8 is not None:
        for name in linears:
            owner, _, attribute = name.rpartition(".")
            if name not in int8:
                raise ValueError(f"the int8 weights lack {name}")
            qweight, scale = int8[name]
            layer = getattr(modules[owner], attribute)
            if tuple(qweight.shape) != (layer.out_features, layer.in_features) or tuple(scale.shape) != (layer.out_features,):
                raise ValueError(f"the int8 weights of {name} have shape {tuple(qweight.shape)}")
            setattr(modules[owner], attribute, Int8Linear.from_quantized(qweight, scale, loaded.get(f"{name}.bias")))
    elif tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb.to(device)
    return model.eval()


def adopt_weights(model: Any, rotary: Rotary) -> LeanCausalLM:
    """Lean modules holding the very tensors of a transformers-loaded `model` (no copy): what the
    load-time record compares with transformers' own forward (ValueError if the layouts differ)."""
    config = LeanConfig(**model.config.to_dict())
    with torch.device("meta"):
        lean = LeanCausalLM(config, rotary, {"eos_token_id": getattr(model.generation_config, "eos_token_id", None)})
    theirs = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(lean.named_modules())
    for name, parameter in list(lean.named_parameters(remove_duplicate=False)):
        source = theirs.get(name)
        if source is None or tuple(source.shape) != tuple(parameter.shape):
            raise ValueError(f"transformers' model has no weight {name} of shape {tuple(parameter.shape)}")
        owner, _, attribute = name.rpartition(".")
        setattr(modules[owner], attribute, source)
    lean.model.rotary_emb.to(model.get_input_embeddings().weight.device)
    return lean.eval()
