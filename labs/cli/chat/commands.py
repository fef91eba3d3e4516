"""Slash commands of the chat: parsing and validation only (no I/O), so they are easy to test."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from labs.serving.sampling import SamplingParams, SamplingParamsError

# name -> (usage, help); aliases map to their command.
COMMANDS: dict[str, tuple[str, str]] = {
    "help": ("/help", "show this help"),
    "save": ("/save [name]", "save the conversation (default name: a timestamp)"),
    "list": ("/list", "list saved conversations"),
    "load": ("/load NAME", "load a saved conversation and continue it"),
    "new": ("/new", "start a new conversation (also /clear)"),
    "system": ("/system TEXT", "set the system message (/system alone clears it)"),
    "model": ("/model ID", "switch model (alias, folder, or a server's model id)"),
    "set": ("/set NAME VALUE", "set temperature, top_p, top_k, max_tokens, seed or repetition_penalty"),
    "stats": ("/stats", "session totals"),
    "think": ("/think on|off", "show or hide a reasoning model's thinking"),
    "docs": ("/docs on|off", "answer the next questions from your documents (labs-gen rag ingest), with sources"),
    "exit": ("/exit", "leave the chat (also /quit, Ctrl-D)"),
}
ALIASES = {"clear": "new", "quit": "exit", "q": "exit", "?": "help"}

# /set NAME -> how the value is read ("none"/"off" clears max_tokens and seed).
SETTABLE: dict[str, type] = {
    "temperature": float, "top_p": float, "top_k": int, "max_tokens": int, "seed": int, "repetition_penalty": float,
}
CLEARABLE = {"max_tokens", "seed"}


class CommandError(ValueError):
    """A command the user typed cannot be run; the message says why and how to fix it."""


@dataclass(frozen=True)
class Command:
    name: str  # canonical name, e.g. "new" for /clear
    arg: str = ""  # the rest of the line, stripped


def is_command(line: str) -> bool:
    return line.lstrip().startswith("/")


def suggest(word: str) -> list[str]:
    names = list(COMMANDS) + list(ALIASES)
    return difflib.get_close_matches(word, names, n=3, cutoff=0.5)


def parse_command(line: str) -> Command:
    """`/name args` -> Command; CommandError (with a "did you mean") for an unknown name."""
    text = line.strip()
    if not text.startswith("/"):
        raise CommandError("not a command")
    word, _, arg = text[1:].partition(" ")
    word = word.lower()
    name = ALIASES.get(word, word)
    if name not in COMMANDS:
        hints = suggest(word)
        hint = f"; did you mean {' or '.join('/' + h for h in hints)}?" if hints else ""
        raise CommandError(f"unknown command /{word}{hint} (/help lists the commands)")
    return Command(name, arg.strip())


def parse_set(arg: str, current: SamplingParams) -> tuple[str, object, SamplingParams]:
    """`temperature 0.2` -> (name, value, new params), validated by SamplingParams itself."""
    import dataclasses

    parts = arg.replace("=", " ").split()
    if len(parts) != 2:
        raise CommandError(f"usage: /set NAME VALUE, NAME one of {', '.join(SETTABLE)}")
    name, raw = parts[0].lower().replace("-", "_"), parts[1]
    name = {"max_new_tokens": "max_tokens"}.get(name, name)
    if name not in SETTABLE:
        hints = difflib.get_close_matches(name, list(SETTABLE), n=1, cutoff=0.5)
        hint = f"; did you mean {hints[0]}?" if hints else ""
        raise CommandError(f"cannot set {name}{hint} (one of {', '.join(SETTABLE)})")
    value: object
    if name in CLEARABLE and raw.lower() in ("none", "off", "default"):
        value = None
    else:
        try:
            value = SETTABLE[name](raw)
        except ValueError:
            kind = "an integer" if SETTABLE[name] is int else "a number"
            raise CommandError(f"{name} must be {kind}, got {raw!r}") from None
    try:
        params = dataclasses.replace(current, **{name: value})
    except SamplingParamsError as error:
        raise CommandError(str(error)) from None
    return name, value, params


def parse_switch(arg: str, usage: str) -> bool:
    value = arg.strip().lower()
    if value in ("on", "true", "yes", "1", "show"):
        return True
    if value in ("off", "false", "no", "0", "hide"):
        return False
    raise CommandError(f"usage: {usage}")


def parse_think(arg: str) -> bool:
    return parse_switch(arg, "/think on|off")


def parse_docs(arg: str) -> bool:
    return parse_switch(arg, "/docs on|off")


def help_rows() -> list[tuple[str, str]]:
    return [usage_help for usage_help in COMMANDS.values()]
