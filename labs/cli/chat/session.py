"""The conversation's state: history, system message, sampling parameters, display flags, totals."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from labs.cli.chat.backends import TurnStats
from labs.cli.chat.commands import SETTABLE
from labs.cli.chat.storage import Conversation, now_iso
from labs.serving.sampling import SamplingParams, SamplingParamsError


@dataclass
class Totals:
    turns: int = 0
    from_data: int = 0
    from_documents: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0
    stopped: int = 0

    def add(self, stats: TurnStats) -> None:
        self.turns += 1
        self.from_data += stats.source not in ("model", "documents")
        self.from_documents += stats.source == "documents"
        self.completion_tokens += stats.completion_tokens
        self.prompt_tokens += stats.prompt_tokens
        self.seconds += stats.seconds
        self.stopped += stats.finish_reason == "abort"


@dataclass
class ChatSession:
    model: str
    params: SamplingParams
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)  # user/assistant turns
    think: bool = True
    docs: bool = False  # answer from the user's document index (/docs on|off)
    totals: Totals = field(default_factory=Totals)
    created: str = field(default_factory=now_iso)
    name: str | None = None  # the name it was saved or loaded under

    def reset(self) -> None:
        self.history.clear()
        self.created = now_iso()
        self.name = None

    def parameters(self) -> dict[str, Any]:
        return {name: getattr(self.params, name) for name in SETTABLE}

    def to_conversation(self) -> Conversation:
        return Conversation(model=self.model, messages=[dict(m) for m in self.history], system=self.system,
                            parameters=self.parameters(), created=self.created, name=self.name)

    def restore(self, conversation: Conversation) -> list[str]:
        """Take a loaded conversation's history, system and parameters; returns warnings."""
        warnings: list[str] = []
        self.history = [m for m in conversation.messages if m["role"] != "system"]
        systems = [m["content"] for m in conversation.messages if m["role"] == "system"]
        self.system = conversation.system if conversation.system is not None else (systems[0] if systems else None)
        known = {k: v for k, v in conversation.parameters.items() if k in SETTABLE}
        try:
            self.params = dataclasses.replace(self.params, **known)
        except (SamplingParamsError, TypeError) as error:
            warnings.append(f"kept the current parameters: the saved ones are invalid ({error})")
        self.created = conversation.created
        self.name = conversation.name
        return warnings
