"""POST /v1/completions: the legacy prompt completion API, whole or streamed.

`prompt` may be a string, a list of strings, a list of token ids or a list of such lists; each
prompt gets `n` choices, numbered prompt by prompt (choice index = prompt index * n + sample).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from labs.api.errors import bad_request
from labs.api.logprobs import completion_logprobs
from labs.api.running import Collected, collect_outputs, finish_error, new_id, stream_outputs, until_disconnected
from labs.api.schemas import CompletionRequest
from labs.api.security import require_api_key
from labs.api.sse import data_event, event_stream_response, openai_stream
from labs.api.state import ServerState, get_state
from labs.api.translate import check_input_chars, check_max_tokens_fit, context_room, sampling_params
from labs.engine.sampling import SamplingParams
from labs.serving.models import ServedModel

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


def _encode(served: ServedModel, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return list(served.tokenizer(prompt)["input_ids"])
    return list(prompt)


def _check_fields(body: CompletionRequest) -> None:
    if body.suffix:
        raise bad_request("suffix (insertion) is not supported by this server", param="suffix")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise bad_request("best_of is not supported by this server: leave it out or equal to n", param="best_of")
    if body.logprobs is not None and not 0 <= body.logprobs <= MAX_LEGACY_LOGPROBS:
        raise bad_request(f"logprobs must be between 0 and {MAX_LEGACY_LOGPROBS}, got {body.logprobs}", param="logprobs")


@router.post("/v1/completions", summary="Text completion (OpenAI legacy API)")
async def completions(body: CompletionRequest, request: Request, state: ServerState = Depends(get_state)) -> Any:
    _check_fields(body)
    prompts = _prompts(body)
    check_input_chars(sum(len(p) for p in prompts if isinstance(p, str)), state.limits, "prompt")
    served = await state.models.acquire(body.model)
    try:
        encoded = [_encode(served, prompt) for prompt in prompts]
        params_list: list[SamplingParams] = []
        for ids in encoded:
            if not ids:
                raise bad_request("prompt must not be empty", param="prompt")
            room = context_room(served, ids, "prompt")
            check_max_tokens_fit(served, ids, body.max_tokens, "max_tokens")
            params_list.append(sampling_params(body, state.settings, state.limits, max_tokens=body.max_tokens,
                                               room=room, logprobs=body.logprobs))
            served.engine.check(ids, params_list[-1])
        request_id = new_id("cmpl")
        texts = [p if isinstance(p, str) else served.tokenizer.decode(p) for p in prompts]
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(state, served, encoded, params_list, request_id, texts if body.echo else None, include_usage)
            return event_stream_response(openai_stream(events))
        results: list[Collected] = await until_disconnected(request, asyncio.gather(*(
            collect_outputs(served, ids, params, f"{request_id}-{i}", state.metrics)
            for i, (ids, params) in enumerate(zip(encoded, params_list))
        )))
    except BaseException:
        state.models.release(served)
        raise
    state.models.release(served)
    choices = []
    n = params_list[0].n
    for prompt_index, collected in enumerate(results):
        prefix = texts[prompt_index] if body.echo else ""
        for sample in collected.samples:
            choices.append({
                "index": prompt_index * n + sample.index,
                "text": prefix + sample.text,
                "logprobs": completion_logprobs(served.tokenizer, sample, len(prefix)) if body.logprobs is not None else None,
                "finish_reason": sample.finish_reason,
            })
    prompt_tokens = sum(c.prompt_tokens for c in results)
    completion_tokens = sum(c.completion_tokens for c in results)
    return JSONResponse({
        "id": request_id, "object": "text_completion", "created": int(time.time()), "model": served.id,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


async def _stream(state: ServerState, served: ServedModel, encoded: list[list[int]], params_list: list[SamplingParams],
                  request_id: str, echo: list[str] | None, include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())
    n = params_list[0].n
    usage_field = {"usage": None} if include_usage else {}
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    offsets = [[len(echo[i]) if echo else 0] * n for i in range(len(encoded))]

    async def pump(prompt_index: int, ids: list[int], params: SamplingParams) -> None:
        outputs = stream_outputs(served, ids, params, f"{request_id}-{prompt_index}", state.metrics)
        try:
            async for out in outputs:
                await queue.put((prompt_index, out))
        except Exception as error:  # noqa: BLE001 - handed to the consumer
            await queue.put((prompt_index, error))
        finally:
            await outputs.aclose()

    def chunk(index: int, text: str, finish_reason: str | None, logprobs: Any = None) -> str:
        return data_event({"id": request_id, "object": "text_completion", "created": created, "model": served.id,
                           "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}],
                           **usage_field})

    tasks = [asyncio.create_task(pump(i, ids, params)) for i, (ids, params) in enumerate(zip(encoded, params_list))]
    remaining = len(encoded) * n
    prompt_tokens = [0] * len(encoded)
    completion_tokens = 0
    try:
        if echo:
            for prompt_index, text in enumerate(echo):
                for sample in range(n):
                    yield chunk(prompt_index * n + sample, text, None)
        while remaining:
            prompt_index, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            out = item
            prompt_tokens[prompt_index] = out.prompt_tokens or len(encoded[prompt_index])
            completion_tokens += len(out.new_token_ids)
            if out.finished and (error := finish_error(out)) is not None:
                raise error
            index = prompt_index * n + out.index
            logprobs = None
            if params_list[prompt_index].logprobs is not None and out.new_token_ids:
                logprobs = completion_logprobs(served.tokenizer, out, offsets[prompt_index][out.index])
            offsets[prompt_index][out.index] += len(out.text_delta)
            if out.text_delta or logprobs is not None or out.finished:
                yield chunk(index, out.text_delta, out.finish_reason if out.finished else None, logprobs)
            if out.finished:
                remaining -= 1
        if include_usage:
            total_prompt = sum(prompt_tokens)
            yield data_event({"id": request_id, "object": "text_completion", "created": created, "model": served.id,
                              "choices": [], "usage": {"prompt_tokens": total_prompt, "completion_tokens": completion_tokens,
                                                       "total_tokens": total_prompt + completion_tokens}})
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        state.models.release(served)
