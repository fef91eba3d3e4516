"""The official anthropic SDK against live servers: /v1/messages, its stream, tools, thinking and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.api.conftest import LiveServer, start_server
from tests.api.test_rag_api import QUESTION as DATA_QUESTION
from tests.conftest import build_reasoning_model

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def client(smol_server: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=smol_server.url, api_key="not-needed", max_retries=0)


def greedy(**request: Any) -> dict[str, Any]:
    """SDK arguments at temperature 0 (this SDK no longer has a temperature argument: it goes as extra body)."""
    return {"model": MODEL, "max_tokens": 30, "messages": QUESTION, "extra_body": {"temperature": 0}, **request}


def raw(request: dict[str, Any]) -> dict[str, Any]:
    """SDK arguments as the JSON body they send."""
    return {**{k: v for k, v in request.items() if k != "extra_body"}, **request.get("extra_body", {})}


def sdk(server: LiveServer, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, max_retries=0, **{"api_key": "x", **kwargs})


def sse_events(server: LiveServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of a raw stream, each data's type checked against its event name."""
    events = []
    with server.client() as http, http.stream("POST", "/v1/messages", json={**body, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert data["type"] == name, (name, data)
                events.append((name, data))
    return events


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    """Assert Anthropic's error body with the given status and type; return the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


def text_of(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


# ---------------------------------------------------------------------- answers


def test_create_answers_with_a_message(client: anthropic.Anthropic, smol_server: LiveServer) -> None:
    message = client.messages.create(**greedy(metadata={"user_id": "someone"}))
    assert "Paris" in text_of(message)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL and message.stop_reason == "end_turn" and message.stop_sequence is None
    assert [block.type for block in message.content] == ["text"]
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens > 5
    assert 0 < message.usage.output_tokens <= 30
    with smol_server.client() as http:  # the raw body has exactly Anthropic's fields
        body = http.post("/v1/messages", json=raw(greedy())).json()
    assert set(body) == {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}
    assert anthropic.types.Message.model_validate(body).content[0].text == text_of(message)
    smol_server.wait_idle()


def test_stream_equals_create_and_sends_the_events_in_order(client: anthropic.Anthropic, smol_server: LiveServer) -> None:
    request = greedy()
    whole = client.messages.create(**request)
    with client.messages.stream(**request) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed_text == text_of(whole) == text_of(final)
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == \
        whole.usage.input_tokens + whole.usage.cache_read_input_tokens
    events = sse_events(smol_server, raw(request))
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["id"].startswith("msg_")
    assert events[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert all(data["delta"]["type"] == "text_delta" for name, data in events if name == "content_block_delta")
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    smol_server.wait_idle()


def test_stop_reasons(client: anthropic.Anthropic, smol_server: LiveServer) -> None:
    whole = text_of(client.messages.create(**greedy()))
    word = "Paris"
    stopped = client.messages.create(**greedy(stop_sequences=["zzz", word]))
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert text_of(stopped) == whole[:whole.index(word)]
    with client.messages.stream(**greedy(stop_sequences=[word])) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == word
    cut = client.messages.create(**greedy(max_tokens=2))
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    smol_server.wait_idle()


def test_same_greedy_text_as_chat_completions(client: anthropic.Anthropic, smol_server: LiveServer) -> None:
    system = "You are a geography teacher. Answer in one sentence."
    message = client.messages.create(**greedy(max_tokens=24, system=[{"type": "text", "text": system}]))
    with smol_server.client() as http:
        chat = http.post("/v1/chat/completions", json={
            "model": MODEL, "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "system", "content": system}, *QUESTION]}).json()
    assert text_of(message) == chat["choices"][0]["message"]["content"]
    assert message.usage.output_tokens == chat["usage"]["completion_tokens"]
    blocks = client.messages.create(**greedy(max_tokens=24, system=system, messages=[
        {"role": "user", "content": [{"type": "text", "text": QUESTION[0]["content"]}]}]))
    assert text_of(blocks) == text_of(message)


def test_count_tokens_equals_the_prompt_a_message_reports(client: anthropic.Anthropic) -> None:
    request: dict[str, Any] = {"model": MODEL, "messages": ASK_WEATHER, "system": "Be brief.", "tools": [WEATHER]}
    counted = client.messages.count_tokens(**request).input_tokens
    message = client.messages.create(**greedy(max_tokens=5, **request))
    assert counted == message.usage.input_tokens + message.usage.cache_read_input_tokens
    assert client.messages.count_tokens(model=MODEL, messages=ASK_WEATHER, system="Be brief.").input_tokens < counted
    assert client.messages.count_tokens(model=MODEL, messages=ASK_WEATHER).input_tokens < counted


def test_output_format_constrains_the_text(client: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}}, "required": ["capital"],
              "additionalProperties": False}
    message = client.messages.create(**greedy(max_tokens=40, output_config={
        "format": {"type": "json_schema", "schema": schema}}))
    jsonschema.validate(json.loads(text_of(message)), schema)


# ---------------------------------------------------------------------- tools


def test_tool_use_and_tool_result_round_trip(client: anthropic.Anthropic, smol_server: LiveServer) -> None:
    forced = {"type": "tool", "name": "get_weather"}
    ask = greedy(max_tokens=80, messages=ASK_WEATHER, tools=[WEATHER], tool_choice=forced)
    first = client.messages.create(**ask)
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert call.type == "tool_use" and call.id.startswith("toolu_") and call.name == "get_weather"
    jsonschema.validate(call.input, WEATHER["input_schema"])
    with client.messages.stream(**ask) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use" and streamed.content[-1].input == call.input
    answered = client.messages.create(**greedy(max_tokens=16, tools=[WEATHER], tool_choice={"type": "none"}, messages=[
        *ASK_WEATHER, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": [{"type": "text", "text": '{"temperature": 18, "sky": "sunny"}'}]}]}]))
    assert answered.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in answered.content] == ["text"] and text_of(answered).strip()
    smol_server.wait_idle()


def test_any_tool_choice_calls_one_of_the_tools(client: anthropic.Anthropic) -> None:
    clock = {"name": "get_time", "description": "Current time in a city.",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                              "required": ["city"], "additionalProperties": False}}
    message = client.messages.create(**greedy(max_tokens=80, messages=ASK_WEATHER, tools=[WEATHER, clock],
                                              tool_choice={"type": "any"}))
    call = message.content[-1]
    assert message.stop_reason == "tool_use" and call.type == "tool_use"
    jsonschema.validate(call.input, {"get_weather": WEATHER, "get_time": clock}[call.name]["input_schema"])


# ---------------------------------------------------------------------- thinking and data answers


@pytest.fixture(scope="module")
def still_thinking_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a reasoning model that never stops thinking, deterministically.

    The generation prompt ends in <think>; the new tags' (tied) embedding rows are zero, so their
    logit is 0 and never the largest: greedy output stays inside the reasoning, and it is words
    (the random model repeats one), not the newlines it repeats after a prompt ending in a newline.
    """
    return build_reasoning_model(tiny_model_dir, tmp_path_factory.mktemp("still-thinking-model"), "<think>",
                                 silent_tags=True)


def test_thinking_blocks_from_a_reasoning_model(tiny_settings_factory: Any, still_thinking_model_dir: Path) -> None:
    server = start_server(tiny_settings_factory(LABS_MODEL=str(still_thinking_model_dir), LABS_PRELOAD_ON_START="true"))
    try:
        hi = [{"role": "user", "content": "Hi"}]
        with server.client() as http:
            chat = http.post("/v1/chat/completions", json={"messages": hi, "max_tokens": 4, "temperature": 0,
                                                           "use_rag": False}).json()["choices"][0]["message"]
        assert chat["reasoning_content"].strip() and chat["content"] == ""
        request = greedy(model=server.state.models.default_id, max_tokens=4, messages=hi,
                         thinking={"type": "enabled", "budget_tokens": 1024})
        message = sdk(server).messages.create(**request)
        assert [block.type for block in message.content] == ["thinking"] and message.stop_reason == "max_tokens"
        thinking = message.content[0]
        assert thinking.thinking == chat["reasoning_content"]
        assert isinstance(thinking.signature, str) and thinking.signature
        with sdk(server).messages.stream(**request) as stream:
            streamed = stream.get_final_message()
        assert [block.to_dict() for block in streamed.content] == [block.to_dict() for block in message.content]
        events = sse_events(server, raw(request))
        names = [name for name, _ in events]
        assert names[:3] == ["message_start", "ping", "content_block_start"]
        assert events[2][1]["content_block"]["type"] == "thinking"
        assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
        deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
        assert {d["type"] for d in deltas[:-1]} == {"thinking_delta"}
        assert "".join(d["thinking"] for d in deltas[:-1]) == thinking.thinking
        assert deltas[-1] == {"type": "signature_delta", "signature": thinking.signature}
        plain = sdk(server).messages.create(**{**request, "thinking": {"type": "disabled"}})
        assert [block.type for block in plain.content] == ["text"]  # thinking off: the thoughts stay in the text
        assert thinking.thinking in text_of(plain)
        server.wait_idle()
    finally:
        server.stop()


def test_data_answers_render_as_a_message(tiny_server: LiveServer) -> None:
    request: dict[str, Any] = {"model": tiny_server.state.models.default_id, "max_tokens": 200,
                               "messages": [{"role": "user", "content": DATA_QUESTION}]}
    message = sdk(tiny_server).messages.create(**request)
    assert message.stop_reason == "end_turn" and text_of(message)
    assert message.model_extra["rag"]["source"] == "transactions"
    events = sse_events(tiny_server, request)
    assert events[0][1]["message"]["rag"]["source"] == "transactions"
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == text_of(message)
    assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]


def test_a_stream_the_client_leaves_frees_the_engine(tiny_server: LiveServer) -> None:
    body = {"max_tokens": 150, "stream": True, "messages": HI, "temperature": 1.0}
    with tiny_server.client() as http, http.stream("POST", "/v1/messages", json=body) as response:
        for line in response.iter_lines():
            if line == "event: content_block_delta":
                break
    tiny_server.wait_idle()
    still_serves(tiny_server)


# ---------------------------------------------------------------------- auth and errors


def test_x_api_key_is_required_when_the_server_sets_one(tiny_settings_factory: Any) -> None:
    server = start_server(tiny_settings_factory(LABS_API_KEY="sekret", LABS_PRELOAD_ON_START="true"))
    try:
        body = {"max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]}
        with server.client() as http:
            anthropic_error(http.post("/v1/messages", json=body), 401, "authentication_error")
            anthropic_error(http.post("/v1/messages/count_tokens", json=body), 401, "authentication_error")
        with pytest.raises(anthropic.AuthenticationError) as wrong:
            sdk(server, api_key="wrong").messages.create(model=server.state.models.default_id, **body)
        assert wrong.value.body["error"]["type"] == "authentication_error"
        message = sdk(server, api_key="sekret").messages.create(model=server.state.models.default_id, **body)
        assert message.usage.output_tokens <= 3
        bearer = sdk(server, api_key=None, auth_token="sekret")  # Authorization: Bearer works too
        assert bearer.messages.count_tokens(model=server.state.models.default_id, messages=body["messages"]).input_tokens > 0
    finally:
        server.stop()


HI = [{"role": "user", "content": "Hi"}]
BAD_BODIES = [
    ({"messages": HI}, "max_tokens is required"),
    ({"max_tokens": "ten", "messages": HI}, "max_tokens"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"max_tokens": 4, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"max_tokens": 4, "messages": []}, "messages"),
    ({"max_tokens": 4, "messages": HI, "temperature": "hot"}, "temperature"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]},
     "'image' are not supported"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                                  "content": [{"type": "image"}]}]}]}, "'image'"),
    ({"max_tokens": 4, "messages": [*HI, {"role": "assistant", "content": "Hello"}]}, "prefill"),
    ({"max_tokens": 4, "messages": HI, "system": [{"type": "image"}]}, "system.0"),
    ({"max_tokens": 4, "messages": HI, "tools": [{"name": "f"}]}, "tools.0.input_schema"),
    ({"max_tokens": 4, "messages": HI, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
    ({"max_tokens": 4, "messages": HI, "tool_choice": {"type": "whatever"}}, "tool_choice.type"),
    ({"max_tokens": 4, "messages": HI, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "'nope'"),
    ({"max_tokens": 4, "messages": HI, "thinking": {"type": "sometimes"}}, "thinking.type"),
    ({"max_tokens": 4, "messages": HI, "output_config": {"format": {"type": "xml"}}}, "output_config.format"),
    ({"max_tokens": 201, "messages": HI}, "max_tokens must be at most 200"),
    ({"max_tokens": 0, "messages": HI}, "max_tokens must be >= 1"),
    ({"max_tokens": 4, "messages": HI, "top_p": 0}, "top_p"),
]


def still_serves(server: LiveServer) -> None:
    message = sdk(server).messages.create(model=server.state.models.default_id, max_tokens=3, messages=HI)
    assert message.type == "message" and message.usage.output_tokens > 0


@pytest.mark.parametrize(("body", "fragment"), BAD_BODIES)
def test_bad_requests_are_400_in_anthropic_shape(tiny_server: LiveServer, body: dict[str, Any], fragment: str) -> None:
    with tiny_server.client() as http:
        message = anthropic_error(http.post("/v1/messages", json=body), 400, "invalid_request_error")
    assert fragment in message, message
    still_serves(tiny_server)


def test_raw_bodies_that_are_no_text_are_400(tiny_server: LiveServer) -> None:
    surrogate = '{"max_tokens": 4, "messages": [{"role": "user", "content": "\\ud800"}]}'
    headers = {"content-type": "application/json"}
    with tiny_server.client() as http:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            message = anthropic_error(http.post(path, content=surrogate, headers=headers), 400, "invalid_request_error")
            assert "invalid Unicode" in message
        blocks = surrogate.replace('"\\ud800"', '[{"type": "text", "text": "a\\ud800"}]')
        anthropic_error(http.post("/v1/messages", content=blocks, headers=headers), 400, "invalid_request_error")
        message = anthropic_error(http.post("/v1/messages", content='{"max_tokens": 4,', headers=headers), 400,
                                  "invalid_request_error")
        assert "not valid JSON" in message
    still_serves(tiny_server)


def test_unknown_models_and_routes_are_404_not_found_error(tiny_server: LiveServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk(tiny_server).messages.create(model="no-such-model", max_tokens=4, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error" and "no-such-model" in missing.value.message
    with pytest.raises(anthropic.NotFoundError):
        sdk(tiny_server).messages.count_tokens(model="no-such-model", messages=HI)
    with tiny_server.client() as http:
        anthropic_error(http.post("/v1/messages/nope", json={}), 404, "not_found_error")
    with pytest.raises(anthropic.BadRequestError) as bad:  # the SDK raises Anthropic's typed errors
        sdk(tiny_server).messages.create(model=tiny_server.state.models.default_id, max_tokens=4, messages=HI,
                                         extra_body={"top_k": -5})
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    still_serves(tiny_server)
