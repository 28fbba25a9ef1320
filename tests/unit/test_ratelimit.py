"""The token bucket of ledger.ratelimit, on an injected clock: no test sleeps."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.ratelimit import RateLimiter


def test_a_burst_is_allowed_then_refused_until_a_token_refills() -> None:
    limiter = RateLimiter(rate_per_s=0.5, burst=3)
    assert [limiter.allow("bob", 100.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.retry_after("bob", 100.0) == pytest.approx(2.0)
    assert limiter.retry_after_s("bob", 100.0) == 2
    assert not limiter.allow("bob", 101.9)
    assert limiter.allow("bob", 102.0)
    assert not limiter.allow("bob", 102.0)


def test_a_refused_request_takes_nothing() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1)
    assert limiter.allow("bob", 0.0)
    for t in (0.1, 0.2, 0.5, 0.9):
        assert not limiter.allow("bob", t)  # hammering does not push the next token further away
    assert limiter.allow("bob", 1.0)


def test_keys_have_buckets_of_their_own() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=2)
    assert limiter.allow("bob", 0) and limiter.allow("bob", 0) and not limiter.allow("bob", 0)
    assert limiter.allow("alice", 0) and limiter.allow("alice", 0)
    assert limiter.retry_after("carol", 0) == 0.0


def test_a_bucket_never_holds_more_than_the_burst() -> None:
    limiter = RateLimiter(rate_per_s=10, burst=2)
    assert limiter.allow("bob", 0)
    assert [limiter.allow("bob", 3600.0) for _ in range(3)] == [True, True, False]


def test_a_clock_stepping_back_gives_no_tokens() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1)
    assert limiter.allow("bob", 50.0)
    assert not limiter.allow("bob", 10.0)
    assert limiter.retry_after("bob", 10.0) == pytest.approx(1.0)


def test_memory_is_bounded_by_evicting_the_least_recently_used_key() -> None:
    limiter = RateLimiter(rate_per_s=0.001, burst=1, max_keys=3)
    for key in ("a", "b", "c"):
        assert limiter.allow(key, 0)
    assert not limiter.allow("a", 1)  # "a" is now the most recently used; "b" the least
    assert limiter.allow("d", 2)
    assert len(limiter) == 3
    assert not limiter.allow("a", 3) and not limiter.allow("c", 3)  # kept, still empty
    assert limiter.allow("b", 3)  # forgotten: starts again with a full bucket


def test_a_flood_of_new_keys_stays_within_max_keys() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1, max_keys=100)
    for i in range(10_000):
        limiter.allow(f"login-{i}", i * 0.001)
    assert len(limiter) == 100


@pytest.mark.parametrize("args", [(0, 1, 1), (1, 0.5, 1), (1, 1, 0), (-1, 1, 1)])
def test_nonsense_settings_are_refused(args: tuple[float, float, int]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(*args)


@given(rate=st.floats(0.01, 100), burst=st.integers(1, 50),
       times=st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int, times: list[float]) -> None:
    limiter = RateLimiter(rate_per_s=rate, burst=burst)
    times.sort()
    allowed = sum(limiter.allow("k", t) for t in times)
    assert allowed <= burst + rate * (times[-1] - times[0]) + 1e-6
