"""Stored responses: each one's conversation (input items) and answer (the response object), as files.

Why files: a conversation continued with `previous_response_id` must survive a server restart,
and one small JSON file per response needs no database. Each record holds the whole conversation
that led to it, so continuing needs one read and deleting one response never breaks another.
Writes go to a temporary file first and are renamed into place, so a crash never leaves half a
record; ids are checked against a strict pattern, so no id can name a path outside the folder.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labs.files import atomic_write_text

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z]{1,16}_[A-Za-z0-9]{1,64}$")


@dataclass(frozen=True)
class StoredResponse:
    """One stored answer: the items it was given (history included) and the response object."""

    input_items: list[dict[str, Any]]
    response: dict[str, Any]

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """What a follow-up continues from: the input items, then the answer's output items."""
        return [*self.input_items, *self.response.get("output", [])]


def valid_id(response_id: Any) -> bool:
    return isinstance(response_id, str) and bool(_ID.match(response_id))


class ResponseStore:
    """A folder of `<id>.json` records, created on the first write."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, response_id: str) -> Path | None:
        return self.folder / f"{response_id}.json" if valid_id(response_id) else None

    def get(self, response_id: str) -> StoredResponse | None:
        path = self._path(response_id)
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            return StoredResponse(list(record["input_items"]), dict(record["response"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("stored response %s cannot be read (%s): treating it as missing", response_id, error)
            return None

    def put(self, response_id: str, stored: StoredResponse) -> None:
        path = self._path(response_id)
        if path is None:
            raise ValueError(f"not a valid response id: {response_id!r}")
        text = json.dumps({"input_items": stored.input_items, "response": stored.response}, ensure_ascii=False)
        atomic_write_text(path, text)

    def delete(self, response_id: str) -> bool:
        path = self._path(response_id)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
