"""Batch jobs (OpenAI's /v1/batches) kept under $LABS_HOME/batches, so a restart resumes them.

Each job is `<id>.json` (the OpenAI batch object, written atomically) and, while it runs, its results
as `<id>.output.jsonl` and `<id>.errors.jsonl`: one line per finished request, appended and synced
as it finishes. The result files are the record of what is done: a job resumed after a restart
skips every custom_id they already hold (custom_ids are unique within a job) and loses none.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai.types import Batch

from labs.files import atomic_write_text

logger = logging.getLogger(__name__)

_ID = re.compile(r"^batch_[a-f0-9]{24}$")
UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


@dataclass
class JobRecord:
    """The batch object and what labs needs besides: how many error lines validation wrote first, and
    its owner (the name of the API key that created it; None on a server without keys)."""

    batch: Batch
    validation_errors: int = 0
    owner: str | None = None

    def dump(self) -> str:
        return json.dumps({"batch": self.batch.model_dump(mode="json"), "validation_errors": self.validation_errors,
                           "owner": self.owner})


class ResultFile:
    """An append-only JSONL file of results; a line cut short by a crash is dropped when reopened."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            logger.warning("%s ends with a partial line (the server stopped while writing it): dropped", self.path)
            with self.path.open("r+b") as handle:
                handle.truncate(len(complete))
        return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)


class BatchStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def output(self, batch_id: str) -> ResultFile:
        return ResultFile(self.folder / f"{batch_id}.output.jsonl")

    def errors(self, batch_id: str) -> ResultFile:
        return ResultFile(self.folder / f"{batch_id}.errors.jsonl")

    def save(self, record: JobRecord) -> None:
        atomic_write_text(self.folder / f"{record.batch.id}.json", record.dump())

    def get(self, batch_id: str) -> JobRecord | None:
        if not _ID.match(batch_id or ""):
            return None
        path = self.folder / f"{batch_id}.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return JobRecord(Batch.model_validate(data["batch"]), int(data.get("validation_errors", 0)), data.get("owner"))
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("batch record %s cannot be read (%s): treating it as missing", batch_id, error)
            return None

    def all(self) -> Iterator[JobRecord]:
        if not self.folder.is_dir():
            return
        for path in self.folder.glob("batch_*.json"):
            record = self.get(path.stem)
            if record is not None:
                yield record
