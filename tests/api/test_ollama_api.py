"""Ollama's API (/api/...) through the official ollama client, on live servers with real models."""

from __future__ import annotations

import datetime
import json
from typing import Any

import httpx
import jsonschema
import numpy as np
import ollama
import pytest

import labs
from tests.api.conftest import LiveServer

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 24}
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
    "required": ["city", "country"],
    "additionalProperties": False,
}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
                   "additionalProperties": False}}}


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
      city: The name of the city
    """
    return "sunny"


@pytest.fixture(scope="module")
def client(smol_server: LiveServer) -> ollama.Client:
    return ollama.Client(host=smol_server.url, timeout=300)


def ollama_error(response: httpx.Response, status: int) -> str:
    """Assert Ollama's error shape, {"error": "<message>"}, with the status; return the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def still_serves(client: ollama.Client) -> None:
    response = client.generate(model=MODEL, prompt="Hi", raw=True, options={"num_predict": 1})
    assert response.done and response.eval_count == 1


# ---------------------------------------------------------------------------------------------- models


def test_version_list_show_and_ps(client: ollama.Client, smol_server: LiveServer) -> None:
    with smol_server.client() as http:
        assert http.get("/api/version").json() == {"version": labs.__version__}
        assert http.post("/api/show", json={"name": MODEL}).status_code == 200  # the older spelling
    listed = {model.model: model for model in client.list().models}
    entry = listed[f"{MODEL}:latest"]
    assert entry.size > 10_000_000 and len(entry.digest) == 64 and isinstance(entry.modified_at, datetime.datetime)
    assert entry.details.format == "gguf" and entry.details.family == "llama"
    assert entry.details.parameter_size.endswith("M")
    served = smol_server.state.models.loaded(MODEL)
    shown = client.show(MODEL)
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == served.context_length
    assert shown.modelinfo["general.parameter_count"] > 100_000_000
    assert "im_start" in shown.template and "temperature 0.2" in shown.parameters
    running = {model.model: model for model in client.ps().models}[f"{MODEL}:latest"]
    assert running.size > 0 and running.context_length == served.context_length
    assert running.size_vram == (0 if served.loaded.placement.device == "cpu" else running.size)
    assert running.expires_at.year == 9999  # the default model stays loaded


def test_unloaded_alias_is_listed_from_its_files(tiny_server: LiveServer) -> None:
    client = ollama.Client(host=tiny_server.url)
    listed = {model.model: model for model in client.list().models}
    smol = listed["smol:latest"]  # an alias of the tiny server, never loaded by this test
    assert tiny_server.state.models.loaded("smol") is None
    assert smol.size > 10_000_000 and smol.details.format == "safetensors" and smol.details.family == "llama"
    shown = client.show("smol")
    assert shown.modelinfo["llama.context_length"] == 8192 and shown.details.parameter_size == ""
    assert [model.model for model in client.ps().models] == [tag for tag in listed if tag != "smol:latest"]
    assert tiny_server.state.models.loaded("smol") is None


# ---------------------------------------------------------------------------------------------- chat, generate


def test_chat_answers_with_the_same_greedy_text_as_openai(client: ollama.Client, smol_server: LiveServer) -> None:
    with smol_server.client() as http:
        openai_text = http.post("/v1/chat/completions", json={
            "model": MODEL, "messages": QUESTION, "max_tokens": 24, "temperature": 0}).json()["choices"][0]["message"]["content"]
    response = client.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    assert "Paris" in response.message.content and response.message.content == openai_text
    assert response.message.role == "assistant" and response.model == MODEL
    assert response.done and response.done_reason == "stop"
    assert response.prompt_eval_count > 5 and 0 < response.eval_count <= 24
    assert response.total_duration >= response.load_duration + response.prompt_eval_duration + response.eval_duration > 0
    datetime.datetime.fromisoformat(response.created_at)
    generated = client.generate(model=MODEL, prompt=QUESTION[0]["content"], options=GREEDY)
    assert generated.response == openai_text and generated.done and generated.eval_count == response.eval_count
    smol_server.wait_idle()


