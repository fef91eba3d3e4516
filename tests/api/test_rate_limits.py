"""The per-key limiter on a fake clock: bucket edges, token charging, slots reserved and released."""

from __future__ import annotations

import threading

import pytest

from labs.api.rate_limits import Limits, RateLimited, RateLimiter, TokenBucket, format_reset, rate_limit_headers


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(clock: FakeClock, **limits: int) -> RateLimiter:
    return RateLimiter({"alice": Limits(**limits), "bob": Limits(requests_per_minute=1)}, clock)


def test_a_full_minute_of_requests_at_once_then_one_every_60_over_limit_seconds() -> None:
    clock = FakeClock()
    rate = limiter(clock, requests_per_minute=5)
    tickets = [rate.admit("alice") for _ in range(5)]
    with pytest.raises(RateLimited) as refused:
        rate.admit("alice")
    assert refused.value.limit == "requests" and refused.value.retry_after == pytest.approx(12.0)
    assert refused.value.retry_after_seconds == 12
    assert str(refused.value) == "key 'alice' is limited to 5 requests per minute; retry in 12 s"
    clock.advance(11.999)
    with pytest.raises(RateLimited) as still:
        rate.admit("alice")
    assert still.value.retry_after == pytest.approx(0.001) and still.value.retry_after_seconds == 1
    clock.advance(0.001)  # exactly 60/5 s after the burst: one request earned back
    tickets.append(rate.admit("alice"))
    with pytest.raises(RateLimited):
        rate.admit("alice")
    clock.advance(60)  # a quiet minute fills the bucket, never beyond the limit
    assert rate.snapshot("alice").remaining_requests == 5
    assert [rate.admit("alice") for _ in range(5)] and rate.snapshot("alice").remaining_requests == 0
    for ticket in tickets:
        ticket.release()


def test_the_snapshot_and_headers_say_what_is_left_and_when_it_is_full_again() -> None:
    clock = FakeClock()
    rate = limiter(clock, requests_per_minute=60, tokens_per_minute=6000)
    rate.admit("alice").charge(100, 50)
    snapshot = rate.snapshot("alice")
    assert (snapshot.remaining_requests, snapshot.reset_requests) == (59, pytest.approx(1.0))
    assert (snapshot.remaining_tokens, snapshot.reset_tokens) == (5850, pytest.approx(1.5))
    assert (snapshot.requests, snapshot.prompt_tokens, snapshot.generated_tokens, snapshot.in_flight) == (1, 100, 50, 1)
    assert rate_limit_headers(snapshot) == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "5850", "x-ratelimit-reset-tokens": "1.5s"}
    only_requests = RateLimiter({"k": Limits(requests_per_minute=3)}, clock)
    assert set(rate_limit_headers(only_requests.snapshot("k"))) == {
        "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"}
    assert rate_limit_headers(RateLimiter({"k": Limits(max_concurrent=2)}, clock).snapshot("k")) == {}


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.0004, "0s"), (0.012, "12ms"), (0.12, "120ms"), (0.9996, "1s"), (1, "1s"), (1.5, "1.5s"),
    (8.6439, "8.644s"), (60, "1m0s"), (360, "6m0s"), (61.25, "1m1.25s"), (3723, "1h2m3s"), (3600, "1h0m0s")])
def test_reset_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_tokens_admit_while_the_budget_holds_a_token_and_charge_what_was_used() -> None:
    clock = FakeClock()
    rate = limiter(clock, tokens_per_minute=600)  # 10 tokens a second
    first = rate.admit("alice")
    second = rate.admit("alice")  # nothing charged yet: both fit under the budget
    first.charge(400, 0)  # prompt tokens when the engine processed them
    first.charge(0, 150)  # generated tokens as they come
    assert rate.snapshot("alice").remaining_tokens == 50
    second.charge(300, 20)  # more than was left: the key owes 270 tokens
    snapshot = rate.snapshot("alice")
    assert snapshot.remaining_tokens == 0 and (snapshot.prompt_tokens, snapshot.generated_tokens) == (700, 170)
    with pytest.raises(RateLimited) as refused:
        rate.admit("alice")
    assert refused.value.limit == "tokens" and refused.value.retry_after == pytest.approx(27.1)
    assert str(refused.value) == ("key 'alice' is limited to 600 tokens per minute (prompt and generated); "
                                  "retry in 28 s")
    clock.advance(27.0)
    with pytest.raises(RateLimited):
        rate.admit("alice")  # 0.1 token short of one whole token
    clock.advance(0.1)
    rate.admit("alice")
    clock.advance(600)
    assert rate.snapshot("alice").remaining_tokens == 600  # refilled to the limit, not beyond


