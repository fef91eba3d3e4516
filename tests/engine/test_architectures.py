"""Other attention variants through the same paged engine: sliding windows and soft-capping."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, Qwen2Config, Qwen2ForCausalLM

from labs.engine.core import EngineConfig, EngineCore
from labs.engine.sampling import SamplingParams
from tests.engine.test_engine import Collector, assert_cache_empty, prompts_of_lengths, reference, run_all


def build(kind: str, vocab: int) -> tuple[Any, Any]:
    """Two copies (engine, reference) of a small random model of the given family."""
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if kind == "qwen2-sliding":
        config = Qwen2Config(**common, use_sliding_window=True, sliding_window=12, max_window_layers=0,
                             layer_types=["sliding_attention", "full_attention"])
        cls = Qwen2ForCausalLM
    else:
        config = Gemma2Config(**common, head_dim=16, sliding_window=10, attn_logit_softcapping=5.0,
                              final_logit_softcapping=30.0, query_pre_attn_scalar=16)
        cls = Gemma2ForCausalLM
    models = []
    for _ in range(2):  # separate configs: the engine switches its model's attention implementation
        torch.manual_seed(0)
        models.append(cls(copy.deepcopy(config)).eval())
    models[1].set_attn_implementation("eager")
    return models[0], models[1]


def run_against_generate(model: Any, reference_model: Any, tokenizer: Any, label: str) -> EngineCore:
    """Three greedy requests joining one step apart (chunked prefill next to decodes) must give
    `reference_model.generate`'s tokens; returns the drained engine."""
    core = EngineCore(model, tokenizer, 256, EngineConfig(kv_cache_memory=8 * 1024**2, max_batched_tokens=16))
    prompts = prompts_of_lengths([5, 40, 23], seed=11)  # longer than the windows, chunked prefill
    sink = Collector()
    for i, prompt in enumerate(prompts):
        core.add_request(f"r{i}", prompt, SamplingParams(max_tokens=20, temperature=0, min_tokens=20), sink)
        core.step()
    run_all(core)
    for i, prompt in enumerate(prompts):
        assert sink.tokens(f"r{i}") == reference(reference_model, prompt, 20), f"{label} request {i}"
    assert_cache_empty(core)
    return core


@pytest.mark.parametrize("kind", ["qwen2-sliding", "gemma2-softcap-sliding"])
def test_variant_matches_generate(kind: str, tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model, reference_model = build(kind, len(tokenizer))
    run_against_generate(model, reference_model, tokenizer, kind)
