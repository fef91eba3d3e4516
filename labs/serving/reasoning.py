"""Split a reasoning model's thinking (``<think> ... </think>``) from its answer.

Reasoning models such as DeepSeek-R1 and Qwen3 write their chain of thought between tags before
the answer. The OpenAI-style API sends the thinking as ``reasoning_content`` and only the answer
as ``content``, so clients that ignore reasoning see a clean answer.

Rules (the same for :class:`ReasoningSplitter`, which streams, and :func:`split_reasoning`):

* The start tag counts only at the very beginning of the output, after optional whitespace.
  Output that does not begin with it is plain content, returned untouched (a normal model asked to
  write "<think>" somewhere is never mangled). With ``starts_inside=True`` (the prompt already
  opened the thinking, see :func:`prompt_opens_reasoning`) the output begins inside the reasoning.
* Inside the reasoning, the first end tag switches to content. Later tags, a second ``<think>``
  included, are plain content; a ``<think>`` inside the reasoning is plain reasoning text.
* Whitespace: leading and trailing whitespace of the reasoning is dropped, and so is leading
  whitespace of the content. Everything else (inner whitespace, the content's trailing
  whitespace) is kept exactly.
* Output that ends inside the reasoning (max_tokens hit) is all reasoning, stripped like above,
  and the content is "". A partial end tag at the very end (``"...</th"``) turned out not to be a
  tag, so it is kept as literal reasoning text.
* Tag characters are never emitted as reasoning or content.

Streaming equals non-streaming: for any chunking of a text, joining the ``feed``/``finish``
pieces gives exactly :func:`split_reasoning`'s result, where ``None`` reasoning (the output had no
reasoning part) joins to ``""``. A reasoning part that was present but empty is ``""`` in both;
:attr:`ReasoningSplitter.saw_reasoning` tells the two apart while streaming.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReasoningTags:
    """The strings that open and close a model's reasoning."""

    start: str = "<think>"
    end: str = "</think>"

    def __post_init__(self) -> None:
        # An empty tag would match everywhere and make the splitter loop on nothing.
        if not self.start or not self.end:
            raise ValueError("reasoning tags must be non-empty strings")


def detect_reasoning_tags(tokenizer: Any) -> ReasoningTags | None:
    """The tags a model reasons with, or None for a model that does not reason.

    A model reasons if its vocabulary (added tokens included) holds both tags as single tokens, or
    its chat template mentions the start tag. Without either sign we return None so that the API
    never splits a normal model's output.
    """
    tags = ReasoningTags()
    vocab: Mapping[str, int] = {}
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab):
        try:
            vocab = get_vocab() or {}
        except (NotImplementedError, AttributeError, TypeError):
            # Some tokenizer wrappers do not expose a vocabulary; fall back on the template.
            vocab = {}
    if tags.start in vocab and tags.end in vocab:
        return tags
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and tags.start in template:
        return tags
    return None


def prompt_opens_reasoning(prompt_text: str, tags: ReasoningTags) -> bool:
    """Whether the rendered prompt already opened the thinking (ends with the start tag).

    DeepSeek-R1-0528-style templates put ``<think>\\n`` in the generation prompt, so the output
    starts inside the reasoning and only ever contains the end tag.
    """
    return prompt_text.rstrip().endswith(tags.start)


def split_reasoning(text: str, tags: ReasoningTags, starts_inside: bool = False) -> tuple[str | None, str]:
    """Split a whole output into (reasoning, content); reasoning is None if there was none.

    Non-streaming counterpart of :class:`ReasoningSplitter` (written independently of it so that
    tests can compare the two); see the module docstring for the rules.
    """
    if starts_inside:
        rest = text
    else:
        stripped = text.lstrip()
        if not stripped.startswith(tags.start):
            return None, text
        rest = stripped[len(tags.start):]
    index = rest.find(tags.end)
    if index < 0:
        return rest.strip(), ""
    return rest[:index].strip(), rest[index + len(tags.end):].lstrip()


