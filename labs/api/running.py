"""Running one request through a model's engine: collect or stream, time it, and abort on disconnect.

Transport-neutral pieces the chat, completions and simple routes share. A request whose client
goes away is aborted in the engine (its KV cache is freed at the next step), whether it streams
(the response generator is closed) or not (a watcher polls for the disconnect).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.requests import Request

from labs.api.errors import APIError
from labs.api.metrics import Metrics
from labs.engine.sampling import SamplingParams
from labs.engine.sequence import RequestOutput
from labs.serving.models import ServedModel

T = TypeVar("T")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@dataclass
class Sample:
    """One of a request's n outputs, accumulated."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]] | None] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, out: RequestOutput) -> None:
        self.text += out.text_delta
        self.token_ids.extend(out.new_token_ids)
        if out.logprobs is not None:
            self.logprobs.extend(out.logprobs)
            self.top_logprobs.extend(out.top_logprobs or [None] * len(out.logprobs))


@dataclass
class Collected:
    samples: list[Sample]
    prompt_tokens: int
    cached_prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return sum(len(sample.token_ids) for sample in self.samples)


class Timing:
    """Time to first token and time per output token of one request, for /metrics."""

    def __init__(self, metrics: Metrics, model_id: str) -> None:
        self.metrics = metrics
        self.model_id = model_id
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.tokens = 0

    def saw(self, out: RequestOutput) -> None:
        if out.new_token_ids:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
                self.metrics.time_to_first_token.labels(self.model_id).observe(self.first_token_at - self.started)
            self.tokens += len(out.new_token_ids)

    def done(self) -> None:
        if self.first_token_at is not None and self.tokens > 1:
            per_token = (time.perf_counter() - self.first_token_at) / (self.tokens - 1)
            self.metrics.time_per_output_token.labels(self.model_id).observe(per_token)


def finish_error(out: RequestOutput) -> APIError | None:
    """An engine-side failure of a sample, as an API error (None when it ended normally)."""
    if out.finish_reason == "error":
        return APIError(500, out.error or "generation failed", type="server_error", code="generation_failed")
    if out.finish_reason == "abort":
        return APIError(503, "the request was stopped because the server is shutting down", type="server_error",
                        code="engine_unavailable")
    return None


async def stream_outputs(served: ServedModel, prompt_ids: list[int], params: SamplingParams, request_id: str,
                         metrics: Metrics) -> AsyncIterator[RequestOutput]:
    """The engine's outputs for one request; closing this generator aborts the request."""
    timing = Timing(metrics, served.id)
    stream = served.engine.add_request(prompt_ids, params, request_id)
    try:
        async for out in stream:
            timing.saw(out)
            yield out
        timing.done()
    finally:
        await stream.aclose()


async def collect_outputs(served: ServedModel, prompt_ids: list[int], params: SamplingParams, request_id: str,
                          metrics: Metrics) -> Collected:
    samples = [Sample(index) for index in range(params.n)]
    prompt_tokens = cached = 0
    outputs = stream_outputs(served, prompt_ids, params, request_id, metrics)
    try:
        async for out in outputs:
            samples[out.index].add(out)
            prompt_tokens, cached = out.prompt_tokens, out.cached_prompt_tokens
            if out.finished:
                error = finish_error(out)
                if error is not None:
                    raise error
                samples[out.index].finish_reason = out.finish_reason
    finally:
        await outputs.aclose()
    return Collected(samples, prompt_tokens or len(prompt_ids), cached)


async def until_disconnected(request: Request, work: Awaitable[T], poll_seconds: float = 0.25) -> T:
    """Run `work`, cancelling it if the client disconnects first (cancellation aborts the request)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_seconds)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise APIError(499, "the client closed the connection", code="client_closed_request")
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001 - its cancellation is what we asked for
                pass
