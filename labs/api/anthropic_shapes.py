"""Anthropic's Messages API shapes: request bodies into neutral turns, results and errors into its JSON.

The conversation becomes the OpenAI chat shape the serving core speaks: a `system` prompt is the
first message, `tool_use` blocks are assistant `tool_calls`, each `tool_result` block is a `tool`
message. Earlier `thinking` blocks are dropped (chat templates do not feed old reasoning back).
Only text, tools and thinking are served: images, documents and server tools are a clear 400.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from typing import Any, Literal, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labs.api.errors import APIError, bad_request
from labs.serving.events import Usage
from labs.serving.guided import GuidedDecoding
from labs.serving.tools import ToolCall
from labs.serving.turn import RequestedSampling, Turn
from labs.serving.turns import SampleResult, TurnResult

logger = logging.getLogger(__name__)

# Thinking blocks need a signature; labs does not sign its reasoning and ignores the ones sent back.
SIGNATURE = "labs-unsigned"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}


class _Body(BaseModel):
    """Unknown fields are accepted (logged), as Anthropic adds fields often; types are strict."""

    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="after")
    def _log_unknown_fields(self) -> "_Body":
        if self.model_extra:
            logger.debug("%s: ignoring unknown fields %s", type(self).__name__, sorted(self.model_extra))
        return self


class AnthropicMessage(_Body):
    role: Literal["user", "assistant"]
    content: Union[str, list[dict[str, Any]]]


class CountTokensRequest(_Body):
    """POST /v1/messages/count_tokens: what shapes the prompt."""

    model: str | None = None
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: Union[str, list[dict[str, Any]], None] = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages."""

    max_tokens: int  # required, as Anthropic requires it
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None  # accepted and ignored
    output_config: dict[str, Any] | None = None  # its `format` (a JSON schema) constrains the text; `effort` is ignored
    stream: bool | None = False
    use_rag: bool | None = None  # labs extension: answer from the user's own data (default LABS_RAG_ENABLED)


# ---------------------------------------------------------------------- requests


def messages_turn(body: MessagesRequest) -> Turn:
    """POST /v1/messages as a neutral turn."""
    sampling = RequestedSampling(max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                 top_k=body.top_k, stop=body.stop_sequences)
    return dataclasses.replace(count_turn(body), sampling=sampling, guided=_output_format(body.output_config),
                               use_data=body.use_rag, use_docs=bool(body.use_rag))


def count_turn(body: CountTokensRequest) -> Turn:
    """The turn whose prompt a request would send (sampling left to the defaults)."""
    tools = _tools(body.tools)
    return Turn(messages=chat_messages(body.messages, body.system), model=body.model, tools=tools,
                tool_choice=_tool_choice(body.tool_choice, bool(tools)), reasoning=_reasoning(body.thinking),
                id_prefix="msg")


