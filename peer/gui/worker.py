"""Running client calls off the GUI thread, with results delivered back on it.

A job is a plain function ``fn(job) -> result`` run on a ``QThreadPool``
thread; it may call ``job.progress(done, total)`` and ``job.step(text)``.
Its outcome reaches the callbacks given to :meth:`Runner.submit` through a
queued signal into the :class:`Runner`, which lives on the GUI thread, so
the callbacks may touch widgets and models.

While a Runner exists, Python's cyclic garbage collector runs only on the GUI
thread (a timer collects there): left to itself it may run in a pool thread and
finalize Qt objects there, which crashes the process.
"""
from __future__ import annotations

import gc
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal, Slot

from broker.errors import AcbError, BrokerError, CommandRejected

__all__ = ["Job", "Runner", "describe_error"]

log = logging.getLogger(__name__)


def describe_error(exc: BaseException) -> str:
    """One line for a person: a ledger refusal keeps its code (``insufficient_funds: ...``)."""
    if isinstance(exc, CommandRejected):
        return str(exc)
    if isinstance(exc, BrokerError):
        return f"{type(exc).__name__}: {exc}"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, AcbError):  # ours carry a message meant for a person
        return text
    return f"{type(exc).__name__}: {text}"


class _Relay(QObject):
    # (job id, kind, payload); emitted from a pool thread, delivered queued to the Runner.
    reported = Signal(int, str, object)


class Job(QRunnable):
    """One call running on the pool. ``progress`` reports are thinned to about 20 a second."""

    def __init__(self, ident: int, fn: Callable[[Job], Any], relay: _Relay) -> None:
        super().__init__()
        self.ident = ident
        self.fn = fn
        self._relay = relay
        self._last_progress = 0.0

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self._last_progress >= 0.05:
            self._last_progress = now
            self._relay.reported.emit(self.ident, "progress", (done, total))

    def step(self, text: str) -> None:
        self._relay.reported.emit(self.ident, "step", text)

    def run(self) -> None:
        try:
            result = self.fn(self)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the GUI as text, none kills the pool
            log.info("job %d failed: %r", self.ident, exc)
            self._relay.reported.emit(self.ident, "failed", exc)
        else:
            self._relay.reported.emit(self.ident, "done", result)


class _Callbacks:
    __slots__ = ("done", "failed", "progress", "step")

    def __init__(self, done: Callable[[Any], None] | None, failed: Callable[[str], None] | None,
                 progress: Callable[[int, int], None] | None, step: Callable[[str], None] | None) -> None:
        self.done, self.failed, self.progress, self.step = done, failed, progress, step


class Runner(QObject):
    """Submits jobs to a thread pool and calls back on the GUI thread; counts what is running."""

    busy_changed = Signal(int)
    error = Signal(str)  # failures of jobs submitted without their own ``failed`` callback

    def __init__(self, parent: QObject | None = None, *, max_threads: int = 4) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        self._relay = _Relay()
        self._relay.reported.connect(self._deliver)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Callbacks] = {}
        _gc_on_gui_thread(+1)
        self._collector = QTimer(self)
        self._collector.timeout.connect(_collect)
        self._collector.start(_COLLECT_EVERY_MS)
        self._shut = False

    @property
    def busy(self) -> int:
        return len(self._pending)

    def submit(self, fn: Callable[[Job], Any], *, done: Callable[[Any], None] | None = None,
               failed: Callable[[str], None] | None = None, progress: Callable[[int, int], None] | None = None,
               step: Callable[[str], None] | None = None) -> int:
        ident = next(self._ids)
        self._pending[ident] = _Callbacks(done, failed, progress, step)
        self.pool.start(Job(ident, fn, self._relay))
        self.busy_changed.emit(self.busy)
        return ident

    @Slot(int, str, object)
    def _deliver(self, ident: int, kind: str, payload: Any) -> None:
        callbacks = self._pending.get(ident)
        if callbacks is None:
            return
        if kind == "progress":
            if callbacks.progress:
                callbacks.progress(*payload)
            return
        if kind == "step":
            if callbacks.step:
                callbacks.step(payload)
            return
        del self._pending[ident]
        self.busy_changed.emit(self.busy)
        if kind == "done":
            if callbacks.done:
                callbacks.done(payload)
        else:
            text = describe_error(payload)
            if callbacks.failed:
                callbacks.failed(text)
            else:
                self.error.emit(text)

    def shutdown(self, wait_ms: int = 10_000) -> None:
        """Let running calls finish (they hold broker connections) and drop their callbacks."""
        self._pending.clear()
        self.pool.waitForDone(wait_ms)
        if not self._shut:
            self._shut = True
            self._collector.stop()
            _collect()
            _gc_on_gui_thread(-1)


_COLLECT_EVERY_MS = 500
_runners = 0


def _collect() -> None:
    gc.collect(0)
    if gc.get_count()[1] > 10:
        gc.collect()


def _gc_on_gui_thread(change: int) -> None:
    """Count live runners: the first turns automatic collection off, the last turns it back on."""
    global _runners
    _runners += change
    if _runners > 0:
        gc.disable()
    else:
        _runners = 0
        gc.enable()
