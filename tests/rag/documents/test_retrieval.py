"""Retrieval quality on the corpus: recall@3 over questions whose answering document is known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from labs.embeddings import EmbeddingModel
from labs.rag.documents import DocumentIndex, build_rag_messages, sources_payload
from tests.rag.documents.conftest import PDF_DOCUMENTS
from tests.rag.documents.questions import QUESTIONS

RECALL_AT_3 = 0.9


@pytest.fixture(scope="module")
def corpus_index(embedding_model: EmbeddingModel, corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocumentIndex]:
    index = DocumentIndex(embedding_model, path=tmp_path_factory.mktemp("corpus-qdrant"))
    report = index.ingest(corpus_dir)
    assert report.ok, report.to_dict()
    yield index
    index.close()


def test_the_corpus_is_ingested(corpus_index: DocumentIndex, corpus_dir: Path) -> None:
    documents = corpus_index.list_documents()
    names = {Path(document.source).name for document in documents}
    assert len(documents) >= 10 and names == {path.name for path in corpus_dir.iterdir()}
    assert {document.kind for document in documents} == {"markdown", "text", "html", "pdf"}
    assert sum(document.chunks for document in documents) == corpus_index.count_chunks()
    titles = {Path(document.source).name: document.title for document in documents}
    assert titles["expense-policy.md"] == "Expense Policy"
    assert titles["remote-work.txt"] == "remote-work.txt"
    assert titles["benefits.html"] == "Employee Benefits"
    for filename, title, _ in PDF_DOCUMENTS:
        assert titles[filename] == title


def test_recall_at_3(corpus_index: DocumentIndex) -> None:
    assert len(QUESTIONS) >= 20
    found = 0
    first = 0
    misses = []
    for question, expected in QUESTIONS:
        sources = [Path(hit.source).name for hit in corpus_index.search(question, top_k=3)]
        found += expected in sources
        first += bool(sources) and sources[0] == expected
        if expected not in sources:
            misses.append(f"{question!r}: expected {expected}, got {sources}")
    recall = found / len(QUESTIONS)
    print(f"recall@3 = {recall:.3f} ({found}/{len(QUESTIONS)}), recall@1 = {first / len(QUESTIONS):.3f}")
    for miss in misses:
        print("miss:", miss)
    assert recall >= RECALL_AT_3, misses


def test_search_to_prompt(corpus_index: DocumentIndex) -> None:
    question = "How long does the Kestrel battery last?"
    hits = corpus_index.search(question, top_k=4)
    messages = build_rag_messages(question, hits)
    assert "[1] Kestrel Robot: Frequently Asked Questions" in messages[1]["content"]
    assert "10 hours" in messages[1]["content"]
    payload = sources_payload(hits)
    assert payload[0]["document"] == "Kestrel Robot: Frequently Asked Questions"
    json.dumps(payload)
