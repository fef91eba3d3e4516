"""Every error: its status, the OpenAI error body, and the server still serving the next request."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import LiveServer, error_of, start_server

HELLO = [{"role": "user", "content": "Hello"}]


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4, **body})


def still_serves(server: LiveServer) -> None:
    with server.client() as client:
        response = chat(client)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] is not None


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"temperature": 2.5}, "temperature", "temperature must be between 0 and 2, got 2.5"),
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"top_p": 0}, "top_p", "top_p must be > 0"),
        ({"n": 5}, "n", "n must be at most 4 on this server"),
        ({"n": 0}, "n", "n must be between 1 and 16"),
        ({"max_tokens": 201}, "max_tokens", "max_tokens must be at most 200 on this server"),
        ({"max_tokens": 0}, "max_tokens", "max_tokens must be >= 1"),
        ({"messages": []}, "messages", "at least 1 item"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "'system', 'developer', 'user', 'assistant' or 'tool'"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages", "only text parts"),
        ({"messages": HELLO * 9}, "messages", "9 messages, more than the server's limit of 8"),
        ({"messages": [{"role": "user", "content": "x" * 5001}]}, "messages", "5001 characters"),
        ({"stop": ["a"] * 17}, "stop", "stop must have between 0 and 16 entries"),
        ({"logit_bias": {"abc": 1}}, "logit_bias", "logit_bias keys must be token ids"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias", "vocabulary"),
        ({"top_logprobs": 2}, "top_logprobs", "requires logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "logprobs", "logprobs must be between 0 and 20"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream is true"),
        ({"response_format": {"type": "xml"}}, "response_format", "text, json_object or json_schema"),
        ({"presence_penalty": -3}, "presence_penalty", "between -2 and 2"),
        ({"seed": "x"}, "seed", "valid integer"),
    ],
)
def test_bad_chat_parameters_are_400(tiny_server: LiveServer, body: dict[str, Any], param: str, fragment: str) -> None:
    with tiny_server.client() as client:
        error = error_of(chat(client, **body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fragment in error["message"], error["message"]
    still_serves(tiny_server)


def test_context_overflow_names_both_numbers(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        long_prompt = [{"role": "user", "content": "word " * 300}]
        error = error_of(chat(client, messages=long_prompt), 400)
        assert error["code"] == "context_length_exceeded" and "context is 256 tokens" in error["message"]
        error = error_of(chat(client, max_tokens=200, messages=[{"role": "user", "content": "word " * 100}]), 400)
        assert error["param"] == "max_tokens" and error["code"] == "context_length_exceeded"
        assert re.search(r"prompt \(\d+ tokens\) plus max_tokens \(200\) exceeds .* context of 256", error["message"])
    still_serves(tiny_server)


def test_unknown_fields_are_ignored(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        response = chat(client, some_future_field={"x": 1}, service_tier="auto")
        assert response.status_code == 200, response.text


def test_malformed_bodies(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        error = error_of(client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}), 400)
        assert "not valid JSON" in error["message"]
        error = error_of(client.post("/v1/chat/completions", content=b'{"messages": []}', headers={"content-type": "text/plain"}), 400)
        assert "Content-Type: application/json" in error["message"]
        error = error_of(client.post("/v1/chat/completions", json={"max_tokens": 3}), 400)
        assert error["param"] == "messages" and "required" in error["message"]
    still_serves(tiny_server)


def test_unknown_model_is_404_listing_available_ids(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        error = error_of(chat(client, model="gpt-4o"), 404)
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert tiny_server.state.models.default_id in error["message"] and "smol" in error["message"]
        error = error_of(client.post("/v1/embeddings", json={"input": "x", "model": "google/embeddinggemma-300m"}), 404)
        assert "all-minilm-l6-v2" in error["message"]
        error_of(client.get("/v1/models/nope"), 404)
    still_serves(tiny_server)


def test_unknown_route_and_method(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        error = error_of(client.get("/v2/everything"), 404)
        assert "/docs" in error["message"]
        error_of(client.get("/v1/chat/completions"), 405)
    still_serves(tiny_server)


def test_body_too_large_is_413(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        big = {"messages": [{"role": "user", "content": "x" * (70 * 1024)}]}
        error = error_of(client.post("/v1/chat/completions", json=big), 413)
        assert "65536 bytes" in error["message"] and error["code"] == "request_too_large"

        def chunks():  # no Content-Length: the limit is enforced on the bytes received
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(80):
                yield b"x" * 1024
            yield b'"}]}'

        error = error_of(client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}), 413)
        assert error["code"] == "request_too_large"
    still_serves(tiny_server)


def test_embedding_and_similarity_limits(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        error = error_of(client.post("/v1/embeddings", json={"input": ["a"] * 9}), 400)
        assert "more than the server's limit of 8" in error["message"] and error["param"] == "input"
        error = error_of(client.post("/v1/embeddings", json={"input": []}), 400)
        assert error["param"] == "input"
        error = error_of(client.post("/v1/embeddings", json={"input": ["fine", ""]}), 400)
        assert "input[1]" in error["message"]
        error = error_of(client.post("/v1/embeddings", json={"input": "x", "dimensions": 1000}), 400)
        assert error["param"] == "dimensions" and "384" in error["message"]
        error = error_of(client.post("/v1/embeddings", json={"input": "x", "encoding_format": "hex"}), 400)
        assert error["param"] == "encoding_format"
        error = error_of(client.post("/v1/similarities", json={}), 400)
        assert "texts is required" in error["message"]
        error = error_of(client.post("/v1/similarities", json={"texts": ["a"], "sentences": ["b"]}), 400)
        assert "not both" in error["message"]
        assert client.post("/v1/embeddings", json={"input": "still fine"}).status_code == 200


def test_tokenize_errors(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        error_of(client.post("/v1/tokenize", json={}), 400)
        error = error_of(client.post("/v1/detokenize", json={"tokens": [1, 10**9]}), 400)
        assert "vocabulary" in error["message"]


def test_legacy_completion_errors(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        error = error_of(client.post("/v1/completions", json={"prompt": "x", "suffix": "y"}), 400)
        assert error["param"] == "suffix"
        error = error_of(client.post("/v1/completions", json={"prompt": "x", "best_of": 3}), 400)
        assert error["param"] == "best_of"
        error = error_of(client.post("/v1/completions", json={"prompt": "x", "logprobs": 6}), 400)
        assert error["param"] == "logprobs"
        error = error_of(client.post("/v1/completions", json={"prompt": []}), 400)
        assert error["param"] == "prompt"
        error = error_of(client.post("/v1/completions", json={"prompt": [[1, 2], [10**9]]}), 400)
        assert "vocabulary" in error["message"]
    still_serves(tiny_server)


def test_simple_api_errors(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        error = error_of(client.post("/generate", json={"max_new_tokens": 3}), 400)
        assert "prompt or messages" in error["message"]
        error = error_of(client.post("/generate", json={"prompt": "x", "max_new_tokens": 1000}), 400)
        assert error["param"] == "max_new_tokens"
        error = error_of(client.post("/generate/stream", json={"prompt": "x", "temperature": -1}), 400)
        assert error["param"] == "temperature"
    still_serves(tiny_server)


def test_failed_model_load_is_500_without_internals(tiny_settings_factory: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": "not a number"}')
    server = start_server(tiny_settings_factory(f'[models]\nbroken = "{broken}"\n'))
    try:
        with server.client() as client:
            response = chat(client, model="broken")
            error = error_of(response, 500)
            assert error["type"] == "server_error" and error["code"] == "model_load_failed"
            for leak in ("Traceback", "/", "0x", str(tmp_path)):
                assert leak not in error["message"], error["message"]
            assert chat(client).status_code == 200  # the default model still works
    finally:
        server.stop()


def test_mid_stream_failure_is_an_error_event_then_done(tiny_server: LiveServer) -> None:
    served = tiny_server.state.models.loaded(tiny_server.state.models.default_id)
    layer = served.loaded.model.model.embed_tokens  # runs in every step, fused forward or not
    calls = {"n": 0}

    def fail_on_fifth_step(_module: Any, _inputs: Any, _output: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated device failure")

    handle = layer.register_forward_hook(fail_on_fifth_step)
    try:
        with tiny_server.client() as client:
            body = {"messages": HELLO, "max_tokens": 50, "ignore_eos": True, "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    finally:
        handle.remove()
    assert lines[-1] == "data: [DONE]"
    assert '"error"' in lines[-2] and "simulated device failure" in lines[-2] and '"type":"server_error"' in lines[-2]
    tiny_server.wait_idle()
    still_serves(tiny_server)


def test_a_model_the_engine_cannot_run_is_422_naming_why(tiny_settings_factory: Any, tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    """Falcon's attention bypasses the engine: asking for it is a clear 422, and the server goes on."""
    import torch
    from transformers import AutoTokenizer, FalconConfig, FalconForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    falcon = FalconForCausalLM(FalconConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=256))
    falcon.save_pretrained(tmp_path / "falcon")
    tokenizer.save_pretrained(tmp_path / "falcon")
    server = start_server(tiny_settings_factory(f'[models]\nfalcon = "{tmp_path / "falcon"}"\n'))
    try:
        with server.client() as client:
            error = error_of(chat(client, model="falcon", messages=[{"role": "user", "content": "Hi"}], max_tokens=2), 422)
            assert error["code"] == "model_not_supported" and error["param"] == "model"
            assert "cannot run FalconForCausalLM (falcon)" in error["message"] and str(tmp_path) not in error["message"]
            assert chat(client, messages=[{"role": "user", "content": "Hi"}], max_tokens=2).status_code == 200
    finally:
        server.stop()
