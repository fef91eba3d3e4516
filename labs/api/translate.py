"""From API request bodies to engine inputs: server limits, sampling parameters and prompt tokens.

Fields a request leaves out take the server's configured defaults ([generation] in labs.toml),
so an operator's choice of temperature or max_new_tokens holds for every client. An explicit
value is checked against the server's limits and then by SamplingParams.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from labs.api.errors import APIError, bad_request
from labs.api.schemas import ChatCompletionRequest, ChatMessage, SamplingFields
from labs.config import Settings
from labs.engine.guided import GuidedDecoding
from labs.engine.sampling import SamplingParams
from labs.models.prompting import prompt_token_ids
from labs.serving.models import ServedModel
from labs.serving.tools import (
    ToolsError,
    render_messages_for_fallback,
    resolve_tool_choice,
    template_supports_tools,
    tools_system_prompt,
    validate_tools,
)

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
        guided=guided_decoding(body),
    )


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _structured_outputs(spec: dict[str, Any]) -> GuidedDecoding:
    """vLLM's `structured_outputs` object: exactly one of json, regex, choice, grammar."""
    given = [key for key in ("json", "regex", "choice", "grammar") if spec.get(key) is not None]
    if len(given) != 1:
        raise bad_request("structured_outputs must hold exactly one of json, regex, choice or grammar",
                          param="structured_outputs")
    key, value = given[0], spec[given[0]]
    if key == "json":
        return GuidedDecoding("json_schema", value if isinstance(value, str) else json.dumps(value), field="structured_outputs")
    if key == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise bad_request("structured_outputs.choice must be a non-empty list of non-empty strings",
                              param="structured_outputs")
        return GuidedDecoding("choice", json.dumps(value), field="structured_outputs")
    if not isinstance(value, str):
        raise bad_request(f"structured_outputs.{key} must be a string", param="structured_outputs")
    return GuidedDecoding("regex" if key == "regex" else "grammar", value, field="structured_outputs")


def chat_logprobs(body: ChatCompletionRequest) -> int | None:
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs requires logprobs to be true", param="top_logprobs")
    return (body.top_logprobs or 0) if body.logprobs else None


def guided_decoding(body: SamplingFields) -> GuidedDecoding | None:
    """The grammar a request's output must follow: response_format, or vLLM's guided_* extensions."""
    asked: list[GuidedDecoding] = []
    fmt = body.response_format
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_object":
            asked.append(GuidedDecoding("json_object"))
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise bad_request("response_format.json_schema.schema must be a JSON schema object", param="response_format")
            asked.append(GuidedDecoding("json_schema", json.dumps(spec["schema"])))
        elif kind != "text":
            raise bad_request(f"response_format type must be text, json_object or json_schema, got {kind!r}",
                              param="response_format")
    if body.guided_json is not None:
        schema = body.guided_json if isinstance(body.guided_json, str) else json.dumps(body.guided_json)
        asked.append(GuidedDecoding("json_schema", schema, field="guided_json"))
    if body.guided_regex is not None:
        asked.append(GuidedDecoding("regex", body.guided_regex, field="guided_regex"))
    if body.guided_choice is not None:
        if not body.guided_choice or not all(body.guided_choice):
            raise bad_request("guided_choice must be a non-empty list of non-empty strings", param="guided_choice")
        asked.append(GuidedDecoding("choice", json.dumps(body.guided_choice), field="guided_choice"))
    if body.guided_grammar is not None:
        asked.append(GuidedDecoding("grammar", body.guided_grammar, field="guided_grammar"))
    if body.structured_outputs is not None:
        asked.append(_structured_outputs(body.structured_outputs))
    if len(asked) > 1:
        raise bad_request("give at most one of response_format (json), guided_json, guided_regex, guided_choice, "
                          "guided_grammar and structured_outputs", param=asked[1].field)
    return asked[0] if asked else None


@dataclass(frozen=True)
class ToolPlan:
    """How a chat request uses tools: which, the choice, and whether decoding is forced to a call."""

    tools: list[dict[str, Any]]
    choice: str  # none, auto, required, or a function name

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    @property
    def forced(self) -> bool:
        return self.active and self.choice != "auto"


def tool_plan(body: ChatCompletionRequest) -> ToolPlan:
    try:
        tools = validate_tools(body.tools or [])
        return ToolPlan(tools, resolve_tool_choice(body.tool_choice, tools))
    except ToolsError as error:
        raise bad_request(str(error), param=error.param) from None


def chat_prompt_ids(served: ServedModel, messages: list[dict[str, Any]], settings: Settings,
                    plan: ToolPlan | None = None) -> list[int]:
    generation = settings.generation
    tools = None
    if plan is not None and plan.active and template_supports_tools(served.tokenizer) and generation.use_chat_template:
        tools = plan.tools
        messages = [_with_argument_objects(m) for m in messages]
    elif plan is not None and (plan.active or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)):
        messages = render_messages_for_fallback(messages)
        if plan.active:
            instructions = {"role": "system", "content": tools_system_prompt(plan.tools, plan.choice)}
            if messages and messages[0]["role"] in ("system", "developer"):
                messages = [{**messages[0], "content": f"{messages[0]['content']}\n\n{instructions['content']}"}, *messages[1:]]
            else:
                messages = [instructions, *messages]
    return prompt_token_ids(
        served.tokenizer,
        messages=messages,
        system=generation.system_prompt,
        use_chat_template=generation.use_chat_template,
        add_generation_prompt=generation.add_generation_prompt,
        tools=tools,
    )


def _with_argument_objects(message: dict[str, Any]) -> dict[str, Any]:
    """Chat templates expect tool-call arguments as objects; the OpenAI API sends them as JSON text."""
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = dict(call.get("function", {}))
        try:
            function["arguments"] = json.loads(function.get("arguments") or "{}")
        except (json.JSONDecodeError, TypeError):
            pass
        calls.append({**call, "function": function})
    return {**message, "tool_calls": calls}


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
