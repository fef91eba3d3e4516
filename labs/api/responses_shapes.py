"""The OpenAI Responses API's shapes: its request as a neutral turn, its items and response object.

Input items are first made canonical (every item typed, with an id, text content as parts) so the
same list can be stored, listed by `/input_items` and sent back through `previous_response_id`;
they then become the OpenAI chat messages the serving core speaks. Responses function tools are
flat (`{"type": "function", "name", "parameters"}`), chat tools nest them under `function`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from labs.api.errors import bad_request
from labs.api.schemas import _Lenient
from labs.api.translate import _logit_bias as logit_bias
from labs.serving.events import Usage
from labs.serving.guided import GuidedDecoding
from labs.serving.text import check_text
from labs.serving.tools import ToolCall
from labs.serving.turn import RequestedSampling, Turn

_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text")


class ResponsesRequest(_Lenient):
    """POST /v1/responses. Fields the server cannot honour are refused, not silently dropped."""

    model: str | None = None
    input: Any = None  # a string or a list of items; checked by input_items, naming `input` on error
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None  # checked by chat_tool_choice
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = False
    store: bool | None = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: dict[str, Any] | None = None
    # extensions, as in chat: answer from the user's own data; vLLM's common sampling fields
    use_rag: bool | None = None
    seed: int | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def check_request(body: ResponsesRequest) -> None:
    """Refuse what the server cannot do, and text that is not Unicode (it would fail the echo and the store)."""
    for name in ("background", "conversation", "prompt"):
        if getattr(body, name):
            raise bad_request(f"{name} is not supported by this server", param=name)
    if body.input is None and body.previous_response_id is None:
        raise bad_request("input is required", param="input")
    for name, value in body.model_dump(exclude_none=True).items():
        check_text(value, name)


# ------------------------------------------------------------------ input items


def input_items(value: Any) -> list[dict[str, Any]]:
    """The request's input as canonical items."""
    if value is None:
        return []
    if isinstance(value, str):
        return [message_item("user", value, "input_text")]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise bad_request("input must be a string or a list of input items (objects)", param="input")
    return [_canonical(item, f"input[{index}]") for index, item in enumerate(value)]


def message_item(role: str, text: str, part_type: str, id: str | None = None, status: str = "completed") -> dict[str, Any]:
    part: dict[str, Any] = {"type": part_type, "text": text}
    if part_type == "output_text":
        part["annotations"] = []
    return {"type": "message", "id": id or item_id("msg"), "status": status, "role": role, "content": [part]}


def _canonical(item: dict[str, Any], param: str) -> dict[str, Any]:
    kind = item.get("type", "message" if "role" in item else None)
    given_id = item.get("id") if isinstance(item.get("id"), str) else None
    if kind == "message":
        role = item.get("role")
        if role not in _ROLES:
            raise bad_request(f"{param}.role must be one of {', '.join(_ROLES)}, got {role!r}", param="input")
        text = _text_of(item.get("content"), f"{param}.content")
        return message_item(role, text, "output_text" if role == "assistant" else "input_text", given_id)
    if kind == "function_call":
        fields = {name: _string(item, name, param) for name in ("call_id", "name", "arguments")}
        return {"type": "function_call", "id": given_id or item_id("fc"), **fields, "status": "completed"}
    if kind == "function_call_output":
        output = _text_of(item.get("output"), f"{param}.output")
        return {"type": "function_call_output", "id": given_id or item_id("fco"),
                "call_id": _string(item, "call_id", param), "output": output, "status": "completed"}
    if kind == "reasoning":  # kept for the record; earlier thinking does not go back into the prompt
        return {"type": "reasoning", "id": given_id or item_id("rs"), "summary": list(item.get("summary") or []),
                "content": list(item.get("content") or [])}
    raise bad_request(f"{param}: input items of type {kind!r} are not supported; send message, function_call "
                      "and function_call_output items", param="input")


