"""Pause, resume, cancel and rate limits shared by the sending and receiving sides."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from peer.transfer.errors import TransferCancelled

__all__ = ["TransferControl"]


class TransferControl:
    """Thread-safe flags plus a token bucket, polled by a transfer between chunks.

    ``priority`` is carried for a scheduler that may order queued transfers; the
    transfer itself does not look at it.
    """

    def __init__(self, rate_limit_bps: int | None = None, priority: int = 0) -> None:
        self.priority = priority
        self._cond = threading.Condition()
        self._paused = False
        self._cancelled = False
        self._rate: float | None = None
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._sockets: list[socket.socket] = []
        self.set_rate_limit(rate_limit_bps)

    # ------------------------------------------------------------------ flags
    @property
    def paused(self) -> bool:
        """True while paused."""
        return self._paused

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
            while self._paused and not self._cancelled:
                self._cond.wait()
            if self._cancelled:
                raise TransferCancelled("transfer cancelled")

    # ------------------------------------------------------------------ rate
    def set_rate_limit(self, rate_limit_bps: int | None) -> None:
        """Bytes per second, or None for unlimited; takes effect at the next chunk."""
        if rate_limit_bps is not None and rate_limit_bps <= 0:
            raise ValueError("rate limit must be positive or None")
        with self._cond:
            self._rate = float(rate_limit_bps) if rate_limit_bps else None
            self._tokens = 0.0
            self._stamp = time.monotonic()
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
        """Account ``nbytes`` against the bucket, sleeping until the rate allows them."""
        with self._cond:
            if self._rate is None:
                return
            now = time.monotonic()
            # A quarter second of burst keeps the average honest without stalls.
            burst = self._rate / 4
            self._tokens = min(burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            self._tokens -= nbytes
            while self._tokens < 0 and not self._cancelled and self._rate is not None:
                self._cond.wait(-self._tokens / self._rate)
                now = time.monotonic()
                if self._rate is not None:
                    self._tokens += (now - self._stamp) * self._rate
                self._stamp = now
            if self._cancelled:
                raise TransferCancelled("transfer cancelled")
