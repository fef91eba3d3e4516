"""Named API keys on a live server: limits per key, 429s in each protocol's shape, models per key, usage.

One server (the tiny model, the real SmolLM2 as `smol`) holds a key per behaviour, so the tests
do not spend each other's budgets. Request budgets are small enough (a request earned back every
20 s or more) that nothing refills while a test runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from labs.errors import ConfigError
from tests.api.conftest import LiveServer, start_server

HELLO = [{"role": "user", "content": "Hello"}]
SECRETS = {name: f"{name}-secret-0123" for name in ("burst", "tok", "meter", "conc", "one", "anth", "free")}
PLAIN = "plain-secret-4567"
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
TOKEN_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@pytest.fixture(scope="module")
def server(tiny_settings_factory: Any, default_model_dir: Path) -> Iterator[LiveServer]:
    toml = f"""
[models]
smol = "{default_model_dir}"

[keys.burst]
sha256 = "{sha(SECRETS['burst'])}"
requests_per_minute = 3

[keys.tok]
sha256 = "{sha(SECRETS['tok'])}"
tokens_per_minute = 10

[keys.meter]
env = "METER_KEY"
requests_per_minute = 1000
tokens_per_minute = 1000000

[keys.conc]
sha256 = "{sha(SECRETS['conc'])}"
max_concurrent = 2
models = ["smol"]
priority = "batch"

[keys.one]
sha256 = "{sha(SECRETS['one'])}"
max_concurrent = 1

[keys.anth]
sha256 = "{sha(SECRETS['anth'])}"
requests_per_minute = 1

[keys.free]
sha256 = "{sha(SECRETS['free'])}"
"""
    live = start_server(tiny_settings_factory(toml, METER_KEY=SECRETS["meter"], LABS_API_KEY=PLAIN,
                                              LABS_PRELOAD_ON_START="true"))
    yield live
    live.stop()


def sdk(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=SECRETS.get(key, key), max_retries=0)


def async_sdk(server: LiveServer, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=SECRETS.get(key, key), max_retries=0)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS.get(key, key)}"}


def seconds(duration: str) -> float:
    """An x-ratelimit-reset-* duration ("1m0s", "59.99s", "120ms") in seconds."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:([\d.]+)s)?(?:(\d+)ms)?", duration)
    assert match and duration, duration
    hours, minutes, secs, millis = (float(group or 0) for group in match.groups())
    return hours * 3600 + minutes * 60 + secs + millis / 1000


