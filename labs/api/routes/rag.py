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
from labs.api.running import collect_outputs, finish_error, new_id, stream_outputs, until_disconnected
from labs.api.schemas import DocumentsQueryRequest, TransactionsQueryRequest
from labs.api.security import require_api_key
from labs.api.sse import data_event, event_stream_response, openai_stream
from labs.api.state import ServerState, get_state
from labs.api.translate import chat_prompt_ids, check_input_chars, check_max_tokens_fit, context_room
from labs.engine.sampling import SamplingParams

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
    check_input_chars(len(question), state.limits, "question")
    return question


@router.post("/v1/rag/transactions/query", summary="Answer a question exactly from the transactions table")
async def transactions_query(body: TransactionsQueryRequest, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    answer = await asyncio.to_thread(state.transactions.query, _question(body, state))
    return {"answer": answer.answer, "data": answer.data, "kind": answer.kind, "source": answer.source}


@router.post("/v1/rag/documents", summary="Add documents (upload files, or paths under LABS_RAG_INGEST_ROOT)",
             openapi_extra=_UPLOAD_BODY)
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
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError as error:
        raise bad_request(f"the request body is not valid JSON ({error.msg})") from None
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
async def documents_query(body: DocumentsQueryRequest, request: Request, state: ServerState = Depends(get_state)) -> Any:
    question = _question(body, state)
    model = await state.embeddings.model()
    hits = await asyncio.to_thread(state.documents.search, model, question, body.top_k, body.score_threshold)
    served = await state.models.acquire(body.model)
    try:
        answer_tokens = body.max_tokens or min(state.settings.generation.max_new_tokens, served.context_length // 4)
        messages, sources = state.documents.messages(question, hits, served.context_length, answer_tokens)
        sources = sources if body.include_sources else []
        prompt_ids = chat_prompt_ids(served, messages, state.settings)
        room = context_room(served, prompt_ids, "question")
        check_max_tokens_fit(served, prompt_ids, body.max_tokens, "max_tokens")
        generation = state.settings.generation
        params = SamplingParams(
            max_tokens=body.max_tokens or max(1, min(generation.max_new_tokens, state.limits.max_tokens, room)),
            temperature=body.temperature if body.temperature is not None else 0.0,  # answers from sources: no invention
            seed=body.seed,
        )
        request_id = new_id("rag")
        if body.stream:
            return event_stream_response(openai_stream(_stream(state, served, prompt_ids, params, request_id, sources)))
        collected = await until_disconnected(request, collect_outputs(served, prompt_ids, params, request_id, state.metrics))
    except BaseException:
        state.models.release(served)
        raise
    state.models.release(served)
    sample = collected.samples[0]
    return JSONResponse({
        "answer": sample.text, "sources": sources, "source": "documents", "model": served.id,
        "finish_reason": sample.finish_reason,
        "usage": {"prompt_tokens": collected.prompt_tokens, "completion_tokens": collected.completion_tokens,
                  "total_tokens": collected.prompt_tokens + collected.completion_tokens},
    })


async def _stream(state: ServerState, served: Any, prompt_ids: list[int], params: SamplingParams, request_id: str,
                  sources: list[dict[str, Any]]) -> AsyncIterator[str]:
    outputs = stream_outputs(served, prompt_ids, params, request_id, state.metrics)
    tokens = 0
    try:
        yield data_event({"id": request_id, "sources": sources, "source": "documents", "model": served.id})
        async for out in outputs:
            tokens += len(out.new_token_ids)
            if out.finished and (error := finish_error(out)) is not None:
                raise error
            if out.text_delta:
                yield data_event({"delta": out.text_delta})
            if out.finished:
                yield data_event({"finish_reason": out.finish_reason,
                                  "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": tokens,
                                            "total_tokens": len(prompt_ids) + tokens}})
    finally:
        await outputs.aclose()
        state.models.release(served)
