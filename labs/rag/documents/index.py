"""DocumentIndex: ingest files into Qdrant as embedded chunks, and search them.

Document identity
    A file's document id is derived from its absolute resolved path (`document_id_for_path`),
    an upload's from its filename alone (`document_id_for_upload`): uploading "handbook.pdf"
    again replaces the previous "handbook.pdf". Both are 16 hex characters of a SHA-256, stable
    across runs. The content hash is the SHA-256 of the file's bytes: the same id with the same
    hash (and chunk settings) is "unchanged" and costs nothing; a new hash replaces the chunks.

Each chunk point's payload: document_id, source, title, kind, chunk_index, chunk_count, text,
start/end (char offsets in the extracted text), page (PDFs), content_hash, ingested_at (ISO UTC),
ingest_id, chunking and embedding_model.

Threads: one DocumentIndex can be shared by threads. Every store access takes the index's lock
(Qdrant local mode is not thread-safe); parsing and embedding a file happen outside it, so a
search is never stuck behind a long ingest. Embedding runs on the process's torch thread (see
labs.engine.torch_thread), so it never starts a second OpenMP team.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from bisect import bisect_right
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from labs.engine.torch_thread import torch_thread
from labs.errors import LabsError
from labs.rag.documents.chunking import Chunk, ChunkingConfig, chunk_text
from labs.rag.documents.errors import DocumentLoadError, DocumentPathError, DocumentStoreError
from labs.rag.documents.loaders import SUPPORTED_EXTENSIONS, load_bytes
from labs.rag.documents.records import DocumentInfo, FileResult, Hit, IngestReport, make_snippet
from labs.rag.documents.store import QdrantStore

logger = logging.getLogger(__name__)

DEFAULT_COLLECTION = "labs_documents"
# Chunks per torch-thread call: small enough that a chat engine sharing the thread gets turns.
EMBED_BATCH = 32
# Bump when what is embedded for a chunk changes: stored chunks then count as changed.
EMBEDDING_FORMAT = 1
_LIST_FIELDS = ("document_id", "source", "title", "ingested_at", "content_hash", "kind")


class Embedder(Protocol):
    """What the index needs of an embedding model (labs.embeddings.EmbeddingModel has it)."""

    name: str
    dimension: int

    def encode(self, inputs: Sequence[str]) -> Any: ...  # .vectors: float32 [n, dim], L2-normalised


def document_id_for_path(path: str | Path) -> str:
    """Stable id of a file: from its absolute, symlink-resolved path."""
    return _short_hash(f"path:{Path(path).expanduser().resolve().as_posix()}")


def document_id_for_upload(filename: str) -> str:
    """Stable id of an upload: from its filename (without any folder part)."""
    return _short_hash(f"upload:{_base_name(filename)}")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DocumentIndex:
    """Documents chunked, embedded and stored in one Qdrant collection.

    Give `path` for Qdrant's embedded local mode (a folder; one client per folder at a time) or
    `url` (and `api_key`) for a Qdrant server. Reading configuration is the caller's job.
    """

    def __init__(
        self,
        embedding_model: Embedder,
        *,
        path: str | Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        collection: str = DEFAULT_COLLECTION,
        chunking: ChunkingConfig | None = None,
        timeout: int | None = None,
    ) -> None:
        self.model = embedding_model
        self.chunking = chunking or ChunkingConfig()
        self._count_tokens = self._token_counter() if self.chunking.unit == "tokens" else None
        self._lock = threading.RLock()
        self._store = QdrantStore(collection, path=path, url=url, api_key=api_key, timeout=timeout)
        self._closed = False
        try:
            self._store.ensure_collection(self.model.name, int(self.model.dimension))
        except BaseException:
            self._store.close()
            raise

    @property
    def collection(self) -> str:
        return self._store.collection

    @property
    def location(self) -> str:
        """The Qdrant folder or server URL (for logs and messages)."""
        return self._store.location

    def close(self) -> None:
        """Release the store (in local mode, its folder lock). Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._store.close()

    def __enter__(self) -> "DocumentIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ingestion ---------------------------------------------------------------------------

    def ingest(self, paths: str | Path | Iterable[str | Path]) -> IngestReport:
        """Ingest files and folders (recursively; hidden files skipped), reporting per file.

        A path that does not exist raises DocumentPathError before anything is ingested. A file
        that cannot be read or loaded is a "failed" entry; a Qdrant failure raises
        DocumentStoreError (the store is unusable, so the batch stops).
        """
        items = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(path) for path in paths]
        missing = [str(path) for path in items if not path.exists()]
        if missing:
            raise DocumentPathError(f"no such file or folder: {', '.join(missing)}")
        report = IngestReport()
        for item in items:
            if item.is_dir():
                files = _walk(item)
                if not files:
                    report.files.append(
                        FileResult(str(item.resolve()), "failed", message=f"{item}: the folder has no files to ingest")
                    )
                for file in files:
                    report.files.append(self._ingest_file(file))
            else:
                report.files.append(self._ingest_file(item))
        logger.info("ingested into %r: %s", self.collection, report.summary())
        return report

    def ingest_bytes(self, data: bytes, filename: str, *, document_id: str | None = None, source: str | None = None) -> IngestReport:
        """Ingest an upload: its bytes and filename (the extension picks the loader)."""
        name = _base_name(filename) or "upload"
        result = self._ingest(data, name, document_id or document_id_for_upload(name), source or name)
        return IngestReport([result])

    def _ingest_file(self, path: Path) -> FileResult:
        source = str(path.resolve())
        try:
            data = path.read_bytes()
        except OSError as error:
            return FileResult(source, "failed", message=f"{path}: cannot read the file: {error.strerror or error}")
        return self._ingest(data, path.name, document_id_for_path(path), source)

    def _ingest(self, data: bytes, filename: str, document_id: str, source: str) -> FileResult:
        """One document: skip it if unchanged, else load, chunk and embed it, then swap its chunks.

        The lock is held only to read and to write the store, so searches are not stuck behind
        a long parse or embedding; writes of the same document from two threads end with one
        version's chunks (the last writer's), never a mix.
        """
        digest = content_hash(data)
        chunking = f"{self.chunking.signature}|format{EMBEDDING_FORMAT}"
        with self._lock:
            self._check_open()
            stored = self._store.first_payload(document_id, ["content_hash", "chunking", "chunk_count", "title"])
            if stored and stored.get("content_hash") == digest and stored.get("chunking") == chunking:
                chunks = self._store.count(document_id)
                if chunks == stored.get("chunk_count"):
                    logger.debug("%s is unchanged (%d chunks)", source, chunks)
                    return FileResult(source, "unchanged", chunks, "already indexed with the same content", document_id, stored.get("title"))
        try:
            document = load_bytes(data, filename)
            pieces = chunk_text(document.text, self.chunking, self._count_tokens)
            if not pieces:
                raise DocumentLoadError(f"{filename}: no text to index after chunking")
            vectors = self._embed([embedding_text(document.title, chunk.text) for chunk in pieces], source)
        except LabsError as error:  # DocumentLoadError, or an input the embedding model refused
            message = str(error) if isinstance(error, DocumentLoadError) else f"{filename}: {error}"
            if stored is not None:
                message += " (the previously indexed version is kept)"
            logger.warning("not ingested: %s", message)
            return FileResult(source, "failed", message=message, document_id=document_id)
        ingest_id = uuid.uuid4().hex
        base = {
            "document_id": document_id,
            "source": source,
            "title": document.title,
            "kind": document.kind,
            "chunk_count": len(pieces),
            "content_hash": digest,
            "ingested_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "ingest_id": ingest_id,
            "chunking": chunking,
            "embedding_model": self.model.name,
        }
        payloads = [dict(base, **_chunk_fields(chunk, document.page_starts)) for chunk in pieces]
        with self._lock:
            self._check_open()
            # New points first, then every other version's: a failure in between leaves extra chunks, never none.
            self._store.upsert([str(uuid.uuid4()) for _ in pieces], vectors, payloads)
            self._store.delete_document(document_id, keep_ingest_id=ingest_id)
        verb = "replaced the previous version" if stored is not None else "new document"
        logger.info("ingested %s: %d chunks (%s)", source, len(pieces), verb)
        return FileResult(source, "ingested", len(pieces), f"{len(pieces)} chunks, {verb}", document_id, document.title)

    def _embed(self, texts: list[str], source: str) -> np.ndarray:
        parts: list[np.ndarray] = []
        truncated = 0
        for start in range(0, len(texts), EMBED_BATCH):
            result = torch_thread().call(self.model.encode, texts[start : start + EMBED_BATCH])
            parts.append(np.asarray(result.vectors, dtype=np.float32))
            truncated += sum(bool(flag) for flag in getattr(result, "truncated", []))
        if truncated:
            logger.warning(
                "%s: %d chunk(s) were longer than %s accepts and were embedded truncated: use a smaller chunk size",
                source, truncated, self.model.name,
            )
        return np.concatenate(parts)

    # -- queries -----------------------------------------------------------------------------

    def search(
        self, query: str, top_k: int = 4, score_threshold: float | None = None, document_ids: Sequence[str] | None = None
    ) -> list[Hit]:
        """The `top_k` chunks most similar to `query`, best first (optionally only some documents)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        if not query.strip():
            return []
        vector = torch_thread().call(self.model.encode, [query]).vectors[0]
        with self._lock:
            self._check_open()
            points = self._store.search(np.asarray(vector, dtype=np.float32), top_k, score_threshold, document_ids)
        return [_hit(point.payload or {}, float(point.score)) for point in points]

    def list_documents(self) -> list[DocumentInfo]:
        """Every indexed document with its chunk count, sorted by source (scans all chunk payloads)."""
        documents: dict[str, dict[str, Any]] = {}
        with self._lock:
            self._check_open()
            for payload in self._store.payloads(_LIST_FIELDS):
                entry = documents.setdefault(str(payload.get("document_id")), dict(payload, chunks=0))
                entry["chunks"] += 1
        return sorted(
            (
                DocumentInfo(
                    document_id=document_id,
                    source=str(entry.get("source", "")),
                    title=str(entry.get("title", "")),
                    chunks=entry["chunks"],
                    ingested_at=str(entry.get("ingested_at", "")),
                    content_hash=str(entry.get("content_hash", "")),
                    kind=str(entry.get("kind", "")),
                )
                for document_id, entry in documents.items()
            ),
            key=lambda document: (document.source, document.document_id),
        )

    def delete(self, document_id: str) -> bool:
        """Remove a document's chunks; False when there was no such document."""
        with self._lock:
            self._check_open()
            if self._store.count(document_id) == 0:
                return False
            self._store.delete_document(document_id)
        logger.info("deleted document %s from %r", document_id, self.collection)
        return True

    def count_chunks(self, document_id: str | None = None) -> int:
        """Chunks stored, for one document or the whole collection."""
        with self._lock:
            self._check_open()
            return self._store.count(document_id)

    # -- helpers -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DocumentStoreError(f"the document index on {self.location} is closed: open a new DocumentIndex")

    def _token_counter(self) -> Any:
        tokenize = getattr(self.model, "tokenize", None)
        if tokenize is None:
            raise ValueError(f"chunking in tokens needs an embedding model with a tokenizer; {self.model.name} has none")
        limit = getattr(self.model, "max_tokens", None)
        if limit is not None and self.chunking.size > limit - 2:
            logger.warning(
                "chunk size %d tokens is over what %s embeds (%d): chunks will be truncated", self.chunking.size, self.model.name, limit
            )
        return lambda text: len(tokenize(text))


