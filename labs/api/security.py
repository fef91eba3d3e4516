"""Optional API keys: `Authorization: Bearer KEY` (OpenAI, Ollama) or `x-api-key: KEY` (Anthropic),
compared in constant time against every key."""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from labs.api.batch_runner import TOKEN_HEADER
from labs.api.errors import APIError
from labs.serving.turn import Priority

_bearer = HTTPBearer(auto_error=False, description="An API key from LABS_API_KEY (only when the server sets one).")
_x_api_key = APIKeyHeader(name="x-api-key", auto_error=False,
                          description="The same key, as Anthropic clients send it.")


def require_api_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer),
                    x_api_key: str | None = Security(_x_api_key)) -> None:
    state = request.app.state.labs
    batch_token = request.headers.get(TOKEN_HEADER)
    if batch_token is not None and hmac.compare_digest(batch_token.encode(), state.batches.token.encode()):
        request.state.priority = Priority.BATCH  # a line of a batch job, sent by this process to itself
        return
    keys: tuple[str, ...] = state.settings.server.api_keys
    if not keys:
        return
    given_text = credentials.credentials if credentials is not None else x_api_key
    if not given_text:
        raise APIError(401, "this server needs an API key: send the header 'Authorization: Bearer <key>' "
                            "(or 'x-api-key: <key>')",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    given = given_text.encode()
    matched = False
    for key in keys:  # no early exit: the time taken does not reveal which key, or how much of it, matched
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        raise APIError(401, "the API key is not valid for this server", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
