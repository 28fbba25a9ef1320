"""The provider's front door: new connections wait here, thread-free, until they have said a valid hello.

Anyone can connect to a provider, so nothing a connection costs before it is
authenticated may grow with what a stranger does:

- Waiting for the opening line costs a socket and at most
  :data:`~peer.transfer.protocol.MAX_HELLO` bytes, never a thread: one selector
  thread reads every waiting connection.
- A connection has ``timeout`` seconds to say its whole hello (a deadline, not
  a per-read timeout, so one byte now and then does not keep it alive).
- At most ``max_waiting`` connections wait, at most ``max_waiting_per_address``
  from one address. When either is full, the *oldest* waiting connection (of
  that address, or overall) is closed to make room: an honest buyer says its
  hello within milliseconds, so it is never the oldest for long, while idle
  connections age and are the ones that go.
- Junk is refused at once with a reason a person can read.

A connection that said a valid hello is handed on (``on_hello``), in blocking
mode, and no longer counts here. :class:`Slots` then bounds how many of those
may be checked against the ledger at the same time.
"""
from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from peer.transfer import protocol
from peer.transfer.errors import ProtocolError

__all__ = ["Arrival", "HelloGate", "Slots"]

log = logging.getLogger(__name__)

_ACCEPTS_PER_ROUND = 64  # accept at most this many per wake-up so reading the waiting ones is not starved
_TICK = 0.2


@dataclass
class Arrival:
    """A connection that is waiting to say its hello."""

    sock: socket.socket
    address: str  # the source host: what the per-address bound counts
    peer: str  # host:port, for logs and the uploads view
    opened: float  # time.monotonic() at accept
    buffer: bytearray = field(default_factory=bytearray)


