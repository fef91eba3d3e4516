"""Retrieval over the user's own data.

- POST /v1/rag/transactions/query: exact answers from the transactions table.
- POST /v1/rag/documents (multipart upload of one or more `file` fields, or JSON `{"path"}` /
  `{"paths"}` under LABS_RAG_INGEST_ROOT), GET /v1/rag/documents, DELETE /v1/rag/documents/{id}.
- POST /v1/rag/query: retrieve chunks, let the model answer from them, return the sources. The
  stream sends the sources first (`data: {"sources": [...]}`), then `data: {"delta": "..."}`
  events, then `data: {"finish_reason", "usage"}` and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from labs.api.errors import APIError, bad_request
from labs.api.running import prioritized, until_disconnected
from labs.api.schemas import DocumentsQueryRequest, TransactionsQueryRequest
from labs.api.security import KeyAccount, admit_request, require_api_key
from labs.api.sse import data_event, event_stream_response, openai_stream
from labs.api.state import ServerState, get_state
from labs.serving.events import Finish, Sources, TextDelta, Usage
from labs.serving.text import check_text
from labs.serving.turn import RequestedSampling, Turn
from labs.serving.checks import check_input_chars
from labs.serving.turns import TurnEvents, collect

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["Retrieval"])

_UPLOAD_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "application/json": {"schema": {"type": "object", "properties": {
                "path": {"type": "string"}, "paths": {"type": "array", "items": {"type": "string"}}}}},
        }
    }
}


def _question(body: Any, state: ServerState) -> str:
    question = body.question if body.question is not None else body.query
    if not question or not question.strip():
        raise bad_request("question is required (a non-empty string; 'query' is accepted too)", param="question")
    check_text(question, "question")
    check_input_chars(len(question), state.limits, "question")
    return question


@router.post("/v1/rag/transactions/query", summary="Answer a question exactly from the transactions table",
             dependencies=[Depends(admit_request)])
async def transactions_query(body: TransactionsQueryRequest, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    answer = await asyncio.to_thread(state.transactions.query, _question(body, state))
    return {"answer": answer.answer, "data": answer.data, "kind": answer.kind, "source": answer.source}


@router.post("/v1/rag/documents", summary="Add documents (upload files, or paths under LABS_RAG_INGEST_ROOT)",
             openapi_extra=_UPLOAD_BODY, dependencies=[Depends(admit_request)])
async def add_documents(request: Request, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    model = await state.embeddings.model()
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        uploads = [item for key in ("file", "files") for item in form.getlist(key) if hasattr(item, "read")]
        if not uploads:
            raise bad_request("the form has no 'file' field: send the documents as file fields named 'file'", param="file")
        results = []
        for upload in uploads:
            data = await upload.read()
            report = await asyncio.to_thread(
                lambda data=data, name=upload.filename or "upload": state.documents.index(model).ingest_bytes(data, name))
            results.extend(item.to_dict() for item in report.files)
        return {"files": results}
    # decoded here, not by json.loads(bytes): that guesses UTF-16/32 and fails with UnicodeDecodeError (a 500)
    try:
        body = json.loads((await request.body()).decode("utf-8") or "{}")
    except UnicodeDecodeError:
        raise bad_request("the request body must be UTF-8 JSON (or multipart/form-data with 'file' fields)") from None
    except json.JSONDecodeError as error:
        raise bad_request(f"the request body is not valid JSON ({error.msg})") from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply") from None
    check_text(body, "path")
    paths = body.get("paths") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(body.get("path"), str):
        paths = [body["path"]]
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise bad_request("send files as multipart 'file' fields, or JSON {\"path\": ...} / {\"paths\": [...]}", param="path")
    resolved = [state.documents.check_ingest_path(p) for p in paths]
    report = await asyncio.to_thread(state.documents.ingest, model, resolved)
    return {"files": [item.to_dict() for item in report.files]}


@router.get("/v1/rag/documents", summary="List the indexed documents")
async def list_documents(state: ServerState = Depends(get_state)) -> dict[str, Any]:
    model = await state.embeddings.model()
    documents = await asyncio.to_thread(lambda: state.documents.index(model).list_documents())
    return {"object": "list", "data": [document.to_dict() for document in documents]}


@router.delete("/v1/rag/documents/{document_id:path}", summary="Remove a document and its chunks")
async def delete_document(document_id: str, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    model = await state.embeddings.model()
    deleted = await asyncio.to_thread(lambda: state.documents.index(model).delete(document_id))
    if not deleted:
        raise APIError(404, f"no document with id {document_id!r}; GET /v1/rag/documents lists them",
                       param="document_id", code="document_not_found")
    return {"id": document_id, "deleted": True}


@router.post("/v1/rag/query", summary="Answer from the documents, with sources")
async def documents_query(body: DocumentsQueryRequest, request: Request, state: ServerState = Depends(get_state),
                          account: KeyAccount | None = Depends(admit_request)) -> Any:
    turn = Turn(prompt=_question(body, state), model=body.model, use_data=False, use_docs=True,
                docs_top_k=body.top_k, docs_score_threshold=body.score_threshold, id_prefix="rag",
                messages_param="question",
                sampling=RequestedSampling(max_tokens=body.max_tokens, temperature=body.temperature, seed=body.seed))
    events = await state.serving.open_turn(prioritized(request, turn), account)
    if body.stream:
        return event_stream_response(openai_stream(_stream(events, body.include_sources)))
    try:
        result = await until_disconnected(request, collect(events))
    finally:
        await events.aclose()
    sample = result.samples[0]
    sources = result.sources.data if result.sources is not None and body.include_sources else []
    return JSONResponse({
        "answer": sample.text, "sources": sources, "source": "documents", "model": result.model,
        "finish_reason": sample.finish_reason,
        "usage": {"prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens,
                  "total_tokens": result.usage.total_tokens},
    })


async def _stream(events: TurnEvents, include_sources: bool) -> AsyncIterator[str]:
    started = events.started
    finish = None
    try:
        async for event in events:
            if isinstance(event, Sources):
                yield data_event({"id": started.id, "sources": event.data if include_sources else [],
                                  "source": "documents", "model": started.model})
            elif isinstance(event, TextDelta) and event.text:
                yield data_event({"delta": event.text})
            elif isinstance(event, Finish):
                finish = event.reason
            elif isinstance(event, Usage):
                yield data_event({"finish_reason": finish,
                                  "usage": {"prompt_tokens": event.prompt_tokens,
                                            "completion_tokens": event.completion_tokens,
                                            "total_tokens": event.total_tokens}})
    finally:
        await events.aclose()
