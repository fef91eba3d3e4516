"""Which replica should serve a request: a conversation key from the body, and replicas ranked for it.

No Ray here: the ingress computes the key (it has the body), the router ranks replicas with it.

The key names what every turn of one conversation shares at its start: the model, the system
text, and the messages up to and including the first user message. Turn 2 of a chat is turn 1's
messages + the answer + a new user message, so both turns get the same key, and the replica that
served turn 1 holds turn 2's prompt up to there in its prefix cache. A plain prompt (completions,
Ollama generate, a Responses `input` string) is keyed on its first PROMPT_KEY_CHARS characters:
prompts that grow turn by turn keep their key once the first turn is that long.

Replicas are ranked by rendezvous (highest random weight) hashing: each (key, replica) pair gets a
pseudo-random score and the highest wins. Every router computes the same order without sharing
state, keys spread evenly, and when a replica leaves only its own keys move (each to its
second-ranked replica).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, TypeVar

PROMPT_KEY_CHARS = 256
_SYSTEM_FIELDS = ("system", "instructions")  # Anthropic and Ollama; OpenAI Responses
_CONVERSATION_FIELDS = ("messages", "input")  # chat, Anthropic, Ollama chat; Responses
_PROMPT_FIELDS = ("prompt", "input")

T = TypeVar("T", bound=Hashable)


def conversation_key(body: bytes, content_type: str = "application/json") -> str | None:
    """The key of the conversation a request body continues, or None when it has none (not JSON,
    no messages or prompt): such a request goes to the least loaded replica."""
    if "json" not in content_type and content_type:
        return None
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    opening = _opening(document)
    if opening is None:
        return None
    system = [document.get(name) for name in _SYSTEM_FIELDS]
    material = json.dumps([document.get("model"), system, opening], sort_keys=True, default=str)
    return hashlib.blake2b(material.encode(), digest_size=12).hexdigest()


def _opening(document: dict[str, Any]) -> Any:
    """The part of the request every later turn repeats: messages up to the first user message,
    or the first characters of a prompt."""
    for name in _CONVERSATION_FIELDS:
        items = document.get(name)
        if isinstance(items, list) and items and all(isinstance(item, dict) for item in items):
            for end, item in enumerate(items, start=1):
                if item.get("role") == "user":
                    return items[:end]
            return items[:1]
    for name in _PROMPT_FIELDS:
        prompt = document.get(name)
        if isinstance(prompt, list) and len(prompt) == 1:  # completions accept a one-prompt list
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            return prompt[:PROMPT_KEY_CHARS]
    return None


def _score(key: str, replica: Hashable) -> int:
    digest = hashlib.blake2b(f"{key}\x00{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: str, replicas: Iterable[T]) -> list[T]:
    """`replicas` from the most to the least preferred for `key`."""
    return sorted(replicas, key=lambda replica: _score(key, replica), reverse=True)


def too_busy(preferred_load: int | None, loads: Sequence[int | None], max_imbalance: int) -> bool:
    """Whether the preferred replica is so much busier than the least loaded that a cache hit is not
    worth the wait. Unknown loads (no recent probe) count as idle."""
    known = [load for load in loads if load is not None]
    if preferred_load is None or not known:
        return False
    return preferred_load - min(known) > max_imbalance
