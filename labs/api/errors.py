"""Every failure as the OpenAI error object, with the status clients expect.

`{"error": {"message", "type", "param", "code"}}`: the OpenAI SDK turns it into its typed
exceptions (BadRequestError, NotFoundError, ...). Validation problems are 400, not FastAPI's 422,
because that is what OpenAI clients handle. A 500 never carries a traceback, a file path or a
memory address: the details go to the server log under an id the body gives.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from labs.embeddings import EmbeddingInputError
from labs.errors import ConfigError, LabsError, ModelLoadError, ModelNotFoundError
from labs.rag.documents import DocumentError, DocumentLoadError, DocumentPathError, DocumentStoreError
from labs.rag.transactions import TransactionsFileError
from labs.serving.accounts import ModelNotAllowedError
from labs.serving.documents import PathNotAllowedError
from labs.models.prompting import PromptError
from labs.serving.errors import (
    EngineDeadError,
    EngineOverloadedError,
    EngineRequestError,
    GenerationFailedError,
    InvalidTurnError,
    SamplingParamsError,
    TurnAbortedError,
    UnsupportedModelError,
)
from labs.serving.models import ModelNotAvailableError, ModelsBusyError

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error to answer with: status, OpenAI type and code, and the parameter at fault."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


ErrorShape = Callable[[APIError], JSONResponse]
_SHAPES: list[tuple[str, ErrorShape]] = []


def register_error_shape(path_prefix: str, shape: ErrorShape) -> None:
    """Errors on paths under `path_prefix` are rendered by `shape` (each protocol has its own error body)."""
    _SHAPES.append((path_prefix, shape))


def error_response(request: Request, error: APIError) -> JSONResponse:
    """The error in the shape of the protocol the request's path belongs to (OpenAI's by default)."""
    path = request.url.path
    for prefix, shape in _SHAPES:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return shape(error)
    return error.response()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def to_api_error(error: BaseException) -> APIError:
    """Map the product's errors to HTTP; anything unknown is a 500 whose details stay in the log."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, InvalidTurnError):
        return bad_request(str(error), param=error.param, code=error.code)
    if isinstance(error, GenerationFailedError):
        return APIError(500, str(error), type="server_error", code="generation_failed")
    if isinstance(error, TurnAbortedError):
        return APIError(503, str(error), type="server_error", code="engine_unavailable")
    if isinstance(error, SamplingParamsError):
        return bad_request(str(error), param=error.field)
    if isinstance(error, EngineRequestError):
        return bad_request(str(error), param="messages", code="context_length_exceeded" if "context" in str(error) else None)
    if isinstance(error, PromptError):
        return bad_request(str(error), param="messages")
    if isinstance(error, EmbeddingInputError):
        return bad_request(str(error), param="input")
    if isinstance(error, (ModelNotAvailableError, ModelNotAllowedError)):
        return APIError(404, str(error), param="model", code="model_not_found")
    if isinstance(error, EngineOverloadedError):
        return APIError(503, str(error), type="server_error", code="overloaded",
                        headers={"Retry-After": str(max(1, round(error.retry_after)))})
    if isinstance(error, ModelsBusyError):
        return APIError(503, str(error), type="server_error", code="models_busy",
                        headers={"Retry-After": str(max(1, round(error.retry_after)))})
    if isinstance(error, EngineDeadError):
        return APIError(503, str(error), type="server_error", code="engine_unavailable")
    if isinstance(error, UnsupportedModelError):  # names the architecture only, never a path
        return APIError(422, f"{error}; choose another model (GET /v1/models lists them)", param="model",
                        code="model_not_supported")
    if isinstance(error, (ModelNotFoundError, ModelLoadError)):
        incident = uuid.uuid4().hex[:12]  # the message names server paths: it goes to the log, not the client
        logger.error("model load failed (incident %s): %s", incident, error)
        return APIError(500, f"the model could not be loaded (incident {incident}; the server log has the details)",
                        type="server_error", code="model_load_failed")
    if isinstance(error, PathNotAllowedError):
        return APIError(403, str(error), type="permission_error", param="path", code="path_not_allowed")
    if isinstance(error, (DocumentPathError, DocumentLoadError)):
        return bad_request(str(error), param="path")
    if isinstance(error, DocumentStoreError):
        incident = uuid.uuid4().hex[:12]
        logger.error("document store problem (incident %s): %s", incident, error)
        return APIError(503, f"the document index is unavailable (incident {incident}; the server log has the details)",
                        type="server_error", code="document_store_unavailable")
    if isinstance(error, (ConfigError, TransactionsFileError, DocumentError)):
        incident = uuid.uuid4().hex[:12]  # names server files: for the log, not the client
        logger.error("server configuration problem (incident %s): %s", incident, error)
        return APIError(500, f"the server's data or configuration cannot be used (incident {incident}; the server log "
                             "has the details)", type="server_error", code="server_misconfigured")
    if isinstance(error, LabsError):
        return APIError(500, str(error), type="server_error")
    incident = uuid.uuid4().hex[:12]
    logger.error("internal error %s", incident, exc_info=error)
    return APIError(500, f"internal server error (incident {incident}; the server log has the details)",
                    type="server_error", code="internal_error")


