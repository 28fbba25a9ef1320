"""Pause, resume, cancel and rate limits shared by the sending and receiving sides.

:class:`TransferControl` is what one transfer polls; :class:`BandwidthScheduler`
splits a global budget between several transfers by priority and re-sets each
one's rate limit whenever the set of moving transfers or the settings change.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from peer.transfer.errors import TransferCancelled

__all__ = ["BandwidthScheduler", "TransferControl", "share_bandwidth"]


class TransferControl:
    """Thread-safe flags plus a token bucket, polled by a transfer between chunks.

    ``priority`` is carried for a :class:`BandwidthScheduler`, which weighs the
    share of a global budget by it; the transfer itself does not look at it.
    ``clock`` and ``sleep`` are for tests of the bucket: by default a rate wait
    waits on the control's condition, so pause, cancel and a new limit wake it.
    """

    def __init__(self, rate_limit_bps: int | None = None, priority: int = 0, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] | None = None) -> None:
        self.priority = priority
        self._cond = threading.Condition()
        self._clock = clock
        self._sleep = sleep or self._cond.wait
        self._paused = False
        self._cancelled = False
        self._rate: float | None = None
        self._tokens = 0.0
        self._stamp = clock()
        self._sockets: list[socket.socket] = []
        self._held = 0  # threads waiting in a pause
        self.set_rate_limit(rate_limit_bps)

    # ------------------------------------------------------------------ flags
    @property
    def paused(self) -> bool:
        """True while paused."""
        return self._paused

    @property
    def held(self) -> int:
        """How many threads are waiting for this transfer to be resumed."""
        return self._held

    @property
    def cancelled(self) -> bool:
        """True once cancelled; never reset."""
        return self._cancelled

    def pause(self) -> None:
        """Stop moving data at the next chunk boundary (the connection stays open)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def cancel(self) -> None:
        """Abort the transfer; blocked socket calls are woken by shutting the socket down."""
        with self._cond:
            self._cancelled = True
            sockets, self._sockets = self._sockets, []
            self._cond.notify_all()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def attach(self, sock: socket.socket) -> None:
        """Register the transfer's socket so :meth:`cancel` can interrupt blocking I/O."""
        with self._cond:
            if self._cancelled:
                raise TransferCancelled("transfer cancelled")
            self._sockets.append(sock)

    def detach(self, sock: socket.socket) -> None:
        """Forget a socket registered with :meth:`attach`."""
        with self._cond, contextlib.suppress(ValueError):
            self._sockets.remove(sock)

    def check(self) -> None:
        """Raise :class:`TransferCancelled` if cancelled; block while paused."""
        with self._cond:
            self._wait_while_paused()
            if self._cancelled:
                raise TransferCancelled("transfer cancelled")

    def _wait_while_paused(self) -> None:
        # Called holding the condition.
        self._held += 1
        try:
            while self._paused and not self._cancelled:
                self._cond.wait()
        finally:
            self._held -= 1

    # ------------------------------------------------------------------ rate
    def set_rate_limit(self, rate_limit_bps: int | None) -> None:
        """Bytes per second, or None for unlimited; takes effect at the next chunk."""
        if rate_limit_bps is not None and rate_limit_bps <= 0:
            raise ValueError("rate limit must be positive or None")
        with self._cond:
            self._rate = float(rate_limit_bps) if rate_limit_bps else None
            self._tokens = 0.0
            self._stamp = self._clock()
            self._cond.notify_all()

    @property
    def rate_limit_bps(self) -> int | None:
        """Current limit in bytes per second."""
        return None if self._rate is None else int(self._rate)

    @property
    def limited(self) -> bool:
        """Whether a rate limit is set (callers then send in smaller chunks)."""
        return self._rate is not None

    def throttle(self, nbytes: int) -> None:
        """Account ``nbytes`` against the bucket, sleeping until the rate allows them.

        A paused transfer also waits here, so a limited transfer stops within one
        chunk instead of at the end of its segment.
        """
        with self._cond:
            if self._rate is None:
                return
            if self._paused:
                self._wait_while_paused()
                # No credit for the time spent paused.
                self._tokens = 0.0
                self._stamp = self._clock()
                if self._rate is None:  # the limit was lifted while paused
                    if self._cancelled:
                        raise TransferCancelled("transfer cancelled")
                    return
            now = self._clock()
            # A quarter second of burst keeps the average honest without stalls.
            burst = self._rate / 4
            self._tokens = min(burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            self._tokens -= nbytes
            while self._tokens < 0 and not self._cancelled and self._rate is not None:
                self._sleep(-self._tokens / self._rate)
                now = self._clock()
                if self._rate is not None:
                    self._tokens += (now - self._stamp) * self._rate
                self._stamp = now
            if self._cancelled:
                raise TransferCancelled("transfer cancelled")


# ---------------------------------------------------------------------- scheduling
_MIN_RATE = 1024  # bytes/s: a share never drops to zero, so every transfer keeps moving
_RESET_TOLERANCE = 0.02  # re-setting a limit empties its bucket; skip changes smaller than this


def share_bandwidth(budget: float, demands: Sequence[tuple[float, float | None]]) -> list[float]:
    """Split ``budget`` (bytes/s) between transfers given as ``(weight, cap or None)``.

    Weighted max-min fairness: each transfer gets budget in proportion to its
    weight, except that none gets more than its cap; what a capped transfer
    leaves is shared among the others by weight again.
    """
    alloc = [0.0] * len(demands)
    open_ = {i for i, (w, _cap) in enumerate(demands) if w > 0}
    left = float(budget)
    while open_ and left > 0:
        weights = sum(demands[i][0] for i in open_)
        capped = [i for i in open_ if (cap := demands[i][1]) is not None and cap <= left * demands[i][0] / weights]
        if not capped:
            for i in open_:
                alloc[i] = left * demands[i][0] / weights
            break
        for i in capped:
            cap = demands[i][1]
            assert cap is not None
            alloc[i] = cap
            left -= cap
            open_.discard(i)
    return alloc


def weight_of(priority: int) -> float:
    """The share weight of a priority: 2 gets twice the bandwidth of 1; 0 (unset) counts as 1."""
    return float(max(priority, 1))


class BandwidthScheduler:
    """Per-transfer priorities and limits, plus an optional global budget shared by priority.

    Settings are kept by transfer id (a sale id), so a transfer that reconnects
    keeps them. :meth:`rebalance` is called with the transfers that exist now
    (from a timer, and after each change of settings); it sets each one's
    :class:`TransferControl` rate: its own limit when there is no global budget,
    else its weighted share of the budget among the transfers that are moving
    (paused ones take no share), never above its own limit.
    """

    def __init__(self, budget_bps: int | None = None, default_priority: int = 1) -> None:
        self._lock = threading.Lock()
        self._budget = budget_bps
        self._default = default_priority
        self._priority: dict[str, int] = {}
        self._limit: dict[str, int] = {}
        self._allotted: dict[str, int | None] = {}

    # ------------------------------------------------------------------ settings
    @property
    def budget_bps(self) -> int | None:
        """The global budget in bytes per second, or None for none."""
        return self._budget

    def set_budget(self, budget_bps: int | None) -> None:
        """Set (or with None or 0, lift) the global budget."""
        if budget_bps is not None and budget_bps < 0:
            raise ValueError("a budget cannot be negative")
        with self._lock:
            self._budget = budget_bps or None

    def set_priority(self, key: str, priority: int) -> None:
        """Weight of ``key`` in the share (at least 1)."""
        if priority < 1:
            raise ValueError("a priority is a whole number from 1 up")
        with self._lock:
            self._priority[key] = priority

    def set_limit(self, key: str, limit_bps: int | None) -> None:
        """The most ``key`` may use whatever the budget (None or 0: no limit of its own)."""
        if limit_bps is not None and limit_bps < 0:
            raise ValueError("a limit cannot be negative")
        with self._lock:
            if limit_bps:
                self._limit[key] = limit_bps
            else:
                self._limit.pop(key, None)

    def priority(self, key: str) -> int:
        """The priority of ``key`` (the default unless set)."""
        with self._lock:
            return self._priority.get(key, self._default)

    def limit(self, key: str) -> int | None:
        """The limit of ``key`` set by the user, if any."""
        with self._lock:
            return self._limit.get(key)

    def allotted(self, key: str) -> int | None:
        """The rate :meth:`rebalance` last gave ``key`` (None: unlimited)."""
        with self._lock:
            return self._allotted.get(key)

    # ------------------------------------------------------------------ applying
    def rebalance(self, transfers: Iterable[tuple[str, TransferControl]]) -> dict[str, int | None]:
        """Set the rate of every given transfer; returns the rate given to each id."""
        items = list(transfers)
        with self._lock:
            budget = self._budget
            caps = {key: self._limit.get(key) for key, _ in items}
            prios = {key: self._priority.get(key, self._default) for key, _ in items}
            rates: dict[str, int | None] = dict(caps)
            idle: set[str] = set()
            if budget is not None:
                moving = [(key, ctl) for key, ctl in items if not ctl.paused and not ctl.cancelled]
                shares = share_bandwidth(budget, [(weight_of(prios[k]), caps[k]) for k, _ in moving])
                for (key, _ctl), share in zip(moving, shares, strict=True):
                    rates[key] = max(int(share), _MIN_RATE)
                # A paused transfer keeps its last rate, so it does not burst when resumed.
                idle = {key for key, ctl in items if ctl.paused or ctl.cancelled}
                for key, ctl in items:
                    if key in idle:
                        rates[key] = ctl.rate_limit_bps
            self._allotted = dict(rates)
        for key, ctl in items:
            ctl.priority = prios[key]
            if key not in idle:
                _apply_rate(ctl, rates[key])
        return rates


def _apply_rate(control: TransferControl, rate: int | None) -> None:
    current = control.rate_limit_bps
    if rate is None and current is None:
        return
    if rate is not None and current is not None and abs(rate - current) <= current * _RESET_TOLERANCE:
        return
    control.set_rate_limit(rate)
