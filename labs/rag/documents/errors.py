"""Errors of document retrieval, each one line the user can act on (see labs.errors)."""

from __future__ import annotations

from labs.errors import LabsError


class DocumentError(LabsError):
    """Base of the document-retrieval errors."""

    exit_code = 1


class DocumentPathError(DocumentError):
    """A path given to ingest does not exist: nothing was ingested."""

    exit_code = 2


class DocumentLoadError(DocumentError):
    """One file could not be turned into text. Batches catch it and report it per file."""


class UnsupportedFileError(DocumentLoadError):
    """The file's extension is not one of the supported formats."""


class ChunkingConfigError(DocumentError, ValueError):
    """Chunk size or overlap make no sense (overlap >= size, size < 1, unknown unit)."""

    exit_code = 2


class DocumentStoreError(DocumentError):
    """Qdrant could not be opened or reached, or refused an operation."""


class DocumentStoreLockedError(DocumentStoreError):
    """A Qdrant local-mode folder is already open by another client (one client per folder)."""

    exit_code = 2


class EmbeddingModelMismatchError(DocumentError):
    """The collection was built with another embedding model: its vectors are not comparable."""

    exit_code = 2