_TYPE_TAG = re.compile(r"^(str|int|float|bool|bytes|none)$|\[")  # how pydantic names a union's members


def _union_at(problems: list[Any]) -> int | None:
    """Where in the first error's location pydantic named a union member ('stop', 'str') rather than a field.

    A member is known as one only when another error names a sibling member at the same place:
    a dict key that happens to read 'str' is not mistaken for one.
    """
    loc = tuple(problems[0].get("loc", ()))
    for index, part in enumerate(loc):
        if isinstance(part, str) and _TYPE_TAG.search(part):
            for other in problems[1:]:
                other_loc = tuple(other.get("loc", ()))
                if (len(other_loc) > index and other_loc[:index] == loc[:index] and other_loc[index] != part
                        and isinstance(other_loc[index], str) and _TYPE_TAG.search(other_loc[index])):
                    return index
    return None


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    problems = error.errors()
    if not problems:
        return "the request body is invalid", None
    first = problems[0]
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return ("the request body must be a JSON object, sent with the header 'Content-Type: application/json'", None)
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") == "missing":
        return "the request body is missing: send a JSON object, with the header 'Content-Type: application/json'", None
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON ({detail} at character {location[0] if location else '?'})", None
    if first.get("type") == "missing":
        return f"{param} is required", param
    message = str(first.get("msg", "invalid value"))
    others = len(problems) - 1
    union = _union_at(problems)
    if union is not None:  # one error per member of a union: name the field and the types it accepts
        prefix = tuple(first["loc"])[:union]
        param = ".".join(str(part) for part in prefix if part != "body") or None
        locations = [tuple(problem.get("loc", ())) for problem in problems]
        members = [loc for loc in locations if loc[:union] == prefix and len(loc) > union]
        accepted = list(dict.fromkeys(str(loc[union]) for loc in members))
        message = f"the value has the wrong type (accepted: {', '.join(accepted)})"
        others = len(problems) - len(members)
    more = f" (and {others} more problems)" if others > 0 else ""
    return (f"{param}: {message}{more}" if param else f"{message}{more}"), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error)
        return error_response(request, bad_request(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
            return error_response(request, APIError(404, message, code="not_found", headers=error.headers))
        if error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
            return error_response(request, APIError(405, message, code="method_not_allowed", headers=error.headers))
        code = "request_too_large" if error.status_code == 413 else None
        return error_response(request, APIError(error.status_code, str(error.detail), code=code, headers=error.headers))

    @app.exception_handler(LabsError)
    async def labs_error(request: Request, error: LabsError) -> JSONResponse:
        return error_response(request, to_api_error(error))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return error_response(request, to_api_error(error))
