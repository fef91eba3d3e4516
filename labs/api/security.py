"""API keys and limits as route dependencies.

`require_api_key` (on every router): who is calling, from `Authorization: Bearer KEY` (OpenAI,
Ollama) or `x-api-key: KEY` (Anthropic); 401 without a valid key when the server has keys. The
routes that generate or embed also depend on `admit_request`, which counts the request against
its key's limits before the route runs (429 over one) and frees its slot once the response is
sent, has failed, or has been abandoned by its client. Both are async so that they run on the
event loop, where admission is one step no other request can interleave with.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from labs.api.batch_runner import OWNER_HEADER, TOKEN_HEADER
from labs.api.errors import APIError
from labs.api.keys import Caller
from labs.api.rate_limits import RateLimited, Ticket
from labs.api.state import get_state
from labs.serving.turn import Priority

_bearer = HTTPBearer(auto_error=False, description="An API key ([keys] in labs.toml or LABS_API_KEY; only when the "
                                                   "server sets one).")
_x_api_key = APIKeyHeader(name="x-api-key", auto_error=False,
                          description="The same key, as Anthropic clients send it.")


@dataclass
class KeyAccount:
    """The serving core's Account for one request: the caller's models, and its ticket for the tokens."""

    caller: Caller
    ticket: Ticket | None = None  # None: a request that is not counted (tokenize, model listings)

    @property
    def name(self) -> str:
        return self.caller.name

    def allows(self, model_id: str) -> bool:
        return self.caller.allows(model_id)

    def charge(self, prompt_tokens: int, generated_tokens: int) -> None:
        if self.ticket is not None:
            self.ticket.charge(prompt_tokens, generated_tokens)


async def require_api_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer),
                          x_api_key: str | None = Security(_x_api_key)) -> Caller | None:
    """The caller (None when the server needs no key); kept in request.state (caller, and the priority its
    requests run at) for the response's rate-limit headers and the scheduler. A batch job's lines, which
    this process sends to itself, run as the key that made the job (its models and limits) at batch priority."""
    state = get_state(request)
    batch_token = request.headers.get(TOKEN_HEADER)
    if batch_token is not None and hmac.compare_digest(batch_token.encode(), state.batches.token.encode()):
        request.state.priority = Priority.BATCH
        owner = request.headers.get(OWNER_HEADER)
        if owner is None:  # made on a server without keys, or run by labs-gen batch
            return None
        caller = state.keyring.callers.get(owner)
        if caller is None:
            raise APIError(403, f"the API key '{owner}' that made this batch job is no longer configured on this server",
                           type="permission_error", code="key_removed")
        request.state.caller = caller
        return caller
    keyring = state.keyring
    if not keyring:
        return None
    given = credentials.credentials if credentials is not None else x_api_key
    if not given:
        raise APIError(401, "this server needs an API key: send the header 'Authorization: Bearer <key>' "
                            "(or 'x-api-key: <key>')",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    caller = keyring.identify(given)
    if caller is None:
        raise APIError(401, "the API key is not valid for this server", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    request.state.caller = caller
    request.state.priority = Priority[caller.priority.upper()]
    return caller


async def caller_account(caller: Caller | None = Depends(require_api_key)) -> KeyAccount | None:
    """The caller as an Account that is not charged: for routes that use a model without counting."""
    return KeyAccount(caller) if caller is not None else None


async def admit_request(request: Request, caller: Caller | None = Depends(require_api_key)) -> AsyncIterator[KeyAccount | None]:
    """Count the request against its key's limits before any work (429 if over); free its slot at the end."""
    if caller is None:
        yield None
        return
    try:
        ticket = get_state(request).limiter.admit(caller.name)
    except RateLimited as limited:
        raise APIError(429, limited.message, type="tokens" if limited.limit == "tokens" else "requests",
                       code="rate_limit_exceeded", headers={"Retry-After": str(limited.retry_after_seconds)}) from None
    try:
        yield KeyAccount(caller, ticket)
    finally:  # after the response is sent (streams included), or on any failure or disconnect
        ticket.release()
