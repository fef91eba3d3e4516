"""Retrieval over the user's documents: ingest files into Qdrant, search them, cite the sources.

`DocumentIndex` loads text, Markdown, HTML and PDF files (or uploaded bytes), cuts them into
overlapping chunks on sentence boundaries, embeds them with a `labs.embeddings` model and keeps
them in Qdrant (embedded local mode in a folder, or a server). `build_rag_messages` turns the hits
of a search into a short prompt with numbered sources; `sources_payload` lists them for a response.
"""

from labs.rag.documents.chunking import Chunk, ChunkingConfig, chunk_text
from labs.rag.documents.context import (
    DEFAULT_CONTEXT_CHARS,
    DEFAULT_RAG_SYSTEM,
    build_rag_messages,
    select_context,
    sources_payload,
)
from labs.rag.documents.errors import (
    ChunkingConfigError,
    DocumentError,
    DocumentLoadError,
    DocumentPathError,
    DocumentStoreError,
    DocumentStoreLockedError,
    EmbeddingModelMismatchError,
    UnsupportedFileError,
)
from labs.rag.documents.index import (
    DEFAULT_COLLECTION,
    DocumentIndex,
    Embedder,
    content_hash,
    document_id_for_path,
    document_id_for_upload,
)
from labs.rag.documents.loaders import SUPPORTED_EXTENSIONS, LoadedDocument, load_bytes
from labs.rag.documents.records import DocumentInfo, FileResult, Hit, IngestReport

__all__ = [
    "DEFAULT_COLLECTION",
    "DEFAULT_CONTEXT_CHARS",
    "DEFAULT_RAG_SYSTEM",
    "SUPPORTED_EXTENSIONS",
    "Chunk",
    "ChunkingConfig",
    "ChunkingConfigError",
    "DocumentError",
    "DocumentIndex",
    "DocumentInfo",
    "DocumentLoadError",
    "DocumentPathError",
    "DocumentStoreError",
    "DocumentStoreLockedError",
    "Embedder",
    "EmbeddingModelMismatchError",
    "FileResult",
    "Hit",
    "IngestReport",
    "LoadedDocument",
    "UnsupportedFileError",
    "build_rag_messages",
    "chunk_text",
    "content_hash",
    "document_id_for_path",
    "document_id_for_upload",
    "load_bytes",
    "select_context",
    "sources_payload",
]
