"""Optional API keys: `Authorization: Bearer KEY`, compared in constant time against every key."""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from labs.api.errors import APIError

_bearer = HTTPBearer(auto_error=False, description="An API key from LABS_API_KEY (only when the server sets one).")


def require_api_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> None:
    keys: tuple[str, ...] = request.app.state.labs.settings.server.api_keys
    if not keys:
        return
    if credentials is None:
        raise APIError(401, "this server needs an API key: send the header 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    given = credentials.credentials.encode()
    matched = False
    for key in keys:  # no early exit: the time taken does not reveal which key, or how much of it, matched
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        raise APIError(401, "the API key is not valid for this server", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
