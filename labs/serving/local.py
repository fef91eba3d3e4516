"""The serving core for one user at a terminal (labs-gen, the local chat), driven synchronously.

The core is asynchronous; a terminal program is not. `LocalServing` runs the core's event loop
in a thread of its own and runs one turn at a time on it, handing each event to a callback as
it comes. `abort()` (from any thread, e.g. on Ctrl-C) cancels the turn, which closes its events
and so aborts the request in the engine, wherever the turn is: a Ctrl-C that comes before the
turn reaches the engine stops it too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labs.config import Settings
from labs.models import LoadedModel
from labs.serving.build import local_serving
from labs.serving.events import Event
from labs.serving.sampling import SamplingParams, sampling_for
from labs.serving.turn import RequestedSampling, Turn
from labs.serving.turns import Serving, TurnResult, collect


@dataclass
class LocalTurn:
    """How a turn ended: its collected result, or None when it was stopped before it started."""

    result: TurnResult | None
    aborted: bool


class LocalServing:
    def __init__(self, settings: Settings, progress: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.serving: Serving = local_serving(settings, progress)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="labs-serving", daemon=True)
        self._thread.start()
        self._current: concurrent.futures.Future[Any] | None = None
        self._aborted = threading.Event()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ models

    def load(self, model: str | None = None) -> LoadedModel:
        """Load `model` (default: the configured one) now, so the first turn does not wait for it."""
        return self.call(self._load(model)).loaded

    async def _load(self, model: str | None) -> Any:
        async with self.serving.models.use(model) as served:
            return served

    def default_sampling(self, model: str | None = None) -> SamplingParams:
        """The session's starting parameters: the configured and recommended defaults for `model`."""
        served = self.serving.models.loaded(self.serving.models.resolve_id(model))
        recommended = served.recommended if served is not None else None
        return sampling_for(RequestedSampling(), self.settings, self.serving.limits, recommended=recommended)

    # ------------------------------------------------------------------ turns

    def run(self, turn: Turn, on_event: Callable[[Event], None] | None = None) -> LocalTurn:
        """Run one turn to its end (or until `abort()`), calling `on_event` for each event as it comes."""
        with self._lock:
            if self._aborted.is_set():
                return LocalTurn(None, True)
            future = asyncio.run_coroutine_threadsafe(self._consume(turn, on_event), self._loop)
            self._current = future
        try:
            return LocalTurn(future.result(), False)
        except concurrent.futures.CancelledError:
            return LocalTurn(None, True)
        finally:
            self._current = None

    async def _consume(self, turn: Turn, on_event: Callable[[Event], None] | None) -> TurnResult:
        events = await self.serving.open_turn(turn)

        async def observed() -> Any:
            async for event in events:
                if on_event is not None:
                    on_event(event)
                yield event

        try:
            return await collect(observed())
        finally:
            await events.aclose()

    def new_turn(self) -> None:
        """Forget the previous turn's abort (called before a turn's worker starts)."""
        self._aborted.clear()

    def abort(self) -> None:
        with self._lock:
            self._aborted.set()
            if self._current is not None:
                self._current.cancel()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.serving.models.shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def call(self, coroutine: Any) -> Any:
        """Run one coroutine of the core on its loop and wait for it (e.g. opening the document index)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

