"""The OpenAI Responses API through the official openai SDK and the openai-agents SDK, on live servers.

Every response object the server sends is validated against the SDK's own `Response` type; streams
go through `client.responses.stream`, whose helper checks the event sequence strictly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.responses import Response

from tests.api.conftest import LiveServer, error_of, start_server

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city.", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                          "required": ["city"], "additionalProperties": False}}
TIME = {"type": "function", "name": "get_time", "description": "Current time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                       "required": ["city"], "additionalProperties": False}}
ASK_WEATHER = "What is the weather like in Paris today?"


@pytest.fixture(scope="module")
def client(smol_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=smol_server.url + "/v1", api_key="x", max_retries=0)


def _create(client: openai.OpenAI, **kwargs: Any) -> Response:
    """responses.create, with the wire JSON validated strictly against the SDK's type."""
    raw = client.responses.with_raw_response.create(**kwargs)
    body = json.loads(raw.text)
    response = Response.model_validate(body)
    assert body["object"] == "response" and body["id"].startswith("resp_") and body["error"] is None
    return response


def _raw_events(server: LiveServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The stream's (event name, data) pairs, read off the wire."""
    events, name = [], None
    with server.client() as http, http.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert data["type"] == name
                events.append((name, data))
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    return events


# ------------------------------------------------------------------ answers


def test_create_answers_and_counts_usage(client: openai.OpenAI, smol_server: LiveServer) -> None:
    response = _create(client, model=MODEL, input=QUESTION, max_output_tokens=30, temperature=0)
    assert "Paris" in response.output_text
    assert response.status == "completed" and response.incomplete_details is None and response.model == MODEL
    [message] = response.output
    assert message.type == "message" and message.id.startswith("msg_") and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    usage = response.usage
    assert usage.input_tokens > 5 and 0 < usage.output_tokens <= 30
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert response.temperature == 0 and response.max_output_tokens == 30 and response.store is True
    assert response.tools == [] and response.tool_choice == "auto" and response.text.format.type == "text"
    smol_server.wait_idle()


def test_same_greedy_text_as_chat_completions(client: openai.OpenAI) -> None:
    system = "You are a geography teacher."
    chat = client.chat.completions.create(model=MODEL, max_tokens=25, temperature=0, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": QUESTION}])
    as_items = _create(client, model=MODEL, max_output_tokens=25, temperature=0, instructions=system,
                       input=[{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}])
    assert as_items.output_text == chat.choices[0].message.content
    assert as_items.instructions == system
    assert as_items.usage.input_tokens == chat.usage.prompt_tokens


def test_stream_gives_the_same_text_and_the_final_response(client: openai.OpenAI, smol_server: LiveServer) -> None:
    whole = _create(client, model=MODEL, input=QUESTION, max_output_tokens=30, temperature=0)
    with client.responses.stream(model=MODEL, input=QUESTION, max_output_tokens=30, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert "".join(event.delta for event in deltas) == whole.output_text == final.output_text
    assert {(event.item_id, event.output_index, event.content_index) for event in deltas} == {(final.output[0].id, 0, 0)}
    assert final.usage.output_tokens == whole.usage.output_tokens and final.status == "completed"
    smol_server.wait_idle()
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == final.output_text and stored.id == final.id


def test_length_stop_is_incomplete(client: openai.OpenAI, smol_server: LiveServer) -> None:
    response = _create(client, model=MODEL, input=QUESTION, max_output_tokens=3, temperature=0)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3 and response.output[0].status == "incomplete"
    events = _raw_events(smol_server, {"model": MODEL, "input": QUESTION, "max_output_tokens": 3, "temperature": 0})
    name, last = events[-1]
    assert name == "response.incomplete"
    final = Response.model_validate(last["response"])
    assert final.status == "incomplete" and final.output_text == response.output_text
    smol_server.wait_idle()


# ------------------------------------------------------------------ tools


def test_required_call_then_its_output_gives_an_answer(client: openai.OpenAI) -> None:
    first = _create(client, model=MODEL, input=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice="required",
                    max_output_tokens=60, temperature=0)
    [call] = first.output
    assert call.type == "function_call" and call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert call.status == "completed" and call.name in ("get_weather", "get_time")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    assert first.tools[0].name == "get_weather" and first.tool_choice == "required"
    items = [{"role": "user", "content": ASK_WEATHER}, *[item.model_dump(exclude_none=True) for item in first.output],
             {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"sky": "sunny"})}]
    final = _create(client, model=MODEL, input=items, tools=[WEATHER, TIME], tool_choice="none",
                    max_output_tokens=30, temperature=0)
    assert final.output[0].type == "message" and final.output_text and final.status in ("completed", "incomplete")


def test_named_call_streams_its_arguments(client: openai.OpenAI, smol_server: LiveServer) -> None:
    named = {"type": "function", "name": "get_time"}
    whole = _create(client, model=MODEL, input=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice=named,
                    max_output_tokens=60, temperature=0)
    assert whole.output[0].name == "get_time" and whole.tool_choice.name == "get_time"
    with client.responses.stream(model=MODEL, input=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice=named,
                                 max_output_tokens=60, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    [call] = final.output
    assert call.type == "function_call" and call.name == "get_time"
    assert json.loads(call.arguments) == json.loads(whole.output[0].arguments)
    smol_server.wait_idle()


# ------------------------------------------------------------------ stored conversations


def test_previous_response_id_continues_and_the_store_is_served(client: openai.OpenAI, smol_server: LiveServer) -> None:
    first = _create(client, model=MODEL, input="My name is Ada.", instructions="Be brief.", max_output_tokens=12,
                    temperature=0)
    second = _create(client, model=MODEL, input="What is my name?", previous_response_id=first.id,
                     max_output_tokens=12, temperature=0)
    alone = _create(client, model=MODEL, input="What is my name?", max_output_tokens=12, temperature=0, store=False)
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > alone.usage.input_tokens
    items = client.responses.input_items.list(second.id, order="asc")
    texts = [part.text for item in items.data for part in item.content]
    assert texts == ["My name is Ada.", first.output_text, "What is my name?"]  # instructions are not carried
    assert [item.id for item in client.responses.input_items.list(second.id, limit=1).data] == [items.data[-1].id]
    assert client.responses.retrieve(first.id).model_dump() == first.model_dump()
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(alone.id)  # store=False
    with smol_server.client() as http:
        deleted = http.delete(f"/v1/responses/{first.id}")
        assert deleted.json() == {"id": first.id, "object": "response.deleted", "deleted": True}
        error_of(http.get(f"/v1/responses/{first.id}"), 404)
        error_of(http.delete(f"/v1/responses/{first.id}"), 404)
        error_of(http.get("/v1/responses/..%2F..%2Fetc%2Fpasswd"), 404)
    again = _create(client, model=MODEL, input="And again?", previous_response_id=second.id, max_output_tokens=5,
                    temperature=0)
    assert again.usage.input_tokens > second.usage.input_tokens  # the second keeps its own copy of the history


def test_stored_responses_survive_a_restart(tiny_settings_factory: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    body = {"input": "Hello", "max_output_tokens": 4, "temperature": 0}
    server = start_server(tiny_settings_factory(LABS_HOME=str(home)))
    try:
        with server.client() as http:
            first = http.post("/v1/responses", json=body).json()
    finally:
        server.stop()
    assert sorted(p.name for p in (home / "responses").iterdir()) == [f"{first['id']}.json"]  # no temporary left
    server = start_server(tiny_settings_factory(LABS_HOME=str(home)))
    try:
        with server.client() as http:
            assert http.get(f"/v1/responses/{first['id']}").json() == first
            second = http.post("/v1/responses", json={**body, "previous_response_id": first["id"]}).json()
            Response.model_validate(second)
            assert second["usage"]["input_tokens"] > first["usage"]["input_tokens"]
    finally:
        server.stop()


# ------------------------------------------------------------------ structured output


def test_json_schema_format_parses_and_validates(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                               "country": {"type": "string", "maxLength": 30}},
              "required": ["city", "country"], "additionalProperties": False}
    fmt = {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}
    response = _create(client, model=MODEL, input=QUESTION, text={"format": fmt}, max_output_tokens=60, temperature=0)
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text.format.name == "capital"
    loose = _create(client, model=MODEL, input=QUESTION + " Answer in JSON.", text={"format": {"type": "json_object"}},
                    max_output_tokens=60, temperature=0)
    assert isinstance(json.loads(loose.output_text), dict)


# ------------------------------------------------------------------ the Agents SDK


def _answer_after_one_tool_hooks() -> Any:
    import agents

    class AnswerAfterOneTool(agents.AgentHooks):
        """After the tool has run, the next turn must answer in text (tool_choice "none").

        The SDK's own reset hands the choice back to the model ("auto"), and whether a 135M model
        then calls the tool again depends on the CPU's arithmetic: the test is about the protocol
        (a call, its output sent back, an answer), not about the model's judgement."""

        async def on_tool_end(self, context: Any, agent: Any, tool: Any, result: str) -> None:
            agent.reset_tool_choice = False
            agent.model_settings = dataclasses.replace(agent.model_settings, tool_choice="none")

    return AnswerAfterOneTool()


def _agents_run(server: LiveServer, kind: str, *, with_tool: bool) -> tuple[Any, list[str]]:
    import agents

    agents.set_tracing_disabled(True)
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"It is sunny in {city}."

    async def run() -> Any:
        async_client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        model_class = agents.OpenAIResponsesModel if kind == "responses" else agents.OpenAIChatCompletionsModel
        settings = agents.ModelSettings(temperature=0, max_tokens=40, tool_choice="required" if with_tool else None)
        agent = agents.Agent(name="helper", model=model_class(MODEL, async_client),
                             tools=[get_weather] if with_tool else [], model_settings=settings,
                             hooks=_answer_after_one_tool_hooks() if with_tool else None)
        try:
            return await agents.Runner.run(agent, ASK_WEATHER if with_tool else QUESTION, max_turns=4)
        finally:
            await async_client.close()

    return asyncio.run(run()), calls


@pytest.mark.parametrize("kind", ["responses", "chat_completions"])
def test_agents_sdk_answers(smol_server: LiveServer, kind: str) -> None:
    result, _ = _agents_run(smol_server, kind, with_tool=False)
    assert "Paris" in result.final_output


@pytest.mark.parametrize("kind", ["responses", "chat_completions"])
def test_agents_sdk_calls_a_function_tool(smol_server: LiveServer, kind: str) -> None:
    result, calls = _agents_run(smol_server, kind, with_tool=True)
    assert len(calls) == 1 and isinstance(calls[0], str)
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"] and kinds[-1] == "message_output_item", kinds
    assert isinstance(result.final_output, str) and result.final_output


# ------------------------------------------------------------------ the user's data, reasoning models


def test_data_answers_render_as_a_message(tiny_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0)
    question = "What was my largest expense?"
    model = tiny_server.state.models.default_id
    response = _create(client, model=model, input=question)
    assert "$" in response.output_text and response.model_extra["rag"]["source"] == "transactions"
    with client.responses.stream(model=model, input=question) as stream:
        final = stream.get_final_response()
    assert final.output_text == response.output_text and final.output[0].type == "message"


def test_reasoning_models_give_a_reasoning_item(tiny_settings_factory: Any, thinking_model_dir: Path) -> None:
    server = start_server(tiny_settings_factory(LABS_MODEL=str(thinking_model_dir), LABS_PRELOAD_ON_START="true"))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        word = server.state.models.loaded(server.state.models.default_id).tokenizer.encode(" maybe",
                                                                                            add_special_tokens=False)[0]
        body = {"model": server.state.models.default_id, "input": "Hi", "max_output_tokens": 3, "temperature": 0,
                "logit_bias": {str(word): 100}}  # labs' extension, as in chat: steer the random model to a word
        response = _create(client, **{k: v for k, v in body.items() if k != "logit_bias"}, extra_body=body)
        reasoning = response.output[0]
        assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
        assert reasoning.content[0].text == "maybe maybe maybe"
        assert response.output[1].type == "message" and response.output_text == "" and response.status == "incomplete"
        events = _raw_events(server, body)
        kinds = [name for name, _ in events]
        assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
        thought = "".join(data["delta"] for name, data in events if name == "response.reasoning_text.delta")
        assert thought == reasoning.content[0].text
        assert "response.reasoning_text.done" in kinds and kinds[-1] == "response.incomplete"
        Response.model_validate(events[-1][1]["response"])
        server.wait_idle()
    finally:
        server.stop()


# ------------------------------------------------------------------ bad requests


BAD_BODIES = [
    ({"input": 5}, "input"),
    ({"input": "Hi", "temperature": "hot"}, "temperature"),
    ({"input": "Hi", "max_output_tokens": "3"}, "max_output_tokens"),
    ({}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]}, "input"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
    ({"input": [{"role": "wizard", "content": "Hi"}]}, "input"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input"),
    ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": "Hi", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"input": "Hi", "tools": [{"type": "function", "name": "bad name!"}]}, "tools"),
    ({"input": "Hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"input": "Hi", "tool_choice": "sometimes"}, "tool_choice"),
    ({"input": "Hi", "text": {"format": {"type": "yaml"}}}, "text.format"),
    ({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ({"input": "Hi", "previous_response_id": "resp_0123456789abcdef"}, "previous_response_id"),
    ({"input": "Hi", "previous_response_id": "../../etc/passwd"}, "previous_response_id"),
    ({"input": "Hi", "background": True}, "background"),
    ({"input": "Hi", "metadata": {"k": 1}}, "metadata.k"),
]


def test_bad_requests_are_openai_errors(tiny_server: LiveServer) -> None:
    with tiny_server.client() as http:
        for body, param in BAD_BODIES:
            error = error_of(http.post("/v1/responses", json=body), 400)
            assert error["param"] == param, (body, error)
            assert error["type"] == "invalid_request_error"
        surrogate = b'{"input": [{"role": "user", "content": "bad \\ud800 text"}], "max_output_tokens": 2}'
        response = http.post("/v1/responses", content=surrogate, headers={"Content-Type": "application/json"})
        assert error_of(response, 400)["code"] == "invalid_unicode"
        for raw in (b'{"input": "Hi", "metadata": {"k": "\\udfff"}}', b"{not json"):
            error_of(http.post("/v1/responses", content=raw, headers={"Content-Type": "application/json"}), 400)
        error_of(http.get("/v1/responses/resp_unknown"), 404)
        error_of(http.get("/v1/responses/resp_unknown/input_items"), 404)
        assert http.post("/v1/responses", json={"input": "Hi", "max_output_tokens": 2}).status_code == 200
    tiny_server.wait_idle()


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="Hi", previous_response_id="resp_doesnotexist")
    assert caught.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="Hi")
    with pytest.raises(openai.NotFoundError):
        client.responses.delete("resp_doesnotexist")
