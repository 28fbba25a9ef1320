"""Running the console's broker calls off the GUI thread; outcomes come back on it.

``Runner.submit(fn, done=..., failed=...)`` runs ``fn()`` on a thread pool
and calls ``done(result)`` or ``failed(text)`` on the GUI thread, through a
queued signal into the Runner (which lives there).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from broker.errors import BrokerError, CommandRejected

__all__ = ["Runner", "describe_error"]


def describe_error(exc: BaseException) -> str:
    """One line for the operator; a ledger refusal keeps its code (``bad_amount: ...``)."""
    if isinstance(exc, CommandRejected):
        return str(exc)
    if isinstance(exc, BrokerError):
        return f"{type(exc).__name__}: {exc}"
    text = str(exc) or type(exc).__name__
    return text if type(exc).__module__.startswith(("broker", "ledger", "console")) else f"{type(exc).__name__}: {text}"


class _Relay(QObject):
    reported = Signal(int, bool, object)  # (job id, ok, result or exception)


class _Job(QRunnable):
    def __init__(self, ident: int, fn: Callable[[], Any], relay: _Relay) -> None:
        super().__init__()
        self.ident, self.fn, self.relay = ident, fn, relay

    def run(self) -> None:
        try:
            result = self.fn()
        except Exception as exc:  # noqa: BLE001 - reported to the operator; never kills a pool thread
            self.relay.reported.emit(self.ident, False, exc)
        else:
            self.relay.reported.emit(self.ident, True, result)


class Runner(QObject):
    """A thread pool whose results are delivered on the GUI thread."""

    busy_changed = Signal(int)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(4)
        self._relay = _Relay()
        self._relay.reported.connect(self._deliver)
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[Callable[[Any], None], Callable[[str], None]]] = {}

    @property
    def busy(self) -> int:
        return len(self._pending)

    def submit(self, fn: Callable[[], Any], *, done: Callable[[Any], None], failed: Callable[[str], None]) -> int:
        ident = next(self._ids)
        self._pending[ident] = (done, failed)
        self.pool.start(_Job(ident, fn, self._relay))
        self.busy_changed.emit(self.busy)
        return ident

    @Slot(int, bool, object)
    def _deliver(self, ident: int, ok: bool, payload: Any) -> None:
        callbacks = self._pending.pop(ident, None)
        if callbacks is None:
            return
        self.busy_changed.emit(self.busy)
        done, failed = callbacks
        if ok:
            done(payload)
        else:
            failed(describe_error(payload))

    def shutdown(self, wait_ms: int = 10_000) -> None:
        self._pending.clear()
        self.pool.waitForDone(wait_ms)