class _State(enum.Enum):
    PRELUDE = "prelude"  # not yet known whether the output begins with the start tag
    REASONING = "reasoning"  # inside the thinking
    CONTENT_LEAD = "content_lead"  # after the end tag, dropping the content's leading whitespace
    CONTENT = "content"  # the answer after the end tag, passed through
    PLAIN = "plain"  # the output had no reasoning part: all of it is content, untouched


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0


class ReasoningSplitter:
    """Incremental splitter: text deltas in, (reasoning_delta, content_delta) out.

    Holds back only what might still change meaning: a possible start tag at the beginning, a
    possible partial end tag, and whitespace that might precede the end tag. One object per
    generated sequence.
    """

    def __init__(self, tags: ReasoningTags, starts_inside: bool = False) -> None:
        self.tags = tags
        self._state = _State.REASONING if starts_inside else _State.PRELUDE
        self._pending = ""  # text received but not yet emitted
        self._reasoning_started = False  # a non-whitespace reasoning character was emitted
        self._finished = False

    @property
    def saw_reasoning(self) -> bool:
        """Whether the output is known to have a reasoning part (even an empty one).

        After :meth:`finish`, False exactly when :func:`split_reasoning` returns None reasoning.
        """
        return self._state not in (_State.PRELUDE, _State.PLAIN)

    @property
    def in_reasoning(self) -> bool:
        """Whether the output is currently inside the reasoning (end tag not seen yet)."""
        return self._state is _State.REASONING

    def feed(self, delta: str) -> tuple[str, str]:
        """Take the next piece of output; return the (reasoning, content) that can be sent now."""
        if self._finished:
            raise RuntimeError("ReasoningSplitter.feed() called after finish()")
        if self._state is _State.PRELUDE:
            self._pending += delta
            stripped = self._pending.lstrip()
            if stripped.startswith(self.tags.start):
                self._state = _State.REASONING
                self._pending = ""
                return self._feed_reasoning(stripped[len(self.tags.start):])
            if self.tags.start.startswith(stripped):
                return "", ""  # could still become the start tag
            self._state = _State.PLAIN
            text, self._pending = self._pending, ""
            return "", text
        if self._state is _State.REASONING:
            return self._feed_reasoning(delta)
        return "", self._feed_content(delta)

    def finish(self) -> tuple[str, str]:
        """Flush what was held back at the end of the output; call once."""
        if self._finished:
            raise RuntimeError("ReasoningSplitter.finish() called twice")
        self._finished = True
        pending, self._pending = self._pending, ""
        if self._state is _State.PRELUDE:
            return "", pending  # never became the start tag: it is content
        if self._state is _State.REASONING:
            # Trailing whitespace is dropped; a partial end tag was not a tag and stays as text.
            return self._reasoning_text(pending.rstrip()), ""
        return "", ""

    def _feed_reasoning(self, delta: str) -> tuple[str, str]:
        buffer = self._pending + delta
        index = buffer.find(self.tags.end)
        if index >= 0:
            self._pending = ""
            self._state = _State.CONTENT_LEAD
            reasoning = self._reasoning_text(buffer[:index].rstrip())
            return reasoning, self._feed_content(buffer[index + len(self.tags.end):])
        # Keep a possible partial end tag and the whitespace before it: if the tag completes,
        # that whitespace is the reasoning's trailing whitespace and must not be sent.
        cut = len(buffer) - _partial_suffix(buffer, self.tags.end)
        cut = len(buffer[:cut].rstrip())
        self._pending = buffer[cut:]
        return self._reasoning_text(buffer[:cut]), ""

    def _reasoning_text(self, text: str) -> str:
        """Drop the reasoning's leading whitespace until its first real character."""
        if not self._reasoning_started:
            text = text.lstrip()
            self._reasoning_started = bool(text)
        return text

    def _feed_content(self, delta: str) -> str:
        if self._state is _State.CONTENT_LEAD:
            delta = delta.lstrip()
            if not delta:
                return ""
            self._state = _State.CONTENT
        return delta
