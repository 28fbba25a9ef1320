"""The four tabs of the desktop app: Search, Share, Downloads, Account.

Panels only show things and say what the user asked for (signals); the main
window decides what to run. Each table reads a model from :mod:`peer.gui.models`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QFont, QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from broker.money import format_minor, parse_minor
from peer.gui.models import ITEM_ROLE, PROGRESS_ROLE, SORT_ROLE, ListTableModel
from peer.gui.state import Hit, human_size

__all__ = ["AccountPanel", "DownloadsPanel", "SearchPanel", "SharePanel", "make_table"]


def make_table(model: ListTableModel, *, stretch: int = 0) -> QTableView:
    """A sortable, row-selecting table over ``model``; column ``stretch`` takes the spare width."""
    proxy = QSortFilterProxyModel(model)
    proxy.setSourceModel(model)
    proxy.setSortRole(SORT_ROLE)
    view = QTableView()
    view.setModel(proxy)
    view.setSortingEnabled(True)
    view.sortByColumn(-1, Qt.SortOrder.AscendingOrder)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.setAlternatingRowColors(True)
    view.verticalHeader().setVisible(False)
    view.verticalHeader().setDefaultSectionSize(24)
    header = view.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
    header.setHighlightSections(False)
    return view


def selected_item(view: QTableView) -> Any:
    rows = view.selectionModel().selectedRows()
    return rows[0].data(ITEM_ROLE) if rows else None


def _heading(text: str) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setBold(True)
    label.setFont(font)
    return label


class SearchPanel(QWidget):
    """Query, topic, results; Buy the selected document."""

    search_requested = Signal(str, str)
    buy_requested = Signal(object)

    def __init__(self, model: ListTableModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.query = QLineEdit(placeholderText="words of the title or description (empty: everything)")
        self.topic = QComboBox(editable=True)
        self.topic.setMinimumWidth(140)
        topic_edit = self.topic.lineEdit()
        assert topic_edit is not None  # an editable combo box has one
        topic_edit.setPlaceholderText("any topic")
        self.search_button = QPushButton("Search")
        self.search_button.setDefault(True)
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Find"))
        bar.addWidget(self.query, 1)
        bar.addWidget(QLabel("Topic"))
        bar.addWidget(self.topic)
        bar.addWidget(self.search_button)

        self.table = make_table(model)
        self.count = QLabel("")
        self.detail = QLabel("")
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.buy_button = QPushButton("Buy and download")
        self.buy_button.setEnabled(False)
        foot = QHBoxLayout()
        foot.addWidget(self.detail, 1)
        foot.addWidget(self.buy_button, 0, Qt.AlignmentFlag.AlignTop)

        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.count)
        layout.addWidget(self.table, 1)
        layout.addLayout(foot)

        self.query.returnPressed.connect(self._search)
        topic_edit.returnPressed.connect(self._search)
        self.search_button.clicked.connect(self._search)
        self.buy_button.clicked.connect(self._buy)
        self.table.doubleClicked.connect(lambda _i: self._buy())
        self.table.selectionModel().selectionChanged.connect(self._selected)
        model.modelReset.connect(self._counted)

    def _search(self) -> None:
        self.search_requested.emit(self.query.text().strip(), self.topic.currentText().strip())

    def _counted(self) -> None:
        n = self.model.rowCount()
        self.count.setText(f"{n} document{'s' if n != 1 else ''} found" if n else "no documents found")
        # Offer every topic seen so far, so a narrower search is one pick away.
        seen = {h.topic for h in self.model.items} | {self.topic.itemText(i) for i in range(self.topic.count())}
        current = self.topic.currentText()
        self.topic.blockSignals(True)
        self.topic.clear()
        self.topic.addItems([""] + sorted(seen - {""}))
        self.topic.setCurrentText(current)
        self.topic.blockSignals(False)
        self._selected()

    def selected(self) -> Hit | None:
        return selected_item(self.table)

    def _selected(self, *_: Any) -> None:
        hit = self.selected()
        self.buy_button.setEnabled(hit is not None)
        if hit is None:
            self.detail.setText("Select a document to see its details.")
            return
        self.detail.setText(
            f"<b>{hit.title}</b> by {hit.provider}, {format_minor(hit.price)} for {human_size(hit.size)}"
            f"<br>{hit.description or '<i>no description</i>'}"
            f"<br><small>document {hit.doc_id}, served from {hit.endpoint}</small>")

    def _buy(self) -> None:
        hit = self.selected()
        if hit is not None:
            self.buy_requested.emit(hit)


class SharePanel(QWidget):
    """Publish a file at a price; serve the shares; reprice or withdraw what is offered."""

    share_requested = Signal()
    serve_toggled = Signal(bool)
    refresh_requested = Signal()
    change_price_requested = Signal(object)
    unshare_requested = Signal(object)

    def __init__(self, model: ListTableModel, endpoint: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.path = QLineEdit(placeholderText="the file to offer")
        browse = QPushButton("Browse…")
        file_row = QHBoxLayout()
        file_row.addWidget(self.path, 1)
        file_row.addWidget(browse)
        self.title = QLineEdit()
        self.topic = QLineEdit(placeholderText="e.g. reports")
        self.price = QLineEdit(placeholderText="e.g. 12.50")
        self.endpoint = QLineEdit(endpoint)
        self.endpoint.setToolTip("host:port where your shares are served to buyers")
        self.description = QLineEdit()
        self.share_button = QPushButton("Share")
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)  # hashing a file takes a while but says nothing of its progress
        self.busy.setMaximumWidth(160)
        self.busy.hide()
        form = QFormLayout()
        form.addRow("File", file_row)
        form.addRow("Title", self.title)
        form.addRow("Topic", self.topic)
        form.addRow("Price", self.price)
        form.addRow("Endpoint", self.endpoint)
        form.addRow("Description", self.description)
        actions = QHBoxLayout()
        actions.addStretch(1)
        actions.addWidget(self.busy)
        actions.addWidget(self.share_button)
        form.addRow(actions)
        publish = QGroupBox("Offer a document")
        publish.setLayout(form)

        self.serve_button = QPushButton("Start serving")
        self.serve_button.setCheckable(True)
        self.serving = QLabel("Not serving: buyers cannot download your documents.")
        serve_row = QHBoxLayout()
        serve_row.addWidget(self.serving, 1)
        serve_row.addWidget(self.serve_button)

        self.table = make_table(model)
        self.table.hideColumn(2)  # the provider: always me
        refresh = QPushButton("Refresh")
        self.price_button = QPushButton("Change price…")
        self.unshare_button = QPushButton("Unshare")
        buttons = QHBoxLayout()
        buttons.addWidget(_heading("My documents"))
        buttons.addStretch(1)
        for b in (refresh, self.price_button, self.unshare_button):
            buttons.addWidget(b)

        layout = QVBoxLayout(self)
        layout.addWidget(publish)
        layout.addLayout(serve_row)
        layout.addLayout(buttons)
        layout.addWidget(self.table, 1)

        browse.clicked.connect(self._browse)
        self.share_button.clicked.connect(self.share_requested)
        self.serve_button.toggled.connect(self.serve_toggled)
        refresh.clicked.connect(self.refresh_requested)
        self.price_button.clicked.connect(lambda: self._with_selected(self.change_price_requested))
        self.unshare_button.clicked.connect(lambda: self._with_selected(self.unshare_requested))

    def _browse(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Offer a file")
        if name:
            self.path.setText(name)
            if not self.title.text():
                self.title.setText(Path(name).stem.replace("_", " "))

    def form(self) -> dict[str, Any]:
        """The form as a share request; raises ValueError with a message for the user."""
        path = Path(self.path.text().strip()).expanduser()
        if not self.path.text().strip() or not path.is_file():
            raise ValueError(f"no such file: {path}")
        title, topic = self.title.text().strip(), self.topic.text().strip()
        if not title or not topic:
            raise ValueError("a document needs a title and a topic")
        price = parse_minor(self.price.text())
        if price <= 0:
            raise ValueError("the price must be more than 0.00")
        endpoint = self.endpoint.text().strip()
        if ":" not in endpoint:
            raise ValueError("the endpoint is host:port")
        return {"path": path, "title": title, "topic": topic, "price": price, "endpoint": endpoint,
                "description": self.description.text().strip()}

    def set_busy(self, busy: bool) -> None:
        self.busy.setVisible(busy)
        self.share_button.setEnabled(not busy)

    def clear_form(self) -> None:
        for w in (self.path, self.title, self.price, self.description):
            w.clear()

    def _with_selected(self, signal: Any) -> None:
        hit = selected_item(self.table)
        if hit is not None:
            signal.emit(hit)


class ProgressDelegate(QStyledItemDelegate):
    """Draws a progress bar in cells whose model gives a PROGRESS_ROLE value."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        value = index.data(PROGRESS_ROLE)
        if value is None:
            super().paint(painter, option, index)
            return
        bar = QStyleOptionProgressBar()
        bar.rect = option.rect.adjusted(2, 3, -2, -3)  # type: ignore[attr-defined]
        bar.minimum, bar.maximum, bar.progress = 0, 100, int(value)  # type: ignore[attr-defined]
        bar.text = f"{int(value)}%"  # type: ignore[attr-defined]
        bar.textVisible = True  # type: ignore[attr-defined]
        bar.state = QStyle.StateFlag.State_Enabled | QStyle.StateFlag.State_Horizontal  # type: ignore[attr-defined]
        style = option.widget.style() if option.widget else QApplication.style()  # type: ignore[attr-defined]
        style.drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter)


