"""POST /v1/completions: the legacy prompt completion API, whole or streamed.

`prompt` may be a string, a list of strings, a list of token ids or a list of such lists; each
prompt gets `n` choices, numbered prompt by prompt (choice index = prompt index * n + sample).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from labs.api.errors import bad_request
from labs.api.logprobs import completion_logprobs
from labs.api.running import prioritized, until_disconnected
from labs.api.schemas import CompletionRequest
from labs.api.security import KeyAccount, admit_request, require_api_key
from labs.api.sse import data_event, event_stream_response, openai_stream
from labs.api.state import ServerState, get_state
from labs.api.translate import guided_decoding, requested_sampling
from labs.serving.events import Finish, TextDelta, Usage
from labs.serving.turn import Turn
from labs.serving.checks import check_input_chars
from labs.serving.turns import TurnEvents, TurnResult, collect

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI"])

MAX_LEGACY_LOGPROBS = 5


def _prompts(body: CompletionRequest) -> list[str | list[int]]:
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    if all(isinstance(item, int) for item in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[arg-type]


def _check_fields(body: CompletionRequest) -> None:
    if body.suffix:
        raise bad_request("suffix (insertion) is not supported by this server", param="suffix")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise bad_request("best_of is not supported by this server: leave it out or equal to n", param="best_of")
    if body.logprobs is not None and not 0 <= body.logprobs <= MAX_LEGACY_LOGPROBS:
        raise bad_request(f"logprobs must be between 0 and {MAX_LEGACY_LOGPROBS}, got {body.logprobs}", param="logprobs")


def _turn(body: CompletionRequest, prompt: str | list[int]) -> Turn:
    return Turn(raw=prompt, model=body.model, id_prefix="cmpl", messages_param="prompt",
                sampling=requested_sampling(body, max_tokens=body.max_tokens, logprobs=body.logprobs),
                guided=guided_decoding(body))


@router.post("/v1/completions", summary="Text completion (OpenAI legacy API)")
async def completions(body: CompletionRequest, request: Request, state: ServerState = Depends(get_state),
                      account: KeyAccount | None = Depends(admit_request)) -> Any:
    _check_fields(body)
    prompts = _prompts(body)
    check_input_chars(sum(len(p) for p in prompts if isinstance(p, str)), state.limits, "prompt")
    opened: list[TurnEvents] = []
    try:
        for prompt in prompts:  # every prompt is checked before anything is generated or streamed
            opened.append(await state.serving.open_turn(prioritized(request, _turn(body, prompt)), account))
    except BaseException:
        await asyncio.gather(*(events.aclose() for events in opened))
        raise
    started = opened[0].started
    texts = [p if isinstance(p, str) else _decode(started, p) for p in prompts]
    echo = texts if body.echo else None
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream_response(openai_stream(_stream(opened, echo, include_usage)))
    try:
        results: list[TurnResult] = await until_disconnected(request, asyncio.gather(*(collect(e) for e in opened)))
    finally:
        await asyncio.gather(*(events.aclose() for events in opened))
    choices = []
    n = started.n
    for prompt_index, result in enumerate(results):
        prefix = texts[prompt_index] if body.echo else ""
        for sample in result.samples:
            logprobs = (completion_logprobs(started.token_text, sample, len(prefix))
                        if body.logprobs is not None else None)
            choices.append({"index": prompt_index * n + sample.index, "text": prefix + sample.text,
                            "logprobs": logprobs, "finish_reason": sample.finish_reason})
    prompt_tokens = sum(r.usage.prompt_tokens for r in results)
    completion_tokens = sum(r.usage.completion_tokens for r in results)
    return JSONResponse({
        "id": started.id, "object": "text_completion", "created": started.created, "model": started.model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def _decode(started: Any, ids: list[int]) -> str:
    return "".join(started.token_text(token) for token in ids)


async def _stream(opened: list[TurnEvents], echo: list[str] | None, include_usage: bool) -> AsyncIterator[str]:
    started = opened[0].started
    n = started.n
    head = {"id": started.id, "object": "text_completion", "created": started.created, "model": started.model}
    usage_field = {"usage": None} if include_usage else {}
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    offsets = [[len(echo[i]) if echo else 0] * n for i in range(len(opened))]

    async def pump(prompt_index: int, events: TurnEvents) -> None:
        try:
            async for event in events:
                await queue.put((prompt_index, event))
        except Exception as error:  # noqa: BLE001 - handed to the consumer
            await queue.put((prompt_index, error))
        finally:
            await events.aclose()
            await queue.put((prompt_index, None))

    def chunk(index: int, text: str, finish_reason: str | None, logprobs: Any = None) -> str:
        return data_event({**head, "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                                "finish_reason": finish_reason}], **usage_field})

    tasks = [asyncio.create_task(pump(i, events)) for i, events in enumerate(opened)]
    remaining = len(opened)
    prompt_tokens = completion_tokens = 0
    try:
        if echo:
            for prompt_index, text in enumerate(echo):
                for sample in range(n):
                    yield chunk(prompt_index * n + sample, text, None)
        while remaining:
            prompt_index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            elif isinstance(item, TextDelta):
                logprobs = None
                if item.logprobs is not None and item.token_ids:
                    logprobs = completion_logprobs(started.token_text, item, offsets[prompt_index][item.index])
                offsets[prompt_index][item.index] += len(item.text)
                if item.text or logprobs is not None:
                    yield chunk(prompt_index * n + item.index, item.text, None, logprobs)
            elif isinstance(item, Finish):
                yield chunk(prompt_index * n + item.index, "", item.reason)
            elif isinstance(item, Usage):
                prompt_tokens += item.prompt_tokens
                completion_tokens += item.completion_tokens
        if include_usage:
            yield data_event({**head, "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                               "completion_tokens": completion_tokens,
                                                               "total_tokens": prompt_tokens + completion_tokens}})
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
