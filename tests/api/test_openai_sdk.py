"""The official openai SDK against a live server on the embedded default model (real text)."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from tests.api.conftest import LiveServer

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(smol_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=smol_server.url + "/v1", api_key="not-needed", max_retries=0)


def test_chat_answers_and_counts_usage(client: openai.OpenAI, smol_server: LiveServer) -> None:
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=30, temperature=0)
    choice = response.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert response.model == MODEL and response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    usage = response.usage
    assert usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 30
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    smol_server.wait_idle()


def test_streamed_chat_equals_whole_chat_and_reports_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=30, temperature=0)
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=30, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_option_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5, stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_n_gives_independent_choices(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, n=3, temperature=1.0, seed=7)
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert len({c.message.content for c in response.choices}) > 1
    assert 3 <= response.usage.completion_tokens <= 36


def test_n_streamed_covers_every_index(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, n=2, stream=True, seed=3))
    finished = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1]


def test_seed_reproduces_sampled_text(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story about a dragon."}],
                  max_tokens=25, temperature=1.0, top_p=0.95, seed=1234)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    other = client.chat.completions.create(**{**kwargs, "seed": 99}).choices[0].message.content
    assert first == second
    assert first != other


def test_stop_string_ends_the_answer_without_it(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=30, temperature=0).choices[0].message.content
    assert " is " in full
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=30, temperature=0, stop=[" is "])
    assert response.choices[0].message.content == full.split(" is ")[0]
    assert response.choices[0].finish_reason == "stop"


def test_length_finish_reason(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3, temperature=0)
    assert response.choices[0].finish_reason == "length" and response.usage.completion_tokens == 3


def test_logprobs_with_top_alternatives(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0, logprobs=True,
                                              top_logprobs=3)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert "".join(entry.token for entry in content) == response.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.token == entry.top_logprobs[0].token  # greedy picks the most likely token
        assert bytes(entry.bytes).decode() == entry.token


def test_penalties_change_sampling(client: openai.OpenAI) -> None:
    prompt = [{"role": "user", "content": "Repeat the word banana many times."}]
    plain = client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=30, temperature=0).choices[0].message.content
    penalised = client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=30, temperature=0,
                                               frequency_penalty=2.0, presence_penalty=2.0).choices[0].message.content
    assert plain != penalised


def test_logit_bias_forbids_a_token(client: openai.OpenAI, smol_server: LiveServer) -> None:
    tokenizer = smol_server.state.models.loaded(MODEL).tokenizer
    paris = tokenizer.encode(" Paris", add_special_tokens=False)[0]
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=30, temperature=0,
                                              logit_bias={str(paris): -100})
    assert paris not in tokenizer.encode(response.choices[0].message.content, add_special_tokens=False)


def test_legacy_completions(client: openai.OpenAI) -> None:
    response = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert response.object == "text_completion"
    assert "Paris" in response.choices[0].text
    assert response.usage.completion_tokens == 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == response.choices[0].text


def test_legacy_completions_batch_echo_and_logprobs(client: openai.OpenAI) -> None:
    prompts = ["The capital of France is", "One, two, three,"]
    response = client.completions.create(model=MODEL, prompt=prompts, max_tokens=4, temperature=0, n=2, echo=True, logprobs=2)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert response.choices[0].text.startswith(prompts[0]) and response.choices[2].text.startswith(prompts[1])
    assert response.choices[0].text == response.choices[1].text  # greedy: both samples agree
    logprobs = response.choices[2].logprobs
    assert len(logprobs.tokens) == 4 and len(logprobs.top_logprobs[0]) == 2
    assert logprobs.text_offset[0] == len(prompts[1])


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == [MODEL, "all-minilm-l6-v2"]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4")
    assert "available models" in str(caught.value)


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    texts = ["Machine learning is a subset of AI", "Deep learning uses neural networks", "Pizza is a delicious food"]
    as_float = client.embeddings.create(model="all-minilm-l6-v2", input=texts, encoding_format="float")
    as_base64 = client.embeddings.create(model="all-minilm-l6-v2", input=texts)  # the SDK asks for base64 and decodes
    assert [d.index for d in as_float.data] == [0, 1, 2]
    for a, b in zip(as_float.data, as_base64.data):
        assert len(a.embedding) == 384
        assert np.allclose(a.embedding, b.embedding, atol=1e-6)
        assert abs(np.linalg.norm(a.embedding) - 1) < 1e-4
    vectors = np.array([d.embedding for d in as_float.data])
    similar = vectors @ vectors.T
    assert similar[0, 1] > similar[0, 2]
    assert as_float.usage.prompt_tokens > 10


def test_embeddings_dimensions_and_token_input(client: openai.OpenAI, smol_server: LiveServer) -> None:
    short = client.embeddings.create(model="all-minilm-l6-v2", input="hello world", dimensions=64, encoding_format="float").data[0].embedding
    assert len(short) == 64 and abs(np.linalg.norm(short) - 1) < 1e-4
    full = client.embeddings.create(model="all-minilm-l6-v2", input="hello world", encoding_format="float").data[0].embedding
    ids = [7592, 2088]  # "hello world" in all-MiniLM-L6-v2's WordPiece vocabulary
    from_ids = client.embeddings.create(model="all-minilm-l6-v2", input=[ids], encoding_format="float").data[0].embedding
    assert np.allclose(full, from_ids, atol=1e-5)


def test_chat_errors_are_typed_by_the_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=3)
    assert "temperature" in str(caught.value)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="deepseek-ai/DeepSeek-R1-0528-Qwen3-8B", messages=QUESTION)
    assert missing.value.code == "model_not_found" and MODEL in str(missing.value)
    assert client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2).choices