def embedding_text(title: str, text: str) -> str:
    """What is embedded for a chunk: its document's title first, so a chunk that never names its
    subject ("up to 5 days carry over") still carries it. The stored text is the chunk alone."""
    return f"{title}\n\n{text}"


def _chunk_fields(chunk: Chunk, page_starts: list[int]) -> dict[str, Any]:
    fields: dict[str, Any] = {"chunk_index": chunk.index, "text": chunk.text, "start": chunk.start, "end": chunk.end}
    fields["page"] = bisect_right(page_starts, chunk.start) if page_starts else None
    return fields


def _hit(payload: dict[str, Any], score: float) -> Hit:
    text = str(payload.get("text", ""))
    return Hit(
        document_id=str(payload.get("document_id", "")),
        source=str(payload.get("source", "")),
        title=str(payload.get("title", "")),
        chunk_index=int(payload.get("chunk_index", 0)),
        score=score,
        text=text,
        snippet=make_snippet(text),
        start=int(payload.get("start", 0)),
        end=int(payload.get("end", 0)),
        page=payload.get("page"),
    )


def _walk(folder: Path) -> list[Path]:
    """Files under `folder`, recursively, sorted; hidden files and folders are skipped."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative):
            continue
        if path.is_file():
            files.append(path)
    return files


def _base_name(filename: str) -> str:
    return filename.replace("\\", "/").rsplit("/", 1)[-1].strip()


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


__all__ = ["DEFAULT_COLLECTION", "SUPPORTED_EXTENSIONS", "DocumentIndex", "Embedder", "content_hash", "document_id_for_path", "document_id_for_upload"]
