"""OpenAI's Batch API: /v1/files to upload a JSONL of requests and read results, /v1/batches to run them.

Jobs run on this server's engine alongside interactive requests and survive restarts; see
labs.api.batch_runner for how a job runs and labs.api.file_store for where files live.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from labs.api.batch_lines import ENDPOINTS
from labs.api.batch_runner import BatchRunner
from labs.api.errors import APIError, bad_request
from labs.api.file_store import ANYONE, FileStore, FileTooLargeError, page
from labs.api.security import require_api_key
from labs.api.state import ServerState, get_state

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI batches"])


def _files(state: ServerState) -> FileStore:
    return state.batches.files


def _runner(state: ServerState) -> BatchRunner:
    return state.batches


def _owner(request: Request) -> str | None:
    """The name of the calling key: what it creates is its own (None on a server without keys)."""
    caller = getattr(request.state, "caller", None)
    return caller.name if caller is not None else None


def _visible(request: Request) -> object:
    """Whose files and jobs the caller may see: its own on a server with keys, all on one without."""
    caller = getattr(request.state, "caller", None)
    return caller.name if caller is not None else ANYONE


def _file_not_found(file_id: str) -> APIError:
    return APIError(404, f"no file with id {file_id!r} on this server (GET /v1/files lists them)", param="file_id",
                    code="file_not_found")


@router.post("/v1/files", summary="Upload a file (purpose batch: a JSONL of requests)")
async def upload_file(request: Request, file: UploadFile = File(..., description="The file; for batches, one JSON request per line."),
                      purpose: str = Form(..., description="What the file is for: batch."),
                      state: ServerState = Depends(get_state)) -> dict[str, Any]:
    if purpose != "batch":
        raise bad_request(f"labs keeps files for batch jobs only: purpose must be 'batch', got {purpose!r}",
                          param="purpose", code="invalid_purpose")
    try:
        stored = await asyncio.to_thread(_files(state).save, file.file, file.filename or "upload.jsonl", purpose,
                                     _owner(request))
    except FileTooLargeError as error:
        raise APIError(413, str(error), param="file", code="file_too_large") from None
    return stored.model_dump(mode="json")


@router.get("/v1/files", summary="List files")
async def list_files(request: Request, purpose: str | None = None, limit: int = Query(10_000, ge=1, le=10_000), after: str | None = None,
                     order: Literal["asc", "desc"] = "desc", state: ServerState = Depends(get_state)) -> dict[str, Any]:
    files = _files(state).list(purpose, _visible(request))
    return page(files if order == "desc" else files[::-1], after, limit)


@router.get("/v1/files/{file_id}", summary="Describe a file")
async def get_file(file_id: str, request: Request, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    stored = _files(state).get(file_id, _visible(request))
    if stored is None:
        raise _file_not_found(file_id)
    return stored.model_dump(mode="json")


@router.get("/v1/files/{file_id}/content", summary="A file's content", response_class=FileResponse)
async def file_content(file_id: str, request: Request, state: ServerState = Depends(get_state)) -> FileResponse:
    stored = _files(state).get(file_id, _visible(request))
    if stored is None:
        raise _file_not_found(file_id)
    return FileResponse(_files(state).data_path(file_id), media_type="application/octet-stream", filename=stored.filename)


@router.delete("/v1/files/{file_id}", summary="Delete a file")
async def delete_file(file_id: str, request: Request, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    if _files(state).get(file_id, _visible(request)) is None:
        raise _file_not_found(file_id)
    if _runner(state).reads_file(file_id):
        raise APIError(409, f"the file {file_id} is the input of a batch that is still running: cancel it first "
                            "(POST /v1/batches/{id}/cancel) or wait for it to finish", param="file_id", code="file_in_use")
    _files(state).delete(file_id, _visible(request))
    return {"id": file_id, "object": "file", "deleted": True}


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(min_length=1, description="A file uploaded with purpose batch.")
    endpoint: str = Field(description=f"Where every line goes: one of {', '.join(ENDPOINTS)}.")
    completion_window: str = Field(description="24h (jobs here run until done).")
    metadata: dict[str, str] | None = Field(None, max_length=16)


@router.post("/v1/batches", summary="Run the requests of a file as a batch job")
async def create_batch(body: CreateBatch, request: Request, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    if body.endpoint not in ENDPOINTS:
        raise bad_request(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {body.endpoint!r}", param="endpoint",
                          code="invalid_endpoint")
    if body.completion_window != "24h":
        raise bad_request(f"completion_window must be '24h', got {body.completion_window!r}", param="completion_window",
                          code="invalid_completion_window")
    stored = _files(state).get(body.input_file_id, _visible(request))
    if stored is None:
        raise bad_request(f"no file with id {body.input_file_id!r} on this server: upload it with POST /v1/files "
                          "(purpose batch) first", param="input_file_id", code="file_not_found")
    if stored.purpose != "batch":
        raise bad_request(f"the file {body.input_file_id} has purpose {stored.purpose!r}; a batch reads files uploaded "
                          "with purpose 'batch'", param="input_file_id", code="invalid_purpose")
    batch = _runner(state).create(body.input_file_id, body.endpoint, body.completion_window, body.metadata, _owner(request))
    return batch.model_dump(mode="json")


def _batch_not_found(batch_id: str) -> APIError:
    return APIError(404, f"no batch with id {batch_id!r} on this server (GET /v1/batches lists them)", param="batch_id",
                    code="batch_not_found")


@router.get("/v1/batches", summary="List batch jobs, newest first")
async def list_batches(request: Request, limit: int = Query(20, ge=1, le=100), after: str | None = None,
                       state: ServerState = Depends(get_state)) -> dict[str, Any]:
    return page(_runner(state).list(_visible(request)), after, limit)


@router.get("/v1/batches/{batch_id}", summary="A batch job's status and counts")
async def get_batch(batch_id: str, request: Request, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    batch = _runner(state).get(batch_id, _visible(request))
    if batch is None:
        raise _batch_not_found(batch_id)
    return batch.model_dump(mode="json")


@router.post("/v1/batches/{batch_id}/cancel", summary="Cancel a batch job (what finished stays in its output file)")
async def cancel_batch(batch_id: str, request: Request, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    batch = _runner(state).cancel(batch_id, _visible(request))
    if batch is None:
        raise _batch_not_found(batch_id)
    if batch.status in ("completed", "failed", "expired"):
        raise APIError(409, f"the batch {batch_id} has already {batch.status}; only a running batch can be cancelled",
                       param="batch_id", code="batch_finished")
    return batch.model_dump(mode="json")
