"""Chat with stdin and stdout not terminals: plain text, no control codes, same commands."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.chat.conftest import run_piped


def test_piped_chat_is_plain_text(tiny_model_dir: Path, chat_env: dict[str, str]) -> None:
    lines = [
        "Hello there, tell me a \\",  # a trailing backslash continues the message
        "story",
        "/set max_tokens 5",
        "Hi again",
        "/set temperature 9",
        "/sav",
        "What was my largest expense?",
        "/save first",
        "/list",
        "/stats",
        "/exit",
        "never read",
    ]
    home = Path(chat_env["LABS_HOME"])
    (home / "conversations").mkdir(parents=True)
    (home / "conversations" / "corrupt.json").write_text("{not json")
    result = run_piped(["--interactive", "--model", str(tiny_model_dir), "--max-new-tokens", "8"], lines, chat_env)
    assert result.returncode == 0, result.stderr
    for stream in (result.stdout, result.stderr):
        assert "\x1b" not in stream  # no colours, cursor moves or Live redraws
    err = result.stderr
    assert "labs chat: model" in err and "device cpu" in err
    assert err.count(" tokens, first token ") == 2 and " tok/s" in err, err
    assert "error: temperature must be between 0 and 2, got 9" in err
    assert "error: unknown command /sav; did you mean /save" in err
    assert "$1,999.00" in result.stdout and "answered exactly from your transactions" in err
    assert "saved as first" in result.stdout
    assert "skipped corrupt.json: cannot be read" in err
    assert "first | " in result.stdout  # the /list row
    assert "answers | 3" in result.stdout and "from your data | 1" in result.stdout
    saved = json.loads((home / "conversations" / "first.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 3
    assert saved["messages"][0]["content"] == "Hello there, tell me a \nstory"
    assert saved["parameters"]["max_tokens"] == 5 and saved["model"]

    # A new process loads it and goes on with its history.
    lines = ["/load first", "/system Be brief.", f"/model {tiny_model_dir}", "And now?", "/save first", "/new", "/stats", "/exit"]
    result = run_piped(["chat", "--model", str(tiny_model_dir)], lines, chat_env)
    assert result.returncode == 0, result.stderr
    assert "loaded first: 6 messages" in result.stdout and "system message set: Be brief." in result.stdout
    assert result.stderr.count("labs chat: model") == 2  # the banner again after /model
    assert "new conversation" in result.stdout and "messages in history | 0" in result.stdout
    saved = json.loads((home / "conversations" / "first.json").read_text())
    assert len(saved["messages"]) == 8 and saved["messages"][6] == {"role": "user", "content": "And now?"}
    assert saved["system"] == "Be brief." and saved["parameters"]["max_tokens"] == 5
