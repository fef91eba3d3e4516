"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API on the serving core.

A stream is Anthropic's named events: message_start, ping, then per content block
content_block_start / content_block_delta* / content_block_stop, then message_delta (stop
reason and usage) and message_stop. message_start reports the prompt's length; message_delta
the final counts, with the prefix-cache hit apart (cache_read_input_tokens), as Anthropic does.
A failure midway is an `event: error` with Anthropic's error body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from labs.api.anthropic_shapes import (
    SIGNATURE,
    CountTokensRequest,
    MessagesRequest,
    count_turn,
    error_body,
    error_response,
    message_body,
    message_id,
    messages_turn,
    stop_reason,
    tool_use_block,
    usage_body,
)
from labs.api.errors import register_error_shape, to_api_error
from labs.api.routes.chat import rag_field
from labs.api.running import prioritized, until_disconnected
from labs.api.security import KeyAccount, admit_request, caller_account, require_api_key
from labs.api.sse import event_stream_response
from labs.api.state import ServerState, get_state
from labs.serving.events import Event, Finish, ReasoningDelta, Sources, Started, TextDelta, ToolCalls, Usage
from labs.serving.tools import ToolCall
from labs.serving.turns import TurnEvents, collect

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["Anthropic"])
register_error_shape("/v1/messages", error_response)


@router.post("/v1/messages", summary="Create a message (Anthropic-compatible)")
async def create_message(body: MessagesRequest, request: Request, state: ServerState = Depends(get_state),
                         account: KeyAccount | None = Depends(admit_request)) -> Any:
    events = await state.serving.open_turn(prioritized(request, messages_turn(body)), account)
    stop_sequences = body.stop_sequences or []
    if body.stream:
        return event_stream_response(_stream(events, stop_sequences))
    try:
        result = await until_disconnected(request, collect(events))
    finally:
        await events.aclose()
    return JSONResponse(message_body(result, stop_sequences, rag_field(result.sources)))


@router.post("/v1/messages/count_tokens", summary="Count a message's input tokens (Anthropic-compatible)")
async def count_tokens(body: CountTokensRequest, state: ServerState = Depends(get_state),
                       account: KeyAccount | None = Depends(caller_account)) -> Any:
    tokenized = await state.serving.tokenize(count_turn(body), account=account)
    return JSONResponse({"input_tokens": len(tokenized.ids)})


def sse(kind: str, payload: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload}, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _stream(events: TurnEvents, stop_sequences: list[str]) -> AsyncIterator[str]:
    """The turn's events as Anthropic's; a failure once streaming is an error event."""
    renderer = _StreamRenderer(events.started, stop_sequences)  # type: ignore[arg-type]
    try:
        async for event in events:
            for chunk in renderer.render(event):
                yield chunk
    except Exception as error:  # noqa: BLE001 - reported to the client in-band
        yield sse("error", {"error": error_body(to_api_error(error))["error"]})
    finally:
        await events.aclose()


class _StreamRenderer:
    """Tracks the open content block: each event becomes the SSE lines Anthropic would send."""

    def __init__(self, started: Started, stop_sequences: list[str]) -> None:
        self.started = started
        self.stop_sequences = stop_sequences
        self.begun = False
        self.index = -1  # the current content block
        self.open: str | None = None  # its type while it is open
        self.stop: tuple[str, str | None] = ("end_turn", None)

    def render(self, event: Event) -> list[str]:
        if isinstance(event, Started):
            return []
        out = [] if self.begun else self._message_start(event if isinstance(event, Sources) else None)
        if isinstance(event, ReasoningDelta):
            out += self._thinking(event.text)
        elif isinstance(event, TextDelta) and event.text:
            out += self._text(event.text)
        elif isinstance(event, ToolCalls):
            for call in event.calls:
                out += self._tool_use(call)
        elif isinstance(event, Finish):
            out += self._finish(event)
        elif isinstance(event, Usage):
            out += self._message_end(event)
        return out

    def _message_start(self, sources: Sources | None) -> list[str]:
        self.begun = True
        message = {"id": message_id(self.started.id), "type": "message", "role": "assistant",
                   "model": self.started.model, "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": self.started.prompt_tokens, "output_tokens": 0}, **rag_field(sources)}
        return [sse("message_start", {"message": message}), sse("ping", {})]

    def _open(self, block: dict[str, Any]) -> list[str]:
        out = self._close()
        self.index += 1
        self.open = block["type"]
        return [*out, sse("content_block_start", {"index": self.index, "content_block": block})]

    def _close(self) -> list[str]:
        if self.open is None:
            return []
        out = []
        if self.open == "thinking":
            out.append(self._delta({"type": "signature_delta", "signature": SIGNATURE}))
        self.open = None
        return [*out, sse("content_block_stop", {"index": self.index})]

    def _delta(self, delta: dict[str, Any]) -> str:
        return sse("content_block_delta", {"index": self.index, "delta": delta})

    def _thinking(self, text: str) -> list[str]:
        out = [] if self.open == "thinking" else self._open({"type": "thinking", "thinking": "", "signature": ""})
        return [*out, self._delta({"type": "thinking_delta", "thinking": text})] if text else out

    def _text(self, text: str) -> list[str]:
        out = [] if self.open == "text" else self._open({"type": "text", "text": ""})
        return [*out, self._delta({"type": "text_delta", "text": text})]

    def _tool_use(self, call: ToolCall) -> list[str]:
        return [*self._open(tool_use_block(call, {})),
                self._delta({"type": "input_json_delta", "partial_json": call.arguments}), *self._close()]

    def _finish(self, event: Finish) -> list[str]:
        self.stop = stop_reason(event.reason, event.stop_reason, self.stop_sequences)
        if self.index == -1:  # nothing was said: one empty text block, as the whole message has
            return [*self._open({"type": "text", "text": ""}), *self._close()]
        return self._close()

    def _message_end(self, usage: Usage) -> list[str]:
        reason, sequence = self.stop
        delta = {"delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage_body(usage)}
        return [sse("message_delta", delta), sse("message_stop", {})]
