"""GET /v1/models and /v1/models/{id}: the chat models this server offers, and its embedding model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from labs.api.errors import APIError
from labs.api.security import require_api_key
from labs.api.state import ServerState, get_state

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI"])


def _cards(state: ServerState) -> list[dict[str, Any]]:
    cards = []
    for model_id in state.models.available_ids():
        served = state.models.loaded(model_id)
        cards.append({
            "id": model_id, "object": "model", "created": int(served.loaded_at) if served else 0, "owned_by": "labs",
            "type": "chat", "loaded": served is not None,
            "context_length": served.context_length if served else None,
        })
    embeddings = state.embeddings
    cards.append({"id": embeddings.model_id, "object": "model", "created": int(embeddings.loaded_at or 0),
                  "owned_by": "labs", "type": "embedding", "loaded": embeddings.loaded,
                  "dimensions": embeddings.dimension})
    return cards


@router.get("/v1/models", summary="List models")
async def list_models(state: ServerState = Depends(get_state)) -> dict[str, Any]:
    return {"object": "list", "data": _cards(state)}


@router.get("/v1/models/{model_id:path}", summary="Describe one model")
async def get_model(model_id: str, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    for card in _cards(state):
        if card["id"] == model_id:
            return card
    available = [card["id"] for card in _cards(state)]
    raise APIError(404, f"the model {model_id!r} does not exist on this server; available models: {', '.join(available)}",
                   param="model", code="model_not_found")
