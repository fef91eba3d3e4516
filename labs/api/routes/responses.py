"""POST/GET/DELETE /v1/responses: the OpenAI Responses API, rendered from the turn's events.

A stream is the documented sequence of typed events (`event: <type>` + `data: {...}`, numbered by
`sequence_number`): created, in_progress, each output item added / its deltas / done, then
completed or incomplete; a failure once streaming has begun is `response.failed`. Stored
responses are files under LABS_HOME/responses (labs.serving.conversations).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from labs.api.errors import APIError, bad_request, to_api_error
from labs.api.responses_shapes import (
    ResponsesCall,
    ResponsesRequest,
    function_call_item,
    item_id,
    message_item,
    reasoning_item,
    response_id,
    response_object,
    responses_call,
)
from labs.api.routes.chat import rag_field
from labs.api.running import prioritized, until_disconnected
from labs.api.security import KeyAccount, admit_request, require_api_key
from labs.api.sse import event_stream_response
from labs.api.state import ServerState, get_state
from labs.serving.conversations import ResponseStore, StoredResponse
from labs.serving.events import Finish, ReasoningDelta, Sources, Started, TextDelta, ToolCalls, Usage
from labs.serving.turns import SampleResult, TurnEvents, collect

logger = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI"])


def store_of(state: ServerState) -> ResponseStore:
    return ResponseStore(state.settings.paths.home / "responses")


def _not_found(id: str) -> APIError:
    return APIError(404, f"Response with id {id!r} not found.", param="response_id", code="not_found")


@router.post("/v1/responses", summary="Create a response (OpenAI Responses API)")
async def create_response(body: ResponsesRequest, request: Request, state: ServerState = Depends(get_state),
                          account: KeyAccount | None = Depends(admit_request)) -> Any:
    store = store_of(state)
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        previous = await asyncio.to_thread(store.get, body.previous_response_id)
        if previous is None:
            raise bad_request(f"Previous response with id {body.previous_response_id!r} not found.",
                              param="previous_response_id", code="previous_response_not_found")
        history = previous.conversation
    call = responses_call(body, history)
    events = await state.serving.open_turn(prioritized(request, call.turn), account)
    if body.stream:
        return event_stream_response(_stream(call, events, store))
    try:
        result = await until_disconnected(request, collect(events))
    finally:
        await events.aclose()
    sample = result.samples[0]
    length_stop = sample.finish_reason == "length"
    response = response_object(response_id(result.id), result.created, result.model, call.echo,
                               status="incomplete" if length_stop else "completed", length_stop=length_stop,
                               output=_output(sample, call.parallel_tool_calls), usage=result.usage)
    response.update(_finished_fields(response, result.sources))
    await _save(store, call, response)
    return JSONResponse(response)


@router.get("/v1/responses/{id}", summary="A stored response")
async def get_response(id: str, state: ServerState = Depends(get_state)) -> Any:
    stored = await asyncio.to_thread(store_of(state).get, id)
    if stored is None:
        raise _not_found(id)
    return JSONResponse(stored.response)


@router.delete("/v1/responses/{id}", summary="Delete a stored response")
async def delete_response(id: str, state: ServerState = Depends(get_state)) -> Any:
    if not await asyncio.to_thread(store_of(state).delete, id):
        raise _not_found(id)
    return JSONResponse({"id": id, "object": "response.deleted", "deleted": True})


@router.get("/v1/responses/{id}/input_items", summary="The input items of a stored response")
async def list_input_items(id: str, state: ServerState = Depends(get_state), limit: int = Query(20, ge=1, le=100),
                           order: str = Query("desc", pattern="^(asc|desc)$"), after: str | None = None) -> Any:
    stored = await asyncio.to_thread(store_of(state).get, id)
    if stored is None:
        raise _not_found(id)
    items = stored.input_items if order == "asc" else stored.input_items[::-1]
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return JSONResponse({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                         "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


def _output(sample: SampleResult, parallel: bool) -> list[dict[str, Any]]:
    """A collected sample as output items: its reasoning, its text, its calls."""
    output = [reasoning_item(sample.reasoning)] if sample.reasoning else []
    if sample.text or not sample.tool_calls:
        status = "incomplete" if sample.finish_reason == "length" else "completed"
        output.append(message_item("assistant", sample.text, "output_text", status=status))
    calls = sample.tool_calls if parallel else sample.tool_calls[:1]
    return output + [function_call_item(call) for call in calls]


def _finished_fields(response: dict[str, Any], sources: Sources | None) -> dict[str, Any]:
    return {"completed_at": int(time.time()) if response["status"] == "completed" else None,
            **rag_field(sources)}


async def _save(store: ResponseStore, call: ResponsesCall, response: dict[str, Any]) -> None:
    if call.store:
        await asyncio.to_thread(store.put, response["id"], StoredResponse(call.input_items, response))


# ------------------------------------------------------------------ streaming


class _Renderer:
    """The turn's events as numbered Responses stream events; it keeps the output items it has sent."""

    def __init__(self, parallel: bool) -> None:
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the reasoning or message item whose text is streaming
        self.parallel = parallel
        self.has_message = False

    def event(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def _added(self, item: dict[str, Any]) -> str:
        self.output.append(item)
        return self.event("response.output_item.added", output_index=len(self.output) - 1, item=item)

    def text(self, kind: str, delta: str) -> list[str]:
        """A delta of reasoning ("reasoning") or answer ("message") text, opening its item first if needed."""
        events = []
        if self.open is not None and self.open["type"] != kind:
            events += self.close("completed")
        if self.open is None:
            events += self._open(kind)
        assert self.open is not None
        self.open["text"] += delta
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        events.append(self.event(name, **self._where(), delta=delta, **extra))
        return events

    def _open(self, kind: str) -> list[str]:
        """Announce an item and its one content part, both still empty."""
        if kind == "message":
            self.has_message = True
            item = {"type": "message", "id": item_id("msg"), "status": "in_progress", "role": "assistant",
                    "content": []}
            part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": []}
        else:
            item = {"type": "reasoning", "id": item_id("rs"), "summary": [], "content": []}
            part = {"type": "reasoning_text", "text": ""}
        events = [self._added(item)]
        self.open = {"type": kind, "id": item["id"], "text": ""}
        events.append(self.event("response.content_part.added", **self._where(), part=part))
        return events

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.output) - 1, "content_index": 0}

    def close(self, status: str) -> list[str]:
        """End the streaming item: its text done, its part done, the item done."""
        if self.open is None:
            return []
        opened, where, text = self.open, self._where(), self.open["text"]
        if opened["type"] == "message":
            item = message_item("assistant", text, "output_text", opened["id"], status)
            events = [self.event("response.output_text.done", **where, text=text, logprobs=[])]
        else:
            item = reasoning_item(text, opened["id"])
            events = [self.event("response.reasoning_text.done", **where, text=text)]
        events.append(self.event("response.content_part.done", **where, part=item["content"][0]))
        self.output[-1] = item
        events.append(self.event("response.output_item.done", output_index=where["output_index"], item=item))
        self.open = None
        return events

    def calls(self, event: ToolCalls) -> list[str]:
        events = self.close("completed")
        for call in event.calls if self.parallel else event.calls[:1]:
            added = function_call_item(call, status="in_progress")
            events.append(self._added(added))
            where = {"item_id": added["id"], "output_index": len(self.output) - 1}
            events.append(self.event("response.function_call_arguments.delta", **where, delta=call.arguments))
            events.append(self.event("response.function_call_arguments.done", **where, arguments=call.arguments))
            self.output[-1] = done = function_call_item(call, added["id"])
            events.append(self.event("response.output_item.done", output_index=where["output_index"], item=done))
        return events

    def finish(self, event: Finish) -> list[str]:
        """The sample ended: close what streams; an answer with neither text nor calls is an empty message."""
        status = "incomplete" if event.reason == "length" else "completed"
        events = self.close(status)
        if not self.has_message and not any(item["type"] == "function_call" for item in self.output):
            events += self._open("message") + self.close(status)
        return events


