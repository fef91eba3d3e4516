"""Server behaviour: concurrency, disconnects, metrics, health, models, auth, CORS and the simple API."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import LiveServer, error_of, start_server

HELLO = [{"role": "user", "content": "Hello"}]


def test_fifty_concurrent_streams_all_complete(tiny_server: LiveServer) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, int, str | None]:
        stream = await client.chat.completions.create(
            model=tiny_server.state.models.default_id, messages=[{"role": "user", "content": f"Request {i}"}],
            max_tokens=20, stream=True, seed=i, extra_body={"ignore_eos": True})
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, i, finish

    async def run() -> list[tuple[str, int, str | None]]:
        client = openai.AsyncOpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        try:
            return await asyncio.gather(*(one(client, i) for i in range(50)))
        finally:
            await client.close()

    results = asyncio.run(run())
    assert len(results) == 50 and all(finish == "length" for _, _, finish in results)
    assert all(text for text, _, _ in results)
    tiny_server.wait_idle()


def test_client_disconnect_mid_stream_aborts_and_frees_the_cache(smol_server: LiveServer) -> None:
    before = smol_server.wait_idle()
    body = {"messages": HELLO, "max_tokens": 200, "ignore_eos": True, "stream": True}
    with smol_server.client() as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            seen = 0
            for line in response.iter_lines():
                if line.startswith("data: "):
                    seen += 1
                if seen == 3:
                    break  # leaving the block closes the connection mid-stream
    after = smol_server.wait_idle()
    assert after.kv_cache_usage == 0
    assert 0 < after.generation_tokens_total - before.generation_tokens_total < 100  # aborted, not run to 200


def test_client_disconnect_before_a_whole_answer_aborts_and_frees_the_cache(smol_server: LiveServer) -> None:
    before = smol_server.wait_idle()
    body = {"messages": HELLO, "max_tokens": 1000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        with smol_server.client() as client:
            client.post("/v1/chat/completions", json=body, timeout=0.5)
    after = smol_server.wait_idle()
    assert after.kv_cache_usage == 0
    # the watcher polls every 0.25 s: aborted after ~60 tokens here, far from running to 1000
    assert after.generation_tokens_total - before.generation_tokens_total < 500


def _metrics(server: LiveServer) -> dict[str, list[Any]]:
    with server.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def _value(samples: list[Any], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_parse_and_move(tiny_server: LiveServer) -> None:
    model = tiny_server.state.models.default_id
    before = _metrics(tiny_server)
    with tiny_server.client() as client:
        assert client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 5, "ignore_eos": True}).status_code == 200
        assert client.post("/v1/embeddings", json={"input": ["one", "two"]}).status_code == 200
        error_of(client.post("/v1/chat/completions", json={"messages": HELLO, "n": 99}), 400)
    after = _metrics(tiny_server)
    requests = "labs_http_requests"
    assert _value(after[requests], "labs_http_requests_total", endpoint="/v1/chat/completions", status="200") == \
        _value(before[requests], "labs_http_requests_total", endpoint="/v1/chat/completions", status="200") + 1
    assert _value(after[requests], "labs_http_requests_total", endpoint="/v1/chat/completions", status="400") >= 1
    assert _value(after["labs_generation_tokens"], "labs_generation_tokens_total", model=model) >= \
        _value(before["labs_generation_tokens"], "labs_generation_tokens_total", model=model) + 5
    assert _value(after["labs_prompt_tokens"], "labs_prompt_tokens_total", model=model) > 0
    assert _value(after["labs_time_to_first_token_seconds"], "labs_time_to_first_token_seconds_count", model=model) > \
        _value(before.get("labs_time_to_first_token_seconds", []), "labs_time_to_first_token_seconds_count", model=model)
    assert _value(after["labs_time_per_output_token_seconds"], "labs_time_per_output_token_seconds_count", model=model) >= 1
    assert _value(after["labs_embedding_inputs"], "labs_embedding_inputs_total") >= \
        _value(before.get("labs_embedding_inputs", []), "labs_embedding_inputs_total") + 2
    for gauge in ("labs_requests_waiting", "labs_requests_running", "labs_kv_cache_usage_ratio"):
        assert [s for s in after[gauge] if s.labels.get("model") == model], gauge
    # speculative decoding's counters are there (the tiny fp32 model never speculates: no native kernels)
    assert _value(after["labs_engine_draft_tokens"], "labs_engine_draft_tokens_total", model=model) == 0
    assert _value(after["labs_engine_accepted_draft_tokens"], "labs_engine_accepted_draft_tokens_total", model=model) == 0


def test_health_and_ready(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/v1/health").json() == {"status": "ok"}
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.json()["loaded"] is True


def test_ready_is_503_until_the_first_request_loads_the_model(tiny_settings_factory: Any) -> None:
    server = start_server(tiny_settings_factory())  # no preload
    try:
        with server.client() as client:
            ready = client.get("/ready")
            assert ready.status_code == 503 and ready.json()["loaded"] is False
            assert client.get("/health").status_code == 200
            assert client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2}).status_code == 200
            assert client.get("/ready").json()["loaded"] is True
    finally:
        server.stop()


def test_dead_engine_fails_health_and_is_replaced_by_the_next_request(tiny_settings_factory: Any) -> None:
    server = start_server(tiny_settings_factory(LABS_PRELOAD_ON_START="true"))
    try:
        server.engine().shutdown()
        with server.client() as client:
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "error"
            assert client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2}).status_code == 200
            assert client.get("/health").status_code == 200
    finally:
        server.stop()


def test_models_load_on_first_use_and_least_recently_used_is_unloaded(tiny_settings_factory: Any, tiny_model_dir: Any) -> None:
    settings = tiny_settings_factory(f'[models]\nsecond = "{tiny_model_dir}"\nthird = "{tiny_model_dir}"\n',
                                     LABS_MAX_LOADED_MODELS="2", LABS_PRELOAD_ON_START="true")
    server = start_server(settings)
    default = server.state.models.default_id
    try:
        with server.client() as client:
            def loaded() -> dict[str, bool]:
                return {card["id"]: card["loaded"] for card in client.get("/v1/models").json()["data"] if card["type"] == "chat"}

            assert loaded() == {default: True, "second": False, "third": False}
            for model in ("second", "third"):
                response = client.post("/v1/chat/completions", json={"model": model, "messages": HELLO, "max_tokens": 2})
                assert response.status_code == 200 and response.json()["model"] == model
            assert loaded() == {default: False, "second": True, "third": True}
            assert client.get("/ready").status_code == 503  # the default was the least recently used
            assert client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2}).status_code == 200
            assert loaded() == {default: True, "second": False, "third": True}
    finally:
        server.stop()


def test_idle_models_other_than_the_default_are_unloaded(tiny_settings_factory: Any, tiny_model_dir: Any) -> None:
    server = start_server(tiny_settings_factory(f'[models]\nsecond = "{tiny_model_dir}"\n', LABS_MODEL_IDLE_TTL="1",
                                                LABS_PRELOAD_ON_START="true"))
    try:
        with server.client() as client:
            assert client.post("/v1/chat/completions", json={"model": "second", "messages": HELLO, "max_tokens": 2}).status_code == 200
            assert server.state.models.loaded("second") is not None
            deadline = time.monotonic() + 15
            while server.state.models.loaded("second") is not None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert server.state.models.loaded("second") is None
            assert server.state.models.default_loaded
    finally:
        server.stop()


def test_full_queue_refuses_a_stream_with_503_before_it_starts(tiny_settings_factory: Any) -> None:
    """A stream's status cannot change once it has begun: a full queue must be a 503, not an in-band error."""
    server = start_server(tiny_settings_factory(LABS_MAX_QUEUE="1", LABS_MAX_NUM_SEQS="1", LABS_PRELOAD_ON_START="true"))
    body = {"messages": HELLO, "max_tokens": 100, "ignore_eos": True, "stream": True}

    async def flood() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            async def one() -> tuple[int, str]:
                response = await client.post("/v1/chat/completions", json=body)
                return response.status_code, response.text
            return await asyncio.gather(*(one() for _ in range(8)))

    try:
        answers = asyncio.run(flood())
        statuses = sorted(status for status, _ in answers)
        assert 200 in statuses and 503 in statuses, statuses
        assert all('"error"' not in text for status, text in answers if status == 200)  # no in-band overload
        server.wait_idle()
    finally:
        server.stop()


