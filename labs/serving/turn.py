"""One protocol-neutral chat turn: what every adapter (OpenAI, Responses, Messages, Ollama, CLI) parses into.

Messages are kept in the OpenAI chat shape the chat templates and tool code already speak:
`{"role", "content": str, "tool_calls": [...], "tool_call_id": ...}`. A field left as None
means "not given": the sampling builder fills it from the layered defaults.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from labs.engine.guided import GuidedDecoding


class Priority(enum.IntEnum):
    """Who goes first when the engine is full: interactive requests, then low-priority clients, then batch
    jobs, which take the capacity that is left and give it back when more urgent work arrives."""

    INTERACTIVE = 0
    LOW = 1
    BATCH = 2


@dataclass
class RequestedSampling:
    """Sampling fields exactly as the request gave them (None = not given)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = None
    n: int | None = None
    logprobs: int | None = None  # top alternatives per token; None = no logprobs
    do_sample: bool | None = None  # HF spelling: False means greedy whatever the temperature
    max_tokens_param: str = "max_tokens"  # how this protocol names it, for error messages


@dataclass
class Turn:
    """A request for one answer: the conversation, how to sample, and where answers may come from."""

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None  # a bare prompt (simple API, labs-gen --prompt): a user message
    raw: str | list[int] | None = None  # text or token ids fed as they are, no chat template (legacy completions)
    system: str | None = None  # a system prompt to add when the messages have none
    model: str | None = None
    sampling: RequestedSampling = field(default_factory=RequestedSampling)
    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI function tools
    tool_choice: Any = None  # None, "none", "auto", "required" or {"type": "function", "function": {"name"}}
    guided: GuidedDecoding | None = None  # the grammar the output must follow (response format)
    use_data: bool | None = None  # answer from the transactions / documents; None = the server's default
    use_docs: bool = False  # retrieve from the document index (with sources)
    docs_top_k: int | None = None
    docs_score_threshold: float | None = None
    reasoning: bool | None = None  # split a reasoning model's thinking out; None = the server's default
    fit_history: bool = False  # drop the oldest messages that do not fit the context (chat UIs)
    id_prefix: str = "chatcmpl"
    priority: Priority = Priority.INTERACTIVE
    messages_param: str = "messages"  # how this protocol names the conversation, for error messages

    @property
    def question(self) -> str | None:
        """The user's last message when it is plain text (what data and document answers look at)."""
        if self.raw is not None:
            return None
        if self.messages is None:
            return self.prompt
        last = self.messages[-1] if self.messages else None
        if last and last.get("role") == "user" and isinstance(last.get("content"), str):
            return last["content"]
        return None
