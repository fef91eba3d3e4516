"""Per-request state held by the engine (state only: policy lives in the scheduler)."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from labs.engine.detokenizer import IncrementalDetokenizer
from labs.engine.sampling import SamplingParams

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class RequestOutput:
    """What a request's consumer receives after a step: new tokens, new text, and how it ended."""

    request_id: str
    index: int  # which of the n samples
    new_token_ids: list[int]
    text_delta: str
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    logprobs: list[float | None] | None = None
    top_logprobs: list[list[tuple[int, float]] | None] | None = None
    error: str | None = None
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


OutputSink = Callable[[RequestOutput], None]


PRIORITY_LEVELS = 3  # 0 interactive, 1 low, 2 batch: lower runs first


@dataclass(eq=False)
class Sequence:
    request_id: str
    index: int
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved against the context length
    detokenizer: IncrementalDetokenizer
    sink: OutputSink
    generator: torch.Generator | None = None
    matcher: Any = None  # llguidance matcher when the request is constrained by a grammar
    adapter: str | None = None  # the LoRA adapter this request runs with; None: the base model
    priority: int = 0  # lower runs first: 0 interactive; higher values (batch work) take the capacity that is left
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_token_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed_tokens: int = 0  # tokens whose key/value are in the cache
    prefill_target: int = 0  # tokens allocated at admission (set by the scheduler)
    cached_prompt_tokens: int = 0  # prompt tokens served by the prefix cache at first admission
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    last_token_time: float | None = None
    finish_reason: str | None = None
    preemptions: int = 0
    drafter: Any = None  # labs.engine.ngram.NgramDrafter, made when the sequence is first asked for drafts

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def in_prefill(self) -> bool:
        """Admitted tokens still being computed (prompt, or prompt + output after a preemption).

        Once they are all computed the last position's logits give the next token; from then on
        each step feeds the newest sampled token (decode) until the sequence finishes.
        """
        return self.num_computed_tokens < self.prefill_target
