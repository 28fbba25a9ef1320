"""A token bucket per key (a login, a sender), with a bounded number of keys.

Pure: the caller passes the time (``now``, seconds on any monotonic clock), so
tests need no sleeping. Each key's bucket holds up to ``burst`` tokens and
refills at ``rate_per_s``; a request takes one token or is refused (a refused
request takes nothing, so hammering does not push the next token further away).
Memory is bounded: past ``max_keys`` keys the least recently used one is
forgotten, and starts again with a full bucket, as it would have after being
idle for ``burst / rate_per_s`` seconds. Size ``max_keys`` above the keys active
in that window, or a flood of fresh keys refills the others early.
"""
from __future__ import annotations

import math
from collections import OrderedDict

__all__ = ["RateLimiter"]


class RateLimiter:
    """``allow(key, now)`` takes one token from ``key``'s bucket, or refuses when it is empty."""

    def __init__(self, rate_per_s: float, burst: float, max_keys: int = 10_000) -> None:
        if not rate_per_s > 0 or not burst >= 1 or max_keys < 1:
            raise ValueError("a rate limiter needs rate_per_s > 0, burst >= 1 and max_keys >= 1")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.max_keys = max_keys
        # key -> (tokens, time of that count); ordered from least to most recently used.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self.burst
        tokens, then = entry
        # A clock that steps back gives no tokens (and takes none).
        return min(self.burst, tokens + max(0.0, now - then) * self.rate_per_s)

    def allow(self, key: str, now: float) -> bool:
        """Take a token from ``key``'s bucket at time ``now``; False (nothing taken) when it is empty."""
        tokens = self._tokens(key, now)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, key: str, now: float) -> float:
        """Seconds from ``now`` until ``key`` has a token again (0 when it has one now)."""
        missing = 1.0 - self._tokens(key, now)
        return 0.0 if missing <= 0 else missing / self.rate_per_s

    def retry_after_s(self, key: str, now: float) -> int:
        """:meth:`retry_after` rounded up to whole seconds, for a message (``try again in N s``)."""
        return math.ceil(self.retry_after(key, now))
