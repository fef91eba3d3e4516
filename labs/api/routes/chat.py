"""POST /v1/chat/completions: OpenAI chat completions, whole or streamed."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from labs.api.logprobs import chat_logprobs_content
from labs.api.running import collect_outputs, finish_error, new_id, stream_outputs, until_disconnected
from labs.api.schemas import ChatCompletionRequest
from labs.api.security import require_api_key
from labs.api.sse import data_event, event_stream_response, openai_stream
from labs.api.state import ServerState, get_state
from labs.api.translate import (
    chat_logprobs,
    chat_prompt_ids,
    check_max_tokens_fit,
    check_messages,
    context_room,
    tool_plan,
    sampling_params,
    ToolPlan,
)
from labs.api.errors import bad_request
from labs.engine.sampling import SamplingParams
from labs.serving.models import ServedModel
from labs.serving.tools import ToolCall, call_grammar, parse_forced_call, parse_tool_calls
from labs.serving.reasoning import ReasoningSplitter, prompt_opens_reasoning, split_reasoning

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI"])


class _Reasoning:
    """Whether and how this request's output is split into reasoning and answer."""

    def __init__(self, served: ServedModel, prompt_ids: list[int], enabled: bool) -> None:
        self.tags = served.reasoning_tags if enabled else None
        tail = served.tokenizer.decode(prompt_ids[-16:], skip_special_tokens=False) if self.tags else ""
        self.starts_inside = bool(self.tags) and prompt_opens_reasoning(tail, self.tags)

    def split(self, text: str) -> tuple[str | None, str]:
        if self.tags is None:
            return None, text
        return split_reasoning(text, self.tags, self.starts_inside)

    def splitter(self) -> ReasoningSplitter | None:
        return ReasoningSplitter(self.tags, self.starts_inside) if self.tags else None


@router.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible)")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: ServerState = Depends(get_state)) -> Any:
    plan = tool_plan(body)
    messages = check_messages(body.messages, state.limits)
    logprobs = chat_logprobs(body)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    from_data = await _answer_from_data(body, messages, state)
    if from_data is not None:
        return from_data
    served = await state.models.acquire(body.model)
    try:
        rag = None
        if body.use_rag and messages[-1]["role"] == "user" and isinstance(messages[-1].get("content"), str):
            messages, rag = await _with_document_sources(messages, state, served, max_tokens)
        prompt_ids = chat_prompt_ids(served, messages, state.settings, plan)
        room = context_room(served, prompt_ids, "messages")
        check_max_tokens_fit(served, prompt_ids, max_tokens, "max_tokens")
        params = sampling_params(body, state.settings, state.limits, max_tokens=max_tokens, room=room, logprobs=logprobs)
        if plan.forced:
            if params.guided is not None:
                raise bad_request("tool_choice required or a named function cannot be combined with response_format "
                                  "or guided_*", param="tool_choice")
            params = dataclasses.replace(params, guided=call_grammar(plan.tools, plan.choice))
        served.engine.check(prompt_ids, params)  # bad grammars etc. are a 400 before any streaming starts
        reasoning = _Reasoning(served, prompt_ids, state.settings.server.split_reasoning)
        request_id = new_id("chatcmpl")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(state, served, prompt_ids, params, request_id, reasoning, include_usage, rag, plan)
            return event_stream_response(openai_stream(events))  # the stream releases the model
        collected = await until_disconnected(
            request, collect_outputs(served, prompt_ids, params, request_id, state.metrics))
    except BaseException:
        state.models.release(served)
        raise
    state.models.release(served)
    choices = []
    for sample in collected.samples:
        thinking, content = reasoning.split(sample.text)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking is not None:
            message["reasoning_content"] = thinking
        finish_reason = sample.finish_reason
        calls = _tool_calls(plan, content, finish_reason)
        if calls is not None:
            message["content"], tool_calls = calls
            message["tool_calls"] = [call.to_dict() for call in tool_calls]
            finish_reason = "tool_calls"
        choices.append({
            "index": sample.index,
            "message": message,
            "logprobs": {"content": chat_logprobs_content(served.tokenizer, sample)} if logprobs is not None else None,
            "finish_reason": finish_reason,
        })
    return JSONResponse({
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served.id,
        "choices": choices,
        "usage": _usage(collected.prompt_tokens, collected.completion_tokens, collected.cached_prompt_tokens),
        **({"rag": rag} if rag else {}),
    })


def _tool_calls(plan: ToolPlan, text: str, finish_reason: str | None) -> tuple[str | None, list[ToolCall]] | None:
    """(content, calls) when the output holds tool calls, else None (a plain answer)."""
    if not plan.active:
        return None
    if plan.forced:
        call = parse_forced_call(text) if finish_reason == "stop" else None
        return (None, [call]) if call is not None else None
    content, calls = parse_tool_calls(text, plan.tools)
    return (content or None, calls) if calls else None


