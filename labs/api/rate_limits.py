"""Per-key limits and usage: requests and tokens per minute, requests in flight, and what each key used.

Requests and tokens per minute are token buckets, as OpenAI describes its own limits: a key's
bucket holds a minute's worth (`limit`) and refills continuously at limit/60 per second, so a
key may spend its whole minute at once and then earns it back steadily. That is why OpenAI's
`x-ratelimit-reset-requests` after one request at 5,000 RPM reads "12ms" (the time to earn that
request back, "until the limit resets to its initial state"), and the headers here mean the same.
A sliding-window log would instead make a key that used its minute in a burst wait a full minute,
and keep one timestamp per request; a bucket is two numbers per limit and its wait is exact.

Tokens: prompt tokens are known only once the prompt is built and generated tokens only once
generated, so a request is admitted while the key's token bucket holds at least one whole token,
and charged what it really uses, as the engine uses it (`Ticket.charge`). The bucket may go below
zero: the key's next requests then wait until the debt is earned back, so over any longer period
a key stays within its budget; at one moment it can overshoot by what its requests in flight use,
which `max_concurrent` bounds. (OpenAI charges an estimate from max_tokens up front instead;
labs' protocols name and default max_tokens differently, and a real count is never wrong.)

Requests refused here consume nothing. Every check and reservation happens under one lock in
methods that never await, so two concurrent requests cannot both take a key's last request or
slot. The clock is injected: tests drive a fake one.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Clock = Callable[[], float]
PERIOD = 60.0  # seconds: the limits are per minute
_CLOCK_SLACK = 1e-6  # seconds: a wait this short is rounding, not a limit


@dataclass(frozen=True)
class Limits:
    """A key's limits; None means no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None

    @property
    def any_rate(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


class TokenBucket:
    """`capacity` units, refilled continuously at `capacity` per `period` seconds; it may hold a debt."""

    def __init__(self, capacity: int, period: float, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / period  # units per second
        self._level = float(capacity)
        self._at = now

    def level(self, now: float) -> float:
        return min(float(self.capacity), self._level + max(0.0, now - self._at) * self.rate)

    def take(self, amount: float, now: float) -> None:
        self._level, self._at = self.level(now) - amount, max(now, self._at)

    def remaining(self, now: float) -> int:
        return max(0, math.floor(self.level(now)))

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until the bucket holds `amount` (0 when it does now)."""
        return max(0.0, (amount - self.level(now)) / self.rate)

    def until_full(self, now: float) -> float:
        return self.wait_for(self.capacity, now)


class RateLimited(Exception):
    """A request over one of its key's limits: which limit, and how long to wait."""

    def __init__(self, key: str, limit: str, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.key, self.limit, self.message = key, limit, message
        self.retry_after = retry_after

    @property
    def retry_after_seconds(self) -> int:
        return whole_seconds(self.retry_after)


def whole_seconds(wait: float) -> int:
    """A wait in whole seconds, as Retry-After gives it: at least 1, never earlier than the limit allows."""
    return max(1, math.ceil(wait - 1e-9))


@dataclass(frozen=True)
class Snapshot:
    """A key's limits, what is left of them now, and what it used since the server started."""

    key: str
    limits: Limits
    remaining_requests: int | None  # None: no such limit
    reset_requests: float | None  # seconds until the request bucket is full again
    remaining_tokens: int | None
    reset_tokens: float | None
    in_flight: int
    requests: int  # admitted
    rate_limited: int  # refused with 429
    prompt_tokens: int
    generated_tokens: int


class KeyLimiter:
    """One key's buckets, its requests in flight and its usage; the RateLimiter's lock guards them."""

    def __init__(self, name: str, limits: Limits, now: float) -> None:
        self.name = name
        self.limits = limits
        self.requests = TokenBucket(limits.requests_per_minute, PERIOD, now) if limits.requests_per_minute else None
        self.tokens = TokenBucket(limits.tokens_per_minute, PERIOD, now) if limits.tokens_per_minute else None
        self.in_flight = 0
        self.admitted = self.refused = self.prompt_tokens = self.generated_tokens = 0

    def check(self, now: float) -> None:
        """Raise RateLimited if a request now would be over a limit (the longest wait of those it is over)."""
        refusals = []
        if self.requests is not None and (wait := self.requests.wait_for(1, now)) > _CLOCK_SLACK:
            refusals.append(("requests", wait, f"{self.limits.requests_per_minute} requests per minute"))
        if self.tokens is not None and (wait := self.tokens.wait_for(1, now)) > _CLOCK_SLACK:
            refusals.append(("tokens", wait, f"{self.limits.tokens_per_minute} tokens per minute (prompt and "
                                             "generated)"))
        if self.limits.max_concurrent is not None and self.in_flight >= self.limits.max_concurrent:
            refusals.append(("concurrency", 1.0, f"{self.limits.max_concurrent} requests at a time"))
        if refusals:
            limit, wait, what = max(refusals, key=lambda refusal: refusal[1])
            when = "when one of its requests finishes" if limit == "concurrency" else f"in {whole_seconds(wait)} s"
            raise RateLimited(self.name, limit, f"key '{self.name}' is limited to {what}; retry {when}", wait)

    def reserve(self, now: float) -> None:
        if self.requests is not None:
            self.requests.take(1, now)
        self.in_flight += 1
        self.admitted += 1

    def snapshot(self, now: float) -> Snapshot:
        requests, tokens = self.requests, self.tokens
        return Snapshot(
            self.name, self.limits,
            requests.remaining(now) if requests else None, requests.until_full(now) if requests else None,
            tokens.remaining(now) if tokens else None, tokens.until_full(now) if tokens else None,
            self.in_flight, self.admitted, self.refused, self.prompt_tokens, self.generated_tokens)


class Ticket:
    """One admitted request: it charges the tokens it uses to its key, and frees its slot once."""

    def __init__(self, limiter: "RateLimiter", key: KeyLimiter) -> None:
        self._limiter = limiter
        self._key = key
        self._released = False

    @property
    def key(self) -> str:
        return self._key.name

    def charge(self, prompt_tokens: int, generated_tokens: int) -> None:
        self._limiter._charge(self._key, prompt_tokens, generated_tokens)

    def release(self) -> None:
        """The request is over (answered, failed or abandoned by its client); safe to call again."""
        if not self._released:
            self._released = True
            self._limiter._release(self._key)


class RateLimiter:
    """Every key's limits and usage, by key name."""

    def __init__(self, keys: dict[str, Limits], clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # the event loop admits; /metrics reads from a worker thread
        now = clock()
        self._keys = {name: KeyLimiter(name, limits, now) for name, limits in keys.items()}

    def names(self) -> Iterable[str]:
        return self._keys.keys()

    def limits(self, name: str) -> Limits:
        return self._keys[name].limits

    def admit(self, name: str) -> Ticket:
        """Check every limit of the key and reserve a request and a slot, in one step; RateLimited if over."""
        key = self._keys[name]
        with self._lock:
            now = self._clock()
            try:
                key.check(now)
            except RateLimited:
                key.refused += 1
                raise
            key.reserve(now)
        return Ticket(self, key)

    def snapshot(self, name: str) -> Snapshot:
        with self._lock:
            return self._keys[name].snapshot(self._clock())

    def _charge(self, key: KeyLimiter, prompt_tokens: int, generated_tokens: int) -> None:
        with self._lock:
            if key.tokens is not None:
                key.tokens.take(prompt_tokens + generated_tokens, self._clock())
            key.prompt_tokens += prompt_tokens
            key.generated_tokens += generated_tokens

    def _release(self, key: KeyLimiter) -> None:
        with self._lock:
            key.in_flight -= 1


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-*: "120ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    millis = max(0, round(seconds * 1000))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    text = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + f"{text}s"


RATE_LIMIT_HEADERS = tuple(f"x-ratelimit-{what}-{unit}" for unit in ("requests", "tokens")
                           for what in ("limit", "remaining", "reset"))


def rate_limit_headers(snapshot: Snapshot) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the limits the key has (none for a key without rate limits)."""
    headers: dict[str, str] = {}
    limits = snapshot.limits
    if limits.requests_per_minute is not None:
        headers |= {"x-ratelimit-limit-requests": str(limits.requests_per_minute),
                    "x-ratelimit-remaining-requests": str(snapshot.remaining_requests),
                    "x-ratelimit-reset-requests": format_reset(snapshot.reset_requests or 0.0)}
    if limits.tokens_per_minute is not None:
        headers |= {"x-ratelimit-limit-tokens": str(limits.tokens_per_minute),
                    "x-ratelimit-remaining-tokens": str(snapshot.remaining_tokens),
                    "x-ratelimit-reset-tokens": format_reset(snapshot.reset_tokens or 0.0)}
    return headers
