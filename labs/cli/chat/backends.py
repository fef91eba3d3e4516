"""Where answers come from: the local engine, or a running labs-api through its OpenAI API.

`Backend.stream(messages, params, sink)` blocks (the app runs it in a worker thread) and hands
`Event`s to `sink` as they come; `abort()` is called from the main thread (Ctrl-C) and makes the
stream end soon with finish_reason "abort", whenever it comes (`new_turn()` before each turn
forgets the previous one's). All torch work stays on the torch thread: the local
backend only talks to the Engine, which owns it.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from labs.config import Settings
from labs.engine.sampling import SamplingParams
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
    """The model loaded in this process, one Engine sized for one conversation."""

    def __init__(self, settings: Settings, progress: Callable[[str], None] | None = None, model: str | None = None) -> None:
        self.settings = settings
        self.transactions = None
        self.documents: Any = None  # DocumentsService, open while /docs is on
        self.embedding_model: Any = None  # loaded on the first /docs on, kept
        self._request_id: str | None = None
        self._aborted = threading.Event()
        self.engine = None
        self.loaded = None
        self.reasoning_tags = None
        self.load(model, progress)

    def load(self, model: str | None, progress: Callable[[str], None] | None = None) -> None:
        from labs.engine.defaults import engine_config_from_settings
        from labs.engine.engine import Engine
        from labs.engine.kv_cache import cache_shape_for
        from labs.engine.torch_thread import torch_thread
        from labs.models import load_model
        from labs.serving.reasoning import detect_reasoning_tags

        loaded = torch_thread().call(load_model, self.settings, model, progress=progress)
        budget: Any = None
        if str(self.settings.engine.kv_cache_memory).lower() == "auto":
            # One conversation at a time: a cache for one full context, not the server's budget.
            budget = (loaded.context_length + 64) * cache_shape_for(loaded.model, loaded.context_length).bytes_per_token
        engine = Engine(loaded.model, loaded.tokenizer, loaded.context_length,
                        engine_config_from_settings(self.settings, page_bytes=budget))
        self.close()
        self.loaded, self.engine = loaded, engine
        self.reasoning_tags = detect_reasoning_tags(loaded.tokenizer) if self.settings.server.split_reasoning else None

    @property
    def model_name(self) -> str:
        return self.loaded.name

    def banner(self) -> dict[str, str]:
        from labs.models.device import dtype_name

        placement = self.loaded.placement
        return {"model": self.loaded.name, "device": str(placement.device), "dtype": dtype_name(placement.dtype),
                "context": str(self.loaded.context_length)}

    def answer_from_data(self, question: str) -> Any:
        from labs.serving.transactions import TransactionsService

        if self.transactions is None:
            self.transactions = TransactionsService(self.settings)
        return self.transactions.answer(question)

    def open_documents(self) -> str:
        """Load the embedding model (once) and open the document index; returns where it lives."""
        from labs.embeddings import load_embedding_model
        from labs.serving.documents import DocumentsService

        if self.embedding_model is None:
            embeddings = self.settings.embeddings
            self.embedding_model = load_embedding_model(embeddings.model, embeddings.device, self.settings.model_aliases)
        if self.documents is None:
            service = DocumentsService(self.settings)
            try:
                service.index(self.embedding_model)
            except BaseException:
                service.close()
                raise
            self.documents = service
        return self.documents.location

    def close_documents(self) -> None:
        """Release the index (Qdrant's local mode locks its folder against other processes)."""
        if self.documents is not None:
            self.documents.close()
            self.documents = None

    def with_documents(self, system: str | None, history: list[dict[str, str]], params: SamplingParams,
                       ) -> tuple[str | None, list[dict[str, str]], list[dict[str, Any]]]:
        """The turn with its question replaced by the retrieved sources + question (as the API does).

        Returns (system, history, sources): the user's own system message is kept, else the
        retrieval instructions are the system message. History length is unchanged, so the
        count of dropped messages still applies to the stored history.
        """
        if self.documents is None:
            self.open_documents()
        question = history[-1]["content"]
        hits = self.documents.search(self.embedding_model, question)
        context = self.loaded.context_length
        history_chars = sum(len(m["content"]) for m in history[:-1]) + len(system or "")
        answer_tokens = params.max_tokens or min(self.settings.generation.max_new_tokens, max(context // 4, 1))
        rag_messages, sources = self.documents.messages(question, hits, context - history_chars // 3, answer_tokens)
        rag_system = next((m["content"] for m in rag_messages if m["role"] == "system"), None)
        asked = [m for m in rag_messages if m["role"] != "system"]
        return (system or rag_system), history[:-1] + asked, sources

    def fit(self, system: str | None, history: list[dict[str, str]], params: SamplingParams) -> tuple[list[int], int, SamplingParams, str]:
        """Prompt ids for the conversation, dropping the oldest turns that do not fit the context.

        Returns (ids, dropped messages, params with max_tokens capped by the room left, prompt text).
        """
        from labs.models.prompting import prompt_token_ids

        generation = self.settings.generation
        context = self.loaded.context_length
        want = min(params.max_tokens or 64, max(context // 4, 1))
        history = list(history)
        dropped = 0
        while True:
            ids = prompt_token_ids(self.loaded.tokenizer, messages=chat_messages(system, history),
                                   use_chat_template=generation.use_chat_template,
                                   add_generation_prompt=generation.add_generation_prompt)
            if len(ids) + want <= context or len(history) <= 1:
                break
            cut = 2 if len(history) > 2 and history[0]["role"] == "user" and history[1]["role"] == "assistant" else 1
            history, dropped = history[cut:], dropped + cut
        room = context - len(ids)
        if room < 1:
            raise LabsError(f"the message is too long: {len(ids)} tokens, the model's context is {context}")
        if params.max_tokens is None or params.max_tokens > room:
            params = dataclasses.replace(params, max_tokens=room)
        text = self.loaded.tokenizer.decode(ids[-16:]) if self.reasoning_tags else ""
        return ids, dropped, params, text

    def stream(self, system: str | None, history: list[dict[str, str]], params: SamplingParams, sink: Sink,
               use_rag: bool = True, use_docs: bool = False) -> int:
        """Run one turn; returns how many of the oldest history messages were dropped to fit."""
        from labs.engine.sequence import RequestOutput

        started = time.perf_counter()
        question = history[-1]["content"] if history and history[-1]["role"] == "user" else None
        if use_rag and question is not None:
            answer = self.answer_from_data(question)
            # With /docs on, "no transactions match that" is no answer: the documents may have one.
            if answer is not None and not (use_docs and answer.kind in ("no_match", "unsupported")):
                sink(Event("source", answer.source, answer.data))
                sink(Event("content", answer.answer))
                sink(Event("done", data=TurnStats(seconds=time.perf_counter() - started, source=answer.source)))
                return 0
        source = "model"
        if use_docs and question is not None:
            system, history, sources = self.with_documents(system, history, params)
            source = "documents"
            sink(Event("source", source, sources))
        ids, dropped, params, tail = self.fit(system, history, params)
        if dropped:
            sink(Event("notice", f"the conversation is longer than the model's context: "
                                 f"the {dropped} oldest message{'s' if dropped != 1 else ''} left the prompt"))
        stats = TurnStats(prompt_tokens=len(ids), source=source)
        self._request_id = request_id = f"chat-{next(_turns)}"
        splitter = self._splitter(tail)

        def on_output(out: RequestOutput) -> None:
            if self._aborted.is_set() and not out.finished:
                self.engine.abort(request_id)  # a Ctrl-C that came before the request reached the engine
            if stats.completion_tokens == 0 and out.new_token_ids:
                stats.time_to_first_token = time.perf_counter() - started
            stats.completion_tokens += len(out.new_token_ids)
            self._emit(splitter, out.text_delta, sink)

        if self._aborted.is_set():  # stopped while the prompt was being prepared: nothing to generate
            self._request_id = None
            sink(Event("done", data=TurnStats(prompt_tokens=len(ids), source=source, finish_reason="abort",
                                              seconds=time.perf_counter() - started)))
            return dropped
        try:
            result = self.engine.generate(ids, params, on_output, request_id=request_id)
        finally:
            self._request_id = None
        sample = result.samples[0]
        if splitter is not None:
            reasoning, content = splitter.finish()
            reasoning and sink(Event("reasoning", reasoning))
            content and sink(Event("content", content))
        if sample.finish_reason == "error":
            sink(Event("error", sample.error or "generation failed"))
        stats.finish_reason = "abort" if self._aborted.is_set() else (sample.finish_reason or "stop")
        stats.seconds = time.perf_counter() - started
        sink(Event("done", data=stats))
        return dropped

    def _splitter(self, prompt_tail: str) -> Any:
        if self.reasoning_tags is None:
            return None
        from labs.serving.reasoning import ReasoningSplitter, prompt_opens_reasoning

        return ReasoningSplitter(self.reasoning_tags, prompt_opens_reasoning(prompt_tail, self.reasoning_tags))

    @staticmethod
    def _emit(splitter: Any, delta: str, sink: Sink) -> None:
        if not delta:
            return
        if splitter is None:
            sink(Event("content", delta))
            return
        reasoning, content = splitter.feed(delta)
        if reasoning:
            sink(Event("reasoning", reasoning))
        if content:
            sink(Event("content", content))

    def new_turn(self) -> None:
        """Forget the previous turn's Ctrl-C; called before the turn's worker starts, so a Ctrl-C
        that comes before the worker runs still stops this turn."""
        self._aborted.clear()

    def abort(self) -> None:
        self._aborted.set()
        if self._request_id is not None and self.engine is not None:
            self.engine.abort(self._request_id)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

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
