"""The one-request generation path: exact against model.generate, stops, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from labs.engine.sampling import SamplingParams
from labs.engine.sequential import ContextLengthError, SequentialGenerator
from labs.models.prompting import prompt_token_ids


def load(folder: Path) -> tuple[SequentialGenerator, object, object]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return SequentialGenerator(model, tokenizer, model.config.max_position_embeddings), model, tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):  # noqa: ANN201
    return load(tiny_model_dir)


@pytest.fixture(scope="module")
def default(default_model_dir: Path):  # noqa: ANN201
    return load(default_model_dir)


def reference_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:  # noqa: ANN001
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("prompt", ["Hi", "Tell me a long story about a dragon and a knight who became friends."])
def test_tiny_greedy_matches_model_generate(tiny, prompt: str) -> None:  # noqa: ANN001
    generator, model, tokenizer = tiny
    ids = prompt_token_ids(tokenizer, prompt=prompt)
    result = generator.generate(ids, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    assert result.token_ids == reference_greedy(model, ids, 20)
    assert result.finish_reason == "length" and result.completion_tokens == 20


def test_default_model_greedy_matches_model_generate(default) -> None:  # noqa: ANN001
    generator, model, tokenizer = default
    ids = prompt_token_ids(tokenizer, prompt="Name three colours.")
    result = generator.generate(ids, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    assert result.token_ids == reference_greedy(model, ids, 24)
    assert result.text == tokenizer.decode(result.token_ids, skip_special_tokens=True)


def test_streamed_deltas_join_to_the_text(default) -> None:  # noqa: ANN001
    generator, _, tokenizer = default
    deltas: list[str] = []
    result = generator.generate(prompt_token_ids(tokenizer, prompt="What is the capital of France?"),
                                SamplingParams(max_tokens=32, temperature=0), deltas.append)
    assert "".join(deltas) == result.text and "Paris" in result.text
    assert result.finish_reason == "stop" and result.completion_tokens < 32  # ended at EOS


def test_stop_string_ends_generation_and_is_not_emitted(default) -> None:  # noqa: ANN001
    generator, _, tokenizer = default
    ids = prompt_token_ids(tokenizer, prompt="What is the capital of France?")
    result = generator.generate(ids, SamplingParams(max_tokens=32, temperature=0, stop=["Paris"]))
    assert result.finish_reason == "stop" and result.stop_matched == "Paris"
    assert "Paris" not in result.text and result.text.startswith("The capital of France is")


def test_context_limits(tiny) -> None:  # noqa: ANN001
    generator, _, _ = tiny
    with pytest.raises(ContextLengthError, match=r"prompt \(250 tokens\) \+ max tokens \(10\) exceeds the model's context of 256: ask for at most 6"):
        generator.generate([5] * 250, SamplingParams(max_tokens=10))
    with pytest.raises(ContextLengthError, match=r"the prompt has 300 tokens but the model's context is 256"):
        generator.generate([5] * 300, SamplingParams())
    result = generator.generate([5] * 250, SamplingParams(temperature=0, ignore_eos=True))
    assert result.completion_tokens == 6 and result.finish_reason == "length"


def test_min_tokens_and_stop_token_ids(tiny) -> None:  # noqa: ANN001
    generator, _, _ = tiny
    free = generator.generate([1, 2, 3], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))
    first = free.token_ids[0]
    stopped = generator.generate([1, 2, 3], SamplingParams(max_tokens=10, temperature=0, stop_token_ids=[first]))
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop"
    delayed = generator.generate([1, 2, 3], SamplingParams(max_tokens=10, temperature=0, stop_token_ids=[first], min_tokens=3))
    assert delayed.completion_tokens >= 3 and first not in delayed.token_ids[:3]
