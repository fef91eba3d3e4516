"""From API request bodies to engine inputs: server limits, sampling parameters and prompt tokens.

Fields a request leaves out take the server's configured defaults ([generation] in labs.toml),
so an operator's choice of temperature or max_new_tokens holds for every client. An explicit
value is checked against the server's limits and then by SamplingParams.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from labs.api.errors import APIError, bad_request
from labs.api.schemas import ChatCompletionRequest, ChatMessage, SamplingFields
from labs.config import Settings
from labs.engine.sampling import SamplingParams
from labs.models.prompting import prompt_token_ids
from labs.serving.models import ServedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_n: int
    max_tokens: int
    max_messages: int
    max_input_chars: int
    max_embedding_inputs: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        server = settings.server
        return cls(server.max_n, server.max_tokens_limit, server.max_messages, server.max_input_chars,
                   server.max_embedding_inputs)


def check_input_chars(chars: int, limits: Limits, param: str) -> None:
    if chars > limits.max_input_chars:
        raise bad_request(f"the input has {chars} characters, more than the server's limit of {limits.max_input_chars} "
                          "(LABS_MAX_INPUT_CHARS)", param=param, code="input_too_long")


def check_messages(messages: list[ChatMessage], limits: Limits) -> list[dict[str, Any]]:
    if len(messages) > limits.max_messages:
        raise bad_request(f"the request has {len(messages)} messages, more than the server's limit of "
                          f"{limits.max_messages} (LABS_MAX_MESSAGES)", param="messages")
    chars = 0
    for message in messages:
        if isinstance(message.content, str):
            chars += len(message.content)
        elif isinstance(message.content, list):
            chars += sum(len(str(part.get("text", ""))) for part in message.content)
    check_input_chars(chars, limits, "messages")
    return [message.model_dump(exclude_none=True) for message in messages]


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if bias is None:
        return None
    result = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise bad_request(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        result[token] = value
    return result


def sampling_params(body: SamplingFields, settings: Settings, limits: Limits, *, max_tokens: int | None,
                    room: int, logprobs: int | None = None) -> SamplingParams:
    """`room` is what the context leaves after the prompt: an unset max_tokens never exceeds it."""
    generation = settings.generation
    n = body.n if body.n is not None else 1
    if n > limits.max_n:
        raise bad_request(f"n must be at most {limits.max_n} on this server (LABS_MAX_N), got {n}", param="n")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise bad_request(f"max_tokens must be at most {limits.max_tokens} on this server (LABS_MAX_TOKENS_LIMIT), "
                          f"got {max_tokens}", param="max_tokens")
    if max_tokens is None:
        max_tokens = max(1, min(generation.max_new_tokens, limits.max_tokens, room))
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true", param="stream_options")
    default_temperature = generation.temperature if generation.do_sample else 0.0
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_pick(body.temperature, default_temperature),
        top_p=_pick(body.top_p, generation.top_p),
        top_k=_pick(body.top_k, generation.top_k),
        min_p=_pick(body.min_p, 0.0),
        repetition_penalty=_pick(body.repetition_penalty, generation.repetition_penalty),
        presence_penalty=_pick(body.presence_penalty, 0.0),
        frequency_penalty=_pick(body.frequency_penalty, 0.0),
        logit_bias=_logit_bias(body.logit_bias),
        seed=_pick(body.seed, generation.seed),
        stop=body.stop if body.stop is not None else [],
        stop_token_ids=body.stop_token_ids or [],
        ignore_eos=bool(body.ignore_eos),
        min_tokens=_pick(body.min_tokens, 0),
        n=n,
        logprobs=logprobs,
    )


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def chat_logprobs(body: ChatCompletionRequest) -> int | None:
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs requires logprobs to be true", param="top_logprobs")
    return (body.top_logprobs or 0) if body.logprobs else None


def reject_unsupported_chat_fields(body: ChatCompletionRequest) -> None:
    """Fields this server cannot honour yet are refused, not silently ignored."""
    if body.response_format is not None and body.response_format.get("type", "text") != "text":
        raise bad_request(f"response_format type {body.response_format.get('type')!r} is not supported by this server yet; "
                          "use 'text'", param="response_format")
    if body.tools and body.tool_choice not in (None, "none"):
        raise bad_request("tool calling is not supported by this server yet: send tool_choice 'none' or no tools",
                          param="tools")


def chat_prompt_ids(served: ServedModel, messages: list[dict[str, Any]], settings: Settings) -> list[int]:
    generation = settings.generation
    return prompt_token_ids(
        served.tokenizer,
        messages=messages,
        system=generation.system_prompt,
        use_chat_template=generation.use_chat_template,
        add_generation_prompt=generation.add_generation_prompt,
    )


def context_room(served: ServedModel, prompt_ids: list[int], param: str) -> int:
    """Tokens the context leaves after the prompt; a prompt that fills it is a 400 naming both numbers."""
    room = served.context_length - len(prompt_ids)
    if room < 1:
        raise bad_request(
            f"the prompt has {len(prompt_ids)} tokens but {served.id}'s context is {served.context_length} tokens: "
            "shorten it", param=param, code="context_length_exceeded")
    return room


def check_max_tokens_fit(served: ServedModel, prompt_ids: list[int], max_tokens: int | None, param: str) -> None:
    if max_tokens is not None and len(prompt_ids) + max_tokens > served.context_length:
        raise APIError(
            400,
            f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceeds {served.id}'s context of "
            f"{served.context_length} tokens: ask for at most {served.context_length - len(prompt_ids)} tokens or "
            "shorten the prompt",
            param=param, code="context_length_exceeded")
