"""Running one turn: route it (the user's data, documents, or the model), hold the model, stream events.

`Serving` is what every door (the HTTP protocols, labs-gen, the chat) holds. `open_turn` does all
the checking and preparation before it returns, so a bad request fails before any byte of a
stream is sent; the events then come from the engine. The model lease is held by the event
generator and released when it ends or is closed, on every path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from labs.config import Settings
from labs.engine.sampling import SamplingParams
from labs.serving.accounts import Account, check_model
from labs.serving.documents import DocumentsService
from labs.serving.embedding_service import EmbeddingService
from labs.serving.errors import GenerationFailedError, InvalidTurnError, TurnAbortedError
from labs.serving.events import (
    Event,
    Finish,
    Notice,
    ReasoningDelta,
    Sources,
    Started,
    TextDelta,
    ToolCalls,
    Usage,
)
from labs.serving.models import ModelRegistry, ServedModel
from labs.serving.prompt import PreparedPrompt, prepare_prompt, prompt_ids
from labs.serving.checks import check_turn
from labs.serving.sampling import Limits, answer_budget, sampling_for
from labs.serving.timing import Timing
from labs.serving.tools import ToolCall, call_grammar, parse_forced_call, parse_tool_calls
from labs.serving.transactions import TransactionsService
from labs.serving.turn import Turn


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@dataclass
class Serving:
    """The serving core of one process: models, data, documents, embeddings and limits."""

    settings: Settings
    models: ModelRegistry
    transactions: TransactionsService
    documents: DocumentsService
    embeddings: EmbeddingService
    limits: Limits
    metrics: Any = None  # has time_to_first_token / time_per_output_token histograms, or None

    async def open_turn(self, turn: Turn, account: Account | None = None) -> "TurnEvents":
        """Check and prepare the turn; its events then stream from the returned iterator.

        Everything that can be the request's fault raises here, before `Started`; the model is checked
        against the account's (when given) before it is loaded, and the account is charged the tokens."""
        events = self._run(turn, account)
        try:
            first = await events.__anext__()
        except BaseException:
            await events.aclose()
            raise
        return TurnEvents(first, events)

    async def collect_turn(self, turn: Turn) -> "TurnResult":
        events = await self.open_turn(turn)
        try:
            return await collect(events)
        finally:
            await events.aclose()

    async def tokenize(self, turn: Turn, *, add_special_tokens: bool = True,
                       add_generation_prompt: bool | None = None, account: Account | None = None) -> "Tokenized":
        """The prompt ids a turn would send (chat template and tools included), without generating."""
        check_turn(turn, self.limits)
        self.model_for(account, turn.model)
        async with self.models.use(turn.model) as served:
            if turn.prompt is not None and turn.messages is None:
                ids = list(served.tokenizer(turn.prompt, add_special_tokens=add_special_tokens)["input_ids"])
            else:
                ids = prompt_ids(turn, served, self.settings, add_generation_prompt=add_generation_prompt)
            return Tokenized(served.id, ids, served.context_length)

    def model_for(self, account: Account | None, requested: str | None) -> str:
        """The served id `requested` names, if the account may use it (ModelNotAllowedError if not)."""
        model_id = self.models.resolve_id(requested)
        check_model(account, model_id)
        return model_id

    # ------------------------------------------------------------------ routing

    async def _run(self, turn: Turn, account: Account | None) -> AsyncIterator[Event]:
        check_turn(turn, self.limits)
        self.model_for(account, turn.model)
        answer = await self._answer_from_data(turn)
        if answer is not None:
            for event in _data_answer_events(answer, self.models.resolve_id(turn.model), turn.id_prefix):
                yield event
            return
        async with self.models.use(turn.model) as served:
            sources = None
            if turn.use_docs and turn.question is not None:
                turn, sources = await self._with_document_sources(turn, served)
            prepared = prepare_prompt(turn, served, self.settings)
            params = self._params(turn, served, prepared, sources is not None)
            started = Started(new_id(turn.id_prefix), served.id, int(time.time()), params.n, _token_text(served),
                              len(prepared.ids))
            # queued before Started: bad grammars, token ids and a full queue (503) fail before streaming
            timing = Timing(self.metrics, served.id)
            stream = served.engine.add_request(prepared.ids, params, started.id, adapter=served.adapter,
                                               priority=int(turn.priority))
            try:
                yield started
                if sources is not None:
                    yield Sources("documents", data=sources)
                if prepared.dropped:
                    plural = "s" if prepared.dropped != 1 else ""
                    yield Notice(f"the conversation is longer than the model's context: the {prepared.dropped} oldest "
                                 f"message{plural} left the prompt", dropped=prepared.dropped)
                async for event in self._generate(prepared, params, stream, timing, account):
                    yield event
            finally:
                await stream.aclose()

    async def _answer_from_data(self, turn: Turn) -> Any:
        """A question about the user's transactions is answered exactly from the table, without the model."""
        return await asyncio.to_thread(self.transactions.answer_turn, turn)

    async def _with_document_sources(self, turn: Turn, served: ServedModel) -> tuple[Turn, list[dict[str, Any]]]:
        """The turn with its question replaced by the retrieved sources + question (history kept)."""
        question = turn.question
        assert question is not None
        model = await self.embeddings.model()
        hits = await asyncio.to_thread(self.documents.search, model, question, turn.docs_top_k,
                                       turn.docs_score_threshold)
        history = (turn.messages or [])[:-1]
        history_chars = sum(len(str(m.get("content") or "")) for m in history) + len(turn.system or "")
        context = served.context_length
        answer_tokens = turn.sampling.max_tokens or answer_budget(self.settings, self.limits, context, context)
        rag_messages, sources = self.documents.messages(question, hits, context - history_chars // 3, answer_tokens)
        has_system = bool(turn.system) or any(m["role"] in ("system", "developer") for m in history)
        instructions = [] if has_system else [m for m in rag_messages if m["role"] == "system"]
        asked = [m for m in rag_messages if m["role"] != "system"]  # the user's own system message stays
        return dataclasses.replace(turn, messages=instructions + history + asked, prompt=None), sources

    def _params(self, turn: Turn, served: ServedModel, prepared: PreparedPrompt, from_sources: bool) -> SamplingParams:
        requested = turn.sampling
        context = served.context_length
        if requested.max_tokens is not None and len(prepared.ids) + requested.max_tokens > context:
            if not turn.fit_history:
                raise InvalidTurnError(
                    f"the prompt ({len(prepared.ids)} tokens) plus {requested.max_tokens_param} ({requested.max_tokens}) "
                    f"exceeds {served.id}'s context of {context} tokens: ask for at most {prepared.room} tokens or "
                    "shorten the prompt", param=requested.max_tokens_param, code="context_length_exceeded")
            requested = dataclasses.replace(requested, max_tokens=prepared.room)
        guided = turn.guided
        if prepared.tools.forced:
            if guided is not None:
                raise InvalidTurnError("a required tool call cannot be combined with a response format",
                                       param="tool_choice")
            guided = call_grammar(prepared.tools.tools, prepared.tools.choice)
        return sampling_for(requested, self.settings, self.limits, room=prepared.room, recommended=served.recommended,
                            guided=guided, greedy_by_default=from_sources)

    # ------------------------------------------------------------------ generation

    async def _generate(self, prepared: PreparedPrompt, params: SamplingParams, stream: Any,
                        timing: Timing, account: Account | None) -> AsyncIterator[Event]:
        """The engine's outputs of a queued request as events (the caller closes the stream); the account
        is charged the prompt with the first output and each output's new tokens as they come."""
        splitters = [prepared.reasoning.splitter() for _ in range(params.n)]
        held = [""] * params.n  # with tools, a sample's text is held until it ends: a call is known only then
        completion = [0] * params.n
        prompt_tokens, cached = len(prepared.ids), 0
        prompt_charged = account is None
        async for out in stream:
            timing.saw(out)
            prompt_tokens, cached = out.prompt_tokens or len(prepared.ids), out.cached_prompt_tokens
            completion[out.index] += len(out.new_token_ids)
            if account is not None:
                account.charge(0 if prompt_charged else prompt_tokens, len(out.new_token_ids))
                prompt_charged = True
            if out.finish_reason == "error":
                raise GenerationFailedError(out.error or "generation failed")
            if out.finish_reason == "abort":  # a client's own abort closes this generator instead
                raise TurnAbortedError("the request was stopped because the server is shutting down")
            if prepared.tools.active:
                held[out.index] += out.text_delta
                if out.finished:
                    for event in _tool_events(prepared, out.index, held[out.index], out.finish_reason):
                        yield event
                continue
            for event in _text_events(splitters[out.index], out):
                yield event
            if out.finished:
                yield Finish(out.index, out.finish_reason, out.stop_reason)
        timing.done()
        yield Usage(prompt_tokens, sum(completion), cached)


def _text_events(splitter: Any, out: Any) -> list[Event]:
    thinking, content = splitter.feed(out.text_delta) if splitter else ("", out.text_delta)
    if out.finished and splitter is not None:
        more_thinking, more_content = splitter.finish()
        thinking, content = thinking + more_thinking, content + more_content
    events: list[Event] = []
    if thinking or (out.finished and splitter is not None and splitter.saw_reasoning):
        events.append(ReasoningDelta(out.index, thinking))  # an empty one at the end: "it thought nothing"
    if content or out.new_token_ids:
        events.append(TextDelta(out.index, content, list(out.new_token_ids), out.logprobs, out.top_logprobs))
    return events


def _tool_events(prepared: PreparedPrompt, index: int, text: str, finish_reason: str) -> list[Event]:
    thinking, text = prepared.reasoning.split(text)
    events: list[Event] = [ReasoningDelta(index, thinking)] if thinking else []
    calls = tool_calls_in(prepared, text, finish_reason)
    if calls is None:
        return [*events, *([TextDelta(index, text)] if text else []), Finish(index, finish_reason)]
    content, found = calls
    if content:
        events.append(TextDelta(index, content))
    return [*events, ToolCalls(index, found), Finish(index, "tool_calls")]


def tool_calls_in(prepared: PreparedPrompt, text: str, finish_reason: str | None) -> tuple[str | None, list[ToolCall]] | None:
    """(content, calls) when a finished sample's text holds tool calls, else None (a plain answer)."""
    plan = prepared.tools
    if plan.forced:
        call = parse_forced_call(text) if finish_reason == "stop" else None
        return (None, [call]) if call is not None else None
    content, calls = parse_tool_calls(text, plan.tools)
    return (content or None, calls) if calls else None


def _token_text(served: ServedModel) -> Any:
    """The text one token stands for (a lone byte of a multi-byte character decodes to U+FFFD)."""
    tokenizer = served.tokenizer
    return lambda token_id: tokenizer.decode([token_id], skip_special_tokens=False)


def _data_answer_events(answer: Any, model_id: str, prefix: str) -> list[Event]:
    return [Started(new_id(prefix), model_id, int(time.time())),
            Sources(answer.source, kind=answer.kind, data=answer.data),
            TextDelta(0, answer.answer), Finish(0, "stop"), Usage(0, 0, 0)]


@dataclass(frozen=True)
class Tokenized:
    model: str
    ids: list[int]
    context_length: int


class TurnEvents:
    """A turn's events with the first (`Started`) already produced: iterate, then `aclose()`."""

    def __init__(self, first: Event, rest: AsyncIterator[Event]) -> None:
        self.started = first
        self._first: Event | None = first
        self._rest = rest

    def __aiter__(self) -> "TurnEvents":
        return self

    async def __anext__(self) -> Event:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._rest.__anext__()

    async def aclose(self) -> None:
        await self._rest.aclose()  # type: ignore[attr-defined]


@dataclass
class SampleResult:
    """One of a turn's n answers, collected."""

    index: int
    text: str = ""
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]] | None] = field(default_factory=list)


