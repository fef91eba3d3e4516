"""A conversation longer than the context drops its oldest turns (the system message stays); retrieved
sources replace the question and keep the user's system message. Pure logic: a word tokenizer, no model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from labs.config import load_settings
from labs.serving.errors import InvalidTurnError
from labs.serving.prompt import prepare_prompt
from labs.serving.sampling import Limits
from labs.serving.turn import RequestedSampling, Turn
from labs.serving.turns import Serving


class WordTokenizer:
    """One token per word; no chat template, so the plain fallback format is used."""

    chat_template = None

    def __call__(self, text: str, **_: object) -> dict[str, list[int]]:
        return {"input_ids": [len(word) for word in text.split()]}


def served(context: int) -> SimpleNamespace:
    return SimpleNamespace(id="words", tokenizer=WordTokenizer(), context_length=context, reasoning_tags=None,
                           recommended={})


@pytest.fixture
def settings(tmp_path: Path):  # noqa: ANN201
    return load_settings({}, environ={"LABS_HOME": str(tmp_path), "LABS_CONFIG": ""}, cwd=tmp_path)


def serving(settings, documents: object = None) -> Serving:  # noqa: ANN001
    embeddings = SimpleNamespace(model=lambda: asyncio.sleep(0, result=object()))
    return Serving(settings, SimpleNamespace(), SimpleNamespace(), documents, embeddings, Limits.for_one_user())


def chat(system: str | None, history: list[dict], max_tokens: int | None) -> Turn:
    messages = ([{"role": "system", "content": system}] if system else []) + history
    return Turn(messages=messages, sampling=RequestedSampling(max_tokens=max_tokens), fit_history=True)


def long_history() -> list[dict]:
    history = []
    for turn in range(5):
        history += [{"role": "user", "content": f"question {turn} " + "word " * 8},
                    {"role": "assistant", "content": "answer " * 8}]
    return history + [{"role": "user", "content": "last question"}]


def test_oldest_turns_leave_the_prompt_and_max_tokens_is_capped(settings) -> None:  # noqa: ANN001
    turn = chat("Be brief.", long_history(), 10)
    prepared = prepare_prompt(turn, served(60), settings)
    assert prepared.dropped % 2 == 0 and prepared.dropped >= 6  # whole turns
    assert len(prepared.ids) + 10 <= 60
    assert prepared.ids[:2] == [len("System:"), len("Be")]  # the system message is kept
    assert serving(settings)._params(turn, served(60), prepared, False).max_tokens == 10

    turn = chat(None, long_history()[-1:], 500)
    prepared = prepare_prompt(turn, served(60), settings)
    assert prepared.dropped == 0
    assert serving(settings)._params(turn, served(60), prepared, False).max_tokens == 60 - len(prepared.ids)


def test_a_single_message_longer_than_the_context_is_refused(settings) -> None:  # noqa: ANN001
    with pytest.raises(InvalidTurnError, match="context"):
        prepare_prompt(chat(None, [{"role": "user", "content": "word " * 10}], None), served(5), settings)


def test_without_fitting_a_too_long_request_is_refused_naming_both_numbers(settings) -> None:  # noqa: ANN001
    turn = Turn(messages=[{"role": "user", "content": "word " * 10}], sampling=RequestedSampling(max_tokens=100))
    prepared = prepare_prompt(turn, served(60), settings)
    with pytest.raises(InvalidTurnError, match=r"plus max_tokens \(100\) exceeds words's context of 60"):
        serving(settings)._params(turn, served(60), prepared, False)


class FakeDocuments:
    def search(self, model: object, question: str, top_k: object = None, threshold: object = None) -> list[str]:
        return ["hit"]

    def messages(self, question: str, hits: list[str], context_tokens: int, answer_tokens: int) -> tuple[list, list]:
        self.asked = (question, hits, context_tokens, answer_tokens)
        return ([{"role": "system", "content": "Use the sources."},
                 {"role": "user", "content": f"Sources: [1] ...\n\nQuestion: {question}"}], [{"id": 1}])


def test_documents_replace_the_question_and_keep_the_users_system_message(settings) -> None:  # noqa: ANN001
    documents = FakeDocuments()
    core = serving(settings, documents)
    history = [{"role": "user", "content": "a" * 30}, {"role": "assistant", "content": "b" * 30},
               {"role": "user", "content": "Vacation?"}]
    turn, sources = asyncio.run(core._with_document_sources(chat(None, history, 5), served(256)))
    assert sources == [{"id": 1}]
    assert turn.messages[0] == {"role": "system", "content": "Use the sources."}
    assert turn.messages[1:3] == history[:2]
    assert turn.messages[3] == {"role": "user", "content": "Sources: [1] ...\n\nQuestion: Vacation?"}
    assert documents.asked == ("Vacation?", ["hit"], 256 - 60 // 3, 5)  # older messages use up context
    turn, _ = asyncio.run(core._with_document_sources(chat("Be brief.", history, None), served(256)))
    assert turn.messages[0] == {"role": "system", "content": "Be brief."} and len(turn.messages) == 4
    assert documents.asked[2:] == (256 - 69 // 3, 64)  # the one answer budget: min(256 default, 256 // 4)
