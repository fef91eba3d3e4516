"""DocumentIndex on a real Qdrant local-mode store with the real embedding model."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest

from labs.embeddings import EmbeddingModel, EmbeddingResult
from labs.errors import LabsError
from labs.rag.documents import (
    ChunkingConfig,
    DocumentIndex,
    DocumentPathError,
    DocumentStoreError,
    DocumentStoreLockedError,
    EmbeddingModelMismatchError,
    document_id_for_path,
    document_id_for_upload,
)
from tests.rag.documents.conftest import CORPUS, write_blank_pdf, write_pdf

OpenIndex = Callable[..., DocumentIndex]

LEAVE = (CORPUS / "leave-policy.md").read_text()
SECURITY = (CORPUS / "security-policy.md").read_text()


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def chunk_indexes(index: DocumentIndex, document_id: str) -> list[int]:
    hits = index.search("leave policy days", top_k=100, document_ids=[document_id])
    return sorted(hit.chunk_index for hit in hits)


class FakeModel:
    """Stands in for another embedding model: only its name and dimension matter here."""

    def __init__(self, name: str, dimension: int) -> None:
        self.name, self.dimension = name, dimension

    def encode(self, inputs: Sequence[str]) -> EmbeddingResult:
        vectors = np.ones((len(inputs), self.dimension), dtype=np.float32) / np.sqrt(self.dimension)
        return EmbeddingResult(vectors=vectors, token_counts=[1] * len(inputs), truncated=[False] * len(inputs))


def test_ingest_a_file_stores_chunks_with_their_metadata(open_index: OpenIndex, tmp_path: Path) -> None:
    path = write(tmp_path / "docs", "leave-policy.md", LEAVE)
    index = open_index(chunking=ChunkingConfig(size=400, overlap=80))
    report = index.ingest(path)
    [result] = report.files
    assert (result.status, result.document_id, result.title) == ("ingested", document_id_for_path(path), "Leave Policy")
    assert result.chunks > 3 and result.chunks == index.count_chunks()
    assert report.ok and report.summary() == "1 ingested, 0 unchanged, 0 failed"
    assert chunk_indexes(index, result.document_id) == list(range(result.chunks))

    [document] = index.list_documents()
    assert (document.document_id, document.source, document.title, document.chunks, document.kind) == (
        result.document_id, str(path.resolve()), "Leave Policy", result.chunks, "markdown",
    )
    assert len(document.content_hash) == 64 and document.ingested_at.endswith("+00:00")

    hit = index.search("How many weeks of parental leave do birthing parents get?", top_k=1)[0]
    assert "20 weeks" in hit.text and hit.source == str(path.resolve()) and hit.title == "Leave Policy"
    assert hit.text == LEAVE[hit.start : hit.end]  # offsets point into the extracted text
    assert 0 < hit.score <= 1 and hit.page is None
    assert len(hit.snippet) <= 201 and hit.snippet.split()[:3] == hit.text.split()[:3]
    json.dumps(hit.to_dict())
    json.dumps(report.to_dict())


def test_reingesting_an_unchanged_file_is_a_no_op(open_index: OpenIndex, tmp_path: Path) -> None:
    path = write(tmp_path / "docs", "leave-policy.md", LEAVE)
    index = open_index()
    first = index.ingest(path).files[0]
    before = index.list_documents()
    again = index.ingest(path).files[0]
    assert (again.status, again.chunks, again.document_id) == ("unchanged", first.chunks, first.document_id)
    assert index.list_documents() == before  # same ingested_at: nothing was rewritten
    assert index.count_chunks() == first.chunks


def test_reingesting_a_changed_file_replaces_its_chunks(open_index: OpenIndex, tmp_path: Path) -> None:
    path = write(tmp_path / "docs", "leave-policy.md", LEAVE)
    other = write(tmp_path / "docs", "security-policy.md", SECURITY)
    index = open_index(chunking=ChunkingConfig(size=400, overlap=80))
    index.ingest([path, other])
    security_chunks = index.count_chunks(document_id_for_path(other))
    old_hash = {d.document_id: d.content_hash for d in index.list_documents()}[document_id_for_path(path)]

    path.write_text(LEAVE.replace("27 days", "30 days").split("## Sick leave")[0], encoding="utf-8")
    result = index.ingest(path).files[0]
    assert result.status == "ingested" and "replaced" in result.message
    document_id = document_id_for_path(path)
    assert index.count_chunks(document_id) == result.chunks  # no duplicates left from the old version
    assert chunk_indexes(index, document_id) == list(range(result.chunks))
    assert index.count_chunks() == result.chunks + security_chunks
    assert index.count_chunks(document_id_for_path(other)) == security_chunks
    [document] = [d for d in index.list_documents() if d.document_id == document_id]
    assert document.content_hash != old_hash and document.chunks == result.chunks
    hits = index.search("How many days of annual leave?", top_k=3, document_ids=[document_id])
    assert any("30 days" in hit.text for hit in hits) and not any("27 days" in hit.text for hit in hits)
    assert not index.search("doctor's note for sick days", top_k=10, document_ids=[document_id]) or all(
        "doctor" not in hit.text for hit in index.search("doctor's note for sick days", top_k=10, document_ids=[document_id])
    )


def test_new_chunk_settings_rechunk_an_unchanged_file(embedding_model: EmbeddingModel, tmp_path: Path) -> None:
    path = write(tmp_path / "docs", "leave-policy.md", LEAVE)
    with DocumentIndex(embedding_model, path=tmp_path / "q", chunking=ChunkingConfig(size=800, overlap=100)) as index:
        coarse = index.ingest(path).files[0].chunks
    with DocumentIndex(embedding_model, path=tmp_path / "q", chunking=ChunkingConfig(size=300, overlap=50)) as index:
        result = index.ingest(path).files[0]
        assert result.status == "ingested" and result.chunks > coarse
        assert index.count_chunks() == result.chunks


def test_chunking_in_tokens_uses_the_embedding_models_tokenizer(open_index: OpenIndex, embedding_model: EmbeddingModel, tmp_path: Path) -> None:
    index = open_index(chunking=ChunkingConfig(size=64, overlap=16, unit="tokens"))
    result = index.ingest(write(tmp_path / "docs", "leave-policy.md", LEAVE)).files[0]
    hits = index.search("leave", top_k=100)
    assert len(hits) == result.chunks > 5
    assert all(len(embedding_model.tokenize(hit.text)) <= 64 for hit in hits)


def test_a_changed_file_that_no_longer_loads_keeps_its_previous_version(open_index: OpenIndex, tmp_path: Path) -> None:
    path = write(tmp_path / "docs", "notes.txt", "Version one of the notes. It has two sentences.")
    index = open_index()
    chunks = index.ingest(path).files[0].chunks
    path.write_bytes(b"\x00\x01 now binary")
    result = index.ingest(path).files[0]
    assert result.status == "failed" and "previously indexed version is kept" in result.message
    assert index.count_chunks() == chunks


def test_delete_removes_a_documents_chunks(open_index: OpenIndex, tmp_path: Path) -> None:
    leave = write(tmp_path / "docs", "leave-policy.md", LEAVE)
    security = write(tmp_path / "docs", "security-policy.md", SECURITY)
    index = open_index()
    index.ingest(tmp_path / "docs")
    leave_id = document_id_for_path(leave)
    assert index.delete(leave_id) is True
    assert index.count_chunks(leave_id) == 0
    assert [d.document_id for d in index.list_documents()] == [document_id_for_path(security)]
    assert all(hit.document_id != leave_id for hit in index.search("annual leave days", top_k=10))
    assert index.delete(leave_id) is False
    assert index.delete("no-such-document") is False
    assert index.ingest(leave).files[0].status == "ingested"  # deleted documents come back on ingest


def test_the_index_survives_a_restart(embedding_model: EmbeddingModel, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs, "leave-policy.md", LEAVE)
    write(docs, "security-policy.md", SECURITY)
    store = tmp_path / "qdrant"
    index = DocumentIndex(embedding_model, path=store)
    index.ingest(docs)
    documents, chunks = index.list_documents(), index.count_chunks()
    question = "What is the minimum password length?"
    best = index.search(question, top_k=1)[0]
    index.close()

    reopened = DocumentIndex(embedding_model, path=store)
    try:
        assert reopened.list_documents() == documents and reopened.count_chunks() == chunks
        again = reopened.search(question, top_k=1)[0]
        assert (again.document_id, again.chunk_index, again.text) == (best.document_id, best.chunk_index, best.text)
        assert again.score == pytest.approx(best.score, abs=1e-5)
        assert {result.status for result in reopened.ingest(docs).files} == {"unchanged"}
    finally:
        reopened.close()


def test_a_second_client_on_the_same_folder_says_why_it_fails(open_index: OpenIndex, embedding_model: EmbeddingModel, tmp_path: Path) -> None:
    index = open_index()
    with pytest.raises(DocumentStoreLockedError, match="already open by another client.*one client per folder") as error:
        DocumentIndex(embedding_model, path=tmp_path / "qdrant")
    assert error.value.exit_code == 2 and str(tmp_path / "qdrant") in str(error.value)
    assert index.count_chunks() == 0  # the first one still works
    index.close()
    DocumentIndex(embedding_model, path=tmp_path / "qdrant").close()  # closing releases the lock


def test_bad_files_are_reported_per_file_and_the_rest_is_ingested(open_index: OpenIndex, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    good = write(docs, "leave-policy.md", LEAVE)
    write(docs, "nested/deeper/security-policy.md", SECURITY)
    write(docs, "slides.pptx", "not really slides")
    (docs / "image.txt").write_bytes(os.urandom(200) + b"\x00" * 10)
    (docs / "latin1.md").write_bytes("Caf\u00e9 cr\u00e8me policy.".encode("latin-1"))
    (docs / "empty.txt").write_bytes(b"")
    write_blank_pdf(docs / "drawing.pdf")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7\ngarbage")
    write_pdf(docs / "fruit.pdf", "Fruit", [[("Apples", "Apples are crunchy and grow on trees.")]])
    write(docs, ".hidden/secret.md", "# Secret\n\nNever indexed.")
    write(docs, ".DS_Store", "junk")

    report = open_index().ingest(docs)
    by_name = {Path(result.source).name: result for result in report.files}
    assert sorted(by_name) == sorted(
        ["leave-policy.md", "security-policy.md", "slides.pptx", "image.txt", "latin1.md", "empty.txt", "drawing.pdf", "broken.pdf", "fruit.pdf"]
    )
    assert {name for name, result in by_name.items() if result.status == "ingested"} == {"leave-policy.md", "security-policy.md", "fruit.pdf"}
    expected = {
        "slides.pptx": "unsupported file type '.pptx'",
        "image.txt": "binary file",
        "latin1.md": "not valid UTF-8",
        "empty.txt": "the file is empty",
        "drawing.pdf": "no extractable text",
        "broken.pdf": "not a readable PDF",
    }
    for name, message in expected.items():
        result = by_name[name]
        assert result.status == "failed" and result.chunks == 0 and message in result.message and name in result.message, result
    assert report.summary() == "3 ingested, 0 unchanged, 6 failed" and not report.ok
    assert by_name["leave-policy.md"].source == str(good.resolve())


def test_an_unreadable_file_is_reported(open_index: OpenIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = tmp_path / "docs"
    locked = write(docs, "locked.md", "# Locked\n\nText.")
    write(docs, "open.md", "# Open\n\nText.")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: make the read fail as it would for a user
        read_bytes = Path.read_bytes

        def refuse(self: Path) -> bytes:
            if self.name == "locked.md":
                raise PermissionError(13, "Permission denied", str(self))
            return read_bytes(self)

        monkeypatch.setattr(Path, "read_bytes", refuse)
    try:
        report = open_index().ingest(docs)
    finally:
        locked.chmod(0o644)
    by_name = {Path(result.source).name: result for result in report.files}
    assert by_name["locked.md"].status == "failed" and "cannot read the file" in by_name["locked.md"].message
    assert by_name["open.md"].status == "ingested"


def test_an_empty_folder_is_reported(open_index: OpenIndex, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    report = open_index().ingest(tmp_path / "empty")
    [result] = report.files
    assert result.status == "failed" and "the folder has no files to ingest" in result.message


def test_a_missing_path_raises_before_anything_is_ingested(open_index: OpenIndex, tmp_path: Path) -> None:
    good = write(tmp_path / "docs", "leave-policy.md", LEAVE)
    index = open_index()
    missing = tmp_path / "nowhere" / "handbook.pdf"
    with pytest.raises(DocumentPathError, match=f"no such file or folder: {missing}") as error:
        index.ingest([good, missing])
    assert isinstance(error.value, LabsError) and error.value.exit_code == 2
    assert index.count_chunks() == 0


def test_uploads_are_identified_by_filename(open_index: OpenIndex) -> None:
    index = open_index()
    first = index.ingest_bytes(LEAVE.encode(), "uploads/Leave-Policy.md").files[0]
    assert (first.status, first.document_id, first.source) == ("ingested", document_id_for_upload("Leave-Policy.md"), "Leave-Policy.md")
    assert index.ingest_bytes(LEAVE.encode(), "Leave-Policy.md").files[0].status == "unchanged"
    changed = index.ingest_bytes((LEAVE + "\n\nA new closing paragraph.").encode(), "Leave-Policy.md").files[0]
    assert changed.status == "ingested" and index.count_chunks() == changed.chunks
    bad = index.ingest_bytes(b"\x00\x01binary", "photo.jpg").files[0]
    assert bad.status == "failed" and "unsupported file type '.jpg'" in bad.message
    explicit = index.ingest_bytes(SECURITY.encode(), "security.md", document_id="sec-1", source="s3://bucket/security.md").files[0]
    assert (explicit.document_id, explicit.source) == ("sec-1", "s3://bucket/security.md")
    assert {d.document_id for d in index.list_documents()} == {first.document_id, "sec-1"}


def test_search_top_k_threshold_and_document_filter(open_index: OpenIndex, tmp_path: Path) -> None:
    leave = write(tmp_path / "docs", "leave-policy.md", LEAVE)
    write(tmp_path / "docs", "security-policy.md", SECURITY)
    index = open_index(chunking=ChunkingConfig(size=300, overlap=50))
    index.ingest(tmp_path / "docs")
    hits = index.search("password rules", top_k=5)
    assert len(hits) == 5 and [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    strict = index.search("password rules", top_k=5, score_threshold=hits[1].score - 1e-6)
    assert [hit.chunk_index for hit in strict] == [hit.chunk_index for hit in hits[:2]]
    assert index.search("password rules", score_threshold=0.99) == []
    only_leave = index.search("password rules", top_k=3, document_ids=[document_id_for_path(leave)])
    assert only_leave and {hit.document_id for hit in only_leave} == {document_id_for_path(leave)}
    assert index.search("   ") == []
    with pytest.raises(ValueError, match="top_k"):
        index.search("x", top_k=0)


def test_pdf_chunks_know_their_page(open_index: OpenIndex, corpus_dir: Path) -> None:
    index = open_index(chunking=ChunkingConfig(size=300, overlap=50))
    index.ingest(corpus_dir / "travel-policy.pdf")
    hit = index.search("per diem for incidental costs", top_k=1)[0]
    assert hit.page == 2 and hit.title == "Travel Policy" and "35 EUR" in hit.text
    assert index.search("booking through the travel agency", top_k=1)[0].page == 1


def test_a_collection_built_with_another_model_is_refused(open_index: OpenIndex, embedding_model: EmbeddingModel, tmp_path: Path) -> None:
    index = open_index()
    index.ingest_bytes(LEAVE.encode(), "leave.md")
    index.close()
    for model, dims in ((FakeModel("other-model", 384), "384 dims"), (FakeModel("tiny-model", 16), "16 dims")):
        with pytest.raises(EmbeddingModelMismatchError) as error:
            DocumentIndex(model, path=tmp_path / "qdrant")  # type: ignore[arg-type]
        message = str(error.value)
        assert "built with embedding model 'all-minilm-l6-v2' (384 dims)" in message
        assert f"this index uses {model.name!r} ({dims})" in message
        assert "re-ingest" in message and "another collection" in message and error.value.exit_code == 2
    # The failed opens released the folder; another collection in it is fine for the other model.
    with DocumentIndex(FakeModel("tiny-model", 16), path=tmp_path / "qdrant", collection="tiny") as tiny:  # type: ignore[arg-type]
        assert tiny.count_chunks() == 0
    with DocumentIndex(embedding_model, path=tmp_path / "qdrant") as reopened:
        assert reopened.count_chunks() > 0


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_an_unreachable_server_is_a_clear_error(embedding_model: EmbeddingModel) -> None:
    with pytest.raises(DocumentStoreError, match=r"cannot reach the Qdrant server at http://127.0.0.1:9 .*LABS_QDRANT_URL"):
        DocumentIndex(embedding_model, url="http://127.0.0.1:9", api_key="secret", timeout=2)


def test_store_location_is_required_once(embedding_model: EmbeddingModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        DocumentIndex(embedding_model)
    with pytest.raises(ValueError, match="exactly one"):
        DocumentIndex(embedding_model, path=tmp_path, url="http://localhost:6333")


def test_a_closed_index_says_so(open_index: OpenIndex) -> None:
    index = open_index()
    index.close()
    index.close()
    with pytest.raises(DocumentStoreError, match="is closed"):
        index.search("anything")


def test_one_index_can_be_shared_by_threads(open_index: OpenIndex, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    paths = [write(docs, f"doc{n}.md", f"# Document {n}\n\nDocument {n} is about topic number {n}.") for n in range(6)]
    index = open_index()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            index.ingest(paths[n])
            index.ingest(paths[0])  # every thread also (re)ingests one shared document
            assert index.search(f"topic number {n}", top_k=2)
            index.list_documents()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(index.list_documents()) == 6 and index.count_chunks() == 6
