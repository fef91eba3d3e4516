"""A reasoning model in a real pseudo-terminal: the thinking panel apart from the answer, /think off."""

from __future__ import annotations

import re
from pathlib import Path

import pexpect

from labs.cli.chat.render import EMPTY_ANSWER, STILL_THINKING
from tests.cli.chat.test_terminal import PROMPT, command, spawn

THINKING_TITLE = "╭─ thinking ─"  # the thinking panel's title in its top border
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def answer(child: pexpect.spawn, line: str) -> str:
    """Send a message; the screen output up to its stats line, without colours and cursor moves."""
    child.sendline(line)
    child.expect(r"\d+ tokens, first token [\d.]+ s, [\d.]+ tok/s")
    shown = ANSI.sub("", child.before)
    child.expect(PROMPT)
    return shown


def test_thinking_panel_in_a_terminal(thinking_model_dir: Path, chat_env: dict[str, str]) -> None:
    child = spawn(["--interactive", "--model", str(thinking_model_dir)], chat_env)
    command(child, "/set temperature 0", "temperature = 0")
    command(child, "/set max_tokens 3", "max_tokens = 3")
    # Greedy, the random model only writes newlines: thinking with no text, and no answer.
    shown = answer(child, "Hi")
    assert THINKING_TITLE not in shown and EMPTY_ANSWER in shown, shown
    # Sampled (seeded: the same words each time), it writes words; the template opened <think> and the
    # random model does not close it, so all 3 tokens are thinking and there is no answer.
    command(child, "/set temperature 1", "temperature = 1")
    command(child, "/set seed 0", "seed = 0")
    command(child, "/new", "new conversation")
    shown = answer(child, "Hi")
    assert THINKING_TITLE in shown and STILL_THINKING in shown, shown
    command(child, "/think off", "thinking is hidden")
    command(child, "/new", "new conversation")
    shown = answer(child, "Hi")
    assert THINKING_TITLE not in shown and f"{STILL_THINKING} (/think on shows the thinking)" in shown, shown
    command(child, "/think on", "thinking is shown")
    command(child, "/new", "new conversation")
    assert THINKING_TITLE in answer(child, "Hi")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