def test_full_queue_is_503_with_retry_after(tiny_settings_factory: Any) -> None:
    server = start_server(tiny_settings_factory(LABS_MAX_QUEUE="1", LABS_MAX_NUM_SEQS="1", LABS_PRELOAD_ON_START="true"))
    body = {"messages": HELLO, "max_tokens": 100, "ignore_eos": True}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(8)))

    try:
        responses = asyncio.run(flood())
        statuses = sorted(r.status_code for r in responses)
        assert 200 in statuses and 503 in statuses, statuses
        refused = next(r for r in responses if r.status_code == 503)
        error = error_of(refused, 503)
        assert error["code"] == "overloaded" and "max_queue=1" in error["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        server.wait_idle()
        with server.client() as client:
            assert client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2}).status_code == 200
    finally:
        server.stop()


def test_api_keys(tiny_settings_factory: Any) -> None:
    server = start_server(tiny_settings_factory(LABS_API_KEY="first-key, second-key"))
    try:
        with server.client() as client:
            assert client.get("/health").status_code == 200
            assert client.get("/ready").status_code in (200, 503)
            error = error_of(client.get("/v1/models"), 401)
            assert error["code"] == "invalid_api_key" and "Authorization: Bearer" in error["message"]
            error = error_of(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
            assert "not valid" in error["message"]
            error_of(client.get("/metrics"), 401)
            error_of(client.post("/generate", json={"prompt": "x"}), 401)
            for key in ("first-key", "second-key"):
                assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="second-key", max_retries=0)
        assert sdk.chat.completions.create(model=server.state.models.default_id, messages=HELLO, max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()
    finally:
        server.stop()


def test_cors_only_for_configured_origins(tiny_settings_factory: Any, tiny_server: LiveServer) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,authorization"}
    with tiny_server.client() as client:  # default: no origins
        response = client.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    server = start_server(tiny_settings_factory(LABS_CORS_ORIGINS="https://app.example"))
    try:
        with server.client() as client:
            response = client.options("/v1/chat/completions", headers=preflight)
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == "https://app.example"
            other = client.options("/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"})
            assert other.headers.get("access-control-allow-origin") != "https://evil.example"
    finally:
        server.stop()


