"""Conversation files: round trip, listing, corrupt files reported and skipped, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from labs.cli.chat.storage import Conversation, ConversationStore, StorageError
from labs.files import atomic_write_text


def conversation() -> Conversation:
    return Conversation(model="tiny", system="Be brief.", parameters={"temperature": 0.2},
                        messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])


def test_save_list_load_round_trip(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "conversations")
    path = store.save(conversation(), "my chat/../x")  # made safe: no path tricks
    assert path.parent == store.folder and path.name == "my-chat-..-x.json"
    data = json.loads(path.read_text())
    assert data["model"] == "tiny" and data["parameters"] == {"temperature": 0.2} and data["created"] and data["updated"]
    found, broken = store.list()
    assert [c.name for c in found] == [path.stem] and found[0].messages == 2 and found[0].preview == "Hi" and broken == []
    loaded = store.load(path.stem)
    assert loaded.messages == conversation().messages and loaded.system == "Be brief." and loaded.name == path.stem


def test_corrupt_files_are_reported_and_skipped(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path)
    store.save(conversation(), "good")
    (tmp_path / "broken.json").write_text('{"model": "tiny", "messages": [')
    (tmp_path / "wrong.json").write_text('{"model": "tiny", "messages": "nope"}')
    found, broken = store.list()
    assert [c.name for c in found] == ["good"]
    assert sorted(p.name for p, _ in broken) == ["broken.json", "wrong.json"]
    with pytest.raises(StorageError, match="cannot read .*broken.json"):
        store.load("broken")
    with pytest.raises(StorageError, match="no saved conversation named goood; did you mean good"):
        store.load("goood")


def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "c.json"
    atomic_write_text(target, "old")

    def crash(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]  # no temporary left behind
    monkeypatch.undo()
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
