"""The real program in a pseudo-terminal: Rich UI, prompt_toolkit input, Ctrl-C, save and load."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pexpect

from tests.cli.chat.conftest import LABS_GEN

PROMPT = "you>"


def spawn(args: list[str], env: dict[str, str], dimensions: tuple[int, int] = (40, 120)) -> pexpect.spawn:
    child = pexpect.spawn(LABS_GEN, args, env=env, encoding="utf-8", codec_errors="replace", dimensions=dimensions, timeout=120,
                          cwd=str(Path(env["LABS_HOME"]).parent))
    child.expect(PROMPT)
    return child


def command(child: pexpect.spawn, line: str, expect: str) -> None:
    child.sendline(line)
    child.expect(expect)
    child.expect(PROMPT)


def test_chat_save_quit_load_and_continue(tiny_model_dir: Path, chat_env: dict[str, str]) -> None:
    args = ["--interactive", "--model", str(tiny_model_dir)]
    child = spawn(args, chat_env)
    assert "tiny-model" in child.before and "cpu" in child.before  # the banner
    command(child, "/set max_tokens 6", "max_tokens = 6")
    command(child, "Hello, who are you?", r"\d+ tokens, first token [\d.]+ s, [\d.]+ tok/s")
    command(child, "/sav", r"unknown command /sav; did you mean /save")
    command(child, "/set temperature -1", r"temperature must be between 0 and 2, got -1")
    command(child, "/set top_p 0", r"top_p must be > 0")
    command(child, "What was my largest expense?", r"from your transactions")
    command(child, "/save trip", r"saved as trip")
    command(child, "/list", r"trip")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    saved = json.loads((Path(chat_env["LABS_HOME"]) / "conversations" / "trip.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 2
    assert "$1,999.00" in saved["messages"][3]["content"]

    child = spawn(args, chat_env)
    command(child, "/load trip", r"loaded trip: 4 messages")
    command(child, "/set max_tokens 4", "max_tokens = 4")
    command(child, "And then?", r"tok/s")
    child.send("\x1b[200~A pasted line\nand a second one\x1b[201~")  # a bracketed paste: one message
    command(child, "", r"tok/s")
    child.sendline("Continued \\")  # a trailing backslash continues the message
    child.expect(r"\.\.\.>")
    command(child, "here", r"tok/s")
    command(child, "/stats", r"messages in history")
    command(child, "/save", r"saved as trip")  # the name it was loaded under
    child.sendintr()  # first Ctrl-C at the empty prompt: a hint
    child.expect("Ctrl-C again")
    child.expect(PROMPT)  # a Ctrl-C in the instant between the hint and the new prompt is not at the prompt
    child.sendintr()  # second: exit
    child.expect(pexpect.EOF)
    saved = json.loads((Path(chat_env["LABS_HOME"]) / "conversations" / "trip.json").read_text())
    assert [m["content"] for m in saved["messages"][4::2]] == ["And then?", "A pasted line\nand a second one", "Continued \nhere"]
    assert (Path(chat_env["LABS_HOME"]) / "chat_history").read_text().count("And then?") == 1  # prompt history file


def interrupt_a_long_story(chat_env: dict[str, str], after_seconds: float) -> pexpect.spawn:
    """Ask the real model for a story it writes for 200+ tokens without stopping (greedy), at
    ~80-90 tokens/s here, so 2000 would take ~25 s; press Ctrl-C `after_seconds` later."""
    child = spawn(["chat", "--model", "smollm2-135m-instruct"], chat_env)
    command(child, "/set max_tokens 2000", "max_tokens = 2000")
    command(child, "/set temperature 0", "temperature = 0")
    child.sendline("Write a very long story about a dragon who learns to fly.")
    time.sleep(after_seconds)
    child.sendintr()
    return child


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(default_model_dir: Path, chat_env: dict[str, str]) -> None:
    # after 2.5 s the model is writing the story when the Ctrl-C comes
    child = interrupt_a_long_story(chat_env, after_seconds=2.5)
    child.expect(r"(\d+) tokens, first token [\d.]+ s, [\d.]+ tok/s \(stopped\)")
    assert 0 < int(child.match.group(1)) < 1000
    child.expect(PROMPT)
    command(child, "/set max_tokens 3", "max_tokens = 3")
    command(child, "Still there?", r"tok/s")
    command(child, "/stats", r"stopped")
    child.sendline("/exit")
    child.expect(pexpect.EOF)


def test_ctrl_c_before_the_first_token_stops_the_turn(default_model_dir: Path, chat_env: dict[str, str]) -> None:
    """A Ctrl-C while the prompt is still being prepared (before the request reaches the engine)
    must stop the turn too, not let 2000 tokens run."""
    child = interrupt_a_long_story(chat_env, after_seconds=0.5)
    child.expect(r"stopped", timeout=15)
    child.expect(PROMPT)
    command(child, "/set max_tokens 3", "max_tokens = 3")
    command(child, "Still there?", r"tok/s")
    child.sendline("/exit")
    child.expect(pexpect.EOF)


def test_real_model_answers_in_a_narrow_terminal(default_model_dir: Path, chat_env: dict[str, str]) -> None:
    child = spawn(["--interactive", "--model", "smollm2-135m-instruct", "--max-new-tokens", "24"], chat_env,
                  dimensions=(30, 50))
    command(child, "/set temperature 0", "temperature = 0")
    command(child, "What is the capital of France?", r"Paris(.|\n)*tok/s")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
