"""Every architecture the engine accepts gives model.generate's tokens; every other one is refused clearly.

Tiny random models (hidden 64, 2 layers, a 512-token vocabulary) of many transformers
architectures, with weights drawn large enough (initializer_range 0.2) that attention is far from
uniform, so a wrong mask, a dropped feature or a skipped layer changes the tokens. Each case
either matches `model.generate` greedily token for token in fp32, alone and in a batch of
requests of different lengths joining at different steps, or is refused when the engine is built
with a message that names why. Nothing in between.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from typer.testing import CliRunner

from labs.cli.gen import app
from labs.engine import attention
from labs.engine.core import EngineConfig, EngineCore
from labs.engine.errors import UnsupportedModelError
from labs.engine.sampling import SamplingParams
from tests.engine.test_engine import Collector, assert_cache_empty, prompts_of_lengths, reference, run_all

VOCAB = 512
CONTEXT = 256
NEW_TOKENS = 10
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=CONTEXT, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, tie_word_embeddings=False)
SLIDING = ["sliding_attention", "full_attention"]
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)

# model_type -> (config overrides, None when the engine must match, else a pattern of the refusal)
MATCH: dict[str, dict[str, Any]] = {
    "llama": {},
    "llama-unfused": {},
    "mistral": dict(sliding_window=None),
    "mistral-sliding": dict(sliding_window=6),
    "mistral-long-window": dict(sliding_window=4096),  # longer than the context: full attention, fused
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
    "qwen2": {},
    "qwen2_moe": dict(MOE, shared_expert_intermediate_size=64),
    "qwen3": dict(head_dim=16),
    "qwen3_moe": dict(MOE, head_dim=16),
    "gemma": dict(head_dim=16),
    "gemma2": dict(head_dim=16, sliding_window=6, attn_logit_softcapping=5.0, final_logit_softcapping=30.0, query_pre_attn_scalar=16),
    "gemma3_text": dict(head_dim=16, sliding_window=6, layer_types=SLIDING, query_pre_attn_scalar=16),
    "phi": dict(partial_rotary_factor=0.5),
    "phi3": {},
    "stablelm": dict(partial_rotary_factor=0.25, qk_layernorm=True),
    "stablelm-parallel": dict(partial_rotary_factor=0.25, use_parallel_residual=True),
    "starcoder2": dict(sliding_window=6),
    "gpt2": {},
    "gpt_neox": dict(rotary_pct=0.5),
    "opt": dict(ffn_dim=128, word_embed_proj_dim=64),
    "olmo": {},
    "olmo2": {},
    "cohere": {},
    "granite": dict(embedding_multiplier=2.0, attention_multiplier=0.3, residual_multiplier=0.5, logits_scaling=2.0),
    "smollm3": dict(no_rope_layers=[1, 0]),
    "exaone4": dict(sliding_window=6, layer_types=SLIDING),
    "deepseek_v3": dict(q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12,
                        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
                        moe_intermediate_size=32, num_key_value_heads=4),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, head_dim=16, sliding_window=6, layer_types=SLIDING),
    "deepseek_v2": dict(q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12,
                        n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1, moe_intermediate_size=32,
                        num_key_value_heads=4),
    "cohere2": dict(sliding_window=6, layer_types=SLIDING),
    "glm4": {},
    "olmo3": dict(sliding_window=6, layer_types=SLIDING),
    "granitemoe": dict(num_local_experts=4, num_experts_per_tok=2),
    "ernie4_5": {},
    "seed_oss": {},
    "persimmon": {},
    "gpt_bigcode": {},
    "nemotron": {},
    "apertus": {},
    "bitnet": {},
    "vaultgemma": dict(head_dim=16),
}
OWN_ATTENTION = r"its attention does not go through the labs engine \(transformers' attention interface\)"
STATE_SPACE = r"it is a state-space \(recurrent\) model with no attention layers"
HYBRID = r"it is a hybrid model whose layers are not all attention"
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "falcon": ({}, r"FalconForCausalLM \(falcon\): its attention does not go through the labs engine"),
    "gptj": (dict(rotary_dim=8), r"GPTJForCausalLM \(gptj\): its attention does not go through the labs engine"),
    "bloom": ({}, r"BloomForCausalLM"),
    "mamba": (dict(state_size=8), r"MambaForCausalLM \(mamba\): it is a state-space \(recurrent\) model"),
    "mamba2": (dict(num_heads=4, head_dim=32, state_size=8, n_groups=1, expand=2), STATE_SPACE),
    "rwkv": ({}, STATE_SPACE),
    "recurrent_gemma": ({}, STATE_SPACE),
    "codegen": (dict(rotary_dim=8), OWN_ATTENTION),
    "gpt_neo": (dict(attention_types=[[["global", "local"], 1]], window_size=6), OWN_ATTENTION),
    "mpt": ({}, OWN_ATTENTION),
    "xglm": ({}, OWN_ATTENTION),
    "jamba": (dict(attn_layer_period=2, attn_layer_offset=1, num_experts=1), HYBRID + r" \(its layers include linear_attention\)"),
    "qwen3_next": ({}, HYBRID),
    "lfm2": ({}, HYBRID),
    "falcon_h1": ({}, HYBRID),
    "diffllama": ({}, r"its layers call attention more than once each \(4 calls for 2 layers"),
    "jetmoe": ({}, r"JetMoeForCausalLM \(jetmoe\): its forward fails on the engine's paged KV cache \(RuntimeError: view size"),
}


def build(kind: str, overrides: dict[str, Any]) -> tuple[Any, Any]:
    """The engine's copy and the reference copy (eager attention) of one random model."""
    model_type = kind.split("-")[0]
    config = AutoConfig.for_model(model_type, **(COMMON | overrides))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    reference_model = copy.deepcopy(model)
    reference_model.set_attn_implementation("eager")
    return model, reference_model


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def engine(model: Any, tokenizer: Any, **settings: Any) -> EngineCore:
    config = {"kv_cache_memory": 4 * 1024**2, "max_batched_tokens": 16, "block_size": 8} | settings
    return EngineCore(model, tokenizer, CONTEXT, EngineConfig(**config))