def test_streams_equal_the_whole_answer(client: ollama.Client, smol_server: LiveServer) -> None:
    whole = client.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    parts = list(client.chat(model=MODEL, messages=QUESTION, options=GREEDY, stream=True))
    assert len(parts) > 3 and all(not part.done for part in parts[:-1])
    assert "".join(part.message.content for part in parts) == whole.message.content
    last = parts[-1]
    assert last.done and last.done_reason == whole.done_reason and last.message.content == ""
    assert last.eval_count == whole.eval_count and last.prompt_eval_count == whole.prompt_eval_count
    streamed = list(client.generate(model=MODEL, prompt=QUESTION[0]["content"], options=GREEDY, stream=True))
    assert "".join(part.response for part in streamed) == whole.message.content and streamed[-1].done
    with smol_server.client() as http, http.stream("POST", "/api/chat", json={
            "model": MODEL, "messages": QUESTION, "options": {"num_predict": 2}}) as response:  # stream is the default
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    smol_server.wait_idle()


def test_raw_generate_continues_the_prompt_and_stops_at_num_predict(client: ollama.Client) -> None:
    response = client.generate(model=MODEL, prompt="The capital of France is", raw=True,
                               options={"temperature": 0, "num_predict": 5, "num_ctx": 4096, "mirostat": 0})
    assert response.done_reason == "length" and response.eval_count == 5 and response.response
    assert response.prompt_eval_count == 5  # the prompt's own tokens, no chat template around them


def test_empty_prompt_and_messages_load_the_model(client: ollama.Client, smol_server: LiveServer) -> None:
    assert client.generate(model=MODEL).done_reason == "load"
    assert client.chat(model=MODEL, messages=[]).done_reason == "load"
    unload = client.generate(model=MODEL, keep_alive=0)
    assert unload.done and unload.done_reason == "unload"
    assert smol_server.state.models.loaded(MODEL) is not None  # the default model stays for the other clients
    still_serves(client)


def test_format_schema_output_parses_and_validates(client: ollama.Client) -> None:
    response = client.chat(model=MODEL, messages=[{"role": "user", "content": "Describe Paris as JSON."}],
                           format=CITY, options={"temperature": 0, "num_predict": 40})
    assert response.done_reason == "stop"
    jsonschema.validate(json.loads(response.message.content), CITY)
    generated = client.generate(model=MODEL, prompt="Describe Paris.", format="json",
                                options={"temperature": 0, "num_predict": 4})
    assert generated.response.startswith("{")  # held to a JSON object from its first token


def test_tool_calls_round_trip_through_the_client(client: ollama.Client, smol_server: LiveServer) -> None:
    ask = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    # tool_choice is labs' extension (Ollama has none): this small model does not call tools on its own
    body = httpx.post(smol_server.url + "/api/chat", timeout=300, json={
        "model": MODEL, "messages": ask, "tools": [WEATHER], "tool_choice": "required", "stream": False,
        "options": {"temperature": 0, "num_predict": 30}}).json()
    response = ollama.ChatResponse.model_validate(body)
    assert response.done_reason == "stop" and response.message.content == ""
    (call,) = response.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(call.function.arguments["city"], str)
    history = [*ask, response.message, {"role": "tool", "tool_name": "get_weather", "content": "sunny, 18 degrees"}]
    final = client.chat(model=MODEL, messages=history, tools=[get_weather], options={"temperature": 0, "num_predict": 8})
    assert final.done and (final.message.content or final.message.tool_calls)
    smol_server.wait_idle()


def test_model_latest_naming_and_unknown_tags(client: ollama.Client) -> None:
    response = client.chat(model=f"{MODEL}:latest", messages=QUESTION, options={"num_predict": 2})
    assert response.model == f"{MODEL}:latest"  # the name echoed as the client sent it
    for name in ("nope", "nope:latest", f"{MODEL}:7b"):
        with pytest.raises(ollama.ResponseError) as raised:
            client.chat(model=name, messages=QUESTION)
        assert raised.value.status_code == 404 and raised.value.error == f"model '{name}' not found"


# ---------------------------------------------------------------------------------------------- embeddings


