"""What the desktop app shows, as plain Python: no Qt here.

The Qt item models in :mod:`peer.gui.models` wrap these lists and follow
their changes through :class:`ListListener`; the business state stays here
(and, in truth, on the ledger), never inside a ``QAbstractTableModel``.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = [
    "DesktopState",
    "Download",
    "FlowLine",
    "Hit",
    "ListListener",
    "ObservableList",
    "SaleLine",
    "human_size",
    "human_speed",
]

T = TypeVar("T")


class ListListener:
    """Told before and after each change of an :class:`ObservableList` (Qt models need both)."""

    def begin_reset(self) -> None: ...
    def end_reset(self) -> None: ...
    def begin_insert(self, index: int) -> None: ...
    def end_insert(self) -> None: ...
    def changed(self, index: int) -> None: ...


class ObservableList(Generic[T]):
    """A list that tells its listeners when it is replaced, grows, or an item changes in place."""

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._items: list[T] = list(items)
        self._listeners: list[ListListener] = []

    def subscribe(self, listener: ListListener) -> None:
        self._listeners.append(listener)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> T:
        return self._items[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def index(self, item: T) -> int:
        return self._items.index(item)

    def replace(self, items: Iterable[T]) -> None:
        for listener in self._listeners:
            listener.begin_reset()
        self._items = list(items)
        for listener in self._listeners:
            listener.end_reset()

    def append(self, item: T) -> None:
        index = len(self._items)
        for listener in self._listeners:
            listener.begin_insert(index)
        self._items.append(item)
        for listener in self._listeners:
            listener.end_insert()

    def touch(self, item: T) -> None:
        """Say that ``item`` (already in the list) changed in place."""
        index = self._items.index(item)
        for listener in self._listeners:
            listener.changed(index)


@dataclass(frozen=True)
class Hit:
    """A published document as the catalog returns it."""

    doc_id: str
    title: str
    topic: str
    provider: str
    price: int
    size: int
    endpoint: str = ""
    description: str = ""

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Hit:
        return cls(d["doc_id"], d["title"], d["topic"], d["provider"], int(d["price"]), int(d["size"]),
                   d.get("endpoint", ""), d.get("description", ""))


@dataclass(frozen=True)
class FlowLine:
    """One line of the account's cash-flow history (amount signed: + credit, - debit)."""

    seq: int
    at_ms: int
    kind: str
    amount: int
    counterparty: str = ""
    doc_id: str = ""
    sale_id: str = ""
    memo: str = ""

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> FlowLine:
        return cls(int(d["seq"]), int(d["at_ms"]), d["kind"], int(d["amount"]), d.get("counterparty") or "",
                   d.get("doc_id") or "", d.get("sale_id") or "", d.get("memo") or "")


@dataclass(frozen=True)
class SaleLine:
    """A sale this user bought or sold in."""

    sale_id: str
    doc_id: str
    consumer: str
    provider: str
    price: int
    fee: int
    status: str
    reason: str = ""

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> SaleLine:
        return cls(d["sale_id"], d["doc_id"], d["consumer"], d["provider"], int(d["price"]), int(d["fee"]),
                   d["status"], d.get("reason") or "")


@dataclass(eq=False)
class Download:
    """One purchase in progress or done; mutated as the worker reports, then ``touch``-ed."""

    doc_id: str
    title: str
    price: int
    size: int
    dest: Path
    state: str = "queued"
    done: int = 0
    total: int = 0
    speed_bps: float = 0.0
    message: str = ""
    sale_id: str = ""
    _last: tuple[float, int] | None = field(default=None, repr=False)
    _first: tuple[float, int] | None = field(default=None, repr=False)

    @property
    def percent(self) -> int:
        total = self.total or self.size
        return 100 if self.state == "done" else (int(100 * self.done / total) if total else 0)

    def record(self, done: int, total: int, now: float | None = None) -> None:
        """A progress report: keep the byte counts and a smoothed speed."""
        now = time.monotonic() if now is None else now
        if self._last is not None:
            then, before = self._last
            if now > then and done >= before:
                rate = (done - before) / (now - then)
                self.speed_bps = rate if self.speed_bps == 0 else 0.7 * self.speed_bps + 0.3 * rate
        self._last = (now, done)
        if self._first is None:
            self._first = (now, done)
        self.done, self.total = done, total

    def restart(self) -> None:
        """Try again (the client resumes the same sale from the first segment not yet stored)."""
        self.state, self.message, self.speed_bps = "starting", "", 0.0
        self._first = self._last = None

    def finish(self, state: str, now: float | None = None) -> None:
        """The purchase ended: keep the average speed of the whole transfer."""
        now = time.monotonic() if now is None else now
        self.state = state
        if self._first is not None and self._last is not None and self._last[0] > self._first[0]:
            self.speed_bps = (self._last[1] - self._first[1]) / (self._last[0] - self._first[0])
        if state == "done":
            self.done = self.total = self.total or self.size


@dataclass
class DesktopState:
    """Everything the main window shows for one logged-in user."""

    login: str
    hits: ObservableList[Hit] = field(default_factory=ObservableList)
    mine: ObservableList[Hit] = field(default_factory=ObservableList)
    flows: ObservableList[FlowLine] = field(default_factory=ObservableList)
    sales: ObservableList[SaleLine] = field(default_factory=ObservableList)
    downloads: ObservableList[Download] = field(default_factory=ObservableList)
    available: int | None = None
    held: int | None = None
    fee_bps: int | None = None


def human_size(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_speed(bps: float) -> str:
    return f"{human_size(bps)}/s" if bps > 0 else ""