def test_simple_generate_and_stream(smol_server: LiveServer) -> None:
    with smol_server.client() as client:
        response = client.post("/generate", json={"prompt": "What is the capital of France?", "max_new_tokens": 20,
                                                  "do_sample": False})
        assert response.status_code == 200, response.text
        result = response.json()
        assert "Paris" in result["text"] and result["completion_tokens"] <= 20 and result["finish_reason"] == "stop"
        messages = client.post("/generate", json={"messages": [{"role": "user", "content": "What is the capital of France?"}],
                                                  "max_new_tokens": 20, "temperature": 0}).json()
        assert messages["text"] == result["text"]
        with client.stream("POST", "/generate/stream", json={"prompt": "What is the capital of France?",
                                                              "max_new_tokens": 20, "do_sample": False}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            raw = stream.read().decode()
    events = [block for block in raw.split("\n\n") if block]
    texts = []
    for block in events[:-1]:
        assert block.startswith("data: ")
        texts.append("\n".join(line[len("data: "):] for line in block.split("\n")))
    assert "".join(texts) == result["text"]
    assert events[-1].startswith("event: done\ndata: ")
    assert json.loads(events[-1].split("data: ", 1)[1])["finish_reason"] == "stop"


def test_similarities_both_spellings(smol_server: LiveServer) -> None:
    with smol_server.client() as client:
        texts = ["cat", "feline", "quantum computer"]
        by_texts = client.post("/v1/similarities", json={"texts": texts, "model": "all-minilm-l6-v2"}).json()
        by_sentences = client.post("/v1/similarities", json={"sentences": texts}).json()
    matrix = by_texts["similarities"]
    assert matrix == by_sentences["similarities"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    assert all(abs(matrix[i][i] - 1) < 1e-4 for i in range(3))
    assert matrix[0][1] > matrix[0][2] and abs(matrix[0][1] - matrix[1][0]) < 1e-6


def test_long_embedding_input_is_truncated_and_flagged(smol_server: LiveServer) -> None:
    with smol_server.client() as client:
        response = client.post("/v1/embeddings", json={"input": ["short", "word " * 600]})
    assert response.status_code == 200
    assert response.headers["X-Labs-Truncated-Inputs"] == "1"
    assert response.json()["truncated_inputs"] == [1]


def test_the_embedding_model_loads_in_the_background_at_start(tiny_settings_factory: Any) -> None:
    server = start_server(tiny_settings_factory(LABS_EMBEDDING_LOAD_ON_START="true"))
    try:
        deadline = time.monotonic() + 120
        with server.client() as client:
            assert client.get("/health").status_code == 200  # the server answers while the model loads
            while not server.state.embeddings.loaded:  # no request asked for it
                assert time.monotonic() < deadline, "the embedding model was not loaded at start"
                time.sleep(0.05)
            response = client.post("/v1/embeddings", json={"input": "hello"})
        assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 384
    finally:
        server.stop()


def test_an_embedding_model_that_cannot_load_at_start_is_reported_to_its_first_request(
        tiny_settings_factory: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "no-such-embedding-model"
    server = start_server(tiny_settings_factory(LABS_EMBEDDING_LOAD_ON_START="true", LABS_EMBEDDING_MODEL=str(missing)))
    try:
        deadline = time.monotonic() + 60
        while "could not be loaded at start" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        assert str(missing) in caplog.text
        with server.client() as client:
            assert client.get("/health").status_code == 200
            # the server's own configuration is at fault: a server error whose incident the log explains
            error = error_of(client.post("/v1/embeddings", json={"input": "hello"}), 500)
            assert error["code"] == "model_load_failed"
            assert client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2}).status_code == 200
    finally:
        server.stop()


def test_tokenize_and_detokenize_round_trip(smol_server: LiveServer) -> None:
    with smol_server.client() as client:
        tokens = client.post("/v1/tokenize", json={"prompt": "Hello world"}).json()
        assert tokens["count"] == len(tokens["tokens"]) == 2 and tokens["max_model_len"] == 8192
        assert client.post("/v1/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"] == "Hello world"
        chat = client.post("/v1/tokenize", json={"messages": HELLO}).json()
        usage = client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 1}).json()["usage"]
        assert chat["count"] == usage["prompt_tokens"]


def test_openapi_docs_are_served(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        docs = client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        schema = client.get("/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/similarities", "/v1/models",
                 "/generate", "/generate/stream", "/health", "/ready", "/metrics", "/v1/tokenize"):
        assert path in schema["paths"], path
