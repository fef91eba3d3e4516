"""Tool definitions, tool_choice and parsing calls out of text (pure logic)."""

from __future__ import annotations

import json

import pytest

from labs.serving.tools import (
    ToolsError,
    call_grammar,
    parse_forced_call,
    parse_tool_calls,
    render_messages_for_fallback,
    resolve_tool_choice,
    validate_tools,
)

TOOLS = validate_tools([{"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}])


def test_choice_resolution() -> None:
    assert resolve_tool_choice(None, TOOLS) == "auto" and resolve_tool_choice(None, []) == "none"
    assert resolve_tool_choice({"type": "function", "function": {"name": "add"}}, TOOLS) == "add"
    with pytest.raises(ToolsError, match="not among the tools"):
        resolve_tool_choice({"type": "function", "function": {"name": "mul"}}, TOOLS)
    with pytest.raises(ToolsError, match="needs tools"):
        resolve_tool_choice("required", [])


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ToolsError, match="used twice"):
        validate_tools([{"type": "function", "function": {"name": "x"}}] * 2)


def test_parse_blocks_from_text() -> None:
    text = 'Let me add.<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    content, calls = parse_tool_calls(text, TOOLS)
    assert content == "Let me add." and calls[0].name == "add" and json.loads(calls[0].arguments) == {"a": 1, "b": 2}
    assert parse_tool_calls('<tool_call>{"name": "unknown", "arguments": {}}</tool_call>', TOOLS)[1] == []
    assert parse_tool_calls("<tool_call>{broken</tool_call>", TOOLS)[1] == []


def test_forced_call_and_grammar() -> None:
    call = parse_forced_call('{"name": "add", "arguments": {"a": 1, "b": 2}}')
    assert call is not None and call.id.startswith("call_")
    assert parse_forced_call('{"name": "add", "argu') is None
    schema = json.loads(call_grammar(TOOLS, "required").spec)
    assert schema["properties"]["name"] == {"const": "add"}


def test_fallback_rendering_of_calls_and_results() -> None:
    messages = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"}]
    rendered = render_messages_for_fallback(messages)
    assert rendered[0]["content"] == '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    assert rendered[1] == {"role": "tool", "content": "Result of call call_1: 3"}
