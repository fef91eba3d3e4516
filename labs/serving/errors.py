"""Errors of a turn, protocol-neutral: each protocol's edge maps them to its own status and shape."""

from __future__ import annotations

from labs.engine.errors import EngineDeadError, EngineOverloadedError, EngineRequestError
from labs.engine.errors import AdapterError, UnsupportedModelError
from labs.engine.sampling import SamplingParamsError
from labs.errors import LabsError

# The engine's errors, as the edges see them (they map them to statuses without importing the engine).
__all__ = ["AdapterError", "EngineDeadError", "EngineOverloadedError", "EngineRequestError", "GenerationFailedError",
           "InvalidTurnError", "SamplingParamsError", "TurnAbortedError", "UnsupportedModelError"]


class InvalidTurnError(LabsError):
    """The request cannot be served as given (a 400 in every protocol); `param` names the field."""

    exit_code = 2

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class GenerationFailedError(LabsError):
    """The engine failed while generating this turn (a 500: the server's fault, not the caller's)."""


class TurnAbortedError(LabsError):
    """The engine stopped the turn because the server is shutting down (a 503)."""
