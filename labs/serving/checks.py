"""What a turn may hold, checked against the limits before any model is loaded (and without torch,
so a question answered from the user's data never waits for it)."""

from __future__ import annotations

from labs.serving.errors import InvalidTurnError
from labs.serving.sampling import Limits
from labs.serving.text import check_text
from labs.serving.turn import Turn


def check_turn(turn: Turn, limits: Limits) -> None:
    """The request's size against the server's limits (before any model is loaded)."""
    if sum(given is not None for given in (turn.prompt, turn.messages, turn.raw)) != 1:
        raise InvalidTurnError("give either a prompt or messages", param=turn.messages_param)
    check_text(turn.messages or turn.prompt or turn.raw, turn.messages_param)
    check_text(turn.system, "system")
    check_text(turn.tools, "tools")
    if turn.messages is not None:
        if not turn.messages:
            raise InvalidTurnError(f"{turn.messages_param} must not be empty", param=turn.messages_param)
        if len(turn.messages) > limits.max_messages:
            raise InvalidTurnError(f"the request has {len(turn.messages)} messages, more than the server's limit of "
                                   f"{limits.max_messages} (LABS_MAX_MESSAGES)", param=turn.messages_param)
    raw_chars = len(turn.raw) if isinstance(turn.raw, str) else 0
    chars = raw_chars + len(turn.prompt or "") + len(turn.system or "") + sum(
        len(str(m.get("content") or "")) for m in turn.messages or [])
    check_input_chars(chars, limits, turn.messages_param)


def check_input_chars(chars: int, limits: Limits, param: str) -> None:
    if chars > limits.max_input_chars:
        raise InvalidTurnError(f"the input has {chars} characters, more than the server's limit of "
                               f"{limits.max_input_chars} (LABS_MAX_INPUT_CHARS)", param=param, code="input_too_long")