def _string(item: dict[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise bad_request(f"{param}.{name} must be a string", param="input")
    return value


def _text_of(content: Any, param: str) -> str:
    """A string, or text parts joined; images, files and audio are refused by name."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{param} must be a string or a list of text parts", param="input")
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in (*_TEXT_PARTS, "refusal"):
            raise bad_request(f"{param}[{index}]: content parts of type {kind!r} are not supported (this server "
                              "reads text only: input_text or output_text)", param="input")
        text = part.get("refusal" if kind == "refusal" else "text")
        if not isinstance(text, str):
            raise bad_request(f"{param}[{index}].text must be a string", param="input")
        texts.append(text)
    return "".join(texts)


def chat_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """Canonical items as OpenAI chat messages; calls following an assistant message join it."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        kind = item["type"]
        if kind == "message":
            messages.append({"role": item["role"], "content": "".join(p.get("text", "") for p in item["content"])})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last.pop("content", None)
            else:
                messages.append({"role": "assistant", "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


# ------------------------------------------------------------------ tools and formats


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Flat Responses function tools as chat tools; other tool kinds (web search, files...) are refused."""
    converted = []
    for index, tool in enumerate(tools or []):
        kind = tool.get("type")
        if kind != "function":
            raise bad_request(f"tools[{index}]: tools of type {kind!r} are not supported; only function tools "
                              '({"type": "function", "name", "parameters"})', param="tools")
        if "name" not in tool:
            raise bad_request(f'tools[{index}].name is required: Responses function tools are flat, '
                              '{"type": "function", "name": ..., "parameters": {...}}', param="tools")
        parameters = tool.get("parameters")
        converted.append({"type": "function", "function": {
            "name": tool["name"], "description": tool.get("description") or "",
            "parameters": parameters if parameters is not None else {"type": "object", "properties": {}}}})
    return converted


def chat_tool_choice(choice: Any) -> Any:
    if choice is None or (isinstance(choice, str) and choice in ("none", "auto", "required")):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad_request('tool_choice must be "none", "auto", "required" or {"type": "function", "name": ...}',
                      param="tool_choice")


def text_format(text: dict[str, Any] | None) -> tuple[GuidedDecoding | None, dict[str, Any]]:
    """The grammar `text.format` asks for, and the format as the response repeats it."""
    fmt = (text or {}).get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None, {"type": "text"}
    if kind == "json_object":
        return GuidedDecoding("json_object", field="text.format"), {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise bad_request("text.format json_schema needs a name (string) and a schema (a JSON schema object)",
                              param="text.format")
        return GuidedDecoding("json_schema", json.dumps(fmt["schema"]), field="text.format"), dict(fmt)
    raise bad_request(f"text.format type must be text, json_object or json_schema, got {kind!r}", param="text.format")


# ------------------------------------------------------------------ the request as a turn


@dataclass
class ResponsesCall:
    """One request, parsed: the turn to run, the conversation to store, the fields the response repeats."""

    turn: Turn
    input_items: list[dict[str, Any]]  # the whole conversation's input: history, then this request's items
    echo: dict[str, Any]
    parallel_tool_calls: bool
    store: bool


def responses_call(body: ResponsesRequest, history: list[dict[str, Any]]) -> ResponsesCall:
    check_request(body)
    items = [*history, *input_items(body.input)]
    guided, fmt = text_format(body.text)
    turn = Turn(
        messages=chat_messages(items, body.instructions), model=body.model,
        sampling=RequestedSampling(max_tokens=body.max_output_tokens, temperature=body.temperature, top_p=body.top_p,
                                   seed=body.seed, top_k=body.top_k, repetition_penalty=body.repetition_penalty,
                                   logit_bias=logit_bias(body.logit_bias), max_tokens_param="max_output_tokens"),
        tools=chat_tools(body.tools), tool_choice=chat_tool_choice(body.tool_choice), guided=guided,
        use_data=body.use_rag, use_docs=bool(body.use_rag), fit_history=body.truncation == "auto",
        id_prefix="resp", messages_param="input")
    parallel = body.parallel_tool_calls is not False
    store = body.store is not False
    return ResponsesCall(turn, items, _echo(body, fmt, parallel, store), parallel, store)


def _echo(body: ResponsesRequest, fmt: dict[str, Any], parallel: bool, store: bool) -> dict[str, Any]:
    tools = [{"type": "function", "name": t["name"], "description": t.get("description"),
              "parameters": t.get("parameters"), "strict": t.get("strict", True)} for t in body.tools or []]
    text = {"format": fmt, **({"verbosity": body.text["verbosity"]} if (body.text or {}).get("verbosity") else {})}
    return {
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens, "metadata": body.metadata or {},
        "parallel_tool_calls": parallel, "previous_response_id": body.previous_response_id,
        "reasoning": body.reasoning or {"effort": None, "summary": None}, "store": store,
        "temperature": body.temperature, "text": text, "tool_choice": body.tool_choice or "auto", "tools": tools,
        "top_p": body.top_p, "truncation": body.truncation or "disabled", "user": body.user,
    }


# ------------------------------------------------------------------ output


def function_call_item(call: ToolCall, id: str | None = None, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": id or item_id("fc"), "call_id": call.id, "name": call.name,
            "arguments": call.arguments if status == "completed" else "", "status": status}


def reasoning_item(text: str, id: str | None = None) -> dict[str, Any]:
    return {"type": "reasoning", "id": id or item_id("rs"), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def usage_object(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens}


def response_id(started_id: str) -> str:
    """The core's `resp-<hex>` as OpenAI spells it."""
    return "resp_" + started_id.split("-", 1)[-1]


def response_object(id: str, created_at: int, model: str, echo: dict[str, Any], *, status: str,
                    output: list[dict[str, Any]], usage: Usage | None = None, length_stop: bool = False,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": id, "object": "response", "created_at": created_at, "status": status, "background": False,
        "error": error, "incomplete_details": {"reason": "max_output_tokens"} if length_stop else None,
        "model": model, "output": output, "usage": usage_object(usage), **echo,
    }
