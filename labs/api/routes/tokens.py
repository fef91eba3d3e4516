"""POST /v1/tokenize and /v1/detokenize (vLLM's shapes): count and inspect tokens before sending."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from labs.api.errors import bad_request
from labs.api.schemas import DetokenizeRequest, TokenizeRequest
from labs.api.security import KeyAccount, caller_account, require_api_key
from labs.api.state import ServerState, get_state
from labs.serving.turn import Turn

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["Tokens"])


@router.post("/v1/tokenize", summary="Text or chat messages to token ids")
async def tokenize(body: TokenizeRequest, state: ServerState = Depends(get_state),
                   account: KeyAccount | None = Depends(caller_account)) -> dict[str, Any]:
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give either prompt or messages", param="prompt")
    messages = [m.model_dump(exclude_none=True) for m in body.messages] if body.messages is not None else None
    turn = Turn(prompt=body.prompt, messages=messages, model=body.model,
                messages_param="prompt" if body.prompt is not None else "messages")
    counted = await state.serving.tokenize(turn, add_special_tokens=body.add_special_tokens,
                                           add_generation_prompt=body.add_generation_prompt, account=account)
    return {"model": counted.model, "tokens": counted.ids, "count": len(counted.ids),
            "max_model_len": counted.context_length}


@router.post("/v1/detokenize", summary="Token ids to text")
async def detokenize(body: DetokenizeRequest, state: ServerState = Depends(get_state),
                     account: KeyAccount | None = Depends(caller_account)) -> dict[str, Any]:
    state.serving.model_for(account, body.model)
    async with state.models.use(body.model) as served:
        vocab = len(served.tokenizer)
        bad = [token for token in body.tokens if not 0 <= token < vocab]
        if bad:
            raise bad_request(f"token id {bad[0]} is outside {served.id}'s vocabulary (0..{vocab - 1})", param="tokens")
        return {"model": served.id, "prompt": served.tokenizer.decode(body.tokens)}
