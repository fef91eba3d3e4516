"""Batch concurrent embedding requests into shared forward passes on the torch thread.

Why: a forward over 64 short texts costs little more than over one, so requests that arrive
while a batch is encoding are gathered into the next one. Encoding is awaited through
`asyncio.wrap_future`, so the event loop never blocks on torch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from labs.embeddings.model import EmbeddingInput, EmbeddingModel, EmbeddingResult
from labs.engine.torch_thread import torch_thread
from labs.errors import LabsError

logger = logging.getLogger(__name__)


class EmbeddingBatcherClosedError(LabsError):
    """The batcher was closed (server shutting down) before the request was embedded."""


@dataclass
class EmbeddingStats:
    """Running totals for metrics."""

    inputs_total: int = 0
    tokens_total: int = 0
    batches_total: int = 0
    encode_seconds_total: float = 0.0


@dataclass
class _Request:
    inputs: Sequence[EmbeddingInput]
    future: asyncio.Future[EmbeddingResult]
    vectors: list[np.ndarray | None] = field(default_factory=list)
    token_counts: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    queued: int = 0  # inputs already taken into a batch
    done: int = 0  # inputs embedded

    def __post_init__(self) -> None:
        size = len(self.inputs)
        self.vectors = [None] * size
        self.token_counts = [0] * size
        self.truncated = [False] * size


@dataclass
class _Slice:
    request: _Request
    start: int
    stop: int


class EmbeddingBatcher:
    """Embeds requests from many asyncio tasks, up to `max_batch_size` inputs per forward."""

    def __init__(self, model: EmbeddingModel, max_batch_size: int = 64) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model
        self.max_batch_size = max_batch_size
        self._queue: deque[_Request] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._in_flight: list[_Slice] = []
        self._closed = False
        self._stats = EmbeddingStats()

    @property
    def stats(self) -> EmbeddingStats:
        """A copy of the running totals."""
        return replace(self._stats)

    @property
    def queued_inputs(self) -> int:
        """Inputs waiting for a forward (a gauge for metrics)."""
        return sum(len(request.inputs) - request.queued for request in self._queue if not request.future.done())

    @property
    def in_flight_inputs(self) -> int:
        """Inputs in the forward now running on the torch thread."""
        return sum(piece.stop - piece.start for piece in self._in_flight)

    async def embed(self, inputs: Sequence[EmbeddingInput]) -> EmbeddingResult:
        """Embed `inputs` (strings or token-id lists), sharing forwards with concurrent callers."""
        if self._closed:
            raise EmbeddingBatcherClosedError("the embedding service is shutting down: retry against a running server")
        self.model.validate(inputs)  # bad input fails this request alone, before it can join a batch
        if not inputs:
            return EmbeddingResult(np.zeros((0, self.model.dimension), dtype=np.float32), [], [])
        loop = asyncio.get_running_loop()
        request = _Request(list(inputs), loop.create_future())
        if self._worker is not None and self._worker.get_loop() is not loop:
            # Used from a new event loop (e.g. successive asyncio.run calls): the old worker is gone.
            self._queue = deque(waiting for waiting in self._queue if waiting.future.get_loop() is loop)
            self._worker = None
        self._queue.append(request)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="labs-embedding-batcher")
        return await request.future

    async def close(self) -> None:
        """Stop accepting requests; fail the queued and in-flight ones; stop the worker."""
        self._closed = True
        error = EmbeddingBatcherClosedError("the embedding service shut down before this request was embedded")
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        for piece in self._in_flight:
            _fail(piece.request, error)
        self._in_flight = []
        while self._queue:
            _fail(self._queue.popleft(), error)

    async def _run(self) -> None:
        """Take batches while requests are waiting; exit when the queue is empty."""
        try:
            while True:
                batch = self._take_batch()
                if not batch:
                    return
                self._in_flight = batch
                await self._encode(batch)
                self._in_flight = []
        except Exception as error:  # noqa: BLE001 - a bug here must not leave callers waiting forever
            logger.exception("embedding batcher stopped on an unexpected error")
            for piece in self._in_flight:
                _fail(piece.request, error)
            self._in_flight = []
            while self._queue:
                _fail(self._queue.popleft(), error)

    def _take_batch(self) -> list[_Slice]:
        batch: list[_Slice] = []
        room = self.max_batch_size
        while self._queue and room:
            request = self._queue[0]
            if request.future.done():  # cancelled by its caller, or failed in an earlier batch
                self._queue.popleft()
                continue
            stop = min(len(request.inputs), request.queued + room)
            batch.append(_Slice(request, request.queued, stop))
            room -= stop - request.queued
            request.queued = stop
            if stop == len(request.inputs):
                self._queue.popleft()
        return batch

    async def _encode(self, batch: list[_Slice]) -> None:
        inputs = [item for piece in batch for item in piece.request.inputs[piece.start : piece.stop]]
        model = self.model

        def work() -> tuple[EmbeddingResult, float]:
            started = time.perf_counter()
            result = model.encode(inputs)
            return result, time.perf_counter() - started

        try:
            result, seconds = await asyncio.wrap_future(torch_thread().submit(work))
        except Exception as error:  # noqa: BLE001 - handed to the requests of this batch only
            logger.warning("embedding batch of %d inputs failed: %s", len(inputs), error)
            for piece in batch:
                _fail(piece.request, error)
            return
        self._stats.batches_total += 1
        self._stats.inputs_total += len(inputs)
        self._stats.tokens_total += result.total_tokens
        self._stats.encode_seconds_total += seconds
        offset = 0
        for piece in batch:
            request = piece.request
            for index in range(piece.start, piece.stop):
                request.vectors[index] = result.vectors[offset]
                request.token_counts[index] = result.token_counts[offset]
                request.truncated[index] = result.truncated[offset]
                offset += 1
            request.done += piece.stop - piece.start
            if request.done == len(request.inputs) and not request.future.done():
                request.future.set_result(
                    EmbeddingResult(np.stack(request.vectors), request.token_counts, request.truncated)  # type: ignore[arg-type]
                )


def _fail(request: _Request, error: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(error)
