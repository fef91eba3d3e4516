"""GET /v1/usage: the calling key's limits, what is left of them now, and what it has used since the server started.

A key sees its own usage only (there is no admin key); the unnamed keys of LABS_API_KEY share the
name "-". Usage is counted per key, so a server without keys has none to show (404). Reading it
counts toward no limit. Every key's counters are also on /metrics (labs_key_*).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from labs.api.errors import APIError
from labs.api.keys import Caller
from labs.api.rate_limits import format_reset
from labs.api.security import require_api_key
from labs.api.state import ServerState, get_state

router = APIRouter(tags=["Operations"])


@router.get("/v1/usage", summary="The calling API key's limits and usage")
async def usage(state: ServerState = Depends(get_state), caller: Caller | None = Depends(require_api_key)) -> dict[str, Any]:
    if caller is None:
        raise APIError(404, "usage is counted per API key, and this server has none: name keys in [keys] of "
                            "labs.toml (or set LABS_API_KEY)", code="no_api_keys")
    now = state.limiter.snapshot(caller.name)
    limits = now.limits
    return {
        "object": "usage", "key": caller.name, "priority": caller.priority,
        "limits": {"requests_per_minute": limits.requests_per_minute, "tokens_per_minute": limits.tokens_per_minute,
                   "max_concurrent": limits.max_concurrent,
                   "models": sorted(caller.models) if caller.models is not None else None},
        "remaining": {
            "requests": now.remaining_requests, "tokens": now.remaining_tokens,
            "reset_requests": format_reset(now.reset_requests) if now.reset_requests is not None else None,
            "reset_tokens": format_reset(now.reset_tokens) if now.reset_tokens is not None else None,
            "concurrent": limits.max_concurrent - now.in_flight if limits.max_concurrent is not None else None,
        },
        "in_flight": now.in_flight,
        "usage": {"requests": now.requests, "rate_limited": now.rate_limited, "prompt_tokens": now.prompt_tokens,
                  "generated_tokens": now.generated_tokens, "total_tokens": now.prompt_tokens + now.generated_tokens},
    }
