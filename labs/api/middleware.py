"""ASGI middleware: body size limit, per-request metrics and rate-limit headers (pure ASGI, so streams are
not buffered)."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labs.api.errors import APIError
from labs.api.metrics import Metrics
from labs.api.rate_limits import RateLimiter, rate_limit_headers


class _TooLarge(StarletteHTTPException):
    """An HTTPException so that FastAPI's body reader passes it on instead of calling it a parse error."""


class BodySizeLimit:
    """413 for bodies over the limit, judged by Content-Length and by the bytes actually received.
    `uploads` gives paths that take files (POST /v1/files) their own limit and the setting that sets it."""

    def __init__(self, app: ASGIApp, max_bytes: int, uploads: dict[str, tuple[int, str]] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = uploads or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, setting = self.uploads.get(scope.get("path", ""), (self.max_bytes, "LABS_MAX_BODY_SIZE"))
        too_large = APIError(413, f"the request body is larger than the server's limit of {max_bytes} bytes ({setting})",
                             code="request_too_large")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > max_bytes:
                    await _send_error(send, too_large)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise _TooLarge(413, too_large.message)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, too_large)


async def _send_error(send: Send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Counts requests by route template and status, and times them to the last byte sent."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            endpoint = _route_template(scope)
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    """The matched route's path template ("/v1/models/{model_id}"), or "unmatched" (bounded labels).

    The router records the route it matched in the (shared) scope while handling the request.
    """
    route: Any = scope.get("route")
    path = getattr(route, "path", None) or getattr(route, "path_format", None)
    return path if isinstance(path, str) else "unmatched"


class RateLimitHeaders:
    """OpenAI's x-ratelimit-* headers on every response to a key with rate limits (429s included), as
    they stand when the response starts. The caller is the one `require_api_key` put in the request's state."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            caller = scope.get("state", {}).get("caller")
            if message["type"] == "http.response.start" and caller is not None and caller.limits.any_rate:
                headers = rate_limit_headers(self.limiter.snapshot(caller.name))
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((name.encode(), value.encode()) for name, value in headers.items())]}
            await send(message)

        await self.app(scope, receive, with_headers)
