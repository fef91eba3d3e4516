"""Text a request sends must be real Unicode: a lone surrogate ("\\ud800") is valid JSON but no text."""

from __future__ import annotations

from typing import Any

from labs.serving.errors import InvalidTurnError


def check_text(value: Any, param: str) -> None:
    """Raise a 400-kind error naming `param` when any string inside `value` cannot be encoded as UTF-8.

    Walks with a stack, not recursion: a deeply nested value must not become a RecursionError (a 500).
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as error:
                raise InvalidTurnError(f"{param} holds invalid Unicode (a lone surrogate {item[error.start]!r} at "
                                       f"character {error.start}): send text as valid UTF-8", param=param,
                                       code="invalid_unicode") from None
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
