"""Qt item models over the console's plain state (:mod:`console.gui.state`)."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor

from console.gui.state import DeadLetter, ReplicaBoard, ReplicaRow

__all__ = ["ROLE_COLORS", "Column", "RowsModel", "dead_letters_model", "replicas_model"]

_Index = QModelIndex | QPersistentModelIndex
_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
_LEFT = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter

# Background, foreground per role: green primary, blue backups, red halted, grey silent.
ROLE_COLORS: dict[str, tuple[QColor, QColor]] = {
    "primary": (QColor("#d7f2dd"), QColor("#14532d")),
    "backup": (QColor("#dbe8fb"), QColor("#1e3a8a")),
    "halted": (QColor("#fbd9d5"), QColor("#8b1a10")),
    "silent": (QColor("#e5e5e5"), QColor("#555555")),
}


@dataclass(frozen=True)
class Column:
    title: str
    text: Callable[[Any], str]
    right: bool = False
    colors: Callable[[Any], tuple[QColor, QColor] | None] | None = None
    tooltip: Callable[[Any], str] | None = None


class RowsModel(QAbstractTableModel):
    """A read-only table over a sequence owned elsewhere; ``rows()`` returns it as it is now."""

    def __init__(self, rows: Callable[[], Sequence[Any]], columns: Sequence[Column],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.rows = rows
        self.columns = list(columns)

    def changing(self, phase: str) -> None:
        """Listener for a plain model: reset around each change."""
        if phase == "before":
            self.beginResetModel()
        else:
            self.endResetModel()

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self.rows())

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.columns[section].title
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.TextAlignmentRole:
            return _RIGHT if self.columns[section].right else _LEFT
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        rows = self.rows()
        if not index.isValid() or index.row() >= len(rows):
            return None
        item, col = rows[index.row()], self.columns[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            return col.text(item)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return _RIGHT if col.right else _LEFT
        if role in (Qt.ItemDataRole.BackgroundRole, Qt.ItemDataRole.ForegroundRole) and col.colors is not None:
            colors = col.colors(item)
            if colors is not None:
                return QBrush(colors[0] if role == Qt.ItemDataRole.BackgroundRole else colors[1])
        if role == Qt.ItemDataRole.ToolTipRole and col.tooltip is not None:
            return col.tooltip(item)
        return None


def _uptime(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def replicas_model(board: ReplicaBoard, parent: QObject | None = None) -> RowsModel:
    def role(r: ReplicaRow) -> str:
        return r.shown_role(time.monotonic())

    def role_colors(r: ReplicaRow) -> tuple[QColor, QColor] | None:
        return ROLE_COLORS.get(role(r))

    def lag_colors(r: ReplicaRow) -> tuple[QColor, QColor] | None:
        return ROLE_COLORS["halted"] if r.lag > 100 else None

    model = RowsModel(lambda: board.rows, [
        Column("Replica", lambda r: r.replica),
        Column("Role", role, colors=role_colors,
               tooltip=lambda r: f"last heard {time.monotonic() - r.heard_at:.1f} s ago"),
        Column("Epoch", lambda r: str(r.epoch), right=True),
        Column("Seq", lambda r: str(r.seq), right=True),
        Column("Lag", lambda r: str(r.lag), right=True, colors=lag_colors),
        Column("Cmd/s", lambda r: f"{r.commands_per_s:.1f}", right=True),
        Column("Up", lambda r: _uptime(r.uptime_s), right=True),
        Column("Host", lambda r: f"{r.host}:{r.pid}"),
        Column("Store", lambda r: r.store, tooltip=lambda r: r.store),
        Column("Halted because", lambda r: r.halted or "", colors=lambda r: ROLE_COLORS["halted"] if r.halted else None,
               tooltip=lambda r: r.halted or ""),
    ], parent)
    board.listeners.append(model.changing)
    return model


def dead_letters_model(letters: Callable[[], Sequence[DeadLetter]], parent: QObject | None = None) -> RowsModel:
    return RowsModel(letters, [
        Column("Reason", lambda d: d.reason, tooltip=lambda d: d.reason),
        Column("Command", lambda d: d.type),
        Column("Sender", lambda d: d.sender),
        Column("Replica", lambda d: d.replica),
    ], parent)
