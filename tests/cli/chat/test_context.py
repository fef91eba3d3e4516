"""A conversation longer than the context drops its oldest turns (the system message stays)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from labs.cli.chat.backends import LocalBackend
from labs.engine.sampling import SamplingParams
from labs.errors import LabsError


class WordTokenizer:
    """One token per word; no chat template, so the plain fallback format is used."""

    chat_template = None

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [len(word) for word in text.split()]}


def backend(context: int) -> LocalBackend:
    local = LocalBackend.__new__(LocalBackend)
    local.settings = SimpleNamespace(generation=SimpleNamespace(use_chat_template=True, add_generation_prompt=True))
    local.loaded = SimpleNamespace(tokenizer=WordTokenizer(), context_length=context)
    local.reasoning_tags = None
    return local


def test_oldest_turns_leave_the_prompt_and_max_tokens_is_capped() -> None:
    history = []
    for turn in range(5):
        history += [{"role": "user", "content": f"question {turn} " + "word " * 8},
                    {"role": "assistant", "content": "answer " * 8}]
    history.append({"role": "user", "content": "last question"})
    ids, dropped, params, _ = backend(60).fit("Be brief.", history, SamplingParams(max_tokens=10))
    assert dropped % 2 == 0 and dropped >= 6  # whole turns
    assert len(ids) + 10 <= 60 and params.max_tokens == 10
    assert ids[:2] == [len("System:"), len("Be")]  # the system message is kept
    ids, dropped, params, _ = backend(60).fit(None, history[-1:], SamplingParams(max_tokens=500))
    assert dropped == 0 and params.max_tokens == 60 - len(ids)  # capped by the room left
    with pytest.raises(LabsError, match="too long"):
        backend(5).fit(None, [{"role": "user", "content": "word " * 10}], SamplingParams())


class FakeDocuments:
    def search(self, model: object, question: str) -> list[str]:
        return ["hit"]

    def messages(self, question: str, hits: list[str], context_tokens: int, answer_tokens: int) -> tuple[list, list]:
        self.asked = (question, hits, context_tokens, answer_tokens)
        return ([{"role": "system", "content": "Use the sources."},
                 {"role": "user", "content": f"Sources: [1] ...\n\nQuestion: {question}"}], [{"id": 1}])


def test_documents_replace_the_question_and_keep_the_users_system_message() -> None:
    local = backend(256)
    local.settings.generation.max_new_tokens = 64
    local.documents, local.embedding_model = FakeDocuments(), object()
    history = [{"role": "user", "content": "a" * 30}, {"role": "assistant", "content": "b" * 30},
               {"role": "user", "content": "Vacation?"}]
    system, messages, sources = local.with_documents(None, history, SamplingParams(max_tokens=5))
    assert system == "Use the sources." and sources == [{"id": 1}]
    assert messages[:2] == history[:2]
    assert messages[2] == {"role": "user", "content": "Sources: [1] ...\n\nQuestion: Vacation?"}
    assert local.documents.asked == ("Vacation?", ["hit"], 256 - 60 // 3, 5)  # older messages use up context
    system, messages, _ = local.with_documents("Be brief.", history, SamplingParams(max_tokens=None))
    assert system == "Be brief." and len(messages) == 3
    assert local.documents.asked[2:] == (256 - 69 // 3, 64)
