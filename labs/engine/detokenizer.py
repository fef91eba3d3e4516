"""Incremental detokenization: token ids in, text deltas out, one object per sequence.

Two problems are solved here, in two stages:

1. *Decoding a growing id list cheaply and without broken characters.* Decoding the whole output
   every step costs O(n) per token. Instead, like vLLM and HF ``TextStreamer``, we decode a small
   sliding window: ``window[:read]`` is text already released (the "prefix"), ``window[read:]`` are
   the newest ids. The delta is ``decode(window)[len(decode(window[:read])):]``. Decoding a few ids
   of left context keeps decoders that look at neighbours (SentencePiece's leading '▁' space,
   the ``Strip`` decoder) consistent; the window is seeded with the last prompt ids so the first
   output token keeps its leading space. When the decoded text ends in U+FFFD, a multi-byte
   character is probably split across tokens (byte-level BPE, or ``<0xE2>`` byte-fallback
   tokens): the trailing U+FFFD run is held back until a later token completes it.

2. *Stop strings across token boundaries.* Released text passes through a second buffer that
   holds back any suffix which could still become a stop string, so the stop string and whatever
   follows it are never emitted.

The concatenation of all deltas plus ``flush()`` equals ``tokenizer.decode(prompt_tail + output)``
minus the prompt-tail text; for byte-level tokenizers (and an empty prompt) that is exactly
``tokenizer.decode(output, skip_special_tokens=...)``. Known, deliberate limits:

* ``clean_up_tokenization_spaces`` is never applied: it rewrites text around punctuation and
  cannot be streamed (transformers already refuses it for BPE tokenizers).
* Byte-fallback decoders turn a whole run of ``<0x..>`` tokens into U+FFFDs if *any* byte of the
  run is invalid, even bytes that formed valid characters earlier. A streamer cannot take back
  text it already sent, so for such invalid runs the stream may show a valid character where a
  full decode shows U+FFFD. Valid byte runs (what real models produce) are exact.
* After ``MAX_PENDING_TOKENS`` tokens that still end in U+FFFD, the bytes are taken as invalid and
  released. No real character needs that many tokens; the cap keeps the per-token cost O(1)
  even when a model emits garbage bytes forever.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

REPLACEMENT_CHAR = "\ufffd"
# Prompt ids decoded as left context for the first output tokens (vLLM uses 5 as well).
PROMPT_CONTEXT_TOKENS = 5
# Longest run of trailing-U+FFFD tokens held back before it is released as invalid bytes.
MAX_PENDING_TOKENS = 16


@dataclass(frozen=True, slots=True)
class DetokenizerStep:
    """Result of one ``step``: the text to emit now, and the stop string that ended the text."""

    text_delta: str
    stop_matched: str | None = None


class IncrementalDetokenizer:
    """Turns one sequence's generated ids into text deltas, honouring stop strings.

    ``tokenizer`` is anything with a Hugging Face style ``decode(ids, skip_special_tokens=...)``.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int],
        *,
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        if isinstance(stop, str):  # a bare string would otherwise be read as one stop per char
            stop = (stop,)
        # Empty stop strings would match everywhere; duplicates only cost time.
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stop if s))
        # Sliding window of ids: window[:read] is already released text, window[read:] is new.
        self._window: list[int] = [int(t) for t in list(prompt_token_ids)[-PROMPT_CONTEXT_TOKENS:]]
        self._read = len(self._window)
        self._prefix_len = len(self._decode(self._window)) if self._window else 0
        # Characters of decode(window) past the prefix already released (a stable part before
        # a held-back incomplete character).
        self._window_released = 0
        # Released text held back by the stop-string check.
        self._held = ""
        self._chunks: list[str] = []
        self._text_cache: str | None = ""
        self._stop_matched: str | None = None
        self._finished = False

    # ----------------------------------------------------------------- public API

    def step(self, token_id: int) -> DetokenizerStep:
        """Adds one generated id; returns the text that is safe to emit now."""
        if self._finished:
            raise RuntimeError("detokenizer already finished (stop string matched or flushed)")
        self._window.append(int(token_id))
        return self._release(self._decode_new_text(final=False))

    def flush(self) -> str:
        """Ends generation (for a reason other than a stop string); returns all held-back text.

        Incomplete characters are emitted the way a full decode shows them (U+FFFD).
        """
        if self._finished:
            return ""
        self._finished = True
        text = self._held + self._decode_new_text(final=True)
        self._held = ""
        self._emit(text)
        return text

    @property
    def text(self) -> str:
        """Everything emitted so far (deltas and flush)."""
        if self._text_cache is None:
            self._text_cache = "".join(self._chunks)
            self._chunks = [self._text_cache]
        return self._text_cache

    @property
    def stop_matched(self) -> str | None:
        """The stop string that ended the text, if any."""
        return self._stop_matched

    @property
    def finished(self) -> bool:
        """True after a stop string matched or ``flush()`` was called."""
        return self._finished

    # ----------------------------------------------------------------- stage 1: ids -> text

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(
            ids,
            skip_special_tokens=self._skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )

    def _decode_new_text(self, *, final: bool) -> str:
        """Returns newly decoded text that can no longer change; slides the window forward."""
        text = self._decode(self._window)
        end = len(text)
        overdue = len(self._window) - self._read > MAX_PENDING_TOKENS
        clean = final or overdue or not text.endswith(REPLACEMENT_CHAR)
        if not clean:
            # A trailing U+FFFD run may be a character still being built; the text before it is
            # final (UTF-8 is self-synchronising), so it can go out now.
            end = len(text.rstrip(REPLACEMENT_CHAR))
        elif overdue and not final and text.endswith(REPLACEMENT_CHAR):
            logger.debug("releasing %d tokens of undecodable bytes", len(self._window) - self._read)
        start = self._prefix_len + self._window_released
        new_text = text[start:end] if end > start else ""
        if not clean:
            self._window_released += len(new_text)
        elif new_text or overdue:
            # Slide: the ids decoded last become the left context of the next window. Ids that
            # decode to nothing (skipped special tokens) do not slide it, so the context always
            # holds real text (SentencePiece would otherwise drop the next token's space).
            del self._window[: self._read]
            self._read = len(self._window)
            self._prefix_len = len(self._decode(self._window))
            self._window_released = 0
        return new_text

    # ----------------------------------------------------------------- stage 2: stop strings

    def _release(self, new_text: str) -> DetokenizerStep:
        """Emits ``new_text`` minus anything that is, or may become, a stop string."""
        if not self._stops:
            self._emit(new_text)
            return DetokenizerStep(new_text)
        buffer = self._held + new_text
        match = self._find_stop(buffer)
        if match is not None:
            index, stop = match
            delta = buffer[:index]
            self._held = ""
            self._stop_matched = stop
            self._finished = True
            self._emit(delta)
            return DetokenizerStep(delta, stop)
        keep = self._partial_stop_len(buffer)
        delta = buffer[: len(buffer) - keep]
        self._held = buffer[len(buffer) - keep :]
        self._emit(delta)
        return DetokenizerStep(delta)

    def _find_stop(self, buffer: str) -> tuple[int, str] | None:
        """The stop string that completes first when reading ``buffer`` left to right.

        That is where generation would have stopped had the text come one character at a time
        (ties: the one starting earlier, i.e. the longer one).
        """
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            index = buffer.find(stop)
            if index != -1:
                candidate = (index + len(stop), index, stop)
                if best is None or candidate[:2] < best[:2]:
                    best = candidate
        return None if best is None else (best[1], best[2])

    def _partial_stop_len(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            for k in range(min(len(buffer), len(stop) - 1), longest, -1):
                if buffer.endswith(stop[:k]):
                    longest = k
                    break
        return longest

    def _emit(self, text: str) -> None:
        if text:
            self._chunks.append(text)
            self._text_cache = None
