"""An HTTP request as plain data, and an ASGI app called in-process with it.

The ingress turns each HTTP request into a `WireRequest` (picklable: it crosses from the ingress
to a replica through Ray) and the replica calls labs' FastAPI app with it, streaming back a
`ResponseStart` and then the body's chunks. No Ray here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class WireRequest:
    method: str
    path: str
    query: bytes
    headers: Headers
    body: bytes
    client: tuple[str, int] | None = None
    affinity_key: str | None = None  # read by the request router (labs.rayserve.router)


@dataclass(frozen=True)
class ResponseStart:
    status: int
    headers: Headers = field(default_factory=list)


def _scope(request: WireRequest) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": request.method, "scheme": "http", "path": request.path, "raw_path": request.path.encode(),
        "root_path": "", "query_string": request.query, "headers": list(request.headers),
        "client": request.client, "server": ("labs-replica", 80), "state": {},
    }


async def call_app(app: Any, request: WireRequest, extra_headers: Headers = ()) -> AsyncIterator[ResponseStart | bytes]:
    """Run `app` on `request`: yields the response's start, then its body chunks. Closing the
    iterator early (the client went away) tells the app the client disconnected, then cancels it."""
    messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    closed = asyncio.Event()
    body_given = False

    async def receive() -> dict[str, Any]:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await closed.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await messages.put(message)

    task = asyncio.create_task(app(_scope(request), receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    complete = False
    try:
        while not complete:
            message = await messages.get()
            if message is None:
                break
            if message["type"] == "http.response.start":
                yield ResponseStart(message["status"], [*message.get("headers", []), *extra_headers])
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                complete = not message.get("more_body", False)
        if not complete:
            await task  # raises what the app raised
            raise RuntimeError(f"the app ended {request.method} {request.path} without a complete response")
    finally:
        closed.set()
        await _finish(task, complete)


async def _finish(task: asyncio.Task, complete: bool) -> None:
    if not complete and not task.done():
        await asyncio.sleep(0)  # let the app see the disconnect first
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await task
        except Exception:  # noqa: BLE001 - the response is sent (a 500 included); log what the app raised
            if complete:
                logger.exception("the app raised after its response was sent")
            else:
                raise
