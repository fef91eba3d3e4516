"""response_format and guided_* through the openai SDK on the default model: output that parses and validates."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pydantic
import pytest

from tests.api.conftest import LiveServer, error_of

MODEL = "smollm2-135m-instruct"
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population_millions": {"type": "number", "minimum": 0, "maximum": 100},
        "continent": {"enum": ["Africa", "Asia", "Europe", "North America", "Oceania", "South America"]},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
    },
    "required": ["city", "country", "continent", "landmarks"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe Paris as JSON with its country, continent and landmarks."}]


@pytest.fixture(scope="module")
def client(smol_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=smol_server.url + "/v1", api_key="x", max_retries=0)


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def test_json_object_parses(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=150, temperature=0,
                                              response_format={"type": "json_object"})
    assert response.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(response.choices[0].message.content), dict)


def test_json_schema_validates_with_n_and_in_streams(client: openai.OpenAI, smol_server: LiveServer) -> None:
    response = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=200, temperature=0.8, seed=5, n=2,
                                              response_format=_schema_format(CITY))
    for choice in response.choices:
        jsonschema.validate(json.loads(choice.message.content), CITY)
    stream = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=200, temperature=0, stream=True,
                                            response_format=_schema_format(CITY))
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), CITY)
    smol_server.wait_idle()


def test_pydantic_parse_round_trips(client: openai.OpenAI) -> None:
    class Answer(pydantic.BaseModel):
        capital: str = pydantic.Field(max_length=30)
        confidence: Literal["low", "medium", "high"]

    parsed = client.chat.completions.parse(model=MODEL, response_format=Answer, max_tokens=60, temperature=0,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    answer = parsed.choices[0].message.parsed
    assert isinstance(answer, Answer) and answer.confidence in ("low", "medium", "high")


def test_guided_choice_and_regex(client: openai.OpenAI) -> None:
    choice = client.chat.completions.create(model=MODEL, max_tokens=10, temperature=0,
                                            messages=[{"role": "user", "content": "Is Paris in France? Answer yes or no."}],
                                            extra_body={"guided_choice": ["yes", "no"]})
    assert choice.choices[0].message.content in ("yes", "no")
    regex = client.completions.create(model=MODEL, prompt="The year the Eiffel Tower opened:", max_tokens=10,
                                      temperature=0, extra_body={"guided_regex": "[0-9]{4}"})
    assert len(regex.choices[0].text) == 4 and regex.choices[0].text.isdigit()
    newer = client.chat.completions.create(model=MODEL, max_tokens=10, temperature=0,
                                           messages=[{"role": "user", "content": "Is Paris in France? Answer yes or no."}],
                                           extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert newer.choices[0].message.content == choice.choices[0].message.content


def test_constrained_request_batched_with_others_leaves_them_unchanged(smol_server: LiveServer) -> None:
    import asyncio

    async def run() -> tuple[list[str], list[str]]:
        client = openai.AsyncOpenAI(base_url=smol_server.url + "/v1", api_key="x", max_retries=0)
        plain = [{"role": "user", "content": f"Name a color number {i}."} for i in range(3)]

        async def ask(message: dict, **extra: object) -> str:
            r = await client.chat.completions.create(model=MODEL, messages=[message], max_tokens=20, temperature=0, **extra)
            return r.choices[0].message.content

        alone = [await ask(m) for m in plain]
        mixed = await asyncio.gather(*(ask(m) for m in plain),
                                     *(ask(ASK[0], response_format=_schema_format(CITY)) for _ in range(3)))
        await client.close()
        return alone, list(mixed[:3])

    alone, mixed = asyncio.run(run())
    assert mixed == alone


@pytest.mark.parametrize(("body", "param", "fragment"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema must be"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format", "nope"),
    ({"response_format": {"type": "xml"}}, "response_format", "text, json_object or json_schema"),
    ({"guided_regex": "(unclosed"}, "guided_regex", "guided_regex"),
    ({"guided_choice": []}, "guided_choice", "non-empty"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice", "at most one"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "exactly one"),
])
def test_invalid_constraints_are_400_before_generation(smol_server: LiveServer, body: dict, param: str, fragment: str) -> None:
    with smol_server.client() as client:
        for stream in (False, True):
            response = client.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 5, "stream": stream, **body})
            error = error_of(response, 400)
            assert error["param"] == param and fragment in error["message"], error
        assert client.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 2}).status_code == 200
