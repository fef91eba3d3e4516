"""The engine as the rest of the product sees it: torch runs on one thread, callers stream outputs.

`add_request` validates and queues a request from any thread and returns an async iterator of
`RequestOutput`s; the process's torch thread (see torch_thread.py) runs this engine's steps
while it has work and hands each output to the caller's event loop with `call_soon_threadsafe`. `generate` is the blocking convenience for the
CLI. Closing an iterator early (a client that went away) aborts its request, which frees its
cache at the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labs.engine.core import EngineConfig, EngineCore, EngineStats
from labs.engine.errors import EngineDeadError, EngineOverloadedError
from labs.engine.sampling import SamplingParams
from labs.engine.sequence import PRIORITY_LEVELS, RequestOutput
from labs.engine.torch_thread import torch_thread

logger = logging.getLogger(__name__)
_request_ids = itertools.count()


@dataclass
class SampleResult:
    """One finished sample of a blocking `generate` call."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]] | None] = field(default_factory=list)
    error: str | None = None


@dataclass
class GenerateResult:
    samples: list[SampleResult]
    prompt_tokens: int
    cached_prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.samples)


class Engine:
    def __init__(self, model: Any, tokenizer: Any, context_length: int, config: EngineConfig | None = None) -> None:
        self._torch = torch_thread()
        self._torch.use_cpu_threads((config or EngineConfig()).cpu_threads)
        self.core = self._torch.call(EngineCore, model, tokenizer, context_length, config)
        self.config = self.core.config
        self.tokenizer = tokenizer
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stopped = False
        self._dead: BaseException | None = None
        self._pending_adds = [0] * PRIORITY_LEVELS  # per priority: submitted, not yet in the core
        self._lock = threading.Lock()
        self._torch.register(self)

    # ------------------------------------------------------------------ public API

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str | None = None,
                    adapter: str | None = None, priority: int = 0) -> "RequestStream":
        """Queue a request (with a loaded LoRA adapter, or the base model; priority 0 is interactive, higher
        values wait for capacity that is left and yield it); iterate the result (in a running event loop)
        to receive its outputs."""
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[RequestOutput] = asyncio.Queue()
        request_id = self._submit(list(prompt_token_ids), params, request_id,
                                  lambda out: loop.call_soon_threadsafe(outputs.put_nowait, out), adapter, priority)
        return RequestStream(self, request_id, params.n, outputs)

    def generate(self, prompt_token_ids: list[int], params: SamplingParams,
                 on_output: Callable[[RequestOutput], None] | None = None, request_id: str | None = None,
                 adapter: str | None = None) -> GenerateResult:
        """Blocking convenience: run one request to the end (on_output sees every output as it comes)."""
        outputs: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()
        request_id = self._submit(list(prompt_token_ids), params, request_id, outputs.put, adapter)
        samples = [SampleResult(index=i) for i in range(params.n)]
        prompt_tokens = cached = 0
        remaining = params.n
        try:
            while remaining:
                out = self._next_blocking(outputs)
                sample = samples[out.index]
                sample.text += out.text_delta
                sample.token_ids.extend(out.new_token_ids)
                if out.logprobs is not None:
                    sample.logprobs.extend(out.logprobs)
                    sample.top_logprobs.extend(out.top_logprobs or [])
                prompt_tokens, cached = out.prompt_tokens, out.cached_prompt_tokens
                if on_output is not None:
                    on_output(out)
                if out.finished:
                    sample.finish_reason, sample.stop_reason, sample.error = out.finish_reason, out.stop_reason, out.error
                    remaining -= 1
        except BaseException:
            self.abort(request_id)
            raise
        return GenerateResult(samples, prompt_tokens, cached)

    def check(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise the error add_request would (context, vocabulary, grammar), without queueing anything.

        For callers that must answer before they start streaming (an HTTP status cannot change later).
        """
        self.core.validate(list(prompt_token_ids), params)

    def abort(self, request_id: str) -> None:
        """Stop a request; its cache is freed in the engine's next step."""
        self._command(lambda: self.core.abort(request_id))

    def load_adapter(self, name: str, path: Path) -> Future:
        """Register a LoRA adapter folder between steps, checked against the model (the future
        raises AdapterError when it does not fit)."""
        return self._between_steps(lambda: self.core.add_adapter(name, path))

    def unload_adapter(self, name: str) -> Future:
        """Forget an adapter between steps (the future raises EngineRequestError while requests use it)."""
        return self._between_steps(lambda: self.core.remove_adapter(name))

    def adapters(self) -> dict[str, Path]:
        """The adapters this engine serves, by name."""
        return dict(self.core.adapters.known)  # a snapshot: the engine replaces it, never changes it in place

    def stats(self, timeout: float = 30.0) -> EngineStats:
        """A snapshot taken between steps; EngineDeadError if the torch thread does not answer in time."""
        done = threading.Event()
        box: list[EngineStats] = []

        def snapshot() -> None:
            box.append(self.core.snapshot_stats())
            done.set()

        self._command(snapshot)
        if not done.wait(timeout=timeout):
            raise EngineDeadError(f"the engine did not answer a stats request within {timeout:g} s")
        return box[0]

    @property
    def alive(self) -> bool:
        return not self._stopped and self._dead is None

    def shutdown(self) -> None:
        """Stop stepping this engine; requests still running end with an error."""
        if self._stopped:
            return
        self._stopped = True
        self._torch.unregister(self)
        self._torch.call(self._run_commands)
        self._torch.call(self.core.fail_all, "the engine was shut down")

    # ------------------------------------------------------------------ on the torch thread

    @property
    def has_work(self) -> bool:
        return not self._commands.empty() or (self._dead is None and self.core.has_work)

    def run_once(self) -> None:
        """Apply queued commands, then run one step (called by the torch thread)."""
        try:
            self._run_commands()
            if self._dead is None and self.core.has_work:
                self.core.step()
        except BaseException as error:  # the engine must never die silently
            logger.exception("the engine failed outside a step; failing its requests")
            self._dead = error
            self.core.fail_all(f"the engine stopped: {error}")

    # ------------------------------------------------------------------ internals

    def _between_steps(self, function: Callable[[], Any]) -> Future:
        """Run `function` on the torch thread between two steps; its result or error in the future."""
        self._check_alive()
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(function())
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                future.set_exception(error)

        self._command(run)
        return future

    def _submit(self, prompt: list[int], params: SamplingParams, request_id: str | None, sink: Callable[[RequestOutput], None],
                adapter: str | None = None, priority: int = 0) -> str:
        self._check_alive()
        request_id = request_id or f"req-{next(_request_ids)}"
        self.core.check_adapter(adapter)
        self.core.validate(prompt, params)  # read-only checks: safe from the caller's thread
        if not 0 <= priority < PRIORITY_LEVELS:
            raise ValueError(f"priority must be 0 (interactive) to {PRIORITY_LEVELS - 1} (batch), got {priority}")
        with self._lock:
            # only work that would start first counts: batch work waiting never makes an interactive request "busy"
            waiting = self.core.waiting_by_priority
            queued = sum(waiting[level] + self._pending_adds[level] for level in range(priority + 1))
            if queued >= self.config.max_queue:
                raise EngineOverloadedError(
                    f"the server is busy: {queued} requests are already waiting (max_queue={self.config.max_queue}); retry shortly",
                    retry_after=1.0,
                )
            self._pending_adds[priority] += 1

        def add() -> None:
            try:
                self.core.add_request(request_id, prompt, params, sink, adapter, priority)
            except Exception as error:  # noqa: BLE001 - reported to the caller, not raised on the engine thread
                for index in range(params.n):
                    sink(RequestOutput(request_id, index, [], "", finish_reason="error", error=str(error)))
            finally:
                with self._lock:  # now counted as waiting by the core (or failed)
                    self._pending_adds[priority] -= 1

        self._command(add)
        return request_id

    def _next_blocking(self, outputs: queue.SimpleQueue[RequestOutput]) -> RequestOutput:
        while True:
            try:
                return outputs.get(timeout=1.0)
            except queue.Empty:
                self._check_alive()

    def _command(self, command: Callable[[], None]) -> None:
        self._commands.put(command)
        self._torch.wake()

    def _check_alive(self) -> None:
        if self._dead is not None or self._stopped:
            raise EngineDeadError(f"the engine is not running ({self._dead or 'shut down'}); restart the server")

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command()


class RequestStream(AsyncIterator[RequestOutput]):
    """The outputs of one request, in order, until each of its samples has finished.

    `aclose()` aborts the request if it has not finished, whether or not iteration started
    (an async generator would skip its cleanup when closed before its first `anext`).
    """

    def __init__(self, engine: Engine, request_id: str, samples: int, outputs: asyncio.Queue[RequestOutput]) -> None:
        self.engine = engine
        self.request_id = request_id
        self._remaining = samples
        self._outputs = outputs

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if not self._remaining:
            raise StopAsyncIteration
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the item instead of raising
            # when a cancellation (a client that left) arrives just as an output is ready, and the
            # request then runs to its end
            try:
                async with asyncio.timeout(1.0):
                    out = await self._outputs.get()
                break
            except TimeoutError:
                self.engine._check_alive()
        if out.finished:
            self._remaining -= 1
        return out

    async def aclose(self) -> None:
        if self._remaining:
            self._remaining = 0
            self.engine.abort(self.request_id)