def chat_messages(messages: list[AnthropicMessage], system: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Anthropic's system + messages as OpenAI chat messages."""
    if messages[-1].role != "user":
        raise bad_request("the last message must be a user message: this server does not continue (prefill) an "
                          "assistant message", param=f"messages.{len(messages) - 1}.role")
    chat: list[dict[str, Any]] = []
    text = _system_text(system)
    if text:
        chat.append({"role": "system", "content": text})
    for index, message in enumerate(messages):
        where = f"messages.{index}.content"
        if message.role == "user":
            chat.extend(_user_messages(message.content, where))
        else:
            chat.append(_assistant_message(message.content, where))
    return chat


def _block_type(block: dict[str, Any], where: str) -> str:
    kind = block.get("type")
    if not isinstance(kind, str):
        raise bad_request(f"{where}.type must be a string naming the content block's type", param=f"{where}.type")
    return kind


def _unsupported(kind: str, where: str, allowed: str) -> APIError:
    return bad_request(f"{where}: content blocks of type {kind!r} are not supported by this server "
                       f"(here: {allowed})", param=where)


def _string(block: dict[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise bad_request(f"{where}.{key} must be a string", param=f"{where}.{key}")
    return value


def _texts(blocks: list[dict[str, Any]], where: str, what: str) -> str:
    """Blocks that may only be text, joined."""
    parts = []
    for index, block in enumerate(blocks):
        at = f"{where}.{index}"
        kind = _block_type(block, at)
        if kind != "text":
            raise _unsupported(kind, at, f"{what} may only hold text blocks")
        parts.append(_string(block, "text", at))
    return "\n".join(parts)


def _system_text(system: str | list[dict[str, Any]] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system
    return _texts(system, "system", "system")


def _blocks(content: list[dict[str, Any]], where: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Each content block with its place in the body (for error messages) and its checked type."""
    for index, block in enumerate(content):
        at = f"{where}.{index}"
        yield at, _block_type(block, at), block


def _user_messages(content: str | list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as tool messages, its text as a user message, in order."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    result: list[dict[str, Any]] = []
    texts: list[str] = []
    for at, kind, block in _blocks(content, where):
        if kind == "text":
            texts.append(_string(block, "text", at))
        elif kind == "tool_result":
            if texts:
                result.append({"role": "user", "content": "\n".join(texts)})
                texts = []
            result.append(_tool_message(block, at))
        else:
            raise _unsupported(kind, at, "a user message may hold text and tool_result blocks")
    if texts or not result:
        result.append({"role": "user", "content": "\n".join(texts)})
    return result


def _tool_message(block: dict[str, Any], where: str) -> dict[str, Any]:
    content = block.get("content", "")
    if isinstance(content, list):
        text = _texts(content, f"{where}.content", "a tool_result")
    elif isinstance(content, str):
        text = content
    else:
        raise bad_request(f"{where}.content must be a string or a list of text blocks", param=f"{where}.content")
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": _string(block, "tool_use_id", where), "content": text}


def _assistant_message(content: str | list[dict[str, Any]], where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for at, kind, block in _blocks(content, where):
        if kind == "text":
            texts.append(_string(block, "text", at))
        elif kind == "tool_use":
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise bad_request(f"{at}.input must be an object", param=f"{at}.input")
            calls.append({"id": _string(block, "id", at), "type": "function", "function": {
                "name": _string(block, "name", at), "arguments": json.dumps(arguments, ensure_ascii=False)}})
        elif kind not in ("thinking", "redacted_thinking"):
            raise _unsupported(kind, at, "an assistant message may hold text, tool_use and thinking blocks")
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Anthropic's client tools ({name, description, input_schema}) as OpenAI function tools."""
    functions = []
    for index, tool in enumerate(tools or []):
        where = f"tools.{index}"
        if tool.get("type", "custom") not in ("custom", None):
            raise bad_request(f"{where}: tools of type {tool['type']!r} (server tools) are not supported by this "
                              "server; give client tools as {name, description, input_schema}", param=where)
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise bad_request(f"{where}.input_schema must be a JSON schema object", param=f"{where}.input_schema")
        description = tool.get("description", "")
        functions.append({"type": "function", "function": {
            "name": _string(tool, "name", where), "description": description if isinstance(description, str) else "",
            "parameters": schema}})
    return functions


def _tool_choice(choice: dict[str, Any] | None, has_tools: bool) -> Any:
    """{"type": auto | any | tool | none} as the OpenAI tool_choice the core takes."""
    if choice is None:
        return None
    kind = choice.get("type")
    if kind == "auto":
        return "auto" if has_tools else None
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}
    raise bad_request(f'tool_choice.type must be "auto", "any", "tool" or "none", got {kind!r}', param="tool_choice.type")


def _reasoning(thinking: dict[str, Any] | None) -> bool | None:
    """Thinking enabled: a reasoning model's thinking comes as thinking blocks (the budget is not enforced)."""
    if thinking is None:
        return None
    kind = thinking.get("type")
    if kind in ("enabled", "adaptive"):
        budget = thinking.get("budget_tokens")
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
            raise bad_request("thinking.budget_tokens must be a positive integer", param="thinking.budget_tokens")
        return True
    if kind == "disabled":
        return False
    raise bad_request(f'thinking.type must be "enabled", "adaptive" or "disabled", got {kind!r}', param="thinking.type")


def _output_format(config: dict[str, Any] | None) -> GuidedDecoding | None:
    """Structured outputs: output_config.format {"type": "json_schema", "schema": {...}}."""
    spec = (config or {}).get("format")
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") != "json_schema" or not isinstance(spec.get("schema"), dict):
        raise bad_request('output_config.format must be {"type": "json_schema", "schema": {...}}',
                          param="output_config.format")
    return GuidedDecoding("json_schema", json.dumps(spec["schema"]), field="output_config.format")


# ---------------------------------------------------------------------- responses


def message_id(turn_id: str) -> str:
    return turn_id.replace("msg-", "msg_", 1)


def tool_use_id(call: ToolCall) -> str:
    return "toolu_" + call.id.removeprefix("call_")


def tool_use_block(call: ToolCall, arguments: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_use_id(call), "name": call.name, "input": arguments}


def stop_reason(finish_reason: str | None, stopped_by: str | int | None,
                stop_sequences: list[str]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for how a sample ended."""
    if finish_reason == "tool_calls":
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if isinstance(stopped_by, str) and stopped_by in stop_sequences:
        return "stop_sequence", stopped_by
    return "end_turn", None


def usage_body(usage: Usage) -> dict[str, Any]:
    """Anthropic counts cache reads apart: the prompt is input_tokens + cache_read_input_tokens."""
    return {"input_tokens": usage.prompt_tokens - usage.cached_tokens, "output_tokens": usage.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": usage.cached_tokens}


def content_blocks(sample: SampleResult) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if sample.reasoning is not None:
        blocks.append({"type": "thinking", "thinking": sample.reasoning, "signature": SIGNATURE})
    if sample.text:
        blocks.append({"type": "text", "text": sample.text})
    blocks.extend(tool_use_block(call, json.loads(call.arguments)) for call in sample.tool_calls)
    return blocks or [{"type": "text", "text": ""}]


def message_body(result: TurnResult, stop_sequences: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """A whole answer as Anthropic's Message object (`extra`: labs' extension fields)."""
    sample = result.samples[0]
    reason, sequence = stop_reason(sample.finish_reason, sample.stop_reason, stop_sequences)
    return {"id": message_id(result.id), "type": "message", "role": "assistant", "model": result.model,
            "content": content_blocks(sample), "stop_reason": reason, "stop_sequence": sequence,
            "usage": usage_body(result.usage), **extra}


def error_body(error: APIError) -> dict[str, Any]:
    kind = ERROR_TYPES.get(error.status, "invalid_request_error" if error.status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def error_response(error: APIError) -> JSONResponse:
    """Any error on /v1/messages paths, in Anthropic's shape (registered in labs.api.routes.messages)."""
    return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)
