"""The one place a turn's SamplingParams are built: defaults, limits and the request meet here.

Layers, lowest first: the built-in defaults < the model's own recommendation (its
generation_config.json, or what labs knows of an embedded model) < labs.toml < the environment
< the request or flag. A configured value (any source but "default") beats the model's
recommendation; a request's value beats everything. The answer budget (max_tokens when the
request sets none) is decided here too, for the API and the CLI alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labs.config import Settings
from labs.engine.guided import GuidedDecoding
from labs.engine.sampling import SamplingParams, SamplingParamsError
from labs.serving.errors import InvalidTurnError
from labs.serving.turn import RequestedSampling

__all__ = ["Limits", "SamplingParams", "SamplingParamsError", "answer_budget", "layered_default", "sampling_for"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask of this server (LABS_MAX_* settings)."""

    max_n: int
    max_tokens: int
    max_messages: int
    max_input_chars: int
    max_embedding_inputs: int

    @classmethod
    def for_one_user(cls) -> "Limits":
        """A terminal's own process: the server's limits guard a shared box, not one user's turns."""
        return cls(max_n=16, max_tokens=1 << 30, max_messages=1 << 30, max_input_chars=1 << 40,
                   max_embedding_inputs=1 << 20)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        server = settings.server
        return cls(server.max_n, server.max_tokens_limit, server.max_messages, server.max_input_chars,
                   server.max_embedding_inputs)


def layered_default(settings: Settings, name: str, recommended: dict[str, Any] | None) -> tuple[Any, str]:
    """A [generation] value and the layer it came from: configured, else the model's, else built in."""
    key = f"generation.{name}"
    source = settings.sources.get(key, "default")
    if source == "default" and recommended and recommended.get(name) is not None:
        return recommended[name], "model"
    return getattr(settings.generation, name), source


def answer_budget(settings: Settings, limits: Limits, room: int, context_length: int | None = None) -> int:
    """max_tokens for a request that sets none: the configured default, within the limit and the room
    the prompt leaves (and a quarter of the context when the prompt is not known yet)."""
    budget = min(settings.generation.max_new_tokens, limits.max_tokens, room)
    if context_length is not None:
        budget = min(budget, max(context_length // 4, 1))
    return max(1, budget)


def sampling_for(requested: RequestedSampling, settings: Settings, limits: Limits, *, room: int | None = None,
                 recommended: dict[str, Any] | None = None, guided: GuidedDecoding | None = None,
                 greedy_by_default: bool = False) -> SamplingParams:
    """The SamplingParams of one request. `room` is what the context leaves after the prompt (None
    before the prompt is known: max_tokens then stays the configured default). `greedy_by_default`
    is for answers from retrieved sources, where invention is the failure to avoid."""
    n = requested.n if requested.n is not None else 1
    if n > limits.max_n:
        raise InvalidTurnError(f"n must be at most {limits.max_n} on this server (LABS_MAX_N), got {n}", param="n")
    max_tokens = requested.max_tokens
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise InvalidTurnError(f"{requested.max_tokens_param} must be at most {limits.max_tokens} on this server "
                               f"(LABS_MAX_TOKENS_LIMIT), got {max_tokens}", param=requested.max_tokens_param)
    if max_tokens is None:
        max_tokens = answer_budget(settings, limits, room) if room is not None else settings.generation.max_new_tokens

    def pick(name: str) -> Any:
        value = getattr(requested, name)
        return value if value is not None else layered_default(settings, name, recommended)[0]

    do_sample = requested.do_sample if requested.do_sample is not None else settings.generation.do_sample
    if requested.temperature is not None:
        temperature = requested.temperature
    elif greedy_by_default:
        temperature = 0.0
    else:
        temperature = pick("temperature")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature if do_sample else 0.0,
        top_p=pick("top_p"),
        top_k=pick("top_k"),
        min_p=requested.min_p if requested.min_p is not None else 0.0,
        repetition_penalty=pick("repetition_penalty"),
        presence_penalty=requested.presence_penalty if requested.presence_penalty is not None else 0.0,
        frequency_penalty=requested.frequency_penalty if requested.frequency_penalty is not None else 0.0,
        logit_bias=requested.logit_bias,
        seed=requested.seed if requested.seed is not None else settings.generation.seed,
        stop=list(requested.stop or []),
        stop_token_ids=list(requested.stop_token_ids or []),
        ignore_eos=bool(requested.ignore_eos),
        min_tokens=requested.min_tokens if requested.min_tokens is not None else 0,
        n=n,
        logprobs=requested.logprobs,
        guided=guided,
    )
