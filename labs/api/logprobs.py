"""Token log-probabilities in the OpenAI shapes (chat's `content` list and legacy completions')."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

TokenText = Callable[[int], str]  # a token id's text (Started.token_text)


class _HasLogprobs(Protocol):
    logprobs: list[float | None] | None
    top_logprobs: list[list[tuple[int, float]] | None] | None


def _token_ids(item: Any) -> list[int]:
    return list(getattr(item, "new_token_ids", None) or getattr(item, "token_ids", []))


def _finite(value: float | None) -> float:
    """JSON has no -inf: a token the sampler could never pick gets the lowest finite float."""
    if value is None or math.isnan(value):
        return -9999.0
    return max(value, -9999.0)


def _entry(token_text: TokenText, token_id: int, logprob: float | None) -> dict[str, Any]:
    text = token_text(token_id)
    return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode("utf-8"))}


def chat_logprobs_content(token_text: TokenText, item: _HasLogprobs) -> list[dict[str, Any]]:
    ids = _token_ids(item)
    logprobs = item.logprobs or [None] * len(ids)
    tops = item.top_logprobs or [None] * len(ids)
    content = []
    for token_id, logprob, top in zip(ids, logprobs, tops):
        entry = _entry(token_text, token_id, logprob)
        entry["top_logprobs"] = [_entry(token_text, alt, alt_lp) for alt, alt_lp in (top or [])]
        content.append(entry)
    return content


def completion_logprobs(token_text: TokenText, item: _HasLogprobs, text_offset: int) -> dict[str, Any]:
    """Legacy completions: parallel lists of tokens, their logprobs, top alternatives and offsets."""
    ids = _token_ids(item)
    logprobs = item.logprobs or [None] * len(ids)
    tops = item.top_logprobs or [None] * len(ids)
    tokens, offsets, top_maps = [], [], []
    offset = text_offset
    for token_id, top in zip(ids, tops):
        text = token_text(token_id)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        top_maps.append({token_text(alt): _finite(lp) for alt, lp in (top or [])})
    return {"tokens": tokens, "token_logprobs": [_finite(lp) for lp in logprobs], "top_logprobs": top_maps,
            "text_offset": offsets}
