"""Where answers come from: the local engine, or a running labs-api through its OpenAI API.

`Backend.stream(messages, params, sink)` blocks (the app runs it in a worker thread) and hands
`Event`s to `sink` as they come; `abort()` is called from the main thread (Ctrl-C) and makes the
stream end soon with finish_reason "abort", whenever it comes (`new_turn()` before each turn
forgets the previous one's). All torch work stays on the torch thread: the local
backend only talks to the Engine, which owns it.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from labs.config import Settings
from labs.serving.sampling import SamplingParams
from labs.errors import LabsError


@dataclass
class Event:
    kind: str  # "reasoning", "content", "notice", "source", "done", "error"
    text: str = ""
    data: Any = None


@dataclass
class TurnStats:
    completion_tokens: int = 0
    prompt_tokens: int = 0
    time_to_first_token: float = 0.0
    seconds: float = 0.0
    finish_reason: str = "stop"
    source: str = "model"  # "model", "documents" (the model, from retrieved sources) or the data's name

    @property
    def tokens_per_second(self) -> float:
        decode = self.seconds - self.time_to_first_token
        if self.completion_tokens > 1 and decode > 0:
            return (self.completion_tokens - 1) / decode
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


Sink = Callable[[Event], None]
_turns = itertools.count()


def chat_messages(system: str | None, history: list[dict[str, str]]) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + list(history)


class LocalBackend:
    """The model loaded in this process, through the serving core (a cache sized for one conversation)."""

    def __init__(self, settings: Settings, progress: Callable[[str], None] | None = None, model: str | None = None) -> None:
        from labs.serving.local import LocalServing

        self.settings = settings
        self.local = LocalServing(settings, progress)
        self.model: str | None = None
        self.docs_location: str | None = None
        self.load(model)

    def load(self, model: str | None, progress: Callable[[str], None] | None = None) -> None:
        if progress is not None:
            self.local.serving.models.progress = progress
        self.loaded = self.local.load(model)
        self.model = model

    def default_params(self) -> SamplingParams:
        """The session's starting parameters: configured values, else the model's recommendation."""
        return self.local.default_sampling(self.model)

    @property
    def model_name(self) -> str:
        return self.loaded.name

    def banner(self) -> dict[str, str]:
        from labs.models.device import dtype_name

        placement = self.loaded.placement
        return {"model": self.loaded.name, "device": str(placement.device), "dtype": dtype_name(placement.dtype),
                "context": str(self.loaded.context_length)}

    def open_documents(self) -> str:
        """Load the embedding model (once) and open the document index; returns where it lives."""
        serving = self.local.serving

        async def open_index() -> str:
            model = await serving.embeddings.model()
            serving.documents.index(model)
            return serving.documents.location

        self.docs_location = self.local.call(open_index())
        return self.docs_location

    def close_documents(self) -> None:
        """Release the index (Qdrant's local mode locks its folder against other processes)."""
        self.local.serving.documents.close()
        self.docs_location = None

    def stream(self, system: str | None, history: list[dict[str, str]], params: SamplingParams, sink: Sink,
               use_rag: bool = True, use_docs: bool = False) -> int:
        """Run one turn; returns how many of the oldest history messages were dropped to fit."""
        from labs.serving.turn import Turn

        if use_docs and self.docs_location is None:
            self.open_documents()
        turn = Turn(messages=chat_messages(system, history), model=self.model, sampling=_requested(params),
                    use_data=use_rag, use_docs=use_docs, fit_history=True, id_prefix="chat",
                    reasoning=self.settings.server.split_reasoning)
        watch = _TurnWatch(sink)
        outcome = self.local.run(turn, watch.on_event)
        stats = watch.stats
        stats.seconds = time.perf_counter() - watch.began
        if outcome.aborted or outcome.result is None:
            stats.finish_reason = "abort"
            stats.completion_tokens = watch.tokens  # what came before the Ctrl-C
        else:
            stats.finish_reason = outcome.result.samples[0].finish_reason or "stop"
            stats.completion_tokens = outcome.result.usage.completion_tokens
            stats.prompt_tokens = outcome.result.usage.prompt_tokens
        sink(Event("done", data=stats))
        return watch.dropped

    def new_turn(self) -> None:
        """Forget the previous turn's Ctrl-C; called before the turn's worker starts, so a Ctrl-C
        that comes before the worker runs still stops this turn."""
        self.local.new_turn()

    def abort(self) -> None:
        self.local.abort()

    def close(self) -> None:
        self.local.close()


class _TurnWatch:
    """The serving core's events as the chat's: text, reasoning, sources, notices, and the turn's stats."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.began = time.perf_counter()
        self.stats = TurnStats()
        self.dropped = 0
        self.tokens = 0

    def on_event(self, event: Any) -> None:
        from labs.serving.events import Notice, ReasoningDelta, Sources, TextDelta

        if isinstance(event, Sources):
            self.stats.source = event.source
            self.sink(Event("source", event.source, event.data))
        elif isinstance(event, Notice):
            self.dropped = event.dropped
            self.sink(Event("notice", event.text))
        elif isinstance(event, (TextDelta, ReasoningDelta)):
            self.tokens += len(event.token_ids) if isinstance(event, TextDelta) else 0
            if not event.text:
                return
            if not self.stats.time_to_first_token:
                self.stats.time_to_first_token = time.perf_counter() - self.began
            self.sink(Event("content" if isinstance(event, TextDelta) else "reasoning", event.text))


def _requested(params: SamplingParams) -> Any:
    """The session's parameters as an explicit request (what the user set with /set, or the defaults)."""
    from labs.serving.turn import RequestedSampling

    return RequestedSampling(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                             top_k=params.top_k, repetition_penalty=params.repetition_penalty, seed=params.seed)

class ServerBackend:
    """A running labs-api (or any OpenAI-compatible server) through the openai SDK, streaming."""

    def __init__(self, url: str, api_key: str | None, model: str | None) -> None:
        import openai

        base = url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        self.url = base
        self.client = openai.OpenAI(base_url=base, api_key=api_key or "not-needed", max_retries=0, timeout=600)
        self._stream: Any = None
        self._aborted = threading.Event()
        try:
            models = [m.id for m in self.client.models.list().data]
        except openai.APIStatusError as error:
            raise LabsError(f"the server at {base} refused the chat: {_server_message(error)}") from None
        except openai.APIError as error:
            raise LabsError(f"cannot reach the labs-api server at {base}: {error}") from None
        if model is None:
            if not models:
                raise LabsError(f"the server at {base} lists no models")
            model = models[0]
        self.available = models
        self.model = model

    @property
    def model_name(self) -> str:
        return self.model

    def banner(self) -> dict[str, str]:
        return {"model": self.model, "device": f"server {self.url}", "dtype": "server's"}

    def switch(self, model: str) -> None:
        models = [m.id for m in self.client.models.list().data]
        if model not in models:
            raise LabsError(f"the server has no model {model}; it serves: {', '.join(models)}")
        self.model = model

    def open_documents(self) -> str:
        return f"the server's index, {self.url}"

    def close_documents(self) -> None:
        return None

    def stream(self, system: str | None, history: list[dict[str, str]], params: SamplingParams, sink: Sink,
               use_rag: bool = True, use_docs: bool = False) -> int:
        import openai

        started = time.perf_counter()
        stats = TurnStats()
        extra: dict[str, Any] = {"top_k": params.top_k, "repetition_penalty": params.repetition_penalty}
        if use_docs:
            extra["use_rag"] = True  # the server answers from the data or retrieves from its document index
        elif not use_rag:
            extra["use_rag"] = False
        kwargs: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p}
        if params.max_tokens is not None:
            kwargs["max_tokens"] = params.max_tokens
        if params.seed is not None:
            kwargs["seed"] = params.seed
        try:
            stream = self.client.chat.completions.create(
                model=self.model, messages=chat_messages(system, history), stream=True,
                stream_options={"include_usage": True}, extra_body=extra, **kwargs)
            self._stream = stream
            if self._aborted.is_set():
                stream.close()
            for chunk in stream:
                rag = (chunk.model_extra or {}).get("rag")
                if rag:
                    stats.source = rag.get("source", "transactions")
                    data = rag.get("sources") if stats.source == "documents" else rag.get("data")
                    sink(Event("source", stats.source, data))
                if chunk.usage is not None:
                    stats.completion_tokens = chunk.usage.completion_tokens
                    stats.prompt_tokens = chunk.usage.prompt_tokens
                for choice in chunk.choices:
                    delta = choice.delta
                    reasoning = getattr(delta, "reasoning_content", None) or (delta.model_extra or {}).get("reasoning_content")
                    if (reasoning or delta.content) and not stats.time_to_first_token:
                        stats.time_to_first_token = time.perf_counter() - started
                    if reasoning:
                        sink(Event("reasoning", reasoning))
                    if delta.content:
                        sink(Event("content", delta.content))
                    if choice.finish_reason:
                        stats.finish_reason = choice.finish_reason
        except Exception as error:  # noqa: BLE001 - any failure is shown in the chat, which goes on
            if self._aborted.is_set():
                stats.finish_reason = "abort"
            else:
                sink(Event("error", _server_message(error) if isinstance(error, openai.APIStatusError) else str(error)))
                stats.finish_reason = "error"
        finally:
            self._stream = None
        if self._aborted.is_set():
            stats.finish_reason = "abort"
        stats.seconds = time.perf_counter() - started
        sink(Event("done", data=stats))
        return 0

    def new_turn(self) -> None:
        """Forget the previous turn's Ctrl-C (see LocalBackend.new_turn)."""
        self._aborted.clear()

    def abort(self) -> None:
        self._aborted.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()  # closes the connection: the server aborts the request
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        self.client.close()

def _server_message(error: Any) -> str:
    """The message of an OpenAI-shaped error body, else the SDK's own text."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return str(error)
