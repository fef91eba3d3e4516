"""The original project's simple API: POST /generate and POST /generate/stream.

Body: a `prompt` (sent as a user message when the model has a chat template, as labs-gen does)
or `messages`, with HF-style parameters (`max_new_tokens`, `do_sample`, ...). The stream sends
the text as `data: <text>` events, then `event: done` with the totals; a failure midway is an
`event: error` with the OpenAI error object.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from labs.api.errors import bad_request, to_api_error
from labs.api.running import collect_outputs, finish_error, new_id, stream_outputs, until_disconnected
from labs.api.schemas import GenerateRequest
from labs.api.security import require_api_key
from labs.api.sse import event_stream_response, text_event
from labs.api.state import ServerState, get_state
from labs.api.translate import check_input_chars, check_max_tokens_fit, check_messages, context_room
from labs.engine.sampling import SamplingParams
from labs.models.prompting import prompt_token_ids
from labs.serving.models import ServedModel

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["Simple API"])


def _params(body: GenerateRequest, state: ServerState, room: int) -> SamplingParams:
    generation = state.settings.generation
    max_tokens = body.max_new_tokens
    if max_tokens is not None and max_tokens > state.limits.max_tokens:
        raise bad_request(f"max_new_tokens must be at most {state.limits.max_tokens} on this server "
                          f"(LABS_MAX_TOKENS_LIMIT), got {max_tokens}", param="max_new_tokens")
    if max_tokens is None:
        max_tokens = max(1, min(generation.max_new_tokens, state.limits.max_tokens, room))
    do_sample = generation.do_sample if body.do_sample is None else body.do_sample
    temperature = body.temperature if body.temperature is not None else generation.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature if do_sample else 0.0,
        top_p=body.top_p if body.top_p is not None else generation.top_p,
        top_k=body.top_k if body.top_k is not None else generation.top_k,
        repetition_penalty=body.repetition_penalty if body.repetition_penalty is not None else generation.repetition_penalty,
        seed=body.seed if body.seed is not None else generation.seed,
        stop=body.stop or [],
    )


def _prompt_ids(body: GenerateRequest, served: ServedModel, state: ServerState) -> list[int]:
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give either prompt or messages", param="prompt")
    generation = state.settings.generation
    messages = check_messages(body.messages, state.limits) if body.messages is not None else None
    if body.prompt is not None:
        check_input_chars(len(body.prompt), state.limits, "prompt")
    return prompt_token_ids(
        served.tokenizer, prompt=body.prompt, messages=messages,
        system=body.system_prompt or generation.system_prompt,
        use_chat_template=generation.use_chat_template,
        add_generation_prompt=generation.add_generation_prompt,
    )


async def _prepare(body: GenerateRequest, state: ServerState) -> tuple[ServedModel, list[int], SamplingParams]:
    served = await state.models.acquire(body.model)
    try:
        ids = _prompt_ids(body, served, state)
        room = context_room(served, ids, "prompt")
        check_max_tokens_fit(served, ids, body.max_new_tokens, "max_new_tokens")
        return served, ids, _params(body, state, room)
    except BaseException:
        state.models.release(served)
        raise


@router.post("/generate", summary="Generate text (simple API)")
async def generate(body: GenerateRequest, request: Request, state: ServerState = Depends(get_state)) -> Any:
    served, ids, params = await _prepare(body, state)
    started = time.perf_counter()
    try:
        collected = await until_disconnected(request, collect_outputs(served, ids, params, new_id("gen"), state.metrics))
    finally:
        state.models.release(served)
    sample = collected.samples[0]
    return JSONResponse({
        "text": sample.text,
        "model": served.id,
        "finish_reason": sample.finish_reason,
        "prompt_tokens": collected.prompt_tokens,
        "completion_tokens": len(sample.token_ids),
        "seconds": round(time.perf_counter() - started, 4),
    })


@router.post("/generate/stream", summary="Generate text as server-sent events (simple API)")
async def generate_stream(body: GenerateRequest, state: ServerState = Depends(get_state)) -> Any:
    served, ids, params = await _prepare(body, state)
    return event_stream_response(_events(state, served, ids, params))


async def _events(state: ServerState, served: ServedModel, ids: list[int], params: SamplingParams) -> AsyncIterator[str]:
    started = time.perf_counter()
    tokens = 0
    finish_reason = None
    outputs = stream_outputs(served, ids, params, new_id("gen"), state.metrics)
    try:
        async for out in outputs:
            tokens += len(out.new_token_ids)
            if out.finished and (error := finish_error(out)) is not None:
                raise error
            if out.text_delta:
                yield text_event(out.text_delta)
            if out.finished:
                finish_reason = out.finish_reason
    except Exception as error:  # noqa: BLE001 - reported in-band: the status line is already sent
        yield text_event(json.dumps(to_api_error(error).body()), event="error")
        return
    finally:
        await outputs.aclose()
        state.models.release(served)
    summary = {"model": served.id, "finish_reason": finish_reason, "prompt_tokens": len(ids), "completion_tokens": tokens,
               "seconds": round(time.perf_counter() - started, 4)}
    yield text_event(json.dumps(summary), event="done")
