"""Errors the engine raises to callers (mapped to HTTP statuses by the API)."""

from __future__ import annotations

from labs.errors import LabsError


class UnsupportedModelError(LabsError):
    """The model's attention cannot run on the paged cache (the reason says why)."""

    exit_code = 2


class EngineRequestError(LabsError):
    """The request cannot be served as asked (too long for the context or the cache)."""

    exit_code = 2


class AdapterError(EngineRequestError):
    """An adapter that cannot be served on this base model, with what is wrong."""


class EngineOverloadedError(LabsError):
    """The waiting queue is full; try again shortly (the API answers 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineDeadError(LabsError):
    """The engine thread stopped; no request can be served until it is restarted."""
