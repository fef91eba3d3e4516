"""Sampling parameters from the configured [generation] defaults."""

from __future__ import annotations

from types import SimpleNamespace

from labs.engine.sampling import SamplingParams


def sampling_params_from_settings(generation: SimpleNamespace) -> SamplingParams:
    """`do_sample=false` or `temperature=0` both mean greedy decoding."""
    temperature = generation.temperature if generation.do_sample else 0.0
    return SamplingParams(
        max_tokens=generation.max_new_tokens,
        temperature=temperature,
        top_p=generation.top_p,
        top_k=generation.top_k,
        repetition_penalty=generation.repetition_penalty,
        seed=generation.seed,
    )