def usage_of(server: LiveServer, key: str) -> dict[str, Any]:
    with server.client() as client:
        response = client.get("/v1/usage", headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()


def test_a_burst_over_requests_per_minute_gets_exactly_the_overflow_as_429(server: LiveServer) -> None:
    model = server.state.models.default_id

    async def burst() -> list[Any]:
        client = async_sdk(server, "burst")

        async def one() -> Any:
            try:
                return await client.chat.completions.with_raw_response.create(model=model, messages=HELLO, max_tokens=2)
            except openai.RateLimitError as refused:
                return refused

        try:
            return await asyncio.gather(*(one() for _ in range(5)))
        finally:
            await client.close()

    answers = asyncio.run(burst())
    served = [answer for answer in answers if not isinstance(answer, openai.RateLimitError)]
    refused = [answer for answer in answers if isinstance(answer, openai.RateLimitError)]
    assert (len(served), len(refused)) == (3, 2)
    for answer in served:
        assert answer.parse().choices and answer.headers["x-ratelimit-limit-requests"] == "3"
        assert answer.headers["x-ratelimit-remaining-requests"] in ("0", "1", "2")
        assert not any(name in answer.headers for name in TOKEN_HEADERS)  # the key has no token limit
    for error in refused:
        assert error.status_code == 429
        assert error.body == {"message": error.body["message"], "type": "requests", "param": None,
                              "code": "rate_limit_exceeded"}
        assert error.body["message"].startswith("key 'burst' is limited to 3 requests per minute; retry in ")
        headers = error.response.headers
        assert 15 <= int(headers["Retry-After"]) <= 20  # a request is earned back every 60/3 s
        assert f"retry in {headers['Retry-After']} s" in error.body["message"]
        assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "0"
        assert 40 < seconds(headers["x-ratelimit-reset-requests"]) <= 60  # until all 3 are back: 3 x 20 s
    # metadata needs the key, counts toward nothing, and still says where the key stands
    listing = sdk(server, "burst").models.with_raw_response.list()
    assert listing.parse().data and listing.headers["x-ratelimit-remaining-requests"] == "0"
    with server.client() as client:
        assert client.get("/v1/models").status_code == 401
        assert "x-ratelimit-limit-requests" not in client.get("/v1/models").headers
    with pytest.raises(openai.RateLimitError):
        sdk(server, "burst").embeddings.create(model=server.state.embeddings.model_id, input="still counted")
    assert sdk(server, "free").chat.completions.create(model=model, messages=HELLO, max_tokens=2).choices  # others unaffected
    usage = usage_of(server, "burst")
    assert usage["usage"]["requests"] == 3 and usage["usage"]["rate_limited"] == 3
    assert usage["remaining"]["requests"] == 0 and usage["limits"]["requests_per_minute"] == 3
    server.wait_idle()


def test_tokens_per_minute_counts_prompt_and_generated_tokens(server: LiveServer) -> None:
    model = server.state.models.default_id
    first = sdk(server, "tok").chat.completions.with_raw_response.create(
        model=model, messages=HELLO, max_tokens=3, extra_body={"ignore_eos": True})
    answer = first.parse()
    # a whole (not streamed) answer starts once generated: its headers show the tokens it used, charged
    assert first.headers["x-ratelimit-limit-tokens"] == "10" and first.headers["x-ratelimit-remaining-tokens"] == "0"
    used = usage_of(server, "tok")["usage"]
    assert (used["prompt_tokens"], used["generated_tokens"]) == (answer.usage.prompt_tokens, 3)
    assert used["total_tokens"] == answer.usage.total_tokens > 10  # one request spent more than the minute's budget
    with pytest.raises(openai.RateLimitError) as refused:
        sdk(server, "tok").chat.completions.create(model=model, messages=HELLO, max_tokens=3)
    assert refused.value.body["type"] == "tokens" and refused.value.body["code"] == "rate_limit_exceeded"
    wait = int(refused.value.response.headers["Retry-After"])
    owed = answer.usage.total_tokens - 10
    # 10 tokens a minute: 6 s a token, until one whole token is back (less what came back since)
    assert 6 * (owed + 1) - 60 < wait <= 6 * (owed + 1)
    assert refused.value.body["message"] == (f"key 'tok' is limited to 10 tokens per minute (prompt and generated); "
                                             f"retry in {wait} s")
    assert refused.value.response.headers["x-ratelimit-remaining-tokens"] == "0"

    # streamed, embedded and whole answers are all charged what they used
    before = usage_of(server, "meter")["usage"]
    client = sdk(server, "meter")
    chunks = list(client.chat.completions.create(model=model, messages=HELLO, max_tokens=4, stream=True,
                                                 stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    streamed = chunks[-1].usage
    embedded = client.embeddings.create(model=server.state.embeddings.model_id, input=["one two", "three"]).usage
    legacy = client.completions.create(model=model, prompt=["a b", "c"], max_tokens=2, extra_body={"ignore_eos": True}).usage
    after = usage_of(server, "meter")
    assert after["usage"]["prompt_tokens"] - before["prompt_tokens"] == \
        streamed.prompt_tokens + embedded.prompt_tokens + legacy.prompt_tokens
    assert after["usage"]["generated_tokens"] - before["generated_tokens"] == 4 + legacy.completion_tokens == 8
    assert after["usage"]["requests"] - before["requests"] == 3
    server.wait_idle()


def test_a_concurrent_limit_holds_under_a_burst_of_streams_and_frees_slots_on_disconnect(server: LiveServer) -> None:
    """`conc` may run 2 requests at once on `smol` (the real model: a long answer keeps its slot for seconds)."""
    body = {"model": "smol", "messages": HELLO, "max_tokens": 200, "stream": True, "extra_body": {"ignore_eos": True}}

    async def burst() -> tuple[list[Any], bool]:
        client = async_sdk(server, "conc")

        async def one() -> Any:
            try:
                return await client.chat.completions.create(**body)
            except openai.RateLimitError as refused:
                return refused

        try:
            answers = await asyncio.gather(*(one() for _ in range(6)))
            streams = [answer for answer in answers if isinstance(answer, openai.AsyncStream)]
            for stream in streams:  # they have started: read a little of each, then hang up
                first = await stream.__anext__()
                assert first.choices[0].delta.role == "assistant"
            # the key's priority is the one its requests run at in the engine
            assert {seq.priority for seq in list(server.engine("smol").core.scheduler.running)} == {2}
            other = await async_sdk(server, "free").chat.completions.create(  # another key is not held up
                model=server.state.models.default_id, messages=HELLO, max_tokens=2)
            for stream in streams:
                await stream.close()
            return answers, bool(other.choices)
        finally:
            await client.close()

    answers, other_served = asyncio.run(burst())
    refused = [answer for answer in answers if isinstance(answer, openai.RateLimitError)]
    assert (len(answers) - len(refused), len(refused)) == (2, 4) and other_served
    for error in refused:
        assert error.body["message"] == ("key 'conc' is limited to 2 requests at a time; retry when one of its "
                                         "requests finishes")
        assert error.response.headers["Retry-After"] == "1" and error.body["type"] == "requests"
        assert "x-ratelimit-limit-requests" not in error.response.headers  # no rate limits, only a concurrency one
    deadline = time.monotonic() + 30
    while usage_of(server, "conc")["in_flight"] and time.monotonic() < deadline:  # the disconnects free the slots
        time.sleep(0.1)
    usage = usage_of(server, "conc")
    assert (usage["in_flight"], usage["remaining"]["concurrent"], usage["priority"]) == (0, 2, "batch")
    assert usage["usage"]["requests"] == 2 and usage["usage"]["rate_limited"] == 4
    assert 0 < usage["usage"]["generated_tokens"] < 400  # charged what was generated before the hang-up
    short = sdk(server, "conc").chat.completions.create(model="smol", messages=HELLO, max_tokens=2)
    assert short.choices
    server.wait_idle("smol")


def test_a_slot_is_freed_when_a_request_fails(server: LiveServer) -> None:
    model = server.state.models.default_id
    client = sdk(server, "one")
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):  # admitted, then refused by the server's own limits
            client.chat.completions.create(model=model, messages=HELLO, max_tokens=2, n=99)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=HELLO, max_tokens=2)
    with server.client() as http:  # a body of the wrong shape is counted, and freed, too
        assert http.post("/v1/chat/completions", json={"messages": 5}, headers=bearer("one")).status_code == 400
    assert client.chat.completions.create(model=model, messages=HELLO, max_tokens=2).choices
    usage = usage_of(server, "one")
    assert usage["in_flight"] == 0 and usage["usage"]["requests"] == 8
    server.wait_idle()


def test_a_key_sees_and_uses_only_its_models(server: LiveServer) -> None:
    client = sdk(server, "conc")  # models = ["smol"]
    assert [model.id for model in client.models.list().data] == ["smol"]
    assert client.models.retrieve("smol").id == "smol"
    default = server.state.models.default_id
    with pytest.raises(openai.NotFoundError) as hidden:
        client.models.retrieve(default)
    assert hidden.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model=default, messages=HELLO, max_tokens=2)
    assert refused.value.body["code"] == "model_not_found" and refused.value.body["param"] == "model"
    assert refused.value.body["message"] == (f"the model '{default}' does not exist or the API key 'conc' may not "
                                             "use it; GET /v1/models lists the models this key may use")
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model=server.state.embeddings.model_id, input="x")
    with server.client() as http:
        tags = http.get("/api/tags", headers=bearer("conc")).json()["models"]
        assert [tag["name"] for tag in tags] == ["smol:latest"]
        ollama = http.post("/api/chat", headers=bearer("conc"), json={"model": default, "messages": HELLO})
        assert ollama.status_code == 404 and set(ollama.json()) == {"error"} and "may not use it" in ollama.json()["error"]
        counted = http.post("/v1/tokenize", headers=bearer("conc"), json={"model": default, "prompt": "x"})
        assert counted.status_code == 404
    everything = {model.id for model in sdk(server, "free").models.list().data}
    assert {"smol", default, server.state.embeddings.model_id} <= everything
    assert {model.id for model in sdk(server, PLAIN).models.list().data} == everything


