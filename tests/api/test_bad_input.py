"""Bad input is the client's fault: every malformed body, odd text or impossible token is a 4xx, never
a 500, and the server keeps serving. Bodies are sent as raw bytes where a client library would fix them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from labs.api.schemas import ChatCompletionRequest
from tests.api.conftest import LiveServer, error_of, start_server

HELLO = [{"role": "user", "content": "Hello"}]
JSON = {"content-type": "application/json"}


def post_raw(client: httpx.Client, path: str, body: str | bytes) -> httpx.Response:
    return client.post(path, content=body.encode() if isinstance(body, str) else body, headers=JSON)


def still_serves(server: LiveServer) -> None:
    with server.client() as client:
        response = client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
        assert response.status_code == 200, response.text


# ------------------------------------------------------------------------------------ documents body


def test_a_document_body_that_is_not_utf8_is_400(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        for raw in (b"\xff\xfe{", b'{"path": "caf\xe9"}', "\ufeff{}".encode("utf-16")):
            error = error_of(post_raw(client, "/v1/rag/documents", raw), 400)
            assert "UTF-8 JSON" in error["message"], error
        error = error_of(post_raw(client, "/v1/rag/documents", b'{"path": "a\\ud800"}'), 400)
        assert error["code"] == "invalid_unicode"
        error = error_of(post_raw(client, "/v1/rag/documents", b'{"paths": ["x", "\\udc80"]}'), 400)
        assert error["code"] == "invalid_unicode"
        error_of(post_raw(client, "/v1/rag/documents", "[" * 20_000 + "]" * 20_000), 400)
        error_of(post_raw(client, "/v1/rag/documents", b"{nope"), 400)
    still_serves(tiny_server)


# ------------------------------------------------------------------------------------ odd Unicode

ODD_TEXTS = {
    "noncharacters": "\uffff \U0010ffff \ufdd0 \U0001fffe",
    "nul and controls": "a\x00b\x01\x1b[31m\x7f",
    "private use": "\ue000\uf8ff\U000f0000\U00100000",
    "bidi marks": "\u202eabc\u202c \u200f\u061c\u2067x\u2069",
    "combining marks": "a" + "\u0301" * 10_000,  # over LABS_MAX_INPUT_CHARS: a 400
    "some combining marks": "e" + "\u0301\u0302\u0303" * 100,
    "emoji zwj": "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 \U0001F3F3\ufe0f\u200d\U0001F308" * 5,
    "boms": "\ufeff\ufffe\ufffd",
    "special token text": "<|im_start|>system\nhi<|im_end|><|endoftext|>",
    "everything": "\uffff\x00\U0010ffff\ue000\u202e" + "\u0301" * 50 + "\U0001F468\u200d\U0001F469",
}


@pytest.mark.parametrize("name", list(ODD_TEXTS))
def test_odd_unicode_is_answered_or_refused_never_a_500(tiny_server: LiveServer, name: str) -> None:
    text = ODD_TEXTS[name]
    with tiny_server.client() as client:
        responses = [
            client.post("/v1/rag/query", json={"question": text, "max_tokens": 2}),
            client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": text}], "max_tokens": 2}),
            client.post("/v1/completions", json={"prompt": text, "max_tokens": 2}),
        ]
    for response in responses:
        assert response.status_code in (200, 400), response.text
        if response.status_code == 400:
            assert error_of(response, 400)["code"] in ("input_too_long", "context_length_exceeded"), response.text
    still_serves(tiny_server)


@pytest.fixture(scope="module")
def extra_tokens_server(tiny_model_dir: Path, tiny_settings_factory: Any, tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[LiveServer]:
    """The tiny model with two tokens added to its tokenizer but not to its embedding matrix."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("extra-tokens-model")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(["<extra_a>", "<extra_b>"])
    tokenizer.save_pretrained(folder)
    server = start_server(tiny_settings_factory(LABS_MODEL=str(folder), LABS_PRELOAD_ON_START="true",
                                                LABS_MAX_TOKENS_LIMIT="8"))
    yield server
    server.stop()


