"""POST /v1/chat/completions: OpenAI chat completions, whole or streamed, rendered from the turn's events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from labs.api.logprobs import chat_logprobs_content
from labs.api.running import prioritized, until_disconnected
from labs.api.schemas import ChatCompletionRequest
from labs.api.security import KeyAccount, admit_request, require_api_key
from labs.api.sse import data_event, event_stream_response, openai_stream
from labs.api.state import ServerState, get_state
from labs.api.translate import chat_turn
from labs.serving.events import Finish, ReasoningDelta, Sources, Started, TextDelta, ToolCalls, Usage
from labs.serving.turns import TurnEvents, TurnResult, collect

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI"])


@router.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible)")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: ServerState = Depends(get_state),
                           account: KeyAccount | None = Depends(admit_request)) -> Any:
    turn = chat_turn(body)
    events = await state.serving.open_turn(prioritized(request, turn), account)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream_response(openai_stream(_chunks(events, include_usage)))
    try:
        result = await until_disconnected(request, collect(events))
    finally:
        await events.aclose()
    return JSONResponse(_completion(result, turn.sampling.logprobs is not None, events.started))


def rag_field(sources: Sources | None) -> dict[str, Any]:
    """labs' extension: where an answer came from (the data's figures, or the documents' passages)."""
    if sources is None:
        return {}
    if sources.source == "documents":
        return {"rag": {"source": "documents", "sources": sources.data}}
    return {"rag": {"source": sources.source, "kind": sources.kind, "data": sources.data}}


def usage_body(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


def _completion(result: TurnResult, with_logprobs: bool, started: Any) -> dict[str, Any]:
    choices = []
    for sample in result.samples:
        message: dict[str, Any] = {"role": "assistant", "content": sample.text if not sample.tool_calls else
                                   (sample.text or None)}
        if sample.reasoning is not None:
            message["reasoning_content"] = sample.reasoning
        if sample.tool_calls:
            message["tool_calls"] = [call.to_dict() for call in sample.tool_calls]
        logprobs = {"content": chat_logprobs_content(started.token_text, sample)} if with_logprobs else None
        choices.append({"index": sample.index, "message": message, "logprobs": logprobs,
                        "finish_reason": sample.finish_reason})
    return {"id": result.id, "object": "chat.completion", "created": result.created, "model": result.model,
            "choices": choices, "usage": usage_body(result.usage), **rag_field(result.sources)}


async def _chunks(events: TurnEvents, include_usage: bool) -> AsyncIterator[str]:
    started: Started = events.started  # type: ignore[assignment]
    head = {"id": started.id, "object": "chat.completion.chunk", "created": started.created, "model": started.model}
    usage_field = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None,
              extra: dict[str, Any] | None = None) -> str:
        return data_event({**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                                "finish_reason": finish_reason}], **usage_field, **(extra or {})})

    opened = False
    try:
        async for event in events:
            if isinstance(event, Started):
                continue
            if not opened and not isinstance(event, Sources):
                opened = True
                for index in range(started.n):
                    yield chunk(index, {"role": "assistant", "content": ""})
            if isinstance(event, Sources):  # the sources travel once, first, with the role
                opened = True
                for index in range(started.n):
                    yield chunk(index, {"role": "assistant", "content": ""}, extra=rag_field(event) if index == 0 else None)
            elif isinstance(event, ReasoningDelta) and event.text:
                yield chunk(event.index, {"reasoning_content": event.text})
            elif isinstance(event, TextDelta):
                logprobs = None
                if event.logprobs is not None and event.token_ids and started.token_text is not None:
                    logprobs = {"content": chat_logprobs_content(started.token_text, event)}
                if event.text or logprobs is not None:
                    yield chunk(event.index, {"content": event.text} if event.text else {}, None, logprobs)
            elif isinstance(event, ToolCalls):
                for position, call in enumerate(event.calls):  # each call: its header, then its arguments
                    yield chunk(event.index, {"tool_calls": [{"index": position, "id": call.id, "type": "function",
                                                              "function": {"name": call.name, "arguments": ""}}]})
                    yield chunk(event.index, {"tool_calls": [{"index": position,
                                                              "function": {"arguments": call.arguments}}]})
            elif isinstance(event, Finish):
                yield chunk(event.index, {}, event.reason)
            elif isinstance(event, Usage) and include_usage:
                yield data_event({**head, "choices": [], "usage": usage_body(event)})
    finally:
        await events.aclose()
