"""GET /v1/models and /v1/models/{id}: the chat models this server offers (LoRA adapters with their
base as `parent`), and its embedding model; POST /v1/load_lora_adapter and /v1/unload_lora_adapter
(vLLM's names and bodies) where the server allows adapters to be loaded at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from labs.api.errors import APIError, bad_request
from labs.api.security import KeyAccount, caller_account, require_api_key
from labs.api.state import ServerState, get_state
from labs.serving.errors import AdapterError, EngineRequestError
from labs.serving.models import AdapterNameTakenError

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI"])


def _cards(state: ServerState, account: KeyAccount | None) -> list[dict[str, Any]]:
    """The models the caller may use (all of them when the server has no keys)."""
    cards = []
    for model_id in state.models.available_ids():
        adapter = state.models.adapter(model_id)
        served = state.models.loaded(adapter.base_id if adapter else model_id)
        card = {
            "id": model_id, "object": "model", "created": int(served.loaded_at) if served else 0, "owned_by": "labs",
            "type": "chat", "loaded": served is not None,
            "context_length": served.context_length if served else None,
        }
        if adapter is not None:
            card |= {"type": "lora", "parent": adapter.base_id, "loaded": served is not None and model_id in served.engine.adapters()}
        cards.append(card)
    return [card for card in [*cards, _embedding_card(state)] if account is None or account.allows(card["id"])]


def _embedding_card(state: ServerState) -> dict[str, Any]:
    embeddings = state.embeddings
    return {"id": embeddings.model_id, "object": "model", "created": int(embeddings.loaded_at or 0),
            "owned_by": "labs", "type": "embedding", "loaded": embeddings.loaded, "dimensions": embeddings.dimension}


@router.get("/v1/models", summary="List models")
async def list_models(state: ServerState = Depends(get_state),
                      account: KeyAccount | None = Depends(caller_account)) -> dict[str, Any]:
    return {"object": "list", "data": _cards(state, account)}


@router.get("/v1/models/{model_id:path}", summary="Describe one model")
async def get_model(model_id: str, state: ServerState = Depends(get_state),
                    account: KeyAccount | None = Depends(caller_account)) -> dict[str, Any]:
    cards = _cards(state, account)
    for card in cards:
        if card["id"] == model_id:
            return card
    available = [card["id"] for card in cards]
    raise APIError(404, f"the model {model_id!r} does not exist on this server; available models: {', '.join(available)}",
                   param="model", code="model_not_found")


class LoadLoraAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=200, description="The model id requests will use for the adapter.")
    lora_path: str = Field(min_length=1, description="A PEFT LoRA adapter folder on the server.")
    base_model_name: str | None = Field(None, description="The model it applies to (default: the server's default model).")


class UnloadLoraAdapter(BaseModel):
    model_config = ConfigDict(extra="ignore")  # vLLM's clients may send lora_int_id too
    lora_name: str = Field(min_length=1)


def _require_runtime_lora(state: ServerState) -> None:
    if not state.settings.server.allow_runtime_lora:
        raise APIError(403, "loading adapters at run time is off on this server: set LABS_ALLOW_RUNTIME_LORA=true "
                            "(server.allow_runtime_lora), or name adapters in [models] of labs.toml",
                       type="permission_error", code="runtime_lora_disabled")


@router.post("/v1/load_lora_adapter", summary="Load a LoRA adapter as a model")
async def load_lora_adapter(body: LoadLoraAdapter, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    _require_runtime_lora(state)
    try:
        entry = await state.models.load_adapter(body.lora_name, Path(body.lora_path).expanduser(), body.base_model_name)
    except AdapterNameTakenError as error:
        raise APIError(409, str(error), param="lora_name", code="model_exists") from None
    except AdapterError as error:
        raise bad_request(str(error), param="lora_path", code="invalid_adapter") from None
    except EngineRequestError as error:
        raise APIError(409, str(error), param="lora_name", code="adapter_conflict") from None
    return {"id": body.lora_name, "object": "model", "type": "lora", "parent": entry.base_id, "root": str(entry.path), "loaded": True}


@router.post("/v1/unload_lora_adapter", summary="Unload a LoRA adapter")
async def unload_lora_adapter(body: UnloadLoraAdapter, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    _require_runtime_lora(state)
    if state.models.adapter(body.lora_name) is None:
        raise APIError(404, f"no adapter named {body.lora_name!r} is served here", param="lora_name", code="model_not_found")
    try:
        await state.models.unload_adapter(body.lora_name)
    except EngineRequestError as error:
        raise APIError(409, str(error), param="lora_name", code="adapter_in_use") from None
    return {"id": body.lora_name, "object": "model", "deleted": True}