class HelloGate:
    """Accepts connections on ``listener`` and reads their hellos on one thread (see the module docstring).

    ``on_hello(arrival, hello)`` gets each connection that said a valid hello;
    ``on_refused(arrival, reason)`` is told of each one turned away (the gate
    has already sent the reason and closed the socket).
    """

    def __init__(
        self,
        listener: socket.socket,
        on_hello: Callable[[Arrival, protocol.Hello], None],
        on_refused: Callable[[Arrival, str], None],
        *,
        timeout: float = 5.0,
        max_waiting: int = 256,
        max_waiting_per_address: int = 16,
    ) -> None:
        self._listener = listener
        self._on_hello = on_hello
        self._on_refused = on_refused
        self._timeout = timeout
        self._max = max_waiting
        self._max_per_address = max_waiting_per_address
        self._waiting: OrderedDict[int, Arrival] = OrderedDict()  # by fd, oldest first
        self._per_address: dict[str, int] = {}
        self._selector = selectors.DefaultSelector()
        self._accept_failed = False
        self.turned_away = 0  # connections refused before they said a valid hello

    def waiting(self) -> int:
        """How many connections are waiting to say their hello (for tests and status)."""
        return len(self._waiting)

    def run(self, stopping: threading.Event) -> None:
        """Serve until ``stopping`` is set; then close every connection still waiting."""
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        try:
            while not stopping.is_set():
                for key, _events in self._selector.select(self._next_wake()):
                    if key.data is None:
                        self._accept_some()
                    else:
                        self._read(key.data)
                self._expire(time.monotonic())
                if self._accept_failed:  # out of descriptors: give the sessions a moment rather than spin
                    self._accept_failed = False
                    stopping.wait(0.05)
        finally:
            for arrival in list(self._waiting.values()):
                self._drop(arrival)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
            self._selector.close()

    # ------------------------------------------------------------------ internals
    def _next_wake(self) -> float:
        if not self._waiting:
            return _TICK
        oldest = next(iter(self._waiting.values()))
        return max(0.0, min(_TICK, oldest.opened + self._timeout - time.monotonic()))

    def _accept_some(self) -> None:
        for _ in range(_ACCEPTS_PER_ROUND):
            try:
                conn, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: shed the oldest and go on
                log.warning("accepting a connection failed: %s", exc)
                self._accept_failed = True
                if self._waiting:
                    self._refuse(next(iter(self._waiting.values())), "the provider is busy; try again shortly")
                return
            conn.setblocking(False)
            arrival = Arrival(conn, str(addr[0]), f"{addr[0]}:{addr[1]}", time.monotonic())
            self._make_room(arrival.address)
            self._waiting[conn.fileno()] = arrival
            self._per_address[arrival.address] = self._per_address.get(arrival.address, 0) + 1
            self._selector.register(conn, selectors.EVENT_READ, arrival)

    def _make_room(self, address: str) -> None:
        if self._per_address.get(address, 0) >= self._max_per_address:
            oldest = next(a for a in self._waiting.values() if a.address == address)
            self._refuse(oldest, "too many connections from your address are waiting to say hello")
        if len(self._waiting) >= self._max:
            self._refuse(next(iter(self._waiting.values())), "too many connections are waiting to say hello")

    def _read(self, arrival: Arrival) -> None:
        try:
            chunk = arrival.sock.recv(protocol.MAX_HELLO + 1 - len(arrival.buffer))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(arrival)
            return
        if not chunk:
            self._drop(arrival)
            return
        arrival.buffer += chunk
        try:
            protocol.hello_may_continue(arrival.buffer)
            if b"\n" not in arrival.buffer:
                return
            hello = protocol.parse_hello(bytes(arrival.buffer))
        except ProtocolError as exc:
            self._refuse(arrival, str(exc))
            return
        self._forget(arrival)
        arrival.sock.setblocking(True)
        try:
            self._on_hello(arrival, hello)
        except Exception:  # the front door must outlive one bad hand-over
            log.exception("handing over the connection of %s failed", arrival.peer)
            with contextlib.suppress(OSError):
                arrival.sock.close()

    def _expire(self, now: float) -> None:
        while self._waiting:
            oldest = next(iter(self._waiting.values()))
            if now - oldest.opened < self._timeout:
                return
            self._refuse(oldest, f"no opening line in time (within {self._timeout:g} s)")

    def _refuse(self, arrival: Arrival, reason: str) -> None:
        self.turned_away += 1
        # Recorded before the stranger hears of it: whoever sees the refusal can then also see it
        # in the provider's uploads (a loaded machine once showed the list before the record).
        try:
            self._on_refused(arrival, reason)
        except Exception:
            log.exception("recording a refusal failed")
        # Best effort and never blocking: a stranger that does not read gets no more of our time.
        with contextlib.suppress(OSError):
            arrival.sock.send(protocol.refusal_line(reason))
        self._drop(arrival)

    def _forget(self, arrival: Arrival) -> None:
        fd = arrival.sock.fileno()
        if self._waiting.pop(fd, None) is None:
            return
        left = self._per_address.get(arrival.address, 1) - 1
        if left > 0:
            self._per_address[arrival.address] = left
        else:
            self._per_address.pop(arrival.address, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(arrival.sock)

    def _drop(self, arrival: Arrival) -> None:
        self._forget(arrival)
        with contextlib.suppress(OSError):
            arrival.sock.close()


class Slots:
    """Counts sessions that said a hello but are not yet authenticated, per source address and overall.

    Each of them costs a thread and a question to the ledger, so their number
    is bounded; a session leaves its slot once the buyer has proved who it is
    (or the session ends).
    """

    def __init__(self, total: int = 64, per_address: int = 16) -> None:
        self._total = total
        self._per_address = per_address
        self._lock = threading.Lock()
        self._count = 0
        self._by_address: dict[str, int] = {}

    def take(self, address: str) -> str | None:
        """Take a slot for ``address``; returns None, or why there is none (a reason for a person)."""
        with self._lock:
            if self._by_address.get(address, 0) >= self._per_address:
                return "too many sales from your address are being checked at once; try again shortly"
            if self._count >= self._total:
                return "the provider is busy checking other sales; try again shortly"
            self._count += 1
            self._by_address[address] = self._by_address.get(address, 0) + 1
            return None

    def give_back(self, address: str) -> None:
        """Return a slot taken with :meth:`take`."""
        with self._lock:
            self._count -= 1
            left = self._by_address.get(address, 1) - 1
            if left > 0:
                self._by_address[address] = left
            else:
                self._by_address.pop(address, None)
