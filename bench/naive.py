"""Peer 1: naive sequential `model.generate`, one request at a time, batch size 1.

This is what a server with "a generate call behind a lock" does. Its aggregate throughput does not
depend on how many clients wait, so it is measured once, sequentially, and reused for every
concurrency level. Its time to first token at concurrency c is dominated by queueing: it is
*simulated* from the measured per-request service times as c closed-loop clients (each sends its
next request when the previous one finishes) in front of a FIFO server that runs one request at
a time, starting all c clients at time 0. Time per output token is the measured one.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from workload import LoadResult, RequestTiming


class _TimingStreamer(BaseStreamer):
    """Records when `generate` emits each new token (its first `put` is the prompt)."""

    def __init__(self, timing: RequestTiming) -> None:
        self.timing = timing
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.timing.record(int(value.numel()), time.perf_counter())

    def end(self) -> None:
        pass


def generation_config(tokenizer: Any, max_tokens: int) -> GenerationConfig:
    """Greedy, exactly `max_tokens` new tokens (EOS suppressed until then by min_new_tokens)."""
    return GenerationConfig(
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )


def generate_one(model: Any, prompt_ids: list[int], config: GenerationConfig) -> RequestTiming:
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids], device=device)
    timing = RequestTiming(submitted=time.perf_counter())
    model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                   generation_config=config, streamer=_TimingStreamer(timing))
    timing.finished = time.perf_counter()
    return timing


def run_sequential(model: Any, tokenizer: Any, prompts: list[list[int]], max_tokens: int) -> LoadResult:
    config = generation_config(tokenizer, max_tokens)
    generate_one(model, prompts[0], generation_config(tokenizer, 4))  # warm-up, not measured
    started = time.perf_counter()
    timings = [generate_one(model, ids, config) for ids in prompts]
    return LoadResult("naive generate", 1, timings, time.perf_counter() - started,
                      notes=["measured sequentially (batch 1)"])


def simulate_concurrency(measured: LoadResult, concurrency: int) -> LoadResult:
    """The sequential run replayed as `concurrency` closed-loop clients queued in front of it."""
    if concurrency == 1:
        return measured
    server_free = 0.0  # when the server finishes the previous request
    finish_times: list[float] = []
    timings: list[RequestTiming] = []
    for k, real in enumerate(measured.timings):
        assert real.finished is not None and real.first is not None and real.last is not None
        submitted = 0.0 if k < concurrency else finish_times[k - concurrency]
        start = max(submitted, server_free)
        shift = start - real.submitted  # move the measured request to its simulated start
        timings.append(RequestTiming(submitted=submitted, first=real.first + shift, last=real.last + shift,
                                     finished=real.finished + shift, tokens=real.tokens))
        server_free = real.finished + shift
        finish_times.append(server_free)
    return LoadResult(measured.system, concurrency, timings, measured.wall_s,  # same throughput as measured
                      notes=["tok/s and TPOT measured at c=1; TTFT simulated (c closed-loop clients, FIFO queue)"],
                      other_cores=measured.other_cores)