def test_anthropic_and_ollama_clients_get_their_own_429(server: LiveServer) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key=SECRETS["anth"], max_retries=0)
    model = server.state.models.default_id
    assert client.messages.create(model=model, max_tokens=2, messages=HELLO).content is not None
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model=model, max_tokens=2, messages=HELLO)
    assert refused.value.status_code == 429
    assert refused.value.body == {"type": "error", "error": {
        "type": "rate_limit_error", "message": refused.value.body["error"]["message"]}}
    assert refused.value.body["error"]["message"].startswith("key 'anth' is limited to 1 requests per minute")
    assert int(refused.value.response.headers["Retry-After"]) >= 1
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    with server.client() as http:
        ollama = http.post("/api/chat", headers=bearer("anth"), json={"model": model, "messages": HELLO})
    assert ollama.status_code == 429 and set(ollama.json()) == {"error"}
    assert ollama.json()["error"].startswith("key 'anth' is limited to 1 requests per minute")
    assert int(ollama.headers["Retry-After"]) >= 1
    server.wait_idle()


def test_usage_is_counted_per_key_in_metrics(server: LiveServer) -> None:
    model = server.state.models.default_id
    sdk(server, PLAIN).chat.completions.create(model=model, messages=HELLO, max_tokens=2)
    sdk(server, "free").chat.completions.create(model=model, messages=HELLO, max_tokens=2)
    with server.client() as http:
        text = http.get("/metrics", headers=bearer("free")).text
        plain_usage = http.get("/v1/usage", headers=bearer(PLAIN)).json()
    families = {family.name: family.samples for family in text_string_to_metric_families(text)}
    keys = {sample.labels["key"] for sample in families["labs_key_requests"]}
    assert keys == {"burst", "tok", "meter", "conc", "one", "anth", "free", "-"}
    by_key = {sample.labels["key"]: sample.value for sample in families["labs_key_requests"]}
    assert by_key["-"] >= 1 and by_key["free"] >= 1
    generated = {sample.labels["key"]: sample.value for sample in families["labs_key_generation_tokens"]}
    assert generated["-"] >= 1 and generated["free"] >= 1
    assert plain_usage["key"] == "-" and plain_usage["limits"] == {
        "requests_per_minute": None, "tokens_per_minute": None, "max_concurrent": None, "models": None}
    assert plain_usage["usage"]["requests"] >= 1
    server.wait_idle()