def test_embed_equals_openai_embeddings(client: ollama.Client, smol_server: LiveServer) -> None:
    model = smol_server.state.embeddings.model_id
    texts = ["The cat sat on the mat.", "Paris is the capital of France."]
    response = client.embed(model=model, input=texts)
    with smol_server.client() as http:
        data = http.post("/v1/embeddings", json={"model": model, "input": texts}).json()["data"]
    assert [list(vector) for vector in response.embeddings] == [item["embedding"] for item in data]
    assert response.model == model and response.prompt_eval_count > 10 and response.total_duration > 0
    alone = client.embed(model=f"{model}:latest", input=texts[0]).embeddings[0]  # a batch of one pads differently
    assert np.allclose(alone, data[0]["embedding"], atol=1e-5)
    assert len(client.embed(model=model, input=texts[0], dimensions=8).embeddings[0]) == 8
    assert np.allclose(client.embeddings(model=model, prompt=texts[1]).embedding, data[1]["embedding"], atol=1e-5)
    assert client.embed(model=model, input=[]).embeddings == []


# ---------------------------------------------------------------------------------------------- errors

SURROGATE_CHAT = '{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}], "stream": false}' % MODEL


@pytest.mark.parametrize(("path", "body", "status", "fragment"), [
    ("/api/chat", {"model": "nope", "messages": QUESTION}, 404, "model 'nope' not found"),
    ("/api/generate", {"model": "nope:latest", "prompt": "hi"}, 404, "model 'nope:latest' not found"),
    ("/api/show", {"model": "nope"}, 404, "model 'nope' not found"),
    ("/api/embed", {"model": "nope", "input": "hi"}, 404, "model 'nope' not found"),
    ("/api/chat", {"messages": QUESTION}, 400, "model is required"),
    ("/api/chat", {"model": 5, "messages": QUESTION}, 400, "model: Input should be a valid string"),
    ("/api/chat", {"model": MODEL, "messages": "hi"}, 400, "messages"),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ("/api/chat", {"model": MODEL, "messages": QUESTION, "options": {"temperature": "hot"}}, 400,
     "options.temperature: Input should be a valid number"),
    ("/api/chat", {"model": MODEL, "messages": QUESTION, "options": {"temperature": 5}}, 400, "temperature"),
    ("/api/chat", {"model": MODEL, "messages": QUESTION, "format": "xml"}, 400, 'format must be "json"'),
    ("/api/chat", {"model": MODEL, "messages": QUESTION, "think": "very"}, 400, "think must be"),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}, 400,
     "messages[0].images: images are not supported"),
    ("/api/generate", {"model": MODEL, "prompt": "hi", "images": ["aGk="]}, 400, "images are not supported"),
    ("/api/generate", {"model": MODEL, "prompt": "hi", "context": [1, 2]}, 400, "context"),
    ("/api/chat", {"model": "all-minilm-l6-v2", "messages": QUESTION}, 400, "embedding model"),
    ("/api/embed", {"model": MODEL, "input": "hi"}, 400, "does not support embeddings"),
    ("/api/embed", {"model": "all-minilm-l6-v2", "input": 5}, 400, "input"),
    ("/api/chat", "{not json", 400, "not valid JSON"),
    ("/api/chat", SURROGATE_CHAT, 400, "invalid Unicode"),
    ("/api/generate", '{"model": "%s", "prompt": "\\ud800", "stream": false}' % MODEL, 400, "invalid Unicode"),
    ("/api/embed", '{"model": "all-minilm-l6-v2", "input": ["\\ud800"]}', 400, "invalid Unicode"),
    ("/api/chat", '{"model": "\\ud800", "messages": []}', 400, "invalid Unicode"),
    ("/api/pull", {"model": MODEL}, 404, "no route"),
])
def test_bad_requests_get_ollamas_error_shape(smol_server: LiveServer, client: ollama.Client, path: str,
                                              body: Any, status: int, fragment: str) -> None:
    with smol_server.client() as http:
        if isinstance(body, str):
            response = http.post(path, content=body, headers={"Content-Type": "application/json"})
        else:
            response = http.post(path, json=body)
    assert fragment in ollama_error(response, status)
    still_serves(client)


def test_a_stream_that_cannot_start_fails_with_a_status(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        list(client.chat(model=MODEL, messages=QUESTION, options={"temperature": 5}, stream=True))
    assert raised.value.status_code == 400 and "temperature" in raised.value.error
    still_serves(client)