def test_tokens_beyond_the_embedding_matrix_are_400_naming_the_token(extra_tokens_server: LiveServer) -> None:
    """Fed to the model, such ids are torch's `IndexError: index out of range in self` (a 500)."""
    state = extra_tokens_server.state
    rows = state.models.loaded(state.models.default_id).loaded.embedding_rows
    with extra_tokens_server.client() as client:
        for path, body, param in [
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi <extra_a>"}], "max_tokens": 2}, "messages"),
            ("/v1/rag/query", {"question": "what is <extra_b>?", "max_tokens": 2}, "question"),
            ("/v1/completions", {"prompt": "<extra_a>", "max_tokens": 2}, "prompt"),
            ("/v1/completions", {"prompt": [1, rows + 1], "max_tokens": 2}, "prompt"),
            ("/generate", {"prompt": "<extra_b>", "max_new_tokens": 2}, "prompt"),
        ]:
            error = error_of(client.post(path, json=body), 400)
            assert error["code"] == "token_out_of_range" and error["param"] == param, (path, error)
            assert f"{rows} rows" in error["message"]
        assert "<extra_a>" in error_of(client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "<extra_a>"}], "max_tokens": 2}), 400)["message"]
        assert client.post("/v1/tokenize", json={"prompt": "<extra_a>"}).json()["tokens"] == [rows]  # only counted
    still_serves(extra_tokens_server)


# ------------------------------------------------------------------------------------ message shapes

CALL = {"type": "function", "id": "c1", "function": {"name": "f", "arguments": "{}"}}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("calls", [[{}], [{"function": "f"}], [{"function": {"name": 5}}], [{"function": {}}],
                                   [{"function": {"name": "f", "arguments": [1]}}], [CALL, {"id": "c2"}]])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/tokenize"])
def test_malformed_tool_calls_in_history_are_400(tiny_server: LiveServer, calls: list[Any], path: str) -> None:
    """Found by scripts/fuzz_api.sh: the fallback rendering of tool turns read call["function"]["name"]."""
    with tiny_server.client() as client:
        for tools in (None, TOOLS):  # the fallback rendering, and the template's own tools
            body = {"messages": [*HELLO, {"role": "assistant", "tool_calls": calls}], "max_tokens": 2,
                    **({"tools": tools} if tools else {})}
            error = error_of(client.post(path, json=body), 400)
            assert error["param"] == "messages" and "messages[1].tool_calls" in error["message"], error
    still_serves(tiny_server)


def test_tool_turns_with_text_parts_are_served(tiny_server: LiveServer) -> None:
    history = [*HELLO, {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}], "tool_calls": [CALL]},
               {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]}]
    with tiny_server.client() as client:
        for path in ("/v1/chat/completions", "/v1/tokenize"):
            response = client.post(path, json={"messages": history, "max_tokens": 2})
            assert response.status_code == 200, response.text
        error = error_of(client.post("/v1/chat/completions", json={"messages": [
            *HELLO, {"role": "assistant", "content": [{"type": "image"}], "tool_calls": [CALL]}]}), 400)
        assert "only text parts" in error["message"]


# ------------------------------------------------------------------------------------ lone surrogates

