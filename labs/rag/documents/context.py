"""Retrieved chunks -> chat messages with numbered sources, and the sources for an API response.

Why a character budget: the default chat model (SmolLM2-135M) has an 8k-token context and
follows short prompts far better than long ones, so sources are added best first until the
next one would pass `char_budget` (~4 characters a token). `build_rag_messages` and
`sources_payload` pick the same hits for the same budget, so [n] in the answer is entry n of
the payload.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from labs.rag.documents.records import Hit, make_snippet

DEFAULT_CONTEXT_CHARS = 3000  # ~750 tokens of sources
DEFAULT_RAG_SYSTEM = (
    "Answer the question using only the numbered sources. Cite the sources you use by number, like [1] or [2]. "
    "If the sources do not contain the answer, say that you do not know."
)
_MIN_FIRST_SOURCE = 200  # the best hit is cut to fit rather than dropped, if at least this much fits


def select_context(hits: Sequence[Hit], char_budget: int = DEFAULT_CONTEXT_CHARS) -> list[Hit]:
    """The hits that fit the budget, best first; stops at the first that does not fit.

    Identical chunk texts (the same passage in two files) are kept once. If even the best hit
    is over the budget it is cut to fit, so a question never goes without its best source.
    """
    chosen: list[Hit] = []
    seen: set[str] = set()
    used = 0
    for hit in hits:
        key = " ".join(hit.text.split())
        if key in seen:
            continue
        size = len(_source_block(len(chosen) + 1, hit))
        if used + size > char_budget:
            room = char_budget - used - (size - len(hit.text)) - 1
            if not chosen and room >= min(_MIN_FIRST_SOURCE, len(hit.text)):
                cut = hit.text[:room].rsplit(" ", 1)[0] if " " in hit.text[:room] else hit.text[:room]
                chosen.append(dataclasses.replace(hit, text=cut + "…", snippet=make_snippet(cut)))
            break
        chosen.append(hit)
        seen.add(key)
        used += size + 2  # the blank line between sources
    return chosen


def build_rag_messages(
    question: str, hits: Sequence[Hit], system: str | None = None, char_budget: int = DEFAULT_CONTEXT_CHARS
) -> list[dict[str, str]]:
    """Chat messages asking the model to answer `question` from the hits, citing [n].

    `system` replaces the default instructions; the sources and the question always go in the
    user message (small models attend to it more than to the system prompt).
    """
    chosen = select_context(hits, char_budget)
    if chosen:
        sources = "\n\n".join(_source_block(number, hit) for number, hit in enumerate(chosen, start=1))
        user = (
            f"Sources:\n\n{sources}\n\nQuestion: {question.strip()}\n\n"
            "Answer only from the sources above and cite them by number, like [1]."
        )
    else:
        user = f"Sources: none found.\n\nQuestion: {question.strip()}\n\nNo source covers this question: say that you do not know."
    return [{"role": "system", "content": system or DEFAULT_RAG_SYSTEM}, {"role": "user", "content": user}]


def sources_payload(hits: Sequence[Hit], char_budget: int = DEFAULT_CONTEXT_CHARS) -> list[dict[str, Any]]:
    """JSON-ready sources, numbered as in `build_rag_messages` with the same budget."""
    return [
        {
            "id": number,
            "document_id": hit.document_id,
            "document": hit.title,
            "source": hit.source,
            "chunk": hit.chunk_index,
            "page": hit.page,
            "score": round(hit.score, 4),
            "snippet": hit.snippet,
            "text": hit.text,  # the whole passage the model was given, for a reader to open
        }
        for number, hit in enumerate(select_context(hits, char_budget), start=1)
    ]


def _source_block(number: int, hit: Hit) -> str:
    where = f", page {hit.page}" if hit.page else ""
    return f"[{number}] {hit.title}{where}\n{hit.text}"
