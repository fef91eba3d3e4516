"""Conversations saved as JSON files under LABS_HOME/conversations, written atomically.

A save writes a temporary file in the same folder, flushes it to disk and renames it over the
target with os.replace, so a crash leaves either the old file or the new one, never half a file.
Files that cannot be read (corrupt JSON, wrong shape) are reported by `list` and skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from labs.files import atomic_write_text

FORMAT_VERSION = 1
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class StorageError(Exception):
    """A conversation cannot be saved or loaded; the message names the file and the reason."""


@dataclass
class Conversation:
    model: str
    messages: list[dict[str, str]] = field(default_factory=list)  # user/assistant turns (no system)
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: now_iso())
    updated: str = field(default_factory=lambda: now_iso())
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "name": self.name, "model": self.model, "system": self.system,
                "parameters": self.parameters, "created": self.created, "updated": self.updated,
                "messages": self.messages}

    @classmethod
    def from_json(cls, data: Any) -> "Conversation":
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        messages = data.get("messages")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant", "system") and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ValueError("'messages' must be a list of {role, content}")
        if not isinstance(data.get("model"), str):
            raise ValueError("'model' must be a string")
        parameters = data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValueError("'parameters' must be an object")
        system = data.get("system")
        return cls(model=data["model"], messages=[{"role": m["role"], "content": m["content"]} for m in messages],
                   system=system if isinstance(system, str) else None, parameters=parameters,
                   created=str(data.get("created") or now_iso()), updated=str(data.get("updated") or now_iso()),
                   name=data.get("name") if isinstance(data.get("name"), str) else None)


@dataclass
class ListedConversation:
    name: str
    path: Path
    model: str
    messages: int
    updated: str
    preview: str


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def safe_name(name: str) -> str:
    """A file-system-safe name: letters, digits, dot, dash and underscore; no path tricks."""
    cleaned = _SAFE_NAME.sub("-", name.strip()).strip(".-")
    if not cleaned:
        raise StorageError(f"{name!r} is not a usable conversation name (use letters, digits, - and _)")
    return cleaned[:100]


def default_name() -> str:
    return datetime.now().strftime("chat-%Y%m%d-%H%M%S")


class ConversationStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).expanduser()

    def path_for(self, name: str) -> Path:
        name = name[:-5] if name.endswith(".json") else name
        return self.folder / f"{safe_name(name)}.json"

    def save(self, conversation: Conversation, name: str) -> Path:
        path = self.path_for(name)
        conversation.name = path.stem
        conversation.updated = now_iso()
        text = json.dumps(conversation.to_json(), ensure_ascii=False, indent=2)
        atomic_write_text(path, text + "\n")
        return path

    def load(self, name: str) -> Conversation:
        path = self.path_for(name)
        if not path.exists():
            names = [c.name for c in self.list()[0]]
            import difflib

            close = difflib.get_close_matches(path.stem, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else " (/list shows the saved ones)"
            raise StorageError(f"no saved conversation named {path.stem}{hint}")
        try:
            conversation = Conversation.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
            raise StorageError(f"cannot read {path}: {error}") from None
        conversation.name = path.stem
        return conversation

    def list(self) -> tuple[list[ListedConversation], list[tuple[Path, str]]]:
        """(readable conversations, newest first; [(path, why) for files that cannot be read])."""
        if not self.folder.is_dir():
            return [], []
        found: list[ListedConversation] = []
        broken: list[tuple[Path, str]] = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                conversation = Conversation.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
                broken.append((path, str(error).splitlines()[0] if str(error) else type(error).__name__))
                continue
            first = next((m["content"] for m in conversation.messages if m["role"] == "user"), "")
            found.append(ListedConversation(path.stem, path, conversation.model, len(conversation.messages),
                                            conversation.updated, " ".join(first.split())[:60]))
        found.sort(key=lambda c: c.updated, reverse=True)
        return found, broken
