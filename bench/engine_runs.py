"""The labs engine, in-process: the concurrency workload and the prefix-caching comparison.

Requests go through the engine's public async API (`engine.add_request`), driven by asyncio with
a semaphore: `concurrency` closed-loop clients, each sending its next request when its previous
one has finished. Time to first token is measured from `add_request` to the first output that
carries a token.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from labs.engine.engine import Engine
from labs.engine.sampling import SamplingParams

from workload import LoadResult, RequestTiming, percentile


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


async def stream_one(engine: Engine, prompt_ids: list[int], params: SamplingParams) -> RequestTiming:
    timing = RequestTiming(submitted=time.perf_counter())
    async for out in engine.add_request(prompt_ids, params):
        if out.error:
            raise RuntimeError(f"engine request failed: {out.error}")
        timing.record(len(out.new_token_ids), time.perf_counter())
        if out.finished:
            timing.cached_prompt_tokens = out.cached_prompt_tokens
    timing.finished = time.perf_counter()
    return timing


async def run_load(engine: Engine, prompts: list[list[int]], max_tokens: int, concurrency: int,
                   system: str = "labs engine") -> LoadResult:
    semaphore = asyncio.Semaphore(concurrency)
    params = greedy(max_tokens)

    async def one(ids: list[int]) -> RequestTiming:
        async with semaphore:
            return await stream_one(engine, ids, params)

    started = time.perf_counter()
    timings = await asyncio.gather(*(one(ids) for ids in prompts))
    return LoadResult(system, concurrency, list(timings), time.perf_counter() - started)


async def warm_up(engine: Engine, prompts: list[list[int]], batch: int) -> None:
    """A few short concurrent requests so first-call costs are not measured."""
    await asyncio.gather(*(stream_one(engine, ids, greedy(8)) for ids in prompts[:batch]))


@dataclass
class PrefixResult:
    prefix_caching: bool
    prompt_tokens: int  # the longest prompt
    shared_tokens: int  # the prefix all prompts have in common
    timings: list[RequestTiming]

    @property
    def ttft_p50(self) -> float:
        return percentile([t.ttft for t in self.timings], 50)

    @property
    def cached_tokens_p50(self) -> float:
        return percentile([float(t.cached_prompt_tokens) for t in self.timings], 50)


async def run_prefix_case(engine: Engine, prompts: list[list[int]], warmup: list[int], max_tokens: int, enabled: bool) -> PrefixResult:
    """Sequential requests sharing one long system prompt; the warm-up uses another prefix."""
    params = greedy(max_tokens)
    await stream_one(engine, warmup, params)
    timings = [await stream_one(engine, ids, params) for ids in prompts]
    return PrefixResult(enabled, max(map(len, prompts)), common_prefix_length(prompts), timings)


def common_prefix_length(prompts: list[list[int]]) -> int:
    length = 0
    for column in zip(*prompts):
        if any(token != column[0] for token in column):
            break
        length += 1
    return length


def stats_snapshot(engine: Engine) -> dict[str, int]:
    stats: Any = engine.stats()
    return {name: getattr(stats, name, 0) for name in ("steps_total", "preemptions_total")}


def stats_note(before: dict[str, int], after: dict[str, int], result: LoadResult) -> str:
    """Engine counters over one measurement: steps, preemptions, output tokens per step."""
    steps = after["steps_total"] - before["steps_total"]
    per_step = result.output_tokens / steps if steps else float("nan")
    return (f"c={result.concurrency}: {steps} steps ({per_step:.1f} output tokens per step), "
            f"{after['preemptions_total'] - before['preemptions_total']} preemptions")
