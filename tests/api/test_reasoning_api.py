"""A reasoning model's <think>...</think> goes to reasoning_content, the rest to content.

The fixture model is the tiny random model whose tokenizer gains <think> and </think> tokens and
whose chat template opens the thinking in the generation prompt (as DeepSeek-R1-0528 does), so
its output starts inside the reasoning. logit_bias steers it to close the thinking.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from tests.api.conftest import LiveServer, start_server


def _server(tiny_settings_factory: Any, folder: Path, **env: str) -> LiveServer:
    return start_server(tiny_settings_factory(LABS_MODEL=str(folder), LABS_PRELOAD_ON_START="true", **env))


def test_thinking_is_split_from_the_answer(tiny_settings_factory: Any, thinking_model_dir: Path) -> None:
    server = _server(tiny_settings_factory, thinking_model_dir)
    try:
        tokenizer = server.state.models.loaded(server.state.models.default_id).tokenizer
        end = tokenizer.convert_tokens_to_ids("</think>")
        word = tokenizer.encode(" maybe", add_special_tokens=False)[0]
        base: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0, "use_rag": False}
        with server.client() as client:
            # Still thinking when max_tokens is reached: all of it is reasoning, the answer is empty.
            body = {**base, "max_tokens": 3, "logit_bias": {str(word): 100}}
            message = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
            assert message == {"role": "assistant", "content": "", "reasoning_content": "maybe maybe maybe"}
            # Closing the thinking at once: empty reasoning, and what follows the tag is the answer.
            body = {**base, "max_tokens": 3, "logit_bias": {str(end): 100}}
            message = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
            assert message["reasoning_content"] == "" and message["content"] == "</think></think>"
            # Streams carry the same split in delta.reasoning_content.
            body = {**base, "max_tokens": 3, "logit_bias": {str(word): 100}, "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in response.iter_lines()
                          if line.startswith("data: {")]
            assert "".join(d.get("reasoning_content", "") for d in deltas) == "maybe maybe maybe"
            assert "".join(d.get("content", "") for d in deltas) == ""
    finally:
        server.stop()


def test_splitting_can_be_turned_off(tiny_settings_factory: Any, thinking_model_dir: Path) -> None:
    server = _server(tiny_settings_factory, thinking_model_dir, LABS_SPLIT_REASONING="false")
    try:
        with server.client() as client:
            body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
            message = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
        assert "reasoning_content" not in message and message["content"]
    finally:
        server.stop()


def test_ordinary_models_are_never_split(tiny_server: LiveServer) -> None:
    assert tiny_server.state.models.loaded(tiny_server.state.models.default_id).reasoning_tags is None
