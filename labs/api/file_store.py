"""Uploaded files (OpenAI's /v1/files) kept under $LABS_HOME/files: the bytes and a small record each.

Why on disk: batch jobs read their input file and write their output files long after the request
that uploaded them, across restarts. Each file is `<id>.data` plus `<id>.json` (the OpenAI file
object and its owner: the name of the API key that made it, None on a server without keys); the
record is written last and atomically, so a file is listed only once its bytes are complete. Ids
are checked against a strict pattern, so no id can name a path outside the folder.

Owners: on a server with keys, a key sees only its own files (another's are "not found"), so one
server can be shared without its users reading each other's data.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, BinaryIO

from openai.types import FileObject

from labs.files import atomic_write_text

logger = logging.getLogger(__name__)

_ID = re.compile(r"^file-[a-f0-9]{24}$")
_CHUNK = 1 << 20


class FileTooLargeError(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than the server's limit of {limit} bytes (LABS_MAX_FILE_SIZE)")
        self.limit = limit


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


ANYONE = object()  # an owner filter that matches every file (a server without keys)


class FileStore:
    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def data_path(self, file_id: str) -> Path:
        return self.folder / f"{file_id}.data"

    def _record_path(self, file_id: str) -> Path:
        return self.folder / f"{file_id}.json"

    def save(self, source: BinaryIO, filename: str, purpose: str, owner: str | None) -> FileObject:
        """Copy an upload into the store (refused past max_bytes, leaving nothing behind)."""
        file_id = new_file_id()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.data_path(file_id)
        size = 0
        try:
            with path.open("wb") as out:
                while chunk := source.read(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise FileTooLargeError(self.max_bytes)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return self._record(file_id, filename, purpose, size, owner)

    def adopt(self, path: Path, filename: str, purpose: str, file_id: str, owner: str | None) -> FileObject | None:
        """Make a file labs wrote (a batch's output) the stored file `file_id`, moving it into the store.
        Repeating it is harmless (a restart between the move and the record); None when there is no file."""
        if not _ID.match(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        self.folder.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            os.replace(path, self.data_path(file_id))
        if not self.data_path(file_id).is_file():
            return None
        return self.get(file_id) or self._record(file_id, filename, purpose, self.data_path(file_id).stat().st_size, owner)

    def _record(self, file_id: str, filename: str, purpose: str, size: int, owner: str | None) -> FileObject:
        record = FileObject(id=file_id, object="file", bytes=size, created_at=int(time.time()), filename=filename,
                            purpose=purpose, status="processed")  # type: ignore[arg-type] - purposes are open-ended here
        atomic_write_text(self._record_path(file_id), json.dumps({"file": record.model_dump(mode="json"), "owner": owner}))
        return record

    def get(self, file_id: str, owner: object = ANYONE) -> FileObject | None:
        """The file, if it exists and `owner` (a key's name, None, or ANYONE) may see it."""
        if not _ID.match(file_id or ""):
            return None
        path = self._record_path(file_id)
        if not path.is_file() or not self.data_path(file_id).is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            stored = FileObject.model_validate(record["file"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("file record %s cannot be read (%s): treating it as missing", file_id, error)
            return None
        return stored if owner is ANYONE or record.get("owner") == owner else None

    def list(self, purpose: str | None = None, owner: object = ANYONE) -> list[FileObject]:
        """The files `owner` may see, newest first."""
        if not self.folder.is_dir():
            return []
        files = [self.get(path.stem, owner) for path in self.folder.glob("file-*.json")]
        found = [f for f in files if f is not None and (purpose is None or f.purpose == purpose)]
        return sorted(found, key=lambda f: (f.created_at, f.id), reverse=True)

    def delete(self, file_id: str, owner: object = ANYONE) -> bool:
        if self.get(file_id, owner) is None:
            return False
        self._record_path(file_id).unlink(missing_ok=True)  # unlisted first: never a record without its bytes
        self.data_path(file_id).unlink(missing_ok=True)
        return True


def page(items: list[Any], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor page: the `limit` items after the one whose id is `after`."""
    start = 0
    if after is not None:
        ids = [item.id for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    chosen = items[start:start + limit]
    return {"object": "list", "data": [item.model_dump(mode="json") for item in chosen],
            "first_id": chosen[0].id if chosen else None, "last_id": chosen[-1].id if chosen else None,
            "has_more": start + limit < len(items)}
