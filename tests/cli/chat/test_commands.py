"""The slash-command parser: names, aliases, hints, /set validated by SamplingParams."""

from __future__ import annotations

import pytest

from labs.cli.chat.commands import (Command, CommandError, is_command, parse_command, parse_docs, parse_set,
                                    parse_think)
from labs.engine.sampling import SamplingParams


def test_commands_aliases_and_arguments() -> None:
    assert parse_command("/help") == Command("help")
    assert parse_command("  /save  my chat ") == Command("save", "my chat")
    assert parse_command("/clear") == Command("new")
    assert parse_command("/QUIT") == Command("exit")
    assert parse_command("/system Answer in French.") == Command("system", "Answer in French.")
    assert is_command("/list") and not is_command("what is /etc?")


def test_unknown_commands_get_a_hint() -> None:
    with pytest.raises(CommandError, match=r"unknown command /sav; did you mean /save"):
        parse_command("/sav x")
    with pytest.raises(CommandError, match=r"unknown command /zzzz \(/help lists the commands\)"):
        parse_command("/zzzz")


def test_set_validates_with_sampling_params() -> None:
    params = SamplingParams(temperature=0.7, max_tokens=64)
    name, value, new = parse_set("temperature 0.2", params)
    assert (name, value, new.temperature, new.max_tokens) == ("temperature", 0.2, 0.2, 64)
    assert parse_set("top_k 40", params)[2].top_k == 40
    assert parse_set("max_tokens none", params)[2].max_tokens is None
    assert parse_set("seed=7", params)[2].seed == 7
    with pytest.raises(CommandError, match="temperature must be between 0 and 2, got 5"):
        parse_set("temperature 5", params)
    with pytest.raises(CommandError, match="top_p must be > 0"):
        parse_set("top_p 0", params)
    with pytest.raises(CommandError, match="max_tokens must be an integer, got 'lots'"):
        parse_set("max_tokens lots", params)
    with pytest.raises(CommandError, match="did you mean temperature"):
        parse_set("temprature 1", params)
    with pytest.raises(CommandError, match="usage: /set NAME VALUE"):
        parse_set("temperature", params)


def test_think_switch() -> None:
    assert parse_think("on") is True and parse_think("OFF") is False
    with pytest.raises(CommandError, match="usage: /think on|off"):
        parse_think("maybe")


def test_docs_switch() -> None:
    assert parse_command("/docs on") == Command("docs", "on")
    assert parse_docs("on") is True and parse_docs("Off") is False
    with pytest.raises(CommandError, match="usage: /docs on|off"):
        parse_docs("")