CHAT = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, %s}'
SURROGATE_BODIES = [
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": %s}], "max_tokens": 2}', "messages.0.content"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": %s}]}]}',
     "messages.0.content.0.text"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi", "name": %s}]}', "messages.0.name"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": '
     '[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": %s}}]}, '
     '{"role": "tool", "tool_call_id": "c1", "content": "1"}]}', "messages.1.tool_calls.0.function.arguments"),
    ("/v1/chat/completions", '{"messages": [{"role": "tool", "tool_call_id": %s, "content": "1"}]}',
     "messages.0.tool_call_id"),
    ("/v1/chat/completions", CHAT % '"stop": %s', "stop"),
    ("/v1/chat/completions", CHAT % '"stop": ["a", %s]', "stop.1"),
    ("/v1/chat/completions", CHAT % '"model": %s', "model"),
    ("/v1/chat/completions", CHAT % '"user": %s', "user"),
    ("/v1/chat/completions", CHAT % '"tools": [{"type": "function", "function": {"name": "f", "description": %s}}]',
     "tools.0.function.description"),
    ("/v1/chat/completions", CHAT % '"guided_choice": [%s]', "guided_choice.0"),
    ("/v1/chat/completions", CHAT % '"response_format": {"type": "json_schema", "json_schema": {"name": %s}}',
     "response_format.json_schema.name"),
    ("/v1/chat/completions", CHAT % '"some_future_field": {"x": %s}', "some_future_field.x"),
    ("/v1/chat/completions", CHAT % '%s: 1', "body"),  # a key
    ("/v1/completions", '{"prompt": %s, "max_tokens": 2}', "prompt"),
    ("/v1/completions", '{"prompt": ["ok", %s], "max_tokens": 2}', "prompt.1"),
    ("/v1/completions", '{"prompt": "ok", "stop": %s, "max_tokens": 2}', "stop"),
    ("/v1/embeddings", '{"input": %s}', "input"),
    ("/v1/embeddings", '{"input": ["ok", %s]}', "input.1"),
    ("/v1/embeddings", '{"input": "ok", "model": %s}', "model"),
    ("/v1/similarities", '{"texts": ["ok", %s]}', "texts.1"),
    ("/v1/similarities", '{"sentences": [%s, "ok"]}', "sentences.0"),
    ("/v1/tokenize", '{"prompt": %s}', "prompt"),
    ("/v1/tokenize", '{"messages": [{"role": "user", "content": %s}]}', "messages.0.content"),
    ("/v1/detokenize", '{"tokens": [1], "model": %s}', "model"),
    ("/generate", '{"prompt": %s, "max_new_tokens": 2}', "prompt"),
    ("/generate", '{"prompt": "hi", "system_prompt": %s, "max_new_tokens": 2}', "system_prompt"),
    ("/generate", '{"messages": [{"role": "user", "content": %s}], "max_new_tokens": 2}', "messages.0.content"),
    ("/generate", '{"prompt": "hi", "stop": %s, "max_new_tokens": 2}', "stop"),
    ("/v1/rag/query", '{"question": %s, "max_tokens": 2}', "question"),
    ("/v1/rag/query", '{"query": %s, "max_tokens": 2}', "query"),
    ("/v1/rag/transactions/query", '{"question": %s}', "question"),
    ("/v1/rag/transactions/query", '{"query": %s}', "query"),
    ("/v1/rag/documents", '{"path": %s}', "path"),
    ("/v1/rag/documents", '{"paths": [%s]}', "path"),
]


@pytest.mark.parametrize(("path", "template", "param"), SURROGATE_BODIES, ids=[f"{p} {q}" for p, _, q in SURROGATE_BODIES])
def test_lone_surrogates_in_any_text_field_are_400(tiny_server: LiveServer, path: str, template: str, param: str) -> None:
    with tiny_server.client() as client:
        for surrogate in (r'"\ud800"', r'"x\udc80y"'):
            error = error_of(post_raw(client, path, template % surrogate), 400)
            assert error["code"] == "invalid_unicode", error
            assert error["param"] == param and "invalid Unicode" in error["message"], error
    still_serves(tiny_server)


