"""Turn a prompt or chat messages into prompt token ids.

The tokenizer's chat template is used when it has one. A model without a template gets a plain,
documented fallback (see README "Chat templates"):

    System: {system}\n\nUser: {user}\n\nAssistant: {assistant}\n\n ... Assistant:

`use_chat_template=false` sends a prompt as raw text (messages are then joined with the fallback).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from labs.errors import LabsError

ROLES = ("system", "developer", "user", "assistant", "tool")
FALLBACK_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


class PromptError(LabsError):
    """Messages or prompt that cannot be turned into model input."""

    exit_code = 2


def parse_messages_json(text: str) -> list[dict[str, Any]]:
    """Parse `--messages-json`: a JSON list of {"role", "content"} objects."""
    try:
        messages = json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptError(f"--messages-json is not valid JSON: {error}") from None
    return validate_messages(messages)


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise PromptError('messages must be a non-empty JSON list like [{"role": "user", "content": "Hi"}]')
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise PromptError(f"messages[{index}] must be an object with role and content, got {message!r}")
        role = message.get("role")
        if role not in ROLES:
            raise PromptError(f"messages[{index}].role must be one of {', '.join(ROLES)}, got {role!r}")
        checked.append({**message, "role": role, "content": _content_text(message.get("content"), index)})
    return checked


def _content_text(content: Any, index: int) -> str:
    """String content, or OpenAI-style list of text parts joined."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise PromptError(f"messages[{index}].content: only text parts are supported, got {part!r}")
        return "".join(parts)
    raise PromptError(f"messages[{index}].content must be a string or a list of text parts, got {content!r}")


def build_messages(prompt: str | None, messages: Sequence[dict[str, Any]] | None, system: str | None) -> list[dict[str, Any]]:
    if (prompt is None) == (messages is None):
        raise PromptError("give either a prompt or messages, not both and not neither")
    result = validate_messages(list(messages)) if messages is not None else [{"role": "user", "content": prompt}]
    if system and not any(m["role"] in ("system", "developer") for m in result):
        result.insert(0, {"role": "system", "content": system})
    return result


def prompt_token_ids(
    tokenizer: Any,
    *,
    prompt: str | None = None,
    messages: Sequence[dict[str, Any]] | None = None,
    system: str | None = None,
    use_chat_template: bool = True,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    if prompt is not None and messages is None and not use_chat_template:
        return list(tokenizer(prompt)["input_ids"])  # raw text, with the tokenizer's own BOS if any
    chat = build_messages(prompt, messages, system)
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        # OpenAI's "developer" role is its newer name for "system"; chat templates only know "system"
        chat = [{**m, "role": "system"} if m["role"] == "developer" else m for m in chat]
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        extra = {"tools": tools} if tools else {}  # only for templates that know tools (see labs.serving.tools)
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(plain_chat_text(chat, add_generation_prompt))["input_ids"])


def plain_chat_text(messages: Sequence[dict[str, Any]], add_generation_prompt: bool) -> str:
    """The documented fallback format for models without a chat template."""
    turns = [f"{FALLBACK_LABELS[m['role']]}: {m['content']}" for m in messages]
    if add_generation_prompt:
        turns.append("Assistant:")
    return "\n\n".join(turns)
