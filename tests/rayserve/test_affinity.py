"""The conversation key and the replica ranking behind prefix-affinity routing (no Ray needed)."""

from __future__ import annotations

import json
from collections import Counter

from labs.rayserve.affinity import PROMPT_KEY_CHARS, conversation_key, rendezvous_order, too_busy

SYSTEM = {"role": "system", "content": "You are terse."}


def _key(**body) -> str | None:
    return conversation_key(json.dumps(body).encode())


def test_every_turn_of_a_chat_has_the_first_turns_key() -> None:
    first = [SYSTEM, {"role": "user", "content": "Name a colour."}]
    second = [*first, {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}]
    third = [*second, {"role": "assistant", "content": "Red."}, {"role": "user", "content": "One more?"}]
    keys = {_key(model="m", messages=m) for m in (first, second, third)}
    assert len(keys) == 1 and None not in keys
    assert _key(model="m", messages=[SYSTEM, {"role": "user", "content": "Name a fruit."}]) not in keys
    assert _key(model="other", messages=first) not in keys


def test_anthropic_system_and_responses_input_count() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    assert _key(model="m", system="A", messages=messages) != _key(model="m", system="B", messages=messages)
    turn1 = [{"role": "user", "content": "Hi"}]
    turn2 = [*turn1, {"type": "message", "role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    assert _key(model="m", instructions="x", input=turn1) == _key(model="m", instructions="x", input=turn2)


def test_prompts_share_a_key_past_their_first_characters() -> None:
    opening = "x" * PROMPT_KEY_CHARS
    assert _key(model="m", prompt=opening) == _key(model="m", prompt=opening + " and more") is not None
    assert _key(model="m", prompt=["one prompt"]) == _key(model="m", prompt="one prompt")
    assert _key(model="m", input="a string input") is not None


def test_requests_without_a_conversation_have_no_key() -> None:
    assert conversation_key(b"not json") is None
    assert conversation_key(b"[1, 2]") is None
    assert _key(model="m") is None
    assert _key(model="e", input=["two", "inputs"]) is None  # embeddings of several texts
    assert conversation_key(b'{"prompt": "hi"}', "multipart/form-data; boundary=x") is None


def test_rendezvous_spreads_keys_and_moves_only_a_leaving_replicas_keys() -> None:
    replicas = ["a", "b", "c"]
    keys = [f"k{i}" for i in range(3000)]
    first = {key: rendezvous_order(key, replicas)[0] for key in keys}
    shares = Counter(first.values())
    assert all(800 < shares[r] < 1200 for r in replicas), shares
    after = {key: rendezvous_order(key, ["a", "c"])[0] for key in keys}
    moved = [key for key in keys if after[key] != first[key]]
    assert moved and all(first[key] == "b" for key in moved)
    assert rendezvous_order("k1", replicas) == rendezvous_order("k1", list(reversed(replicas)))


def test_too_busy_compares_with_the_least_loaded() -> None:
    assert not too_busy(9, [9, 1], 8)
    assert too_busy(10, [10, 1], 8)
    assert not too_busy(None, [0, 30], 8)  # unknown: no evidence it is busy
    assert not too_busy(5, [None, None], 0)
