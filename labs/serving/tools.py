"""Function calling: tools in the prompt, calls constrained or parsed out of the output.

Models whose chat template knows tools get them through the template (`tools=` of
`apply_chat_template`). Others get the documented fallback: a system message listing the tools and
asking for calls written as

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

With `tool_choice` "required" or a named function, decoding is constrained to exactly
`{"name": ..., "arguments": {...}}` for the allowed function(s), so the call always parses, names
a given function, and its arguments validate against that function's JSON schema. With "auto" the
model may answer in text or write <tool_call> blocks, which are parsed when they hold valid JSON.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from labs.engine.guided import GuidedDecoding
from labs.errors import LabsError

_CALL_BLOCK = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolsError(LabsError):
    """`tools` or `tool_choice` cannot be used as given; `param` names the field."""

    exit_code = 2

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the OpenAI API sends it

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def validate_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools as {"type": "function", "function": {"name", "description", "parameters"}}, checked."""
    checked = []
    names = set()
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise ToolsError(f'tools[{index}] must be {{"type": "function", "function": {{"name": ..., "parameters": ...}}}}',
                             param="tools")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolsError(f"tools[{index}].function.name must be 1-64 letters, digits, _ or -, got {name!r}", param="tools")
        if name in names:
            raise ToolsError(f"tools[{index}]: the function name {name!r} is used twice", param="tools")
        names.add(name)
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise ToolsError(f"tools[{index}].function.parameters must be a JSON schema object", param="tools")
        checked.append({"type": "function", "function": {
            "name": name, "description": function.get("description", ""), "parameters": parameters}})
    return checked


def resolve_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> str:
    """"none", "auto", "required", or the name of the function that must be called."""
    if choice is None:
        return "auto" if tools else "none"
    if choice in ("none", "auto", "required"):
        if choice != "none" and not tools:
            raise ToolsError(f"tool_choice {choice!r} needs tools", param="tool_choice")
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        known = [tool["function"]["name"] for tool in tools]
        if name not in known:
            raise ToolsError(f"tool_choice names the function {name!r}, which is not among the tools ({', '.join(known) or 'none'})",
                             param="tool_choice")
        return name
    raise ToolsError('tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
                     param="tool_choice")


def call_grammar(tools: list[dict[str, Any]], choice: str) -> GuidedDecoding:
    """Decoding constrained to one well-formed call of the allowed function(s)."""
    allowed = [tool["function"] for tool in tools if choice == "required" or tool["function"]["name"] == choice]
    shapes = [{
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": function["parameters"]},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    } for function in allowed]
    schema = shapes[0] if len(shapes) == 1 else {"anyOf": shapes}
    return GuidedDecoding("json_schema", json.dumps(schema), field="tools")


def template_supports_tools(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tools" in template


def tools_system_prompt(tools: list[dict[str, Any]], choice: str) -> str:
    """The fallback instructions for models whose chat template does not know tools."""
    listing = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
    rule = ("You must call one of these functions." if choice == "required"
            else f"You must call the function {choice}." if choice not in ("auto", "none")
            else "Call a function only when it helps to answer; otherwise answer in text.")
    return (f"You can call these functions:\n{listing}\n{rule} To call one, write exactly:\n"
            '<tool_call>{"name": "<function name>", "arguments": {<arguments as JSON>}}</tool_call>')


def render_messages_for_fallback(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool calls and tool results as plain text, for templates without tool support."""
    rendered = []
    for message in messages:
        if message["role"] == "assistant" and message.get("tool_calls"):
            calls = "".join(
                "<tool_call>" + json.dumps({"name": call["function"]["name"],
                                            "arguments": _loads_or_text(call["function"].get("arguments", "{}"))},
                                           ensure_ascii=False) + "</tool_call>"
                for call in message["tool_calls"])
            rendered.append({"role": "assistant", "content": (message.get("content") or "") + calls})
        elif message["role"] == "tool":
            rendered.append({"role": "tool", "content": f"Result of call {message.get('tool_call_id', '')}: "
                                                         f"{message.get('content') or ''}"})
        else:
            rendered.append({k: v for k, v in message.items() if k != "tool_calls"})
    return rendered


def parse_forced_call(text: str) -> ToolCall | None:
    """The single call a constrained output holds (None if generation was cut before it closed)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return ToolCall(new_call_id(), data["name"], json.dumps(data["arguments"], ensure_ascii=False))


def parse_tool_calls(text: str, tools: list[dict[str, Any]]) -> tuple[str, list[ToolCall]]:
    """<tool_call> blocks naming a known function, out of free text; the rest is the content."""
    known = {tool["function"]["name"] for tool in tools}
    calls = []
    for match in _CALL_BLOCK.finditer(text):
        try:
            data = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("name") in known and isinstance(data.get("arguments", {}), dict):
            calls.append(ToolCall(new_call_id(), data["name"], json.dumps(data.get("arguments", {}), ensure_ascii=False)))
    if not calls:
        return text, []
    return _CALL_BLOCK.sub("", text).strip(), calls


def _loads_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except (json.JSONDecodeError, TypeError):
        return arguments
