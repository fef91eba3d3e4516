"""Glue for one-shot generation from the CLI: load, build the prompt, run it through the engine."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

from labs.config import Settings
from labs.engine.defaults import engine_config_from_settings, sampling_params_from_settings
from labs.engine.engine import Engine
from labs.engine.guided import GuidedDecoding
from labs.engine.kv_cache import cache_shape_for
from labs.engine.sequence import RequestOutput
from labs.engine.torch_thread import torch_thread
from labs.errors import LabsError
from labs.models import LoadedModel, load_model
from labs.models.prompting import parse_messages_json, prompt_token_ids
from labs.serving.transactions import TransactionsService


@dataclass
class CliResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float
    seconds: float
    source: str = "model"  # or "transactions": answered exactly from the user's data
    data: dict | None = None

    @property
    def tokens_per_second(self) -> float:
        """Decode rate after the first token (the prefill is timed by time_to_first_token)."""
        decode = self.seconds - self.time_to_first_token
        if self.completion_tokens > 1 and decode > 0:
            return (self.completion_tokens - 1) / decode
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


def _answer_from_data(settings: Settings, prompt: str | None, messages: list[dict] | None) -> CliResult | None:
    """Questions about the user's transactions are answered exactly, without loading the model."""
    started = time.perf_counter()
    question = prompt if prompt is not None else (messages[-1]["content"] if messages and messages[-1]["role"] == "user" else None)
    if not isinstance(question, str):
        return None
    answer = TransactionsService(settings).answer(question)
    if answer is None:
        return None
    return CliResult(text=answer.answer, finish_reason="stop", prompt_tokens=0, completion_tokens=0,
                     time_to_first_token=0.0, seconds=time.perf_counter() - started, source=answer.source, data=answer.data)


def generate_for_cli(
    settings: Settings,
    prompt: str | None,
    messages_json: str | None,
    on_text: Callable[[str], None] | None,
    progress: Callable[[str], None],
    use_data: bool = True,
    messages_for_context: Callable[[int], list[dict]] | None = None,
    guided: GuidedDecoding | None = None,
) -> tuple[CliResult, LoadedModel | None]:
    """Generate with the model, or answer from the user's data (then no model is loaded: None)."""
    messages = parse_messages_json(messages_json) if messages_json is not None else None
    params = sampling_params_from_settings(settings.generation)  # validate before the slow load
    if guided is not None:
        params = dataclasses.replace(params, guided=guided)
        use_data = False  # a schema asks the model for structured output, not for a data answer
    from_data = _answer_from_data(settings, prompt, messages) if use_data else None
    if from_data is not None:
        return from_data, None
    loaded = torch_thread().call(load_model, settings, progress=progress)  # torch stays on one thread
    if messages_for_context is not None:  # e.g. retrieved sources cut to fit this model's context
        messages = messages_for_context(loaded.context_length)
    generation = settings.generation
    ids = prompt_token_ids(
        loaded.tokenizer,
        prompt=prompt,
        messages=messages,
        system=generation.system_prompt,
        use_chat_template=generation.use_chat_template,
        add_generation_prompt=generation.add_generation_prompt,
    )
    # One request: a cache sized to it, not the server's budget (rounded up by the engine's checks).
    needed_tokens = min(len(ids) + (params.max_tokens or loaded.context_length), loaded.context_length) + 32
    budget = needed_tokens * cache_shape_for(loaded.model, loaded.context_length).bytes_per_token
    engine = Engine(loaded.model, loaded.tokenizer, loaded.context_length,
                    engine_config_from_settings(settings, page_bytes=budget))
    progress(f"Generating with {loaded.describe()}")
    started = time.perf_counter()
    first_token_at: list[float] = []

    def on_output(out: RequestOutput) -> None:
        if not first_token_at:
            first_token_at.append(time.perf_counter() - started)
        if on_text is not None and out.text_delta:
            on_text(out.text_delta)

    try:
        result = engine.generate(ids, params, on_output)
    finally:
        engine.shutdown()
    sample = result.samples[0]
    if sample.finish_reason == "error":
        raise LabsError(sample.error or "generation failed")
    return CliResult(
        text=sample.text,
        finish_reason=sample.finish_reason or "stop",
        prompt_tokens=result.prompt_tokens or len(ids),
        completion_tokens=len(sample.token_ids),
        time_to_first_token=first_token_at[0] if first_token_at else 0.0,
        seconds=time.perf_counter() - started,
    ), loaded