class DownloadsPanel(QWidget):
    """Every purchase of this session, with its state, progress and speed; retry or cancel a failed one."""

    retry_requested = Signal(object)
    cancel_requested = Signal(object)

    def __init__(self, model: ListTableModel, folder: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.folder = QLineEdit(str(folder))
        choose = QPushButton("Choose…")
        row = QHBoxLayout()
        row.addWidget(QLabel("Save downloads in"))
        row.addWidget(self.folder, 1)
        row.addWidget(choose)
        self.table = make_table(model, stretch=6)
        self.table.setItemDelegateForColumn(2, ProgressDelegate(self.table))
        self.table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Fixed)
        self.table.setColumnWidth(2, 180)
        self.retry_button = QPushButton("Retry")
        self.retry_button.setToolTip("resume the same sale from where the download stopped")
        self.cancel_button = QPushButton("Cancel sale")
        self.cancel_button.setToolTip("void the open sale; the held money comes back")
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.retry_button)
        buttons.addWidget(self.cancel_button)
        self.steps = QLabel("")
        self.steps.setWordWrap(True)
        self.steps.setFrameShape(QFrame.Shape.StyledPanel)
        self.steps.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        layout.addWidget(_heading("What happened"))
        layout.addWidget(self.steps)
        choose.clicked.connect(self._choose)
        self.retry_button.clicked.connect(lambda: self._with_failed(self.retry_requested))
        self.cancel_button.clicked.connect(lambda: self._with_failed(self.cancel_requested))
        self.table.selectionModel().selectionChanged.connect(self._update_buttons)
        model.dataChanged.connect(self._update_buttons)
        self._update_buttons()

    def _failed_selected(self) -> Any:
        download = selected_item(self.table)
        return download if download is not None and download.state == "failed" else None

    def _update_buttons(self, *_: Any) -> None:
        failed = self._failed_selected() is not None
        self.retry_button.setEnabled(failed)
        self.cancel_button.setEnabled(failed)

    def _with_failed(self, signal: Any) -> None:
        download = self._failed_selected()
        if download is not None:
            signal.emit(download)

    def _choose(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Save downloads in", self.folder.text())
        if d:
            self.folder.setText(d)

    def log(self, text: str) -> None:
        lines = (self.steps.text().split("\n") if self.steps.text() else []) + [text]
        self.steps.setText("\n".join(lines[-6:]))


class AccountPanel(QWidget):
    """Available and held money, the cash-flow history and the sales."""

    refresh_requested = Signal()

    def __init__(self, flows: ListTableModel, sales: ListTableModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.available = QLabel("…")
        self.held = QLabel("…")
        self.fee = QLabel("…")
        big = QFont()
        big.setPointSize(big.pointSize() + 6)
        big.setBold(True)
        for w in (self.available, self.held):
            w.setFont(big)
            w.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        refresh = QPushButton("Refresh")
        grid = QGridLayout()
        grid.addWidget(QLabel("Available"), 0, 0)
        grid.addWidget(QLabel("Held for open purchases"), 0, 1)
        grid.addWidget(QLabel("Commission on sales"), 0, 2)
        grid.addWidget(self.available, 1, 0)
        grid.addWidget(self.held, 1, 1)
        grid.addWidget(self.fee, 1, 2)
        grid.addWidget(refresh, 1, 3, Qt.AlignmentFlag.AlignRight)
        grid.setColumnStretch(3, 1)
        grid.setHorizontalSpacing(40)

        self.flows_table = make_table(flows, stretch=5)
        self.sales_table = make_table(sales, stretch=3)
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(_heading("Cash flows"))
        tl.addWidget(self.flows_table)
        bottom = QWidget()
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(_heading("Sales"))
        bl.addWidget(self.sales_table)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(bottom)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)

        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(split, 1)
        refresh.clicked.connect(self.refresh_requested)

    def show_balance(self, available: int, held: int) -> None:
        self.available.setText(format_minor(available))
        self.held.setText(format_minor(held))

    def show_fee(self, bps: int) -> None:
        self.fee.setText(f"{bps / 100:.2f}%")