async def _with_document_sources(messages: list[dict[str, Any]], state: ServerState, served: ServedModel,
                                 max_tokens: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The chat with its last question replaced by the retrieved sources + question (history kept)."""
    question = messages[-1]["content"]
    model = await state.embeddings.model()
    hits = await asyncio.to_thread(state.documents.search, model, question)
    history_chars = sum(len(str(m.get("content") or "")) for m in messages[:-1])
    answer_tokens = max_tokens or min(state.settings.generation.max_new_tokens, served.context_length // 4)
    rag_messages, sources = state.documents.messages(question, hits, served.context_length - history_chars // 3,
                                                     answer_tokens)
    history = messages[:-1]
    has_system = any(m["role"] in ("system", "developer") for m in history)
    added = [m for m in rag_messages if not (has_system and m["role"] == "system")]
    return history + added, {"source": "documents", "sources": sources}


async def _answer_from_data(body: ChatCompletionRequest, messages: list[dict[str, Any]], state: ServerState) -> Any:
    """A question about the user's transactions is answered exactly from the table, without the model."""
    if messages[-1]["role"] != "user" or not isinstance(messages[-1].get("content"), str):
        return None
    answer = await asyncio.to_thread(state.transactions.answer, messages[-1]["content"], body.use_rag)
    if answer is None:
        return None
    if body.use_rag and answer.kind in ("no_match", "unsupported"):
        return None  # the data has nothing on it: the documents may (use_rag asks for them too)
    model_id = state.models.resolve_id(body.model)
    request_id = new_id("chatcmpl")
    created = int(time.time())
    rag = {"source": answer.source, "kind": answer.kind, "data": answer.data}
    if not body.stream:
        return JSONResponse({
            "id": request_id, "object": "chat.completion", "created": created, "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": _usage(0, 0, 0), "rag": rag,
        })
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events() -> AsyncIterator[str]:
        base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model_id}
        extra = {"usage": None} if include_usage else {}
        steps = (({"role": "assistant", "content": ""}, None, {}), ({"content": answer.answer}, None, {"rag": rag}),
                 ({}, "stop", {}))
        for delta, finish, fields in steps:  # the figures and rows travel once, with the answer
            yield data_event({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                              **fields, **extra})
        if include_usage:
            yield data_event({**base, "choices": [], "usage": _usage(0, 0, 0)})

    return event_stream_response(openai_stream(events()))


def _final_tool_chunks(chunk: Any, index: int, text: str, finish_reason: str | None, plan: ToolPlan) -> list[str]:
    """A held sample's end as OpenAI streams it: the content, or each call (header, then arguments)."""
    calls = _tool_calls(plan, text, finish_reason)
    if calls is None:
        return [chunk(index, {"content": text}), chunk(index, {}, finish_reason)] if text else [chunk(index, {}, finish_reason)]
    content, tool_calls = calls
    events = [chunk(index, {"content": content})] if content else []
    for position, call in enumerate(tool_calls):
        events.append(chunk(index, {"tool_calls": [{"index": position, "id": call.id, "type": "function",
                                                    "function": {"name": call.name, "arguments": ""}}]}))
        events.append(chunk(index, {"tool_calls": [{"index": position, "function": {"arguments": call.arguments}}]}))
    events.append(chunk(index, {}, "tool_calls"))
    return events


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


async def _stream(state: ServerState, served: ServedModel, prompt_ids: list[int], params: SamplingParams,
                  request_id: str, reasoning: _Reasoning, include_usage: bool,
                  rag: dict[str, Any] | None = None, plan: ToolPlan | None = None) -> AsyncIterator[str]:
    created = int(time.time())
    usage_field = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None,
              extra: dict[str, Any] | None = None) -> str:
        return data_event({
            "id": request_id, "object": "chat.completion.chunk", "created": created, "model": served.id,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
            **usage_field, **(extra or {}),
        })

    splitters = [reasoning.splitter() for _ in range(params.n)]
    held = [""] * params.n
    completion_tokens = [0] * params.n
    prompt_tokens = cached = 0
    outputs = stream_outputs(served, prompt_ids, params, request_id, state.metrics)
    try:
        for index in range(params.n):  # the sources, if any, come first
            yield chunk(index, {"role": "assistant", "content": ""}, extra={"rag": rag} if rag and index == 0 else None)
        async for out in outputs:
            prompt_tokens, cached = out.prompt_tokens or len(prompt_ids), out.cached_prompt_tokens
            completion_tokens[out.index] += len(out.new_token_ids)
            if out.finished and (error := finish_error(out)) is not None:
                raise error
            if plan is not None and plan.active:  # a call is only known once the sample ends: hold its text
                held[out.index] += out.text_delta
                if out.finished:
                    for event in _final_tool_chunks(chunk, out.index, held[out.index], out.finish_reason, plan):
                        yield event
                continue
            splitter = splitters[out.index]
            thinking, content = splitter.feed(out.text_delta) if splitter else ("", out.text_delta)
            if out.finished and splitter is not None:
                more_thinking, more_content = splitter.finish()
                thinking, content = thinking + more_thinking, content + more_content
            logprobs = None
            if params.logprobs is not None and out.new_token_ids:
                logprobs = {"content": chat_logprobs_content(served.tokenizer, out)}
            delta: dict[str, Any] = {}
            if thinking:
                delta["reasoning_content"] = thinking
            if content:
                delta["content"] = content
            if delta or logprobs is not None:
                yield chunk(out.index, delta, None, logprobs)
            if out.finished:
                yield chunk(out.index, {}, out.finish_reason)
        if include_usage:
            yield data_event({
                "id": request_id, "object": "chat.completion.chunk", "created": created, "model": served.id,
                "choices": [], "usage": _usage(prompt_tokens, sum(completion_tokens), cached),
            })
    finally:
        await outputs.aclose()
        state.models.release(served)
