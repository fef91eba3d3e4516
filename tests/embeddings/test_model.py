"""The embedding model and the batcher, with the real embedded all-MiniLM-L6-v2 (loaded once)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from labs.embeddings import (
    DEFAULT_EMBEDDING_MODEL,
    EmbeddingBatcher,
    EmbeddingBatcherClosedError,
    EmbeddingInput,
    EmbeddingInputError,
    EmbeddingModel,
    EmbeddingResult,
    load_embedding_model,
    truncate_dimensions,
)
from labs.embeddings.embedded import embedded_embedding_model_folder
from labs.engine.torch_thread import torch_thread
from labs.errors import ModelLoadError
from tests.embeddings.test_resolve import REPO_ID, fake_hub_cache, use_hub_cache

LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 200  # ~2000 tokens, max is 256


@pytest.fixture(scope="session")
def model() -> EmbeddingModel:
    return load_embedding_model(DEFAULT_EMBEDDING_MODEL)


def encode(model: EmbeddingModel, inputs: Sequence[EmbeddingInput]) -> EmbeddingResult:
    return torch_thread().call(model.encode, inputs)


def test_default_model_shape_and_unit_norm(model: EmbeddingModel) -> None:
    assert (model.name, model.dimension, model.max_tokens, model.device) == (DEFAULT_EMBEDDING_MODEL, 384, 256, "cpu")
    result = encode(model, ["Hello world", "An embedding is a vector."])
    assert result.vectors.shape == (2, 384) and result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert result.truncated == [False, False]
    assert result.token_counts == [model.count_tokens("Hello world"), model.count_tokens("An embedding is a vector.")]
    assert result.token_counts[0] == len(model.tokenize("Hello world")) + 2  # [CLS] ... [SEP]


def test_similar_meanings_are_closer(model: EmbeddingModel) -> None:
    cat, feline, quantum = encode(model, ["cat", "feline", "quantum computer"]).vectors
    assert float(cat @ feline) > float(cat @ quantum) + 0.1


def test_token_ids_give_the_same_vector_as_the_text(model: EmbeddingModel) -> None:
    text = "Token arrays are embedded exactly like their text."
    ids = model.tokenize(text)
    assert ids and all(isinstance(token, int) for token in ids)
    result = encode(model, [text, ids, tuple(ids)])
    np.testing.assert_allclose(result.vectors[1], result.vectors[0], atol=1e-6)
    np.testing.assert_allclose(result.vectors[2], result.vectors[0], atol=1e-6)
    assert result.token_counts[0] == result.token_counts[1] == len(ids) + 2


def test_long_input_is_truncated_not_an_error(model: EmbeddingModel) -> None:
    long_ids = model.tokenize(LONG_TEXT)
    assert len(long_ids) > 1000
    result = encode(model, ["short", LONG_TEXT, long_ids])
    assert result.truncated == [False, True, True]
    assert result.token_counts[1:] == [256, 256] and model.count_tokens(LONG_TEXT) == 256
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(result.vectors[1], result.vectors[2], atol=1e-6)
    # The cut keeps the start: the same as embedding the first 254 tokens.
    np.testing.assert_allclose(encode(model, [long_ids[:254]]).vectors[0], result.vectors[1], atol=1e-5)


def test_matches_sentence_transformers_encode(model: EmbeddingModel) -> None:
    texts = ["one", "a somewhat longer sentence to force padding", "x"]
    reference = torch_thread().call(lambda: model._model.encode(texts, show_progress_bar=False))
    np.testing.assert_allclose(encode(model, texts).vectors, reference, atol=1e-5)


def test_dimensions_truncation_of_real_vectors(model: EmbeddingModel) -> None:
    vectors = encode(model, ["cat", "dog"]).vectors
    cut = truncate_dimensions(vectors, 128)
    assert cut.shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
    with pytest.raises(EmbeddingInputError, match="385.*384|384.*385"):
        truncate_dimensions(vectors, 385)


@pytest.mark.parametrize(
    ("inputs", "index", "words"),
    [
        (["fine", ""], 1, "empty"),
        (["fine", [101, 2003], []], 2, "empty"),
        ([[7592, 10**6]], 0, "1000000"),
        ([[7592, -1]], 0, "-1"),
        (["fine", 3.5], 1, "float"),
        (["fine", ["a", "b"]], 1, "'a'"),
    ],
)
def test_bad_inputs_name_the_index(model: EmbeddingModel, inputs: list, index: int, words: str) -> None:
    with pytest.raises(EmbeddingInputError) as caught:
        encode(model, inputs)
    message = str(caught.value)
    assert message.startswith(f"input[{index}]") and words in message and "\n" not in message


def test_encode_refuses_to_run_off_the_torch_thread(model: EmbeddingModel) -> None:
    with pytest.raises(RuntimeError, match="torch thread"):
        model.encode(["hello"])


# -- batcher ---------------------------------------------------------------------------------


def test_concurrent_calls_are_batched_and_each_caller_gets_its_vectors(model: EmbeddingModel) -> None:
    requests = [[f"request {i}, sentence {j} about {['cats', 'physics', 'cooking'][j % 3]}" for j in range(i % 4 + 1)] for i in range(24)]
    requests[5] = ["mixed", model.tokenize("token ids inside a batch")]
    singles = [encode(model, request) for request in requests]
    batcher = EmbeddingBatcher(model, max_batch_size=64)

    async def scenario() -> list[EmbeddingResult]:
        return await asyncio.gather(*(asyncio.create_task(batcher.embed(request)) for request in requests))

    results = asyncio.run(scenario())
    stats = batcher.stats
    assert 1 <= stats.batches_total < len(requests)
    assert stats.inputs_total == sum(len(request) for request in requests)
    assert stats.tokens_total == sum(single.total_tokens for single in singles)
    assert stats.encode_seconds_total > 0
    for result, single in zip(results, singles):
        np.testing.assert_allclose(result.vectors, single.vectors, atol=1e-5)
        assert result.token_counts == single.token_counts and result.truncated == single.truncated


def test_requests_arriving_during_a_forward_join_the_next_one(model: EmbeddingModel) -> None:
    batcher = EmbeddingBatcher(model, max_batch_size=64)
    big = [LONG_TEXT + str(i) for i in range(64)]  # one full batch that takes a while on a CPU
    late = [[f"late request {i}"] for i in range(10)]

    async def scenario() -> tuple[EmbeddingResult, list[EmbeddingResult]]:
        first = asyncio.create_task(batcher.embed(big))
        while not batcher.in_flight_inputs:  # wait until the big batch is encoding on the torch thread
            await asyncio.sleep(0.001)
        assert batcher.stats.batches_total == 0 and batcher.in_flight_inputs == 64
        others = [asyncio.create_task(batcher.embed(request)) for request in late]
        return await first, await asyncio.gather(*others)

    first, others = asyncio.run(scenario())
    assert batcher.stats.batches_total == 2  # the 10 late requests shared one forward
    assert first.vectors.shape == (64, 384) and all(first.truncated)
    for result, request in zip(others, late):
        np.testing.assert_allclose(result.vectors, encode(model, request).vectors, atol=1e-5)


def test_a_big_request_is_split_across_forwards_in_order(model: EmbeddingModel) -> None:
    texts = [f"sentence number {i}" for i in range(20)]
    batcher = EmbeddingBatcher(model, max_batch_size=8)
    result = asyncio.run(batcher.embed(texts))
    assert batcher.stats.batches_total == 3
    np.testing.assert_allclose(result.vectors, encode(model, texts).vectors, atol=1e-5)


def test_a_bad_request_fails_alone(model: EmbeddingModel) -> None:
    batcher = EmbeddingBatcher(model)

    async def scenario() -> list[EmbeddingResult | BaseException]:
        calls = [batcher.embed(["good one"]), batcher.embed(["fine", [1, 10**7]]), batcher.embed(["good two"])]
        calls.append(batcher.embed(["ok", "also ok", [True, 5]]))
        return await asyncio.gather(*calls, return_exceptions=True)

    good_one, bad, good_two, bool_ids = asyncio.run(scenario())
    assert isinstance(bad, EmbeddingInputError) and str(bad).startswith("input[1]")
    assert isinstance(bool_ids, EmbeddingInputError) and str(bool_ids).startswith("input[2] has True at position 0")
    assert isinstance(good_one, EmbeddingResult) and isinstance(good_two, EmbeddingResult)


class FailingOnMarker:
    """The real model, except that a batch holding the text "boom" fails in encode."""

    def __init__(self, model: EmbeddingModel) -> None:
        self.model = model
        self.dimension = model.dimension
        self.validate = model.validate

    def encode(self, inputs: Sequence[EmbeddingInput]) -> EmbeddingResult:
        if "boom" in inputs:
            raise RuntimeError("simulated failure in a forward pass")
        return self.model.encode(inputs)


def test_a_failing_batch_fails_only_its_requests_and_the_batcher_keeps_working(model: EmbeddingModel) -> None:
    batcher = EmbeddingBatcher(FailingOnMarker(model), max_batch_size=2)  # type: ignore[arg-type]

    async def scenario() -> list[EmbeddingResult | BaseException]:
        calls = [batcher.embed(["a", "boom"]), batcher.embed(["b"]), batcher.embed(["c"])]
        return await asyncio.gather(*calls, return_exceptions=True)

    failed, b, c = asyncio.run(scenario())
    assert isinstance(failed, RuntimeError) and "simulated" in str(failed)
    assert isinstance(b, EmbeddingResult) and isinstance(c, EmbeddingResult)
    later = asyncio.run(batcher.embed(["still working"]))  # and from a fresh event loop
    assert later.vectors.shape == (1, 384)
    assert batcher.stats.batches_total == 2


def test_closed_batcher_refuses_requests(model: EmbeddingModel) -> None:
    batcher = EmbeddingBatcher(model)

    async def scenario() -> None:
        await batcher.embed(["before close"])
        await batcher.close()
        with pytest.raises(EmbeddingBatcherClosedError):
            await batcher.embed(["after close"])

    asyncio.run(scenario())


# -- other sources -----------------------------------------------------------------------------


def test_hub_id_from_the_cache_loads(model: EmbeddingModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub_cache(tmp_path / "hub")
    use_hub_cache(monkeypatch, tmp_path / "hub")
    cached = load_embedding_model(REPO_ID)
    assert cached.name == REPO_ID and cached.dimension == 384
    np.testing.assert_allclose(encode(cached, ["hub"]).vectors, encode(model, ["hub"]).vectors, atol=1e-6)


def test_plain_hf_folder_gets_mean_pooling(model: EmbeddingModel, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "plain-minilm"
    folder.mkdir()
    source = embedded_embedding_model_folder(DEFAULT_EMBEDDING_MODEL)
    for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]:
        (folder / name).symlink_to(source / name)
    with caplog.at_level(logging.INFO, logger="labs.embeddings"):
        plain = load_embedding_model(str(folder))
    assert any("mean pooling" in record.getMessage() for record in caplog.records)
    assert plain.dimension == 384 and plain.max_tokens == 512  # no sentence_bert_config.json: the tokenizer's limit
    texts = ["mean pooling over tokens", "cat"]
    np.testing.assert_allclose(encode(plain, texts).vectors, encode(model, texts).vectors, atol=1e-5)


def test_broken_folder_is_a_one_line_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as caught:
        load_embedding_model(str(tmp_path))
    assert str(tmp_path) in str(caught.value) and "\n" not in str(caught.value)
