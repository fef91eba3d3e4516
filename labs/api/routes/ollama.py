"""Ollama's API under /api: chat, generate, embed, and the model listing, on the serving core.

Answers stream as NDJSON (one JSON object a line) unless `"stream": false`; a failure after the
first line goes out in-band as `{"error": ...}`, which Ollama clients raise. Every error under
/api/ is Ollama's `{"error": "<message>"}` with the HTTP status (validation errors included).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from labs import __version__
from labs.api import ollama_shapes as shapes
from labs.api.errors import APIError, bad_request, register_error_shape, to_api_error
from labs.api.running import prioritized, until_disconnected
from labs.api.security import KeyAccount, admit_request, caller_account, require_api_key
from labs.api.state import ServerState, get_state
from labs.embeddings.vectors import truncate_dimensions
from labs.errors import LabsError
from labs.models.embedded import EMBEDDED_CHAT_MODELS
from labs.models.resolve import follow_aliases, resolve_model
from labs.serving.accounts import check_model
from labs.serving.events import Finish, ReasoningDelta, TextDelta, ToolCalls, Usage
from labs.serving.models import ModelNotAvailableError
from labs.serving.text import check_text
from labs.serving.turn import Turn
from labs.serving.checks import check_input_chars
from labs.serving.turns import TurnEvents

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key)], tags=["Ollama"])


def _ollama_error(error: APIError) -> JSONResponse:
    """Ollama's error body is the message alone; its clients raise it as ResponseError with the status."""
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


register_error_shape("/api", _ollama_error)


# ---------------------------------------------------------------------------------------------- names


def _not_found(name: str) -> APIError:
    return APIError(404, f"model '{name}' not found", param="model", code="model_not_found")


def _is_embedding_model(state: ServerState, name: str) -> bool:
    return name in (state.embeddings.model_id, shapes.tag_name(state.embeddings.model_id))


def _chat_model(state: ServerState, name: str) -> str:
    """The served id a client's `model:tag` names (a chat model)."""
    check_text(name, "model")
    if not name:
        raise bad_request("model is required", param="model")
    try:
        return state.models.resolve_id(name)
    except ModelNotAvailableError:
        if _is_embedding_model(state, name):
            raise bad_request(f"model '{name}' does not support chat or generate: it is an embedding model "
                              "(use /api/embed)", param="model") from None
        raise _not_found(name) from None


def _embedding_model(state: ServerState, name: str) -> None:
    check_text(name, "model")
    if not name or _is_embedding_model(state, name):
        return
    try:
        state.models.resolve_id(name)
    except ModelNotAvailableError:
        raise _not_found(name) from None
    raise bad_request(f"model '{name}' does not support embeddings: use '{state.embeddings.model_id}'", param="model")


# ---------------------------------------------------------------------------------------------- models


def _files(state: ServerState, model_id: str) -> shapes.ModelFiles | None:
    """The model's files, found without loading it (and never from the network: Hub ids are left out)."""
    served = state.models.loaded(model_id)
    if served is not None:
        return shapes.model_files(served.loaded.source)
    settings = state.settings
    spec = settings.generation.model_name if model_id == state.models.default_id else model_id
    try:
        target, _ = follow_aliases(spec, settings.model_aliases)
        if target not in EMBEDDED_CHAT_MODELS and not Path(target).expanduser().exists():
            return None
        return shapes.model_files(resolve_model(spec, settings.model_aliases))
    except LabsError:
        return None


def _expires_at(state: ServerState, served: Any) -> float | None:
    """When the idle sweeper would unload it (None: never, as for the default model)."""
    ttl = state.models.idle_ttl
    if served.id == state.models.default_id or ttl <= 0:
        return None
    return time.time() - (time.monotonic() - served.last_used) + ttl


