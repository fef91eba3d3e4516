"""Server-sent events: OpenAI-style `data: {json}` streams and the simple API's text events.

A stream that fails midway cannot change its status any more, so the error goes out as an event
(`data: {"error": ...}`, which the OpenAI SDK raises as an APIError) followed by `data: [DONE]`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from labs.api.errors import to_api_error

logger = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def data_event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def text_event(text: str, event: str | None = None) -> str:
    """Raw text as one event: each line of the text becomes its own `data:` line, as SSE requires."""
    head = f"event: {event}\n" if event else ""
    return head + "".join(f"data: {line}\n" for line in text.split("\n")) + "\n"


async def openai_stream(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """Pass events through; turn a failure into an error event; always end with [DONE]."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as error:  # noqa: BLE001 - reported to the client in-band
        yield data_event(to_api_error(error).body())
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    yield DONE


def event_stream_response(events: AsyncIterator[str], headers: dict[str, str] | None = None) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={**HEADERS, **(headers or {})})
