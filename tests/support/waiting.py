"""Waiting for a condition instead of sleeping for a guess, and a clock a test moves by hand.

    wait_for(lambda: server.uploads()[-1].state == "done", 5, "the upload to finish")
    held = wait_still(lambda: (fetch.done, upload()["bytes_sent"]), 1.0, 10, "the paused upload to stop")

A wait returns as soon as its condition holds, so a fast machine is not slowed down, and a slow
one gets until the timeout; when it runs out, the failure names what was awaited.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["FakeClock", "wait_for", "wait_still"]

T = TypeVar("T")

POLL = 0.01  # seconds between looks: short enough not to slow a test, long enough not to busy it


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, what: str = "the condition",
             interval: float = POLL) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what} (last seen: {value!r})")
        time.sleep(interval)


def wait_still(read: Callable[[], T], quiet: float, timeout: float, what: str, interval: float = POLL) -> T:
    """Poll ``read`` until its value has not changed for ``quiet`` seconds and return it.

    For asserting that something stopped (a paused upload sends nothing more): the quiet window is
    the observation itself, and whatever was in flight when it was told to stop may land first.
    """
    deadline = time.monotonic() + timeout
    value = read()
    since = time.monotonic()
    while True:
        time.sleep(interval)
        now_value, now = read(), time.monotonic()
        if now_value != value:
            value, since = now_value, now
        elif now - since >= quiet:
            return value
        if now >= deadline:
            raise AssertionError(f"{what}: still changing after {timeout:.1f} s (last seen: {value!r})")


class FakeClock:
    """A monotonic clock that only moves when told to; pass ``clock`` as the time source, ``advance`` as sleep."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (a negative step is refused: a monotonic clock never goes back)."""
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self.now += seconds