@router.get("/api/version", summary="Server version (Ollama)")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/api/tags", summary="List the chat models (Ollama)")
async def tags(state: ServerState = Depends(get_state), account: KeyAccount | None = Depends(caller_account)) -> dict[str, Any]:
    def listing() -> list[dict[str, Any]]:
        return [shapes.tag_entry(model_id, state.models.loaded(model_id), _files(state, model_id))
                for model_id in state.models.available_ids() if account is None or account.allows(model_id)]

    return {"models": await asyncio.to_thread(listing)}


@router.post("/api/show", summary="Describe one model (Ollama)")
async def show(body: shapes.OllamaShowRequest, state: ServerState = Depends(get_state),
               account: KeyAccount | None = Depends(caller_account)) -> dict[str, Any]:
    model_id = _chat_model(state, body.model or body.name or "")
    check_model(account, model_id)

    def describe() -> dict[str, Any]:
        return shapes.show_body(model_id, state.models.loaded(model_id), _files(state, model_id))

    return await asyncio.to_thread(describe)


@router.get("/api/ps", summary="The models in memory (Ollama)")
async def ps(state: ServerState = Depends(get_state), account: KeyAccount | None = Depends(caller_account)) -> dict[str, Any]:
    def listing() -> list[dict[str, Any]]:
        return [shapes.ps_entry(served, _files(state, served.id), _expires_at(state, served))
                for served in state.models.loaded_models() if account is None or account.allows(served.id)]

    return {"models": await asyncio.to_thread(listing)}


# ---------------------------------------------------------------------------------------------- chat, generate


@router.post("/api/chat", summary="Chat (Ollama)")
async def chat(body: shapes.OllamaChatRequest, request: Request, state: ServerState = Depends(get_state),
               account: KeyAccount | None = Depends(admit_request)) -> Any:
    clock = shapes.Clock()
    model_id = _chat_model(state, body.model)
    check_model(account, model_id)
    if not body.messages:
        return await _load(state, "chat", body.model, model_id, body.keep_alive)
    return await _answer(state, request, account, "chat", body.model, shapes.chat_turn(body, model_id), body.stream,
                         clock)


@router.post("/api/generate", summary="Generate from a prompt (Ollama)")
async def generate(body: shapes.OllamaGenerateRequest, request: Request, state: ServerState = Depends(get_state),
                   account: KeyAccount | None = Depends(admit_request)) -> Any:
    clock = shapes.Clock()
    model_id = _chat_model(state, body.model)
    check_model(account, model_id)
    if not body.prompt and not body.images:
        return await _load(state, "generate", body.model, model_id, body.keep_alive)
    return await _answer(state, request, account, "generate", body.model, shapes.generate_turn(body, model_id),
                         body.stream, clock)


async def _load(state: ServerState, kind: str, name: str, model_id: str, keep_alive: Any) -> JSONResponse:
    """An empty prompt or conversation is Ollama's "load the model" call; with keep_alive 0, "unload".

    Nothing is unloaded here: the registry decides when models leave memory (idle TTL, least
    recently used), so a client's unload cannot take the default model from other clients."""
    if shapes.unloading(keep_alive):
        reason = "unload"
    else:
        async with state.models.use(model_id):
            reason = "load"
    return JSONResponse({**shapes.chunk(kind, name, done=True), "done_reason": reason})


