"""Function calling through the openai SDK on the default model (a template without tools: the fallback format)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.api.conftest import LiveServer, error_of

MODEL = "smollm2-135m-instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Current time in a city.",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                                                        "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def client(smol_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=smol_server.url + "/v1", api_key="x", max_retries=0)


def _check_call(call, name: str, schema: dict) -> dict:  # noqa: ANN001
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == name
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, schema)
    return arguments


def test_required_call_is_well_formed(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                              max_tokens=80, temperature=0)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    schema = {WEATHER["function"]["name"]: WEATHER, TIME["function"]["name"]: TIME}[call.function.name]["function"]["parameters"]
    _check_call(call, call.function.name, schema)


def test_named_function_and_streamed_call(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    response = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=named,
                                              max_tokens=80, temperature=0)
    expected = _check_call(response.choices[0].message.tool_calls[0], "get_time", TIME["function"]["parameters"])
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=named,
                                                 max_tokens=80, temperature=0, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_time"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == expected
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_full_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                           max_tokens=80, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    messages = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "sunny"})}]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none",
                                           max_tokens=40, temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


def test_auto_parses_tool_call_blocks_or_answers_in_text(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=60, temperature=0)
    choice = response.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        _check_call(choice.message.tool_calls[0], "get_weather", {"type": "object"})
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize(("body", "param", "fragment"), [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "not among the tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", "letters, digits"),
    ({"tools": [{"type": "retrieval"}]}, "tools", "tools[0] must be"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice", "cannot be combined"),
])
def test_bad_tool_requests_are_400(smol_server: LiveServer, body: dict, param: str, fragment: str) -> None:
    with smol_server.client() as client:
        error = error_of(client.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 5, **body}), 400)
        assert error["param"] == param and fragment in error["message"], error
