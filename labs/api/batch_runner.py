"""Runs batch jobs: each line of the input file is sent to the server's own endpoint, in-process.

Why through the app: a batch line must behave exactly as the same request sent over HTTP (the
same validation, limits, errors and response body), and the app is the one place that defines
that. The requests never leave the process (httpx's ASGI transport) and carry a per-process token
instead of a client's key, so no key is ever stored with a job.

A job goes validating -> in_progress -> finalizing -> completed (or failed when its input file
cannot be used at all; cancelling -> cancelled on request). Lines that are not valid requests go
to the error file with the reason, and the rest of the job goes on. A busy server (429/503) is
waited for, never a failed line.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx
from openai.types import Batch
from openai.types.batch import Errors
from openai.types.batch_error import BatchError
from openai.types.batch_request_counts import BatchRequestCounts
from openai.types.batch_usage import BatchUsage

from labs.api.batch_lines import MAX_LINES, BatchLine, parse_lines
from labs.api.batch_store import UNFINISHED, BatchStore, JobRecord, new_batch_id
from labs.api.file_store import ANYONE, FileStore

logger = logging.getLogger(__name__)

TOKEN_HEADER = "x-labs-batch-token"
OWNER_HEADER = "x-labs-batch-owner"  # the key a job's lines run as (its models, limits and usage); trusted with the token only
_MAX_WAIT_SECONDS = 30.0  # longest pause when the server says it is busy
_SAVE_EVERY_SECONDS = 1.0  # progress counts reach the record at most this often (the result files are the truth)


async def run_lines(app: Any, endpoint: str, todo: deque[BatchLine], token: str, stop: asyncio.Event, concurrency: int,
                    on_result: Callable[[dict[str, Any]], None], owner: str | None = None) -> None:
    """Send `todo`'s lines to `app` in-process, `concurrency` at a time, handing each result to `on_result`,
    until all are done or `stop` is set: the requests then in flight are aborted, not waited for (a job
    that is resumed sends them again)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://labs.batch", timeout=None) as client:
        async def worker() -> None:
            while todo and not stop.is_set():
                result = await send_line(client, endpoint, todo.popleft(), token, stop, owner)
                if result is None:
                    return  # stopped while the server was busy
                on_result(result)

        workers = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, len(todo))))]
        finished = asyncio.gather(*workers)
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([finished, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*workers, stopped):
                task.cancel()
            results = await asyncio.gather(*workers, stopped, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
            raise result


def usage_of(body: Any) -> tuple[int, int, int, int]:
    """(input, output, cached input, reasoning) tokens of one response body, whatever its endpoint."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0, 0, 0
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0
    cached = (usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}).get("cached_tokens", 0) or 0
    reasoning = (usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}).get("reasoning_tokens", 0) or 0
    return prompt, completion, cached, reasoning


async def send_line(client: httpx.AsyncClient, endpoint: str, line: BatchLine, token: str, stop: asyncio.Event,
                    owner: str | None = None) -> dict[str, Any] | None:
    """Send one line to the app behind `client`, as the key `owner` (None: no key), and return its result
    record (OpenAI's batch output line); a busy server, or the key's own rate limit, is waited for as
    long as it asks; None when `stop` is set meanwhile."""
    headers = {TOKEN_HEADER: token} | ({OWNER_HEADER: owner} if owner is not None else {})
    while True:
        response = await client.post(endpoint, json=line.body, headers=headers)
        if response.status_code not in (429, 503):
            break
        try:
            delay = float(response.headers.get("retry-after", "1"))
        except ValueError:
            delay = 1.0
        try:
            await asyncio.wait_for(stop.wait(), timeout=min(max(delay, 0.1), _MAX_WAIT_SECONDS))
            return None
        except asyncio.TimeoutError:
            continue
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text, "type": "server_error", "param": None, "code": None}}
    return {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": line.custom_id,
            "response": {"status_code": response.status_code, "request_id": f"req_{secrets.token_hex(12)}", "body": body},
            "error": None}


class BatchRunner:
    def __init__(self, app: Any, store: BatchStore, files: FileStore, concurrency: int) -> None:
        self.app = app
        self.store = store
        self.files = files
        self.concurrency = max(1, concurrency)
        self.token = secrets.token_urlsafe(32)  # lets this process's own batch requests through, nothing else
        self._live: dict[str, JobRecord] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop: dict[str, asyncio.Event] = {}

    async def start(self) -> None:
        """Resume the jobs a previous run of the server left unfinished."""
        for record in self.store.all():
            if record.batch.status in UNFINISHED:
                logger.info("resuming batch %s (%s)", record.batch.id, record.batch.status)
                self._launch(record)

    async def close(self) -> None:
        """Stop running jobs where they are; the next start resumes them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def create(self, input_file_id: str, endpoint: str, completion_window: str, metadata: dict[str, str] | None,
               owner: str | None) -> Batch:
        batch = Batch(id=new_batch_id(), object="batch", endpoint=endpoint, input_file_id=input_file_id,
                      completion_window=completion_window, status="validating", created_at=int(time.time()),
                      metadata=metadata, request_counts=BatchRequestCounts(total=0, completed=0, failed=0))
        record = JobRecord(batch, owner=owner)
        self.store.save(record)
        self._launch(record)
        return batch

    def _record(self, batch_id: str, owner: object) -> JobRecord | None:
        """The job (live, or as stored) if `owner` (a key's name, None, or ANYONE) may see it."""
        record = self._live.get(batch_id) or self.store.get(batch_id)
        return record if record is not None and (owner is ANYONE or record.owner == owner) else None

    def get(self, batch_id: str, owner: object = ANYONE) -> Batch | None:
        record = self._record(batch_id, owner)
        return record.batch if record is not None else None

    def list(self, owner: object = ANYONE) -> list[Batch]:
        """The jobs `owner` may see, newest first."""
        records = [self._live.get(r.batch.id, r) for r in self.store.all()]
        batches = [r.batch for r in records if owner is ANYONE or r.owner == owner]
        return sorted(batches, key=lambda b: (b.created_at, b.id), reverse=True)

    def reads_file(self, file_id: str) -> bool:
        return any(record.batch.input_file_id == file_id for record in self._live.values())

    def cancel(self, batch_id: str, owner: object = ANYONE) -> Batch | None:
        record = self._record(batch_id, owner)
        if record is None or record.batch.id not in self._live:
            return record.batch if record is not None else None
        if record.batch.status in ("validating", "in_progress"):
            record.batch.status = "cancelling"
            record.batch.cancelling_at = int(time.time())
            self.store.save(record)
            self._stop[batch_id].set()
        return record.batch

    def _launch(self, record: JobRecord) -> None:
        batch_id = record.batch.id
        self._live[batch_id] = record
        self._stop[batch_id] = asyncio.Event()
        if record.batch.status == "cancelling":
            self._stop[batch_id].set()
        task = asyncio.create_task(self._run(record), name=f"batch {batch_id}")
        self._tasks[batch_id] = task

        def forget(_: asyncio.Task[None]) -> None:
            self._tasks.pop(batch_id, None)
            self._stop.pop(batch_id, None)
            if record.batch.status not in UNFINISHED:
                self._live.pop(batch_id, None)

        task.add_done_callback(forget)

    async def _run(self, record: JobRecord) -> None:
        batch = record.batch
        try:
            if batch.status == "validating":
                await self._validate(record)
            if batch.status == "in_progress":
                await self._execute(record)
            if batch.status in ("in_progress", "finalizing"):
                self._finalize(record, "completed")
            elif batch.status == "cancelling":
                self._finalize(record, "cancelled")
        except asyncio.CancelledError:
            self.store.save(record)  # the server is stopping: counts as far as they got; resumed at the next start
            raise
        except Exception as error:  # noqa: BLE001 - a job that cannot go on is failed, with the reason
            logger.exception("batch %s failed", batch.id)
            self._fail(record, "batch_failed", f"the batch stopped: {error}")

    async def _validate(self, record: JobRecord) -> None:
        batch = record.batch
        errors = self.store.errors(batch.id)
        errors.reset()  # a validation cut short by a restart starts again
        self.store.output(batch.id).reset()
        try:
            valid, problems, count = parse_lines(await asyncio.to_thread(self._input_bytes, batch), batch.endpoint)
        except ValueError as error:
            self._fail(record, "invalid_file", str(error))
            return
        if count == 0:
            self._fail(record, "empty_file", "the input file holds no requests (one JSON object per line)")
            return
        if count > MAX_LINES:
            self._fail(record, "too_many_requests", f"the input file holds {count} requests; a batch takes at most {MAX_LINES}")
            return
        for problem in problems:
            errors.append(problem)
        record.validation_errors = len(problems)
        batch.request_counts = BatchRequestCounts(total=count, completed=0, failed=len(problems))
        if batch.status == "validating":  # not cancelled meanwhile
            batch.status = "in_progress"
            batch.in_progress_at = int(time.time())
        self.store.save(record)
        logger.info("batch %s: %d requests to %s (%d refused as invalid)", batch.id, count, batch.endpoint, len(problems))

    def _input_bytes(self, batch: Batch) -> bytes:
        if self.files.get(batch.input_file_id) is None:
            raise ValueError(f"the input file {batch.input_file_id} no longer exists")
        return self.files.data_path(batch.input_file_id).read_bytes()

    async def _execute(self, record: JobRecord) -> None:
        batch, stop = record.batch, self._stop[record.batch.id]
        output, errors = self.store.output(batch.id), self.store.errors(batch.id)
        done_lines, failed_lines = output.lines(), errors.lines()
        done = {line["custom_id"] for line in done_lines} | {line["custom_id"] for line in failed_lines[record.validation_errors:]}
        usage = [0, 0, 0, 0]
        for line in done_lines:
            for index, value in enumerate(usage_of(line["response"]["body"])):
                usage[index] += value
        self._set_usage(batch, usage)
        batch.request_counts = BatchRequestCounts(total=batch.request_counts.total, completed=len(done_lines), failed=len(failed_lines))
        valid, _, _ = parse_lines(await asyncio.to_thread(self._input_bytes, batch), batch.endpoint)
        todo = deque(line for line in valid if line.custom_id not in done)
        last_save = time.monotonic()

        def record_result(result: dict[str, Any]) -> None:
            nonlocal last_save
            counts = batch.request_counts
            if result["response"]["status_code"] < 300:
                output.append(result)
                for index, value in enumerate(usage_of(result["response"]["body"])):
                    usage[index] += value
                self._set_usage(batch, usage)
                batch.request_counts = BatchRequestCounts(total=counts.total, completed=counts.completed + 1, failed=counts.failed)
            else:
                errors.append(result)
                batch.request_counts = BatchRequestCounts(total=counts.total, completed=counts.completed, failed=counts.failed + 1)
            if time.monotonic() - last_save > _SAVE_EVERY_SECONDS:
                self.store.save(record)
                last_save = time.monotonic()

        await run_lines(self.app, batch.endpoint, todo, self.token, stop, self.concurrency, record_result, record.owner)
        if batch.status == "in_progress":
            batch.status = "finalizing"
            batch.finalizing_at = int(time.time())
        self.store.save(record)

    @staticmethod
    def _set_usage(batch: Batch, usage: list[int]) -> None:
        prompt, completion, cached, reasoning = usage
        batch.usage = BatchUsage.model_validate({
            "input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": cached}, "output_tokens_details": {"reasoning_tokens": reasoning}})

    def _finalize(self, record: JobRecord, status: str) -> None:
        """Publish the result files as stored files and close the job. Safe to repeat after a restart:
        the files' ids follow from the batch's, so a second run finds what the first one moved."""
        batch = record.batch
        batch.output_file_id = self._publish(record, "output", self.store.output(batch.id).path)
        batch.error_file_id = self._publish(record, "errors", self.store.errors(batch.id).path)
        batch.status = status  # type: ignore[assignment]
        now = int(time.time())
        if status == "completed":
            batch.completed_at = now
        else:
            batch.cancelled_at = now
        self.store.save(record)
        counts = batch.request_counts
        logger.info("batch %s %s: %d completed, %d failed of %d", batch.id, status, counts.completed, counts.failed, counts.total)

    def _publish(self, record: JobRecord, kind: str, path: Any) -> str | None:
        """A result file as a stored file, owned by the job's owner."""
        batch_id = record.batch.id
        file_id = "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:24]
        published = self.files.adopt(path, f"{batch_id}_{kind}.jsonl", "batch_output", file_id, record.owner)
        return published.id if published is not None else None

    def _fail(self, record: JobRecord, code: str, message: str) -> None:
        batch = record.batch
        batch.status = "failed"
        batch.failed_at = int(time.time())
        batch.errors = Errors(object="list", data=[BatchError(code=code, message=message)])
        self.store.save(record)
        logger.warning("batch %s failed: %s", batch.id, message)
