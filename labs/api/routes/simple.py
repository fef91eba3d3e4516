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
from labs.api.running import prioritized, until_disconnected
from labs.api.schemas import GenerateRequest
from labs.api.security import KeyAccount, admit_request, require_api_key
from labs.api.sse import event_stream_response, text_event
from labs.api.state import ServerState, get_state
from labs.serving.events import Finish, TextDelta, Usage
from labs.serving.turn import RequestedSampling, Turn
from labs.serving.turns import TurnEvents, collect

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["Simple API"])


def _turn(body: GenerateRequest) -> Turn:
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give either prompt or messages", param="prompt")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    sampling = RequestedSampling(max_tokens=body.max_new_tokens, temperature=body.temperature, top_p=body.top_p,
                                 top_k=body.top_k, repetition_penalty=body.repetition_penalty, seed=body.seed,
                                 stop=stop, do_sample=body.do_sample, max_tokens_param="max_new_tokens")
    messages = [m.model_dump(exclude_none=True) for m in body.messages] if body.messages is not None else None
    return Turn(prompt=body.prompt, messages=messages, system=body.system_prompt, model=body.model, sampling=sampling,
                use_data=False, id_prefix="gen", messages_param="prompt" if body.prompt is not None else "messages")


@router.post("/generate", summary="Generate text (simple API)")
async def generate(body: GenerateRequest, request: Request, state: ServerState = Depends(get_state),
                   account: KeyAccount | None = Depends(admit_request)) -> Any:
    started = time.perf_counter()
    events = await state.serving.open_turn(prioritized(request, _turn(body)), account)
    try:
        result = await until_disconnected(request, collect(events))
    finally:
        await events.aclose()
    sample = result.samples[0]
    return JSONResponse({
        "text": sample.text,
        "model": result.model,
        "finish_reason": sample.finish_reason,
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "seconds": round(time.perf_counter() - started, 4),
    })


@router.post("/generate/stream", summary="Generate text as server-sent events (simple API)")
async def generate_stream(body: GenerateRequest, request: Request, state: ServerState = Depends(get_state),
                          account: KeyAccount | None = Depends(admit_request)) -> Any:
    started = time.perf_counter()
    events = await state.serving.open_turn(prioritized(request, _turn(body)), account)
    return event_stream_response(_events(events, started))


async def _events(events: TurnEvents, started: float) -> AsyncIterator[str]:
    finish_reason = None
    try:
        async for event in events:
            if isinstance(event, TextDelta) and event.text:
                yield text_event(event.text)
            elif isinstance(event, Finish):
                finish_reason = event.reason
            elif isinstance(event, Usage):
                summary = {"model": events.started.model, "finish_reason": finish_reason,
                           "prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
                           "seconds": round(time.perf_counter() - started, 4)}
                yield text_event(json.dumps(summary), event="done")
    except Exception as error:  # noqa: BLE001 - reported in-band: the status line is already sent
        yield text_event(json.dumps(to_api_error(error).body()), event="error")
    finally:
        await events.aclose()