def test_a_surrogate_pair_written_as_escapes_is_real_text(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        response = post_raw(client, "/v1/chat/completions", CHAT % r'"stop": "\ud83d\ude00"')
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------------------------ shapes and sizes


def test_oversized_bodies_are_413(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/rag/documents"):
            error = error_of(post_raw(client, path, b"[" + b"0," * 40_000 + b"0]"), 413)
            assert "larger than the server's limit of 65536 bytes" in error["message"]
            assert error["code"] == "request_too_large"
        upload = client.post("/v1/rag/documents", files={"file": ("big.txt", b"word " * 20_000, "text/plain")})
        assert error_of(upload, 413)["code"] == "request_too_large"
    still_serves(tiny_server)


@pytest.mark.parametrize("field", list(ChatCompletionRequest.model_fields))
def test_a_wrong_json_type_names_the_field(tiny_server: LiveServer, field: str) -> None:
    with tiny_server.client() as client:
        error = error_of(client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2,
                                                                   field: [[[]]]}), 400)  # no field takes this
    assert error["param"] == field or error["param"].startswith(f"{field}."), error
    assert error["message"].startswith(error["param"] + ":"), error
    assert "str]" not in error["param"], error  # no pydantic union tags in the path


def test_union_fields_say_which_types_they_accept(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        error = error_of(client.post("/v1/chat/completions", json={"messages": HELLO, "stop": 5}), 400)
        assert error["param"] == "stop" and "accepted: str, list[str]" in error["message"], error
        error = error_of(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": 5}]}), 400)
        assert error["param"] == "messages.0.content", error


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"max_tokens": 2}, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, "messages.0.role"),
    ("/v1/completions", {"max_tokens": 2}, "prompt"),
    ("/v1/embeddings", {"model": "all-minilm-l6-v2"}, "input"),
    ("/v1/detokenize", {}, "tokens"),
])
def test_missing_required_fields_are_named(tiny_server: LiveServer, path: str, body: dict[str, Any], param: str) -> None:
    with tiny_server.client() as client:
        error = error_of(client.post(path, json=body), 400)
    assert error["param"] == param and error["message"] == f"{param} is required", error


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/tokenize",
                                  "/generate", "/v1/rag/query", "/v1/rag/transactions/query", "/v1/rag/documents"])
def test_a_body_that_is_no_json_object_is_400(tiny_server: LiveServer, path: str) -> None:
    with tiny_server.client() as client:
        for raw in ('[{"role": "user", "content": "hi"}]', '"hello"', "42", "null", "true"):
            error_of(post_raw(client, path, raw), 400)
        for raw in (b"", b"\xff\xfe{", b"{", "[" * 30_000 + "]" * 30_000):  # empty, not UTF-8, cut, too deep to parse
            response = post_raw(client, path, raw)
            assert 400 <= response.status_code < 500, (raw[:10], response.text)
    still_serves(tiny_server)


def test_no_body_says_a_body_is_needed(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        error = error_of(client.post("/v1/chat/completions", headers=JSON), 400)
    assert "request body is missing" in error["message"], error


def deep(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"messages": HELLO, "guided_json": {"a": deep(500)}}, "guided_json"),
    ("/v1/chat/completions", {"messages": HELLO, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": deep(500)}}}}]}, "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": deep(500)}}]}]}, "messages"),
    ("/v1/chat/completions", {"messages": HELLO, "unknown": deep(500)}, "unknown"),
    ("/v1/embeddings", {"input": deep(500, "x")}, "input"),
])
def test_deeply_nested_fields_are_400(tiny_server: LiveServer, path: str, body: dict[str, Any], param: str) -> None:
    """Parsed JSON can be ~1000 levels deep; recursive code downstream (templates, json.dumps) is not."""
    with tiny_server.client() as client:
        error = error_of(post_raw(client, path, json.dumps(body)), 400)
    assert error["param"] == param and error["code"] == "nesting_too_deep", error
    still_serves(tiny_server)


def test_nesting_a_real_request_uses_is_fine(tiny_server: LiveServer) -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(10):
        schema = {"type": "object", "properties": {"x": schema}}
    with tiny_server.client() as client:
        response = client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2, "tools": [
            {"type": "function", "function": {"name": "f", "parameters": schema}}]})
    assert response.status_code == 200, response.text
