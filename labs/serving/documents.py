"""The user's document index, configured from [rag]: shared by labs-gen rag and the API.

Opened on first use: Qdrant's local mode (LABS_QDRANT_PATH, default $LABS_HOME/qdrant) or a
Qdrant server (LABS_QDRANT_URL). Synchronous: the API calls it from a worker thread.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from labs.config import Settings
from labs.errors import LabsError
from labs.rag.documents import (
    DEFAULT_CONTEXT_CHARS,
    DocumentIndex,
    Hit,
    IngestReport,
    build_rag_messages,
    sources_payload,
)

logger = logging.getLogger(__name__)
_INSTRUCTION_TOKENS = 120  # system prompt, chat template and the "answer from the sources" line


class PathNotAllowedError(LabsError):
    """A path outside LABS_RAG_INGEST_ROOT was sent to the API for ingestion."""

    exit_code = 2


class DocumentsService:
    def __init__(self, settings: Settings) -> None:
        rag = settings.rag
        self.settings = settings
        self.url: str | None = rag.qdrant_url
        self.path: Path = (rag.qdrant_path or settings.paths.home / "qdrant").expanduser()
        self.top_k: int = rag.top_k
        self.score_threshold: float | None = rag.score_threshold
        self.ingest_root: Path | None = rag.ingest_root.expanduser().resolve() if rag.ingest_root else None
        self._index: DocumentIndex | None = None
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return self.url or str(self.path)

    def index(self, embedding_model: Any) -> DocumentIndex:
        """The open index (opened on first use with the server's embedding model)."""
        with self._lock:
            if self._index is None:
                rag = self.settings.rag
                if self.url:
                    self._index = DocumentIndex(embedding_model, url=self.url, api_key=rag.qdrant_api_key,
                                                collection=rag.collection)
                else:
                    self.path.mkdir(parents=True, exist_ok=True)
                    self._index = DocumentIndex(embedding_model, path=self.path, collection=rag.collection)
                logger.info("document index: %s (collection %s)", self.location, rag.collection)
            return self._index

    def check_ingest_path(self, path: str) -> Path:
        """Paths sent over the API must lie under LABS_RAG_INGEST_ROOT (no reading the server's files)."""
        if self.ingest_root is None:
            raise PathNotAllowedError("this server does not ingest files by path: upload the file instead, or set "
                                      "LABS_RAG_INGEST_ROOT to a folder the API may read")
        resolved = (self.ingest_root / path).resolve()
        if resolved != self.ingest_root and self.ingest_root not in resolved.parents:
            raise PathNotAllowedError(f"the path {path!r} is outside the folder this server ingests from "
                                      "(LABS_RAG_INGEST_ROOT)")
        return resolved

    def search(self, embedding_model: Any, question: str, top_k: int | None = None,
               score_threshold: float | None = None) -> list[Hit]:
        threshold = self.score_threshold if score_threshold is None else score_threshold
        return self.index(embedding_model).search(question, top_k or self.top_k, threshold)

    def ingest(self, embedding_model: Any, paths: list[str | Path]) -> IngestReport:
        return self.index(embedding_model).ingest(paths)

    def messages(self, question: str, hits: list[Hit], context_tokens: int | None = None,
                 answer_tokens: int = 256) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
        """The chat messages asking the model to answer from the hits, and the sources they cite.

        With `context_tokens` (the model's context), the sources are cut to leave room for the
        instructions, the question and `answer_tokens` (~3 characters a token, a cautious guess).
        """
        budget = DEFAULT_CONTEXT_CHARS
        if context_tokens is not None:
            room = context_tokens - answer_tokens - _INSTRUCTION_TOKENS - len(question) // 3
            budget = max(0, min(budget, room * 3))
        return build_rag_messages(question, hits, char_budget=budget), sources_payload(hits, char_budget=budget)

    def close(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index.close()
                self._index = None
