"""One-shot generation from the CLI, through the serving core: the user's data, documents or the model."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from labs.config import Settings
from labs.models.prompting import parse_messages_json
from labs.serving.checks import check_turn
from labs.serving.events import Event, Sources, Started, TextDelta
from labs.serving.guided import GuidedDecoding
from labs.serving.sampling import Limits, sampling_for
from labs.serving.transactions import TransactionsService
from labs.serving.turn import RequestedSampling, Turn

if TYPE_CHECKING:  # the model machinery (torch, transformers) loads only when the model answers
    from labs.models import LoadedModel


@dataclass
class CliResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float
    seconds: float
    source: str = "model"  # or "transactions": answered exactly from the user's data
    data: Any = None  # the data answer's figures, or the documents' sources

    @property
    def tokens_per_second(self) -> float:
        """Decode rate after the first token (the prefill is timed by time_to_first_token)."""
        decode = self.seconds - self.time_to_first_token
        if self.completion_tokens > 1 and decode > 0:
            return (self.completion_tokens - 1) / decode
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


def generate_for_cli(
    settings: Settings,
    prompt: str | None,
    messages_json: str | None,
    on_text: Callable[[str], None] | None,
    progress: Callable[[str], None],
    use_data: bool = True,
    use_docs: bool = False,
    guided: GuidedDecoding | None = None,
    on_sources: Callable[[Any], None] | None = None,
) -> tuple[CliResult, LoadedModel | None]:
    """Answer one prompt; the model is loaded only when the answer needs it (else None is returned)."""
    messages = parse_messages_json(messages_json) if messages_json is not None else None
    sampling_for(RequestedSampling(), settings, Limits.for_one_user())  # bad settings fail before the slow load
    # use_data: the configured default (LABS_RAG_ENABLED, --rag/--no-rag); a schema asks the model for output
    turn = Turn(prompt=prompt, messages=messages, use_data=None if use_data and guided is None else False,
                use_docs=use_docs, guided=guided, id_prefix="gen")
    started = time.perf_counter()
    check_turn(turn, Limits.for_one_user())
    answer = TransactionsService(settings).answer_turn(turn)
    if answer is not None:  # the same rule the core applies, before anything imports torch
        return CliResult(text=answer.answer, finish_reason="stop", prompt_tokens=0, completion_tokens=0,
                         time_to_first_token=0.0, seconds=time.perf_counter() - started, source=answer.source,
                         data=answer.data), None
    from labs.serving.local import LocalServing

    turn = dataclasses.replace(turn, use_data=False)  # just decided: the core need not route it again
    local = LocalServing(settings, progress)
    first_token_at: list[float] = []

    def on_event(event: Event) -> None:
        nonlocal started
        if isinstance(event, Started):  # the model is loaded and the prompt ready: generation starts
            started = time.perf_counter()
            served = local.serving.models.loaded(event.model)
            if served is not None:
                progress(f"Generating with {served.loaded.describe()}")
        elif isinstance(event, Sources) and event.source == "documents" and on_sources is not None:
            on_sources(event.data)
        elif isinstance(event, TextDelta) and event.text:
            if not first_token_at:
                first_token_at.append(time.perf_counter() - started)
            if on_text is not None:
                on_text(event.text)

    try:
        result = local.run(turn, on_event).result
        assert result is not None  # nothing aborts a one-shot run
        from_model = result.sources is None or result.sources.source == "documents"
        served = local.serving.models.loaded(result.model) if from_model else None
        loaded = served.loaded if served is not None else None
    finally:
        local.close()
    sample = result.samples[0]
    source = result.sources.source if result.sources is not None else "model"
    return CliResult(
        text=sample.text,
        finish_reason=sample.finish_reason or "stop",
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        time_to_first_token=first_token_at[0] if first_token_at else 0.0,
        seconds=time.perf_counter() - started,
        source=source,
        data=result.sources.data if result.sources is not None else None,
    ), loaded
