"""What the operator console shows, as plain Python: no Qt here.

:class:`ReplicaBoard` keeps the last status of every replica ever heard
from, so a replica that stops reporting stays on the board marked *silent*
instead of vanishing. The Qt model in :mod:`console.gui.models` follows it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["SILENT_AFTER_S", "ConsoleState", "DeadLetter", "DeadLetters", "ReplicaBoard", "ReplicaRow"]

SILENT_AFTER_S = 3.5  # a replica reports every second; three missed reports make it silent


@dataclass(frozen=True)
class ReplicaRow:
    """One replica's latest status message, as ``console.status.collect_status`` returns it."""

    replica: str
    role: str
    epoch: int
    primary: str | None
    seq: int
    lag: int
    commands_per_s: float
    store: str
    host: str
    pid: int
    uptime_s: float
    halted: str | None
    heard_at: float  # monotonic seconds, this side's clock

    @classmethod
    def from_status(cls, s: dict[str, Any], heard_at: float) -> ReplicaRow:
        return cls(s["replica"], s["role"], int(s.get("epoch", 0)), s.get("primary"), int(s.get("seq", 0)),
                   int(s.get("lag", 0)), float(s.get("commands_per_s", 0.0)), s.get("store", ""),
                   s.get("host", ""), int(s.get("pid", 0)), float(s.get("uptime_s", 0.0)), s.get("halted"),
                   heard_at)

    def shown_role(self, now: float) -> str:
        """The role, or ``silent`` when the replica has not reported lately."""
        return "silent" if now - self.heard_at > SILENT_AFTER_S else self.role


@dataclass
class ReplicaBoard:
    """Every replica heard from, ordered primary first; tells listeners when it changes."""

    rows: list[ReplicaRow] = field(default_factory=list)
    # Called with "before" and "after" around each change (a Qt model must hear both).
    listeners: list[Callable[[str], None]] = field(default_factory=list)
    updated_at: float | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ReplicaRow]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> ReplicaRow:
        return self.rows[index]

    def update(self, statuses: list[dict[str, Any]], now: float | None = None) -> None:
        """Merge a round of status messages; replicas not heard this round keep their last row."""
        now = time.monotonic() if now is None else now
        by_id = {r.replica: r for r in self.rows}
        for s in statuses:
            by_id[s["replica"]] = ReplicaRow.from_status(s, now)
        head = max((r.seq for r in by_id.values()), default=0)
        # Lag against the head of everyone known, so a silent replica's lag keeps growing with the others.
        rows = [r if r.lag == head - r.seq else _with_lag(r, head - r.seq) for r in by_id.values()]
        rows.sort(key=lambda r: (r.shown_role(now) != "primary", r.shown_role(now) == "silent", r.replica))
        for listener in self.listeners:
            listener("before")
        self.rows = rows
        self.updated_at = now
        for listener in self.listeners:
            listener("after")

    @property
    def primary(self) -> ReplicaRow | None:
        now = time.monotonic()
        return next((r for r in self.rows if r.shown_role(now) == "primary"), None)


def _with_lag(row: ReplicaRow, lag: int) -> ReplicaRow:
    return replace(row, lag=lag)


@dataclass(frozen=True)
class DeadLetter:
    """A command the primary could not handle, and why."""

    reason: str
    replica: str
    sender: str
    type: str
    command_id: str


@dataclass(frozen=True)
class DeadLetters:
    """The dead-letter queue: how many wait there, and the reasons of some of them."""

    count: int | None  # None: the queue does not exist (no ledger set up on this prefix)
    latest: tuple[DeadLetter, ...] = ()


@dataclass
class ConsoleState:
    """Everything the console shows: the board, the dead letters, the fee."""

    board: ReplicaBoard = field(default_factory=ReplicaBoard)
    dead: DeadLetters = field(default_factory=lambda: DeadLetters(None))
    fee_bps: int | None = None
    dead_listeners: list[Callable[[str], None]] = field(default_factory=list)

    def set_dead_letters(self, dead: DeadLetters) -> None:
        for listener in self.dead_listeners:
            listener("before")
        self.dead = dead
        for listener in self.dead_listeners:
            listener("after")
