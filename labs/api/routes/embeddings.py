"""POST /v1/embeddings (OpenAI) and POST /v1/similarities (the original project's matrix endpoint).

Inputs longer than the model's limit are truncated, never refused: the response says which in
the `X-Labs-Truncated-Inputs` header (comma-separated input indexes) and in the extension field
`truncated_inputs`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from labs.api.errors import bad_request
from labs.api.schemas import EmbeddingRequest, SimilarityRequest
from labs.api.security import KeyAccount, admit_request, require_api_key
from labs.api.state import ServerState, get_state
from labs.serving.sampling import Limits
from labs.serving.text import check_text
from labs.serving.checks import check_input_chars
from labs.embeddings.vectors import cosine_similarity_matrix, to_base64, truncate_dimensions

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["Embeddings"])


def _inputs(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(item, int) for item in value):
        return [list(value)]  # one token array
    return list(value)


def _check_count(count: int, limits: Limits, param: str) -> None:
    if count == 0:
        raise bad_request(f"{param} must not be empty", param=param)
    if count > limits.max_embedding_inputs:
        raise bad_request(f"{param} has {count} entries, more than the server's limit of {limits.max_embedding_inputs} "
                          "(LABS_MAX_EMBEDDING_INPUTS)", param=param)


def _truncation_headers(truncated: list[bool]) -> dict[str, str]:
    indexes = [str(i) for i, cut in enumerate(truncated) if cut]
    return {"X-Labs-Truncated-Inputs": ",".join(indexes)} if indexes else {}


@router.post("/v1/embeddings", summary="Embed texts (OpenAI-compatible)")
async def create_embeddings(body: EmbeddingRequest, state: ServerState = Depends(get_state),
                            account: KeyAccount | None = Depends(admit_request)) -> Any:
    state.embeddings.check_model(body.model)
    inputs = _inputs(body.input)
    _check_count(len(inputs), state.limits, "input")
    check_text(inputs, "input")
    check_input_chars(sum(len(item) for item in inputs if isinstance(item, str)), state.limits, "input")
    result = await state.embeddings.embed(inputs, account)
    vectors = result.vectors
    if body.dimensions is not None:
        try:
            vectors = truncate_dimensions(vectors, body.dimensions)
        except ValueError as error:
            raise bad_request(str(error), param="dimensions") from None
    data = [
        {"object": "embedding", "index": i,
         "embedding": to_base64(vector) if body.encoding_format == "base64" else [float(x) for x in vector]}
        for i, vector in enumerate(vectors)
    ]
    tokens = sum(result.token_counts)
    return JSONResponse(
        {"object": "list", "data": data, "model": state.embeddings.model_id,
         "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
         "truncated_inputs": [i for i, cut in enumerate(result.truncated) if cut]},
        headers=_truncation_headers(result.truncated))


@router.post("/v1/similarities", summary="Cosine similarity matrix of texts")
async def similarities(body: SimilarityRequest, state: ServerState = Depends(get_state),
                       account: KeyAccount | None = Depends(admit_request)) -> Any:
    if body.texts is not None and body.sentences is not None:
        raise bad_request("give texts or sentences, not both", param="texts")
    texts = body.texts if body.texts is not None else body.sentences
    if texts is None:
        raise bad_request("texts is required (a list of strings; 'sentences' is accepted too)", param="texts")
    state.embeddings.check_model(body.model)
    _check_count(len(texts), state.limits, "texts")
    check_text(texts, "texts")
    check_input_chars(sum(len(text) for text in texts), state.limits, "texts")
    result = await state.embeddings.embed(texts, account)
    return JSONResponse(
        {"object": "similarities", "model": state.embeddings.model_id, "texts": texts,
         "similarities": cosine_similarity_matrix(result.vectors),
         "usage": {"prompt_tokens": sum(result.token_counts), "total_tokens": sum(result.token_counts)},
         "truncated_inputs": [i for i, cut in enumerate(result.truncated) if cut]},
        headers=_truncation_headers(result.truncated))
