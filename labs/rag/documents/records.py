"""What the document index hands back: search hits, documents, and ingest reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SNIPPET_CHARS = 200

FileStatus = Literal["ingested", "unchanged", "failed"]


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk. `score` is the cosine similarity of query and chunk (-1..1)."""

    document_id: str
    source: str  # the absolute path of a file, or the filename of an upload
    title: str
    chunk_index: int
    score: float
    text: str
    snippet: str
    start: int = 0  # char offsets of the chunk in the document's extracted text
    end: int = 0
    page: int | None = None  # PDFs: the 1-based page where the chunk starts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DocumentInfo:
    """One indexed document, as `list_documents` reports it."""

    document_id: str
    source: str
    title: str
    chunks: int
    ingested_at: str  # ISO 8601, UTC
    content_hash: str  # sha256 of the file's bytes
    kind: str = ""  # text, markdown, html or pdf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FileResult:
    """What happened to one file of an ingest batch."""

    source: str
    status: FileStatus
    chunks: int = 0  # chunks now stored for the document (0 when it failed)
    message: str = ""
    document_id: str | None = None
    title: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IngestReport:
    """Per-file outcome of an ingest call: one bad file never stops the rest of a batch."""

    files: list[FileResult] = field(default_factory=list)

    @property
    def ingested(self) -> list[FileResult]:
        return [result for result in self.files if result.status == "ingested"]

    @property
    def unchanged(self) -> list[FileResult]:
        return [result for result in self.files if result.status == "unchanged"]

    @property
    def failed(self) -> list[FileResult]:
        return [result for result in self.files if result.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return f"{len(self.ingested)} ingested, {len(self.unchanged)} unchanged, {len(self.failed)} failed"

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "files": [result.to_dict() for result in self.files]}


def make_snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The start of a chunk on one line, cut at a word boundary near `limit` characters."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat.rfind(" ", 0, limit)
    if cut < limit // 2:
        cut = limit
    return flat[:cut].rstrip(" ,;:") + "…"