async def _answer(state: ServerState, request: Request, account: KeyAccount | None, kind: str, name: str, turn: Turn,
                  stream: bool | None, clock: shapes.Clock) -> Any:
    events = await state.serving.open_turn(prioritized(request, turn), account)  # a bad request fails here, before any line is sent
    clock.mark_ready()
    if stream is not False:
        return StreamingResponse(_lines(kind, name, events, clock), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        answer = await until_disconnected(request, _collect(events, clock))
    finally:
        await events.aclose()
    return JSONResponse(shapes.final(kind, name, answer, clock.durations(answer.usage)))


async def _parts(events: TurnEvents, clock: shapes.Clock, answer: shapes.Answer) -> AsyncIterator[dict[str, Any]]:
    """The output as Ollama's message fields; the finish reason and the token counts go to `answer`."""
    async for event in events:
        if isinstance(event, ReasoningDelta) and event.text:
            clock.saw_output()
            yield {"thinking": event.text}
        elif isinstance(event, TextDelta) and event.text:
            clock.saw_output()
            yield {"content": event.text}
        elif isinstance(event, ToolCalls):
            clock.saw_output()
            yield {"tool_calls": [shapes.ollama_call(call, index) for index, call in enumerate(event.calls)]}
        elif isinstance(event, Finish):
            answer.reason = shapes.done_reason(event.reason)
        elif isinstance(event, Usage):
            answer.usage = event


async def _collect(events: TurnEvents, clock: shapes.Clock) -> shapes.Answer:
    answer = shapes.Answer()
    async for part in _parts(events, clock, answer):
        answer.add(part)
    return answer


def _line(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n"


async def _lines(kind: str, name: str, events: TurnEvents, clock: shapes.Clock) -> AsyncIterator[str]:
    totals = shapes.Answer()
    try:
        async for part in _parts(events, clock, totals):
            yield _line(shapes.chunk(kind, name, **part))
        last = shapes.Answer(reason=totals.reason, usage=totals.usage)
        yield _line(shapes.final(kind, name, last, clock.durations(totals.usage)))
    except Exception as error:  # noqa: BLE001 - the status is sent: the failure goes out in-band
        yield _line({"error": to_api_error(error).message})
    finally:
        await events.aclose()


# ---------------------------------------------------------------------------------------------- embeddings


async def _embed(state: ServerState, inputs: list[str], truncate: bool,
                 account: KeyAccount | None) -> tuple[Any, int, int]:
    """(vectors, tokens, load nanoseconds) for the texts; an empty list only loads the model."""
    check_text(inputs, "input")
    if len(inputs) > state.limits.max_embedding_inputs:
        raise bad_request(f"input has {len(inputs)} entries, more than the server's limit of "
                          f"{state.limits.max_embedding_inputs} (LABS_MAX_EMBEDDING_INPUTS)", param="input")
    check_input_chars(sum(len(text) for text in inputs), state.limits, "input")
    started = time.perf_counter_ns()
    await state.embeddings.model()
    loaded = time.perf_counter_ns() - started
    if not inputs:
        return [], 0, loaded
    result = await state.embeddings.embed(inputs, account)
    if not truncate and any(result.truncated):
        raise bad_request("the input length exceeds the context length (send truncate=true to cut it)", param="input")
    return result.vectors, sum(result.token_counts), loaded


@router.post("/api/embed", summary="Embed texts (Ollama)")
async def embed(body: shapes.OllamaEmbedRequest, state: ServerState = Depends(get_state),
                account: KeyAccount | None = Depends(admit_request)) -> dict[str, Any]:
    started = time.perf_counter_ns()
    _embedding_model(state, body.model)
    inputs = [body.input] if isinstance(body.input, str) else list(body.input)
    vectors, tokens, loaded = await _embed(state, inputs, body.truncate is not False, account)
    if body.dimensions is not None and len(vectors):
        vectors = truncate_dimensions(vectors, body.dimensions)
    return {"model": body.model, "embeddings": [[float(x) for x in vector] for vector in vectors],
            "total_duration": time.perf_counter_ns() - started, "load_duration": loaded, "prompt_eval_count": tokens}


@router.post("/api/embeddings", summary="Embed one text (Ollama's older endpoint)")
async def embeddings(body: shapes.OllamaEmbeddingsRequest, state: ServerState = Depends(get_state),
                     account: KeyAccount | None = Depends(admit_request)) -> dict[str, Any]:
    _embedding_model(state, body.model)
    vectors, _, _ = await _embed(state, [body.prompt] if body.prompt else [], True, account)
    return {"embedding": [float(x) for x in vectors[0]] if len(vectors) else []}