@dataclass
class TurnResult:
    """A whole turn, as a non-streaming response renders it."""

    id: str
    model: str
    created: int
    samples: list[SampleResult]
    usage: Usage
    sources: Sources | None = None
    notices: list[str] = field(default_factory=list)


async def collect(events: AsyncIterator[Event]) -> TurnResult:
    samples: dict[int, SampleResult] = {}
    started: Started | None = None
    sources = None
    usage = Usage(0, 0)
    notices: list[str] = []
    async for event in events:
        if isinstance(event, Started):
            started = event
            samples = {index: SampleResult(index) for index in range(event.n)}
        elif isinstance(event, Sources):
            sources = event
        elif isinstance(event, Notice):
            notices.append(event.text)
        elif isinstance(event, Usage):
            usage = event
        else:
            sample = samples[event.index]
            if isinstance(event, TextDelta):
                sample.text += event.text
                sample.token_ids.extend(event.token_ids)
                if event.logprobs is not None:
                    sample.logprobs.extend(event.logprobs)
                    sample.top_logprobs.extend(event.top_logprobs or [None] * len(event.logprobs))
            elif isinstance(event, ReasoningDelta):
                sample.reasoning = (sample.reasoning or "") + event.text
            elif isinstance(event, ToolCalls):
                sample.tool_calls.extend(event.calls)
            elif isinstance(event, Finish):
                sample.finish_reason, sample.stop_reason = event.reason, event.stop_reason
    assert started is not None
    return TurnResult(started.id, started.model, started.created, [samples[i] for i in sorted(samples)], usage,
                      sources, notices)
