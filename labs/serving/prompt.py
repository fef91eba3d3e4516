"""A turn's prompt: its messages (and tools) through the chat template, fitted to the model's context."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from labs.config import Settings
from labs.models.prompting import PromptError, prompt_token_ids, validate_messages
from labs.serving.errors import InvalidTurnError
from labs.serving.models import ServedModel
from labs.serving.reasoning import ReasoningSplitter, ReasoningTags, prompt_opens_reasoning, split_reasoning
from labs.serving.tools import (
    ToolsError,
    render_messages_for_fallback,
    resolve_tool_choice,
    template_supports_tools,
    tools_system_prompt,
    validate_tools,
)
from labs.serving.turn import Turn


@dataclass(frozen=True)
class ToolPlan:
    """How a turn uses tools: which, the choice, and whether decoding is forced to a call."""

    tools: list[dict[str, Any]]
    choice: str  # none, auto, required, or a function name

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    @property
    def forced(self) -> bool:
        return self.active and self.choice != "auto"


def tool_plan(turn: Turn) -> ToolPlan:
    try:
        tools = validate_tools(turn.tools or [])
        return ToolPlan(tools, resolve_tool_choice(turn.tool_choice, tools))
    except ToolsError as error:
        raise InvalidTurnError(str(error), param=error.param) from None


class Reasoning:
    """Whether and how a turn's output is split into reasoning and answer."""

    def __init__(self, tags: ReasoningTags | None, prompt_tail: str) -> None:
        self.tags = tags
        self.starts_inside = bool(tags) and prompt_opens_reasoning(prompt_tail, tags)

    def split(self, text: str) -> tuple[str | None, str]:
        if self.tags is None:
            return None, text
        return split_reasoning(text, self.tags, self.starts_inside)

    def splitter(self) -> ReasoningSplitter | None:
        return ReasoningSplitter(self.tags, self.starts_inside) if self.tags else None


@dataclass
class PreparedPrompt:
    ids: list[int]
    room: int  # tokens the context leaves after the prompt
    tools: ToolPlan
    reasoning: Reasoning
    dropped: int = 0  # oldest messages left out to fit (fit_history)


def prepare_prompt(turn: Turn, served: ServedModel, settings: Settings) -> PreparedPrompt:
    plan = tool_plan(turn)
    context = served.context_length
    messages = turn.messages
    dropped = 0
    while True:
        ids = _prompt_ids(turn, messages, served, settings, plan)
        if not turn.fit_history or messages is None or len(messages) <= 1 or len(ids) + _wanted(turn, context) <= context:
            break
        start = 1 if messages[0]["role"] in ("system", "developer") else 0
        if len(messages) - start <= 1:
            break
        pair = messages[start]["role"] == "user" and len(messages) - start > 2 and messages[start + 1]["role"] == "assistant"
        cut = 2 if pair else 1
        messages = messages[:start] + messages[start + cut:]
        dropped += cut
    _check_readable(ids, served, turn.messages_param)
    room = context - len(ids)
    if room < 1:
        raise InvalidTurnError(f"the prompt has {len(ids)} tokens but {served.id}'s context is {context} tokens: "
                               "shorten it", param=turn.messages_param, code="context_length_exceeded")
    enabled = turn.reasoning if turn.reasoning is not None else settings.server.split_reasoning
    tags = served.reasoning_tags if enabled else None
    tail = served.tokenizer.decode(ids[-16:], skip_special_tokens=False) if tags else ""
    return PreparedPrompt(ids, room, plan, Reasoning(tags, tail), dropped)


