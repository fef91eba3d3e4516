"""One request at a time: prefill, then decode token by token with a growing cache.

This is the generation path of `labs-gen` until the continuous-batching engine lands; it
already uses the engine's own sampler and incremental detokenizer, so sampling and text
behave the same on both paths.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from labs.engine.detokenizer import IncrementalDetokenizer
from labs.engine.sampler import RowState, Sampler, make_generator
from labs.engine.sampling import SamplingParams
from labs.errors import LabsError

logger = logging.getLogger(__name__)


class ContextLengthError(LabsError):
    """The prompt plus the requested tokens do not fit in the model's context window."""

    exit_code = 2


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (EOS, stop token or stop string) or "length"
    time_to_first_token: float
    seconds: float
    stop_matched: str | None = None
    logprobs: list[float | None] = field(default_factory=list)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_second(self) -> float:
        """Decode rate after the first token (the prefill is timed by time_to_first_token)."""
        decode_time = self.seconds - self.time_to_first_token
        if self.completion_tokens > 1 and decode_time > 0:
            return (self.completion_tokens - 1) / decode_time
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, (list, tuple)):
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def check_context(prompt_tokens: int, max_tokens: int | None, context_length: int) -> int:
    """The number of tokens that may be generated; errors give both numbers."""
    if prompt_tokens >= context_length:
        raise ContextLengthError(
            f"the prompt has {prompt_tokens} tokens but the model's context is {context_length}: shorten the prompt"
        )
    room = context_length - prompt_tokens
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise ContextLengthError(
            f"prompt ({prompt_tokens} tokens) + max tokens ({max_tokens}) exceeds the model's context of "
            f"{context_length}: ask for at most {room} new tokens"
        )
    return max_tokens


class SequentialGenerator:
    """Generates for one request at a time on a loaded model."""

    def __init__(self, model: Any, tokenizer: Any, context_length: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.sampler = Sampler()
        self._keeps_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    @torch.inference_mode()
    def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        on_text: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        if params.n != 1:
            raise ValueError("SequentialGenerator produces one sample per request (n=1)")
        started = time.perf_counter()
        prompt = list(prompt_token_ids)
        budget = check_context(len(prompt), params.max_tokens, self.context_length)
        detokenizer = IncrementalDetokenizer(self.tokenizer, prompt, stop=params.stop)
        generator = make_generator(params.seed) if params.seed is not None else None
        output: list[int] = []
        logprobs: list[float | None] = []
        row = RowState(params, prompt, output, generator, self.eos_ids)
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_ids))

        def emit(text: str) -> None:
            if text and on_text is not None:
                on_text(text)

        device = next(self.model.parameters()).device
        cache = None
        next_input = torch.tensor([prompt], device=device)
        first_token_at = 0.0
        finish_reason = "length"
        while len(output) < budget:
            extra = {"logits_to_keep": 1} if self._keeps_last_logits else {}
            result = self.model(input_ids=next_input, past_key_values=cache, use_cache=True, **extra)
            cache = result.past_key_values
            sampled = self.sampler(result.logits[:, -1, :].float(), [row])
            token = sampled.token_ids[0]
            if not output:
                first_token_at = time.perf_counter() - started
            output.append(token)
            if sampled.logprobs is not None:
                logprobs.append(sampled.logprobs[0])
            if token in stop_ids:  # the sampler masks these until min_tokens is reached
                finish_reason = "stop"
                break
            step = detokenizer.step(token)
            emit(step.text_delta)
            if step.stop_matched is not None:
                finish_reason = "stop"
                break
            next_input = torch.tensor([[token]], device=device)
        if not detokenizer.finished:
            emit(detokenizer.flush())
        return GenerationResult(
            text=detokenizer.text,
            token_ids=output,
            prompt_tokens=len(prompt),
            finish_reason=finish_reason,
            time_to_first_token=first_token_at,
            seconds=time.perf_counter() - started,
            stop_matched=detokenizer.stop_matched,
            logprobs=logprobs,
        )