async def _stream(call: ResponsesCall, events: TurnEvents, store: ResponseStore) -> AsyncIterator[str]:
    started: Started = events.started  # type: ignore[assignment]
    renderer = _Renderer(call.parallel_tool_calls)
    head = (response_id(started.id), started.created, started.model, call.echo)
    yield renderer.event("response.created", response=response_object(*head, status="in_progress", output=[]))
    yield renderer.event("response.in_progress", response=response_object(*head, status="in_progress", output=[]))
    sources, finish, usage = None, None, None
    try:
        async for event in events:
            if isinstance(event, Sources):
                sources = event
            elif isinstance(event, ReasoningDelta) and event.text:
                for chunk in renderer.text("reasoning", event.text):
                    yield chunk
            elif isinstance(event, TextDelta) and event.text:
                for chunk in renderer.text("message", event.text):
                    yield chunk
            elif isinstance(event, ToolCalls):
                for chunk in renderer.calls(event):
                    yield chunk
            elif isinstance(event, Finish):
                finish = event
                for chunk in renderer.finish(event):
                    yield chunk
            elif isinstance(event, Usage):
                usage = event
        length_stop = finish is not None and finish.reason == "length"
        response = response_object(*head, status="incomplete" if length_stop else "completed",
                                   output=renderer.output, usage=usage, length_stop=length_stop)
        response.update(_finished_fields(response, sources))
        await _save(store, call, response)
        yield renderer.event("response.incomplete" if length_stop else "response.completed", response=response)
    except Exception as error:  # noqa: BLE001 - the status is sent: report it in-band
        failure = to_api_error(error)
        logger.warning("response %s failed while streaming: %s", head[0], failure.message)
        failed = response_object(*head, status="failed", output=renderer.output,
                                 error={"code": "server_error", "message": failure.message})
        yield renderer.event("response.failed", response=failed)
    finally:
        await events.aclose()