def _check_readable(ids: list[int], served: ServedModel, param: str) -> None:
    """Refuse ids beyond the model's embedding matrix: fed to the model they are an IndexError (a 500).

    The tokenizer makes them from text when it has tokens the matrix lacks (added without resizing);
    resizing would give those tokens untrained rows, so the model would read noise. A client sends
    them as token-id prompts. Either way the request cannot be served as given: a 400 naming the token.
    """
    loaded = getattr(served, "loaded", None)
    if loaded is None:  # a stand-in without weights (pure prompt logic) has no matrix to check against
        return
    rows = loaded.embedding_rows
    bad = next((token for token in ids if not 0 <= token < rows), None)
    if bad is None:
        return
    text = served.tokenizer.convert_ids_to_tokens(bad) if 0 <= bad < len(served.tokenizer) else None
    what = f"the token {text!r} (id {bad})" if text is not None else f"token id {bad}"
    raise InvalidTurnError(f"{param} holds {what}, outside {served.id}'s vocabulary: its embedding matrix has "
                           f"{rows} rows (ids 0..{rows - 1})", param=param, code="token_out_of_range")


def prompt_ids(turn: Turn, served: ServedModel, settings: Settings, add_generation_prompt: bool | None = None) -> list[int]:
    """The prompt's token ids as the turn would send them (no fitting, no context check)."""
    return _prompt_ids(turn, turn.messages, served, settings, tool_plan(turn), add_generation_prompt)


def _wanted(turn: Turn, context: int) -> int:
    return min(turn.sampling.max_tokens or 64, max(context // 4, 1))


def _prompt_ids(turn: Turn, messages: list[dict[str, Any]] | None, served: ServedModel, settings: Settings,
                plan: ToolPlan, add_generation_prompt: bool | None = None) -> list[int]:
    if turn.raw is not None:
        ids = list(served.tokenizer(turn.raw)["input_ids"]) if isinstance(turn.raw, str) else list(turn.raw)
        if not ids:
            raise InvalidTurnError(f"{turn.messages_param} must not be empty", param=turn.messages_param)
        return ids
    generation = settings.generation
    tools = None
    if messages is not None:
        messages = _checked_messages(messages, turn.messages_param)
        has_tool_turns = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
        if plan.active and template_supports_tools(served.tokenizer) and generation.use_chat_template:
            tools = plan.tools
            messages = [_with_argument_objects(m) for m in messages]
        elif plan.active or has_tool_turns:
            messages = render_messages_for_fallback(messages)
            if plan.active:
                messages = _with_system(messages, tools_system_prompt(plan.tools, plan.choice))
    try:
        return prompt_token_ids(
            served.tokenizer,
            prompt=turn.prompt if messages is None else None,
            messages=messages,
            system=turn.system or generation.system_prompt,
            use_chat_template=generation.use_chat_template,
            add_generation_prompt=(generation.add_generation_prompt if add_generation_prompt is None
                                   else add_generation_prompt),
            tools=tools,
        )
    except PromptError as error:
        raise InvalidTurnError(str(error), param=turn.messages_param) from None


def _checked_messages(messages: list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    """Messages with text content and well-formed tool calls, before the tool rendering reads them.

    The renderings index into each call (`call["function"]["name"]`) and add content to text: a
    call without a function, or parts as content, would be a KeyError or TypeError (a 500).
    """
    try:
        messages = validate_messages(messages)
    except PromptError as error:
        raise InvalidTurnError(str(error), param=param) from None
    for index, message in enumerate(messages):
        calls = message.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(_is_call(call) for call in calls)):
            raise InvalidTurnError(f'{param}[{index}].tool_calls must be a list of {{"type": "function", "function": '
                                   '{"name": "...", "arguments": "<JSON text>"}}', param=param)
    return messages


def _is_call(call: Any) -> bool:
    function = call.get("function") if isinstance(call, dict) else None
    return (isinstance(function, dict) and isinstance(function.get("name"), str) and bool(function["name"])
            and isinstance(function.get("arguments", ""), (str, dict)))


def _with_system(messages: list[dict[str, Any]], instructions: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] in ("system", "developer"):
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{instructions}"}, *messages[1:]]
    return [{"role": "system", "content": instructions}, *messages]


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
