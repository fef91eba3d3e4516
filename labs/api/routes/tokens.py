"""POST /v1/tokenize and /v1/detokenize (vLLM's shapes): count and inspect tokens before sending."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from labs.api.errors import bad_request
from labs.api.schemas import DetokenizeRequest, TokenizeRequest
from labs.api.security import require_api_key
from labs.api.state import ServerState, get_state
from labs.api.translate import check_input_chars, check_messages
from labs.models.prompting import prompt_token_ids

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["Tokens"])


@router.post("/v1/tokenize", summary="Text or chat messages to token ids")
async def tokenize(body: TokenizeRequest, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give either prompt or messages", param="prompt")
    async with state.models.use(body.model) as served:
        if body.prompt is not None:
            check_input_chars(len(body.prompt), state.limits, "prompt")
            ids = list(served.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)["input_ids"])
        else:
            generation = state.settings.generation
            ids = prompt_token_ids(served.tokenizer, messages=check_messages(body.messages, state.limits),
                                   system=generation.system_prompt, use_chat_template=generation.use_chat_template,
                                   add_generation_prompt=body.add_generation_prompt)
        return {"model": served.id, "tokens": ids, "count": len(ids), "max_model_len": served.context_length}


@router.post("/v1/detokenize", summary="Token ids to text")
async def detokenize(body: DetokenizeRequest, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    async with state.models.use(body.model) as served:
        vocab = len(served.tokenizer)
        bad = [token for token in body.tokens if not 0 <= token < vocab]
        if bad:
            raise bad_request(f"token id {bad[0]} is outside {served.id}'s vocabulary (0..{vocab - 1})", param="tokens")
        return {"model": served.id, "prompt": served.tokenizer.decode(body.tokens)}
