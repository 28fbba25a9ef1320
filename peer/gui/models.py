"""Qt item models over the plain lists of :mod:`peer.gui.state`.

A :class:`ListTableModel` holds no data of its own: it reads an
:class:`~peer.gui.state.ObservableList` through a list of :class:`Column`
and re-emits the list's changes as Qt model signals.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor

from broker.money import format_minor
from peer.gui.state import (
    Download,
    FlowLine,
    Hit,
    ListListener,
    ObservableList,
    SaleLine,
    human_size,
    human_speed,
)

__all__ = [
    "CREDIT",
    "DEBIT",
    "PROGRESS_ROLE",
    "SORT_ROLE",
    "Column",
    "ListTableModel",
    "downloads_model",
    "flows_model",
    "hits_model",
    "sales_model",
]

SORT_ROLE = Qt.ItemDataRole.UserRole
PROGRESS_ROLE = Qt.ItemDataRole.UserRole + 1
ITEM_ROLE = Qt.ItemDataRole.UserRole + 2

CREDIT = QColor("#1b7f3a")
DEBIT = QColor("#b3261e")
_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
_LEFT = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
_Index = QModelIndex | QPersistentModelIndex


@dataclass(frozen=True)
class Column:
    """How one column shows an item: its text, and optionally colour, sort key, tooltip, progress."""

    title: str
    text: Callable[[Any], str]
    right: bool = False
    color: Callable[[Any], QColor | None] | None = None
    sort: Callable[[Any], Any] | None = None
    tooltip: Callable[[Any], str] | None = None
    progress: Callable[[Any], int] | None = None


class _Forward(ListListener):
    def __init__(self, model: ListTableModel) -> None:
        self.model = model

    def begin_reset(self) -> None:
        self.model.beginResetModel()

    def end_reset(self) -> None:
        self.model.endResetModel()

    def begin_insert(self, index: int) -> None:
        self.model.beginInsertRows(QModelIndex(), index, index)

    def end_insert(self) -> None:
        self.model.endInsertRows()

    def changed(self, index: int) -> None:
        last = self.model.columnCount() - 1
        self.model.dataChanged.emit(self.model.index(index, 0), self.model.index(index, last))


class ListTableModel(QAbstractTableModel):
    """A read-only table over an observable list of typed items."""

    def __init__(self, items: ObservableList[Any], columns: Sequence[Column], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.items = items
        self.columns = list(columns)
        items.subscribe(_Forward(self))

    def item(self, row: int) -> Any:
        return self.items[row]

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self.items)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal:
            if role == Qt.ItemDataRole.DisplayRole:
                return self.columns[section].title
            if role == Qt.ItemDataRole.TextAlignmentRole:
                return _RIGHT if self.columns[section].right else _LEFT
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self.items):
            return None
        item, col = self.items[index.row()], self.columns[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            return col.text(item)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return _RIGHT if col.right else _LEFT
        if role == Qt.ItemDataRole.ForegroundRole and col.color is not None:
            color = col.color(item)
            return QBrush(color) if color is not None else None
        if role == Qt.ItemDataRole.ToolTipRole and col.tooltip is not None:
            return col.tooltip(item)
        if role == SORT_ROLE:
            return col.sort(item) if col.sort is not None else col.text(item)
        if role == PROGRESS_ROLE and col.progress is not None:
            return col.progress(item)
        if role == ITEM_ROLE:
            return item
        return None


def _money(amount: int) -> str:
    return format_minor(amount)


def hits_model(items: ObservableList[Hit], parent: QObject | None = None) -> ListTableModel:
    return ListTableModel(items, [
        Column("Title", lambda h: h.title, tooltip=lambda h: h.description or h.title),
        Column("Topic", lambda h: h.topic),
        Column("Provider", lambda h: h.provider),
        Column("Price", lambda h: _money(h.price), right=True, sort=lambda h: h.price),
        Column("Size", lambda h: human_size(h.size), right=True, sort=lambda h: h.size),
        Column("Document", lambda h: h.doc_id),
    ], parent)


def _amount_color(f: FlowLine) -> QColor | None:
    return CREDIT if f.amount > 0 else DEBIT if f.amount < 0 else None


def _when(at_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at_ms / 1000))


def flows_model(items: ObservableList[FlowLine], parent: QObject | None = None) -> ListTableModel:
    return ListTableModel(items, [
        Column("When", lambda f: _when(f.at_ms), sort=lambda f: f.seq),
        Column("Kind", lambda f: f.kind.replace("_", " ")),
        Column("Amount", lambda f: ("+" if f.amount > 0 else "") + _money(f.amount), right=True,
               color=_amount_color, sort=lambda f: f.amount),
        Column("Counterparty", lambda f: f.counterparty),
        Column("Document", lambda f: f.doc_id),
        Column("Memo", lambda f: f.memo or f.sale_id),
    ], parent)


_STATUS_COLORS = {"settled": CREDIT, "open": QColor("#8a6d00"), "voided": QColor("#666666"),
                  "refunded": DEBIT}


def sales_model(items: ObservableList[SaleLine], me: str, parent: QObject | None = None) -> ListTableModel:
    return ListTableModel(items, [
        Column("Sale", lambda s: s.sale_id),
        Column("Role", lambda s: "bought" if s.consumer == me else "sold"),
        Column("Status", lambda s: s.status, color=lambda s: _STATUS_COLORS.get(s.status),
               tooltip=lambda s: s.reason),
        Column("Document", lambda s: s.doc_id),
        Column("With", lambda s: s.provider if s.consumer == me else s.consumer),
        Column("Price", lambda s: _money(s.price), right=True, sort=lambda s: s.price),
        Column("Commission", lambda s: _money(s.fee), right=True, sort=lambda s: s.fee),
    ], parent)


_STATE_COLORS = {"done": CREDIT, "failed": DEBIT, "disputed": DEBIT, "cancelled": QColor("#666666"),
                 "price changed": QColor("#9a6700")}


def downloads_model(items: ObservableList[Download], parent: QObject | None = None) -> ListTableModel:
    return ListTableModel(items, [
        Column("Title", lambda d: d.title),
        Column("State", lambda d: d.state, color=lambda d: _STATE_COLORS.get(d.state), tooltip=lambda d: d.message),
        Column("Progress", lambda d: f"{d.percent}%", progress=lambda d: d.percent, sort=lambda d: d.percent),
        Column("Size", lambda d: human_size(d.size), right=True, sort=lambda d: d.size),
        Column("Speed", lambda d: human_speed(d.speed_bps) if d.state in ("downloading", "done") else "",
               right=True, tooltip=lambda d: "average over the transfer" if d.state == "done" else ""),
        Column("Price", lambda d: _money(d.price), right=True),
        Column("Saved to", lambda d: str(d.dest) if d.state == "done" else d.message, tooltip=lambda d: d.message),
    ], parent)
