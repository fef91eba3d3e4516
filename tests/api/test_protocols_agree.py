"""One core, four renderings: the same greedy turn gives the same text over every protocol."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import LiveServer

MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "Name a colour of the sky."}]
TOKENS = 16


def _chat(client: Any) -> str:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": TOKENS, "temperature": 0}
    return client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]


def _responses(client: Any) -> str:
    body = {"model": MODEL, "instructions": MESSAGES[0]["content"], "input": MESSAGES[1]["content"],
            "max_output_tokens": TOKENS, "temperature": 0, "store": False}
    output = client.post("/v1/responses", json=body).json()["output"]
    return "".join(part["text"] for item in output if item["type"] == "message" for part in item["content"])


def _messages(client: Any) -> str:
    body = {"model": MODEL, "system": MESSAGES[0]["content"], "messages": MESSAGES[1:], "max_tokens": TOKENS,
            "temperature": 0}
    return "".join(block["text"] for block in client.post("/v1/messages", json=body).json()["content"]
                   if block["type"] == "text")


def _ollama(client: Any) -> str:
    body = {"model": MODEL, "messages": MESSAGES, "stream": False, "options": {"temperature": 0, "num_predict": TOKENS}}
    return client.post("/api/chat", json=body).json()["message"]["content"]


@pytest.mark.parametrize("protocol", [_responses, _messages, _ollama], ids=["responses", "messages", "ollama"])
def test_every_protocol_gives_the_chat_completions_text(smol_server: LiveServer, protocol: Any) -> None:
    with smol_server.client() as client:
        expected = _chat(client)
        assert expected.strip()
        assert protocol(client) == expected
    smol_server.wait_idle()
