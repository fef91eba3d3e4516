"""The fused Llama-family forward (labs.engine.fused_llama) and int8 weights through the engine:
the same tokens as model.generate, and the same tokens for a request alone or batched."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from labs.engine.core import EngineConfig, EngineCore
from labs.engine.fused_llama import supports
from labs.engine.sampling import SamplingParams
from labs.models.int8 import Int8Linear, quantize_linears_int8
from tests.engine.test_architectures import build, run_against_generate
from tests.engine.test_engine import (
    Collector,
    assert_cache_empty,
    load_fp32,
    prompts_of_lengths,
    reference,
    run_all,
    tiny_core,
)


@pytest.fixture(scope="module")
def tiny_reference(tiny_model_dir: Path) -> Any:
    return load_fp32(tiny_model_dir)[0]


@pytest.fixture(scope="module")
def tiny_int8(tiny_model_dir: Path) -> tuple[Any, Any]:
    model, tokenizer = load_fp32(tiny_model_dir)
    assert quantize_linears_int8(model) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + the head
    return model, tokenizer


def plain_qwen2(vocab: int) -> tuple[Any, Any]:
    """Two copies (engine, eager reference) of a random Qwen2 without sliding window, with
    non-zero q/k/v biases (HF initialises biases to zero, which would hide a dropped bias)."""
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                projection.bias.copy_(torch.randn(projection.bias.shape, generator=generator) * 0.5)
    reference_model = copy.deepcopy(model)
    reference_model.set_attn_implementation("eager")
    return model, reference_model


def chat_prompt(tokenizer: Any, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


Run = tuple[list[int], list[float]]  # tokens and their logprobs


def tokens_and_logprobs(sink: Collector, request_id: str) -> Run:
    return sink.tokens(request_id), [lp for o in sink.outputs[request_id] for lp in (o.logprobs or [])]


def alone_and_batched(model_and_tokenizer: tuple[Any, Any], prompt: list[int], params: SamplingParams, fused: bool) -> tuple[Run, Run]:
    """`prompt` run alone, and run joining three other requests of different lengths."""
    alone = tiny_core(model_and_tokenizer, fused_forward=fused)
    sink_alone = Collector()
    alone.add_request("s", prompt, params, sink_alone)
    run_all(alone)
    assert_cache_empty(alone)
    batched = tiny_core(model_and_tokenizer, fused_forward=fused)
    sink = Collector()
    for i, other in enumerate(prompts_of_lengths([7, 30, 3], seed=5)):
        batched.add_request(f"o{i}", other, SamplingParams(max_tokens=20, temperature=0.7, seed=i, min_tokens=20), sink)
        batched.step()
    batched.add_request("s", prompt, params, sink)
    run_all(batched)
    assert_cache_empty(batched)
    assert (alone.runner.fused is not None) == fused
    return tokens_and_logprobs(sink_alone, "s"), tokens_and_logprobs(sink, "s")


def test_supports_plain_llama_and_qwen2_but_not_sliding_windows_or_gemma2(tiny_reference: Any, tiny_model_dir: Path) -> None:
    """The fused path must refuse what it does not implement (windows, soft-capping, Gemma's norms)."""
    vocab = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    assert supports(tiny_reference) is None
    assert supports(plain_qwen2(vocab)[0]) is None
    sliding = supports(build("qwen2-sliding", vocab)[0])
    assert isinstance(sliding, str) and "sliding" in sliding
    gemma = supports(build("gemma2-softcap-sliding", vocab)[0])
    assert isinstance(gemma, str) and "gemma2" in gemma


def test_qwen2_with_qkv_bias_through_the_fused_forward_matches_generate(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model, reference_model = plain_qwen2(len(tokenizer))
    assert model.model.layers[0].self_attn.k_proj.bias.abs().sum() > 0
    core = run_against_generate(model, reference_model, tokenizer, "qwen2 with q/k/v bias")
    assert core.runner.fused is not None


@pytest.mark.parametrize("fused", [True, False])
def test_int8_greedy_tokens_are_the_same_alone_and_batched(fused: bool, tiny_int8: tuple[Any, Any]) -> None:
    """Per-token activation scales keep every row independent of the rest of the batch."""
    prompt = prompts_of_lengths([12])[0]
    params = SamplingParams(max_tokens=16, temperature=0, min_tokens=16, logprobs=1)
    alone, batched = alone_and_batched(tiny_int8, prompt, params, fused)
    assert len(alone[0]) == 16 and len(alone[1]) == 16
    assert batched[0] == alone[0]
    assert batched[1] == alone[1]  # bit-identical logits, not merely the same argmax


@pytest.mark.parametrize("fused", [True, False])
def test_int8_seeded_sampling_is_the_same_alone_and_batched(fused: bool, tiny_int8: tuple[Any, Any]) -> None:
    prompt = prompts_of_lengths([12])[0]
    params = SamplingParams(max_tokens=16, temperature=0.8, seed=7, min_tokens=16, logprobs=1)
    alone, batched = alone_and_batched(tiny_int8, prompt, params, fused)
    assert len(set(alone[0])) > 8  # a real sampled sequence, not one token repeated
    assert batched == alone


def test_int8_fused_and_unfused_agree_with_each_other(tiny_int8: tuple[Any, Any]) -> None:
    """Both paths run the same int8 arithmetic, so greedy decoding gives the same tokens."""
    prompt = prompts_of_lengths([12])[0]
    params = SamplingParams(max_tokens=16, temperature=0, min_tokens=16)
    tokens = []
    for fused in (True, False):
        core = tiny_core(tiny_int8, fused_forward=fused)
        sink = Collector()
        core.add_request("s", prompt, params, sink)
        run_all(core)
        assert_cache_empty(core)
        tokens.append(sink.tokens("s"))
    assert tokens[0] == tokens[1]


def test_default_model_in_int8_knows_the_capital_of_france(default_model_dir: Path) -> None:
    model, tokenizer = load_fp32(default_model_dir)
    fp32_model = load_fp32(default_model_dir)[0]
    assert quantize_linears_int8(model) > 0
    assert isinstance(model.get_output_embeddings(), Int8Linear)
    core = EngineCore(model, tokenizer, 8192, EngineConfig(kv_cache_memory=128 * 1024**2, max_batched_tokens=32))
    assert core.runner.fused is not None
    prompt = chat_prompt(tokenizer, "What is the capital of France?")
    sink = Collector()
    core.add_request("q", prompt, SamplingParams(max_tokens=20, temperature=0), sink)
    run_all(core)
    assert "Paris" in sink.text("q")
    assert sink.tokens("q")[:5] == reference(fp32_model, prompt, 20)[:5]  # int8 follows fp32 at least this far
    assert_cache_empty(core)


def test_bf16_fused_forward_agrees_with_the_model_own_forward(tiny_model_dir: Path) -> None:
    """The dtype GPUs run: the fused and the HF forward pick the same tokens, with logprobs
    within bf16 rounding of each other (0.008 measured)."""
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = prompts_of_lengths([6, 40, 19], seed=3)
    runs = []
    for fused in (True, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
        core = tiny_core((model, tokenizer), fused_forward=fused)
        assert (core.runner.fused is not None) == fused
        sink = Collector()
        for i, prompt in enumerate(prompts):
            core.add_request(f"r{i}", prompt, SamplingParams(max_tokens=12, temperature=0, min_tokens=12, logprobs=1), sink)
            core.step()
        run_all(core)
        assert_cache_empty(core)
        runs.append([tokens_and_logprobs(sink, f"r{i}") for i in range(len(prompts))])
    for (fused_tokens, fused_logprobs), (own_tokens, own_logprobs) in zip(*runs):
        assert fused_tokens == own_tokens
        assert max(abs(a - b) for a, b in zip(fused_logprobs, own_logprobs)) < 0.02


def test_row_sums_are_exact_for_any_shape() -> None:
    from labs.engine.fused_llama import _row_sums

    generator = torch.Generator().manual_seed(0)
    for rows, columns in ((1, 5), (16, 3), (17, 576), (300, 1536), (1000, 4097)):
        weight = torch.randint(-127, 128, (rows, columns), dtype=torch.int8, generator=generator)
        weight[0] = 127  # the largest sums
        assert torch.equal(_row_sums(weight), weight.sum(dim=1, dtype=torch.int32))


def test_layers_already_side_by_side_are_fused_without_a_copy() -> None:
    from labs.engine.fused_llama import _adjacent

    storage = torch.arange(60, dtype=torch.float32)
    q, k, v = storage[:20].view(4, 5), storage[20:30].view(2, 5), storage[30:40].view(2, 5)
    fused = _adjacent([q, k, v])
    assert fused is not None and fused.data_ptr() == q.data_ptr() and torch.equal(fused, storage[:40].view(8, 5))
    assert _adjacent([q, storage[30:40].view(2, 5)]) is None  # a gap
    assert _adjacent([k, q]) is None  # out of order
    assert _adjacent([q, torch.zeros(2, 5)]) is None  # another storage
    assert _adjacent([q, storage[20:30].view(5, 2)]) is None  # another width


def test_cpu_caches_start_as_zeros_that_can_be_written() -> None:
    from labs.engine.kv_cache import zeros

    cache = zeros((3, 1000, 64), torch.float32, "cpu")
    assert cache.shape == (3, 1000, 64) and cache.dtype == torch.float32 and not cache.any()
    cache[1, 999] = 2.5
    assert float(cache.sum()) == 2.5 * 64
    assert zeros((0, 4), torch.float16, "cpu").shape == (0, 4)
    assert zeros((2, 3), torch.bfloat16, "cpu").dtype == torch.bfloat16