def test_concurrent_slots_are_reserved_and_released_once() -> None:
    clock = FakeClock()
    rate = limiter(clock, max_concurrent=2)
    first, second = rate.admit("alice"), rate.admit("alice")
    with pytest.raises(RateLimited) as refused:
        rate.admit("alice")
    assert refused.value.limit == "concurrency" and refused.value.retry_after_seconds == 1
    assert str(refused.value) == ("key 'alice' is limited to 2 requests at a time; retry when one of its requests "
                                  "finishes")
    first.release()
    first.release()  # a second release (an error after the stream closed) frees nothing more
    third = rate.admit("alice")
    with pytest.raises(RateLimited):
        rate.admit("alice")
    assert rate.snapshot("alice").in_flight == 2
    second.release(), third.release()
    assert rate.snapshot("alice").in_flight == 0


def test_a_refused_request_consumes_nothing_and_is_counted_as_refused() -> None:
    clock = FakeClock()
    rate = limiter(clock, requests_per_minute=10, max_concurrent=1)
    held = rate.admit("alice")
    for _ in range(3):
        with pytest.raises(RateLimited):
            rate.admit("alice")  # over the concurrency limit: the request budget is untouched
    snapshot = rate.snapshot("alice")
    assert (snapshot.remaining_requests, snapshot.requests, snapshot.rate_limited) == (9, 1, 3)
    held.release()
    rate.admit("alice")


def test_over_several_limits_the_longest_wait_is_given() -> None:
    clock = FakeClock()
    rate = limiter(clock, requests_per_minute=2, tokens_per_minute=60, max_concurrent=5)
    first, _ = rate.admit("alice"), rate.admit("alice")  # the requests are spent: 30 s until the next
    first.charge(100, 0)  # 40 tokens owed: 41 s until one whole token
    with pytest.raises(RateLimited) as refused:
        rate.admit("alice")
    assert refused.value.limit == "tokens" and refused.value.retry_after_seconds == 41


def test_keys_are_limited_apart() -> None:
    clock = FakeClock()
    rate = limiter(clock, requests_per_minute=1)
    rate.admit("alice")
    with pytest.raises(RateLimited):
        rate.admit("alice")
    rate.admit("bob")
    with pytest.raises(RateLimited):
        rate.admit("bob")


def test_admission_is_exact_when_threads_race() -> None:
    rate = RateLimiter({"alice": Limits(requests_per_minute=10)}, FakeClock())
    admitted, refused = [], []
    start = threading.Barrier(40)

    def request() -> None:
        start.wait()
        try:
            admitted.append(rate.admit("alice"))
        except RateLimited:
            refused.append(1)

    threads = [threading.Thread(target=request) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(admitted), len(refused)) == (10, 30)


def test_a_bucket_never_fills_beyond_its_capacity_nor_goes_back_in_time() -> None:
    bucket = TokenBucket(4, 60.0, now=0.0)
    bucket.take(4, now=0.0)
    assert bucket.remaining(now=-5.0) == 0 and bucket.wait_for(1, now=0.0) == pytest.approx(15.0)
    assert bucket.remaining(now=30.0) == 2 and bucket.until_full(now=30.0) == pytest.approx(30.0)
    assert bucket.remaining(now=1e6) == 4 and bucket.until_full(now=1e6) == 0.0
