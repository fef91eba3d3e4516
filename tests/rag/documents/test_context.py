"""Prompt building: numbered sources, the character budget, and the sources payload."""

from __future__ import annotations

import json
import re

from labs.rag.documents import DEFAULT_RAG_SYSTEM, Hit, build_rag_messages, select_context, sources_payload
from labs.rag.documents.records import make_snippet


def hit(number: int, text: str | None = None, score: float = 0.9, page: int | None = None) -> Hit:
    text = text or f"Fact number {number} says that the answer is {number}. " * 5
    return Hit(f"doc{number}", f"/docs/doc{number}.md", f"Document {number}", number - 1, score - number / 100, text, make_snippet(text), page=page)


def test_messages_number_the_sources_and_ask_for_citations() -> None:
    hits = [hit(1), hit(2, page=3)]
    messages = build_rag_messages("What is the answer?", hits)
    assert [message["role"] for message in messages] == ["system", "user"]
    assert messages[0]["content"] == DEFAULT_RAG_SYSTEM
    assert "only" in DEFAULT_RAG_SYSTEM and "[1]" in DEFAULT_RAG_SYSTEM
    user = messages[1]["content"]
    assert user.startswith("Sources:\n\n[1] Document 1\nFact number 1")
    assert "\n\n[2] Document 2, page 3\nFact number 2" in user
    assert "Question: What is the answer?" in user and "cite them by number" in user
    assert user.index("[1]") < user.index("[2]") < user.index("Question:")


def test_custom_system_prompt_replaces_the_default() -> None:
    messages = build_rag_messages("Q?", [hit(1)], system="Answer in French.")
    assert messages[0] == {"role": "system", "content": "Answer in French."}
    assert "[1] Document 1" in messages[1]["content"]


def test_no_hits_asks_the_model_to_say_it_does_not_know() -> None:
    user = build_rag_messages("Who won?", [])[1]["content"]
    assert "none found" in user and "do not know" in user and "Question: Who won?" in user


def test_sources_stop_at_the_character_budget() -> None:
    hits = [hit(number) for number in range(1, 21)]  # 220 chars each as a source block
    budget = 700
    messages = build_rag_messages("Q?", hits, char_budget=budget)
    user = messages[1]["content"]
    numbers = [int(found) for found in re.findall(r"^\[(\d+)\] Document", user, re.MULTILINE)]
    assert numbers == [1, 2, 3]
    sources = user.split("\n\nQuestion:")[0].removeprefix("Sources:\n\n")
    assert len(sources) <= budget
    assert len(build_rag_messages("Q?", hits)[1]["content"]) < 3500  # the default budget keeps it short


def test_stops_at_the_first_source_that_does_not_fit() -> None:
    hits = [hit(1), hit(2, "x " * 600), hit(3, "Short.")]
    assert [h.document_id for h in select_context(hits, char_budget=600)] == ["doc1"]


def test_an_oversized_best_hit_is_cut_to_fit() -> None:
    long = hit(1, "Word " * 1000)
    [chosen] = select_context([long, hit(2)], char_budget=500)
    assert chosen.text.endswith("…") and len(chosen.text) < 500
    assert len(build_rag_messages("Q?", [long], char_budget=500)[1]["content"]) < 700


def test_duplicate_texts_are_given_once() -> None:
    same = "The same passage appears in two files."
    chosen = select_context([hit(1, same), hit(2, same), hit(3)])
    assert [h.document_id for h in chosen] == ["doc1", "doc3"]


def test_sources_payload_matches_the_numbering_and_is_json() -> None:
    hits = [hit(number) for number in range(1, 6)]
    payload = sources_payload(hits, char_budget=700)
    assert [entry["id"] for entry in payload] == [1, 2, 3]
    assert payload[0] == {
        "id": 1,
        "document_id": "doc1",
        "document": "Document 1",
        "source": "/docs/doc1.md",
        "chunk": 0,
        "page": None,
        "score": round(hits[0].score, 4),
        "snippet": hits[0].snippet,
        "text": hits[0].text,
    }
    assert len(payload[0]["snippet"]) <= 201 and payload[0]["snippet"].endswith("…")
    assert json.loads(json.dumps(payload)) == payload
