"""Retrieval over the user's own data: POST /v1/rag/transactions/query (exact answers from the table)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from labs.api.errors import bad_request
from labs.api.schemas import TransactionsQueryRequest
from labs.api.security import require_api_key
from labs.api.state import ServerState, get_state
from labs.api.translate import check_input_chars

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["Retrieval"])


@router.post("/v1/rag/transactions/query", summary="Answer a question exactly from the transactions table")
async def transactions_query(body: TransactionsQueryRequest, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    question = body.question if body.question is not None else body.query
    if not question or not question.strip():
        raise bad_request("question is required (a non-empty string; 'query' is accepted too)", param="question")
    check_input_chars(len(question), state.limits, "question")
    answer = await asyncio.to_thread(state.transactions.query, question)
    return {"answer": answer.answer, "data": answer.data, "kind": answer.kind, "source": answer.source}
