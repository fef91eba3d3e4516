"""Per-request sampling parameters, validated once at construction.

The engine batches requests with different parameters, so every value is checked here, at the
edge, and the sampler can trust what it gets. Errors name the field, the bad value and the
allowed range, so the API can return them as a 400 with ``param`` set to ``error.field``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from labs.errors import LabsError

MAX_STOP_STRINGS = 16
MAX_N = 16
MAX_LOGPROBS = 20
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class SamplingParamsError(LabsError, ValueError):
    """A sampling parameter is out of range or of the wrong type; ``field`` names it."""

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _fmt(x: float) -> str:
    """Bounds print as written in the docs: 0 not 0.0, 2 not 2.0."""
    return f"{x:g}" if isinstance(x, float) else str(x)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_int(name: str, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    if not _is_int(v):
        raise SamplingParamsError(name, f"{name} must be an integer, got {v!r}")
    _check_range(name, v, lo, hi)
    return v


def _check_float(
    name: str, v: Any, lo: float | None, hi: float | None, *, lo_open: bool = False
) -> float:
    if not _is_number(v):
        raise SamplingParamsError(name, f"{name} must be a number, got {v!r}")
    v = float(v)
    if lo_open:  # lo is excluded: say so in the message rather than "between"
        assert lo is not None
        if not (v > lo and (hi is None or v <= hi)):
            upper = f" and <= {_fmt(hi)}" if hi is not None else ""
            raise SamplingParamsError(name, f"{name} must be > {_fmt(lo)}{upper}, got {_fmt(v)}")
        return v
    _check_range(name, v, lo, hi)
    return v


def _check_range(name: str, v: float, lo: float | None, hi: float | None) -> None:
    # Written as "not (ok)" so that NaN, which fails every comparison, is rejected too.
    if lo is not None and hi is not None:
        if not lo <= v <= hi:
            raise SamplingParamsError(
                name, f"{name} must be between {_fmt(lo)} and {_fmt(hi)}, got {_fmt(v)}"
            )
    elif lo is not None and not v >= lo:
        raise SamplingParamsError(name, f"{name} must be >= {_fmt(lo)}, got {_fmt(v)}")
    elif hi is not None and not v <= hi:
        raise SamplingParamsError(name, f"{name} must be <= {_fmt(hi)}, got {_fmt(v)}")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one request; immutable once validated.

    Frozen so that a validated object stays valid while the engine shares it between the
    steps (and the ``n`` samples) of a request; use ``dataclasses.replace`` to derive a
    variant, which runs the validation again.

    Less obvious rules:
    - ``temperature`` 0 means greedy (argmax); the OpenAI range 0..2 is kept because above 2
      the output is noise.
    - ``top_p`` must be > 0: an empty nucleus cannot be sampled from (use temperature 0).
    - ``top_k`` 0 or -1 disables it (-1 is the vLLM / llama.cpp spelling, normalised to 0).
    - ``repetition_penalty`` (HF semantics) divides positive and multiplies negative logits of
      every token seen in prompt + output, so it must be > 0; 1 is off.
    - ``presence_penalty`` / ``frequency_penalty`` (OpenAI semantics) look at generated tokens
      only: ``logit -= presence * (count > 0) + frequency * count``.
    - ``logit_bias`` values are clamped by OpenAI to -100..100 (-100 bans, +100 forces); ids
      are checked against the model's vocabulary by :meth:`validate_for_vocab`.
    - ``stop`` holds at most 16 strings: the detokenizer checks each one at every step.
    - ``min_tokens`` masks EOS and ``stop_token_ids`` until reached, so it cannot exceed
      ``max_tokens``. ``ignore_eos`` does not mask EOS: the engine just does not stop on it.
    - ``n`` <= 16 because each sample occupies a batch slot; ``logprobs`` <= 20 as in OpenAI.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    n: int = 1
    logprobs: int | None = None
    guided: Any = None  # a labs.engine.guided.GuidedDecoding: the output must match its grammar

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised values are written this way
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, 1)
        set_(self, "temperature", _check_float("temperature", self.temperature, 0.0, 2.0))
        set_(self, "top_p", _check_float("top_p", self.top_p, 0.0, 1.0, lo_open=True))
        top_k = _check_int("top_k", self.top_k)
        if top_k < -1:
            raise SamplingParamsError(
                "top_k", f"top_k must be -1 or 0 (disabled) or >= 1, got {top_k}"
            )
        set_(self, "top_k", max(top_k, 0))
        set_(self, "min_p", _check_float("min_p", self.min_p, 0.0, 1.0))
        set_(
            self,
            "repetition_penalty",
            _check_float("repetition_penalty", self.repetition_penalty, 0.0, None, lo_open=True),
        )
        if math.isinf(self.repetition_penalty):
            raise SamplingParamsError(
                "repetition_penalty",
                f"repetition_penalty must be > 0 and finite, got {self.repetition_penalty}",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            set_(self, name, _check_float(name, getattr(self, name), -2.0, 2.0))
        set_(self, "logit_bias", _normalise_logit_bias(self.logit_bias))
        if self.seed is not None:
            _check_int("seed", self.seed, _INT64_MIN, _INT64_MAX)
        set_(self, "stop", _normalise_stop(self.stop))
        set_(self, "stop_token_ids", _normalise_stop_token_ids(self.stop_token_ids))
        if not isinstance(self.ignore_eos, bool):
            raise SamplingParamsError(
                "ignore_eos", f"ignore_eos must be true or false, got {self.ignore_eos!r}"
            )
        _check_int("min_tokens", self.min_tokens, 0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise SamplingParamsError(
                "min_tokens",
                f"min_tokens must be between 0 and max_tokens ({self.max_tokens}), "
                f"got {self.min_tokens}",
            )
        _check_int("n", self.n, 1, MAX_N)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        if self.guided is not None:
            from labs.engine.guided import GuidedDecoding

            if not isinstance(self.guided, GuidedDecoding):
                raise SamplingParamsError("guided", f"guided must be a GuidedDecoding, got {self.guided!r}")

    @property
    def greedy(self) -> bool:
        """Temperature 0: always the most likely token, no randomness consumed."""
        return self.temperature == 0.0

    def validate_for_vocab(self, vocab_size: int) -> None:
        """Reject ``logit_bias`` ids the model cannot produce (call at admission time)."""
        if self.logit_bias:
            bad = sorted(t for t in self.logit_bias if t >= vocab_size)
            if bad:
                raise SamplingParamsError(
                    "logit_bias",
                    f"logit_bias token ids must be between 0 and {vocab_size - 1} "
                    f"(the model's vocabulary), got {bad[0]}",
                )


def _normalise_logit_bias(bias: Any) -> dict[int, float] | None:
    if bias is None:
        return None
    if not isinstance(bias, Mapping):
        raise SamplingParamsError(
            "logit_bias", f"logit_bias must be a mapping of token id to bias, got {bias!r}"
        )
    out: dict[int, float] = {}
    for tok, val in bias.items():
        if not _is_int(tok) or tok < 0:
            raise SamplingParamsError(
                "logit_bias", f"logit_bias token ids must be integers >= 0, got {tok!r}"
            )
        out[tok] = _check_float("logit_bias", val, -100.0, 100.0)
    return out or None


def _normalise_stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, Iterable):
        raise SamplingParamsError("stop", f"stop must be a string or a list of strings, got {stop!r}")
    stop = list(stop)
    if len(stop) > MAX_STOP_STRINGS:
        raise SamplingParamsError(
            "stop", f"stop must have between 0 and {MAX_STOP_STRINGS} entries, got {len(stop)}"
        )
    for s in stop:
        if not isinstance(s, str) or not s:
            raise SamplingParamsError("stop", f"stop entries must be non-empty strings, got {s!r}")
    return stop


def _normalise_stop_token_ids(ids: Any) -> list[int]:
    if ids is None:
        return []
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise SamplingParamsError(
            "stop_token_ids", f"stop_token_ids must be a list of token ids, got {ids!r}"
        )
    ids = list(ids)
    for t in ids:
        if not _is_int(t) or t < 0:
            raise SamplingParamsError(
                "stop_token_ids", f"stop_token_ids entries must be integers >= 0, got {t!r}"
            )
    return ids