def test_no_keys_no_usage(tiny_server: LiveServer) -> None:
    with tiny_server.client() as http:
        assert "labs_key_" not in http.get("/metrics").text
        missing = http.get("/v1/usage")
        response = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_api_keys"
    assert response.status_code == 200 and not any(name.startswith("x-ratelimit") for name in response.headers)
    tiny_server.wait_idle()


def test_secrets_never_reach_the_log(tiny_settings_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "very-secret-key-9876"
    toml = f'[keys.alice]\nenv = "ALICE_KEY"\nrequests_per_minute = 1\n[keys.bob]\nsha256 = "{sha("bob-key-5555")}"\n'
    live = start_server(tiny_settings_factory(toml, ALICE_KEY=secret))
    try:
        with live.client() as http:
            assert http.get("/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
            assert http.get("/v1/models", headers={"Authorization": "Bearer wrong-key-1111"}).status_code == 401
            body = {"messages": HELLO, "max_tokens": 2}
            assert http.post("/v1/chat/completions", json=body, headers={"x-api-key": secret}).status_code == 200
            assert http.post("/v1/chat/completions", json=body, headers={"x-api-key": secret}).status_code == 429
            assert http.post("/v1/chat/completions", json=body, headers={"x-api-key": "bob-key-5555"}).status_code == 200
        live.wait_idle()
    finally:
        live.stop()
    assert caplog.records  # the server did log
    for text in (secret, "bob-key-5555", sha("bob-key-5555"), sha(secret), "wrong-key-1111"):
        assert text not in caplog.text


def test_a_bad_key_table_stops_the_server_from_starting(tiny_settings_factory: Any) -> None:
    with pytest.raises(ConfigError, match=r"\[keys.alice\] in .*labs.toml: max_concurrent must be >= 1, got -2"):
        tiny_settings_factory(f'[keys.alice]\nsha256 = "{sha("x")}"\nmax_concurrent = -2\n')
    with pytest.raises(ConfigError, match=r"env = \"ALICE_KEY\", but the variable ALICE_KEY is not set"):
        tiny_settings_factory('[keys.alice]\nenv = "ALICE_KEY"\n')


def test_rate_headers_come_on_errors_and_streams_too(server: LiveServer) -> None:
    body = {"messages": HELLO, "max_tokens": 2, "stream": True}
    with server.client() as http:
        bad = http.post("/v1/chat/completions", headers=bearer("meter"), json={"messages": HELLO, "n": 99})
        with http.stream("POST", "/v1/chat/completions", headers=bearer("meter"), json=body) as stream:
            assert stream.status_code == 200 and "data: [DONE]" in stream.read().decode()
    assert bad.status_code == 400
    for response in (bad, stream):
        assert all(name in response.headers for name in RATE_HEADERS + TOKEN_HEADERS)
        assert response.headers["x-ratelimit-limit-tokens"] == "1000000"
        assert response.headers["x-ratelimit-limit-requests"] == "1000"
    server.wait_idle()