def prompts(lengths: list[int], seed: int) -> list[list[int]]:
    return [[t % (VOCAB - 3) + 3 for t in prompt] for prompt in prompts_of_lengths(lengths, seed)]


@pytest.mark.parametrize("kind", list(MATCH))
def test_architecture_matches_generate(kind: str, tokenizer: Any) -> None:
    model, reference_model = build(kind, MATCH[kind])
    fused = kind != "llama-unfused"
    core = engine(model, tokenizer, fused_forward=fused)
    if kind in ("llama", "mistral", "mistral-long-window", "qwen2"):
        assert core.runner.fused is not None, f"{kind} should take the fused forward"
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, min_tokens=NEW_TOKENS)
    alone = prompts([13], seed=1)[0]
    sink = Collector()
    core.add_request("alone", alone, params, sink)
    run_all(core)
    expected = reference(reference_model, alone, NEW_TOKENS)
    assert sink.tokens("alone") == expected, f"{kind}: alone"
    batch = prompts([4, 29, 11, 1], seed=2)  # chunked prefill (16 tokens a step) next to decodes
    for i, prompt in enumerate(batch):
        core.add_request(f"r{i}", prompt, params, sink)
        for _ in range(i % 3):
            core.step()
    run_all(core)
    varied = len(set(expected)) > 2
    for i, prompt in enumerate(batch):
        expected = reference(reference_model, prompt, NEW_TOKENS)
        assert sink.tokens(f"r{i}") == expected, f"{kind}: request {i} of the batch"
        varied = varied or len(set(expected)) > 2
    assert varied, f"{kind}: every reference repeats a token or two: the case would test nothing"
    assert_cache_empty(core)


@pytest.mark.parametrize("kind", list(REFUSED))
def test_architecture_is_refused_clearly(kind: str, tokenizer: Any) -> None:
    overrides, message = REFUSED[kind]
    model, _ = build(kind, overrides)
    with pytest.raises(UnsupportedModelError, match=message) as caught:
        engine(model, tokenizer)
    assert "\n" not in str(caught.value) and caught.value.exit_code == 2


def test_a_model_the_engine_would_run_wrong_is_refused_by_the_load_time_check(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check compares logits, so it needs no list of features: with the attention sinks
    dropped (as before the engine knew them), GPT-OSS passes every static test yet is refused."""
    paged = attention.paged_attention

    def without_sinks(*args: Any) -> torch.Tensor:
        return paged(*args[:8])

    monkeypatch.setattr(attention, "paged_attention", without_sinks)
    model, _ = build("gpt_oss", MATCH["gpt_oss"])
    with pytest.raises(UnsupportedModelError, match=r"GptOssForCausalLM \(gpt_oss\): through the engine its logits differ from "
                                                    r"its own forward's by [0-9.]+ of their spread \(at most 0.02 is rounding in float32\)"):
        engine(model, tokenizer)


@pytest.mark.parametrize("kind", ["mamba", "falcon"])
def test_labs_gen_refuses_an_unsupported_model_in_one_line(kind: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The production path (load_model, then the engine) refuses at load: exit 2, one line, no traceback."""
    overrides, message = REFUSED[kind]
    model, _ = build(kind, overrides)
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path)
    result = CliRunner().invoke(app, ["--model", str(tmp_path), "--prompt", "hello", "--max-new-tokens", "4"])
    assert result.exit_code == 2, result.output
    error = " ".join(result.stderr.split())
    assert error.startswith("error: the labs engine cannot run") and re.search(message, error), error
    assert "Traceback" not in result.output
