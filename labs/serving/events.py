"""What one turn yields, in order, whatever the protocol: each adapter renders these.

    Started -> [Sources] -> (ReasoningDelta | TextDelta | ToolCalls | Notice)* -> Finish per sample -> Usage

A non-streaming answer is the same events collected (see `collect_turn`). Errors are raised, not
yielded: before `Started` they are the request's fault or the server's (a status code); after it,
the adapter reports them in-band as its protocol does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labs.serving.tools import ToolCall


@dataclass(frozen=True)
class Started:
    id: str
    model: str
    created: int
    n: int = 1  # samples that follow, indexed 0..n-1
    token_text: Callable[[int], str] | None = None  # a token id's text, for logprobs (None: no model ran)
    prompt_tokens: int = 0  # the prompt's length, known before generation (the cache hit is not yet)


@dataclass(frozen=True)
class Sources:
    """Where the answer comes from: "transactions" (exact, from the data) or "documents" (retrieved)."""

    source: str
    kind: str | None = None  # the data answer's kind (largest_expense, ...) for transactions
    data: Any = None  # the figures and rows for transactions, the cited passages for documents


@dataclass(frozen=True)
class ReasoningDelta:
    index: int
    text: str


@dataclass(frozen=True)
class TextDelta:
    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] | None = None
    top_logprobs: list[list[tuple[int, float]] | None] | None = None


@dataclass(frozen=True)
class ToolCalls:
    """A sample ended in calls: they are known only once it ends (its text is held until then)."""

    index: int
    calls: list[ToolCall]


@dataclass(frozen=True)
class Notice:
    """Something the user should know about the turn (e.g. history dropped to fit the context)."""

    text: str
    dropped: int = 0  # oldest messages left out of the prompt (a chat forgets them for good)


@dataclass(frozen=True)
class Finish:
    index: int
    reason: str  # stop, length, tool_calls, abort
    stop_reason: str | int | None = None  # the stop string or token id that ended it


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


Event = Started | Sources | ReasoningDelta | TextDelta | ToolCalls | Notice | Finish | Usage
