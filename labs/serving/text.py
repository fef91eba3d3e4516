"""Text a request sends must be real Unicode: a lone surrogate ("\\ud800") is valid JSON but no text."""

from __future__ import annotations

from typing import Any

from labs.serving.errors import InvalidTurnError


def check_text(value: Any, param: str) -> None:
    """Raise a 400-kind error naming `param` when any string inside `value` cannot be encoded as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidTurnError(f"{param} holds invalid Unicode (a lone surrogate {value[error.start]!r} at "
                                   f"character {error.start}): send text as valid UTF-8", param=param,
                                   code="invalid_unicode") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, param)
            check_text(item, param)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_text(item, param)
