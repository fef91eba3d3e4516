"""Constrained decoding: a per-request grammar masks the tokens a sample may take next.

Why llguidance: it computes a token mask in tens of microseconds for JSON schemas, regexes,
choices and Lark grammars, in Rust with the GIL released, over a whole batch in parallel
(`fill_next_token_bitmask_par`); it needs no torch kernels (the mask is applied here with plain
tensor ops, so CPU and CUDA behave alike); it is maintained by the guidance-ai team and used by
llama.cpp and vLLM. Grammars are validated before a request is queued (a bad schema is the
caller's error, never the engine's) and compiled grammar strings are cached in a bounded LRU.
"""

from __future__ import annotations

import json
import re
import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from labs.engine.sampling import SamplingParamsError

if TYPE_CHECKING:  # torch is imported where logits are masked: a turn answered from data never needs it
    import torch

GuidedKind = Literal["json_object", "json_schema", "regex", "choice", "grammar"]
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_CACHE_SIZE = 256


@dataclass(frozen=True)
class GuidedDecoding:
    """What the output must match. `spec`: the JSON schema text, the regex, a JSON list of choices, or a Lark grammar."""

    kind: GuidedKind
    spec: str = ""
    field: str = "response_format"  # the request field it came from, for error messages

    def grammar(self) -> str:
        from llguidance import LLMatcher

        try:
            if self.kind == "json_object":
                return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_OPTIONS)
            if self.kind == "json_schema":
                return LLMatcher.grammar_from_json_schema(self.spec, defaults=_JSON_OPTIONS)
            if self.kind == "regex":
                return LLMatcher.grammar_from_regex(self.spec)
            if self.kind == "choice":
                choices = json.loads(self.spec)
                return LLMatcher.grammar_from_regex("|".join(f"(?:{re.escape(choice)})" for choice in choices))
            if self.kind == "grammar":
                return LLMatcher.grammar_from_lark(self.spec)
        except (ValueError, TypeError) as error:
            raise SamplingParamsError(self.field, f"{self.field}: {error}") from None
        raise SamplingParamsError(self.field, f"{self.field}: unknown kind {self.kind!r}")


class Guide:
    """One engine's grammar machinery: the tokenizer view llguidance needs, the grammar cache, masks."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._hf_tokenizer = tokenizer
        self._vocab_size = vocab_size  # the model's logits width (may exceed the tokenizer's)
        self._tokenizer: Any = None
        self._executor: Any = None
        self._grammars: OrderedDict[GuidedDecoding, str] = OrderedDict()
        self._lock = threading.Lock()  # validate() runs on callers' threads, matchers on the torch thread

    def _llg_tokenizer(self) -> Any:
        if self._tokenizer is None:
            import llguidance

            # as llguidance.hf.from_tokenizer does, without importing transformers: the Rust backend
            # of a fast tokenizer (a transformers one or labs' LeanTokenizer), serialized
            backend = getattr(self._hf_tokenizer, "backend_tokenizer", None)
            if backend is None:
                raise SamplingParamsError("response_format", "structured output needs a fast (tokenizers-backed) tokenizer, "
                                          f"and this model's is {type(self._hf_tokenizer).__name__}")
            backend = copy.copy(backend)
            backend.no_padding()
            backend.no_truncation()
            self._tokenizer = llguidance.LLTokenizer(backend.to_str(), eos_token=self._hf_tokenizer.eos_token_id)
            self._executor = llguidance.LLExecutor()
        return self._tokenizer

    def validate(self, guided: GuidedDecoding) -> str:
        """The compiled grammar (cached); a SamplingParamsError naming the field when it is not valid."""
        with self._lock:
            cached = self._grammars.get(guided)
            if cached is not None:
                self._grammars.move_to_end(guided)
                return cached
            from llguidance import LLMatcher

            grammar = guided.grammar()
            problem = LLMatcher.validate_grammar(grammar, self._llg_tokenizer())
            if problem and not problem.startswith("WARNING"):
                raise SamplingParamsError(guided.field, f"{guided.field} cannot be used: {problem}")
            self._grammars[guided] = grammar
            while len(self._grammars) > _CACHE_SIZE:  # a flood of distinct schemas keeps memory bounded
                self._grammars.popitem(last=False)
            return grammar

    def matcher(self, guided: GuidedDecoding) -> Any:
        from llguidance import LLMatcher

        matcher = LLMatcher(self._llg_tokenizer(), self.validate(guided), log_level=0)
        if matcher.is_error():
            raise SamplingParamsError(guided.field, f"{guided.field} cannot be used: {matcher.get_error()}")
        return matcher

    def mask_logits(self, logits: torch.Tensor, rows: list[tuple[int, Any]]) -> None:
        """Set to -inf, in place, every token the grammar of each listed row does not allow next."""
        if not rows:
            return
        import llguidance.torch as llg_torch
        import torch

        tokenizer = self._llg_tokenizer()
        bitmask = llg_torch.allocate_token_bitmask(len(rows), tokenizer.vocab_size)
        llg_torch.fill_next_token_bitmask_par(self._executor, [(m, i) for i, (_, m) in enumerate(rows)], bitmask)
        bits = torch.arange(32, dtype=torch.int32)
        allowed = ((bitmask.unsqueeze(-1) >> bits) & 1).bool().reshape(len(rows), -1)[:, : tokenizer.vocab_size]
        width = logits.shape[-1]
        full = torch.zeros(len(rows), width, dtype=torch.bool)
        span = min(width, allowed.shape[1])
        full[:, :span] = allowed[:, :span]
        index = torch.tensor([row for row, _ in rows], device=logits.device)
        selected = logits.index_select(0, index)
        selected.masked_fill_(~full.to(logits.device), float("-inf"))
        logits.index_copy_(0, index, selected)
