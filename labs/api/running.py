"""Transport pieces the routes share: the caller's priority on a turn; abort a request whose client goes away.

A request whose client disconnects is aborted in the engine (its KV cache is freed at the next
step), whether it streams (the response generator is closed) or not (a watcher polls for the
disconnect and cancels the collection, which closes the turn's events).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from labs.api.errors import APIError
from labs.serving.turn import Priority, Turn

T = TypeVar("T")


def prioritized(request: Request, turn: Turn) -> Turn:
    """The turn at its caller's priority (set on the request by the API-key check: a batch job's lines run
    at batch priority); interactive by default."""
    return dataclasses.replace(turn, priority=getattr(request.state, "priority", Priority.INTERACTIVE))


async def until_disconnected(request: Request, work: Awaitable[T], poll_seconds: float = 0.25) -> T:
    """Run `work`, cancelling it if the client disconnects first (cancellation aborts the request)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_seconds)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise APIError(499, "the client closed the connection", code="client_closed_request")
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001 - its cancellation is what we asked for
                pass
