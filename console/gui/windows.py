"""The operator console window (the heir of CBLcc): the server chain, dead letters, accounts, fee, log."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from broker.money import format_minor, parse_minor
from broker.settings import Settings
from console.gui.models import dead_letters_model, replicas_model
from console.gui.operator import Operator, read_dead_letters
from console.gui.state import ConsoleState, DeadLetters, ReplicaRow
from console.status import collect_status
from peer.gui.worker import Runner

__all__ = ["ConsoleWindow"]

_PEEK = 5


def _table(model: Any, stretch: int) -> QTableView:
    view = QTableView()
    view.setModel(model)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.verticalHeader().setVisible(False)
    view.verticalHeader().setDefaultSectionSize(24)
    header = view.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
    return view


def _bold(label: QLabel, grow: int = 0) -> QLabel:
    font = QFont(label.font())
    font.setBold(True)
    if grow:
        font.setPointSize(font.pointSize() + grow)
    label.setFont(font)
    return label


class ConsoleWindow(QMainWindow):
    """Replicas refreshed every ``interval`` seconds; operator actions run on the :class:`Runner`.

    ``loaded`` fires once, after the first round of status messages and the ledger facts have come in.
    """

    loaded = Signal()

    def __init__(self, settings: Settings, runner: Runner, operator_key: Ed25519PrivateKey | None, *,
                 key_problem: str = "", interval: float = 1.0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.runner = runner
        self.key = operator_key
        self.interval = interval
        self.state = ConsoleState()
        self.last_seq = 0
        self.last_error = ""
        self._polling = False
        self._pending_load = {"status", "info"}
        self._roles: dict[str, str] = {}

        self.replicas = replicas_model(self.state.board, self)
        self.dead_model = dead_letters_model(lambda: self.state.dead.latest, self)
        self.state.dead_listeners.append(self.dead_model.changing)

        self.summary = QLabel("listening for replicas…")
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.replicas_table = _table(self.replicas, stretch=8)
        self.replicas_table.setMinimumHeight(110)
        chain = QGroupBox("Ledger replicas")
        cl = QVBoxLayout(chain)
        cl.addWidget(self.summary)
        cl.addWidget(self.replicas_table)

        self.dead_count = _bold(QLabel("…"), 6)
        self.dead_table = _table(self.dead_model, stretch=0)
        dead = QGroupBox("Dead-letter queue")
        dl = QVBoxLayout(dead)
        row = QHBoxLayout()
        row.addWidget(QLabel("messages waiting"))
        row.addWidget(self.dead_count)
        row.addStretch(1)
        dl.addLayout(row)
        dl.addWidget(QLabel(f"Latest reasons (up to {_PEEK}):"))
        dl.addWidget(self.dead_table)

        self.account = QLineEdit(placeholderText="login, or owner")
        self.lookup_button = QPushButton("Look up")
        self.balance = QLabel("")
        self.balance.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        accounts = QGroupBox("Accounts")
        al = QVBoxLayout(accounts)
        ar = QHBoxLayout()
        ar.addWidget(self.account, 1)
        ar.addWidget(self.lookup_button)
        al.addLayout(ar)
        al.addWidget(self.balance)

        self.deposit_login = QLineEdit(placeholderText="login")
        self.deposit_amount = QLineEdit(placeholderText="e.g. 100.00")
        self.deposit_memo = QLineEdit()
        self.deposit_button = QPushButton("Deposit")
        deposit = QGroupBox("Deposit")
        df = QFormLayout(deposit)
        df.addRow("Account", self.deposit_login)
        df.addRow("Amount", self.deposit_amount)
        df.addRow("Memo", self.deposit_memo)
        df.addRow("", self.deposit_button)

        self.fee_now = QLabel("…")
        self.fee_bps = QSpinBox()
        self.fee_bps.setRange(0, 10_000)
        self.fee_bps.setSuffix(" bps")
        self.fee_button = QPushButton("Set")
        fee = QGroupBox("Commission")
        fl = QHBoxLayout(fee)
        fl.addWidget(QLabel("now"))
        fl.addWidget(_bold(self.fee_now))
        fl.addStretch(1)
        fl.addWidget(self.fee_bps)
        fl.addWidget(self.fee_button)

        self.key_note = QLabel(key_problem)
        self.key_note.setWordWrap(True)
        self.key_note.setStyleSheet("color: #8b1a10")
        self.key_note.setVisible(bool(key_problem))
        ops = QWidget()
        ol = QVBoxLayout(ops)
        ol.setContentsMargins(0, 0, 0, 0)
        for w in (self.key_note, accounts, deposit, fee):
            ol.addWidget(w)
        ol.addStretch(1)
        controls: list[QWidget] = [self.account, self.lookup_button, self.deposit_login, self.deposit_amount,
                                   self.deposit_memo, self.deposit_button, self.fee_bps, self.fee_button]
        for control in controls:
            control.setEnabled(operator_key is not None)

        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        log = QGroupBox("Log")
        QVBoxLayout(log).addWidget(self.log_view)

        middle = QSplitter(Qt.Orientation.Horizontal)
        middle.addWidget(dead)
        middle.addWidget(ops)
        middle.setStretchFactor(0, 3)
        middle.setStretchFactor(1, 2)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(chain)
        split.addWidget(middle)
        split.addWidget(log)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setStretchFactor(2, 1)
        self.setCentralWidget(split)
        self.setWindowTitle(f"ACB console: {settings.names.prefix} on {settings.broker_url.rsplit('@', 1)[-1]}")
        self.resize(1100, 760)

        self.timer = QTimer(self)
        self.timer.setInterval(int(interval * 1000))
        self.timer.timeout.connect(self.poll)
        self.lookup_button.clicked.connect(lambda: self.look_up(self.account.text().strip()))
        self.account.returnPressed.connect(lambda: self.look_up(self.account.text().strip()))
        self.deposit_button.clicked.connect(self.deposit_from_form)
        self.fee_button.clicked.connect(lambda: self.set_fee(self.fee_bps.value()))

    # -- plumbing ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin polling the replicas and read the ledger's public facts."""
        self.log(f"watching prefix {self.settings.names.prefix}")
        self.timer.start()
        self.poll()
        self._ledger_info()

    def log(self, text: str) -> None:
        self.log_view.appendPlainText(f"{time.strftime('%H:%M:%S')}  {text}")

    def show_error(self, text: str) -> None:
        self.last_error = text
        self.log(f"error: {text}")
        self.statusBar().showMessage(f"Error: {text}", 15_000)

    def _loaded(self, part: str) -> None:
        if part in self._pending_load:
            self._pending_load.discard(part)
            if not self._pending_load:
                self.loaded.emit()

    def _operate(self, fn: Callable[[Operator], Any], done: Callable[[Any], None]) -> None:
        s, key, seq = self.settings, self.key, self.last_seq

        def job() -> tuple[Any, int]:
            with Operator(s.broker_url, s.names, key, min_seq=seq) as op:
                return fn(op), op.last_seq

        def ok(res: tuple[Any, int]) -> None:
            result, self.last_seq = res[0], max(self.last_seq, res[1])
            done(result)

        self.runner.submit(lambda _job: job(), done=ok, failed=self.show_error)

    # -- replicas and dead letters -----------------------------------------------------------------
    def poll(self) -> None:
        """One round: status messages for about a second, then the dead-letter count."""
        if self._polling:
            return
        self._polling = True
        s, known = self.settings, self.state.dead.count
        wait = max(1.05, self.interval)  # every replica reports once a second

        def job() -> tuple[list[dict[str, Any]], DeadLetters]:
            statuses = collect_status(s.operator_broker_url, s.names, wait, home=s.home)
            return statuses, read_dead_letters(s.operator_broker_url, s.names, peek=_PEEK, known_count=known)

        def done(res: tuple[list[dict[str, Any]], DeadLetters]) -> None:
            self._polling = False
            statuses, dead = res
            self.state.board.update(statuses)
            self._note_changes()
            if dead.count == self.state.dead.count and not dead.latest:
                dead = DeadLetters(dead.count, self.state.dead.latest)
            if dead.count != self.state.dead.count and self.state.dead.count is not None:
                self.log(f"dead-letter queue: {self.state.dead.count} -> {dead.count}")
            self.state.set_dead_letters(dead)
            self.dead_count.setText("no queue" if dead.count is None else str(dead.count))
            self.dead_count.setStyleSheet("color: #8b1a10" if dead.count else "")
            self._loaded("status")

        def failed(text: str) -> None:
            self._polling = False
            self.show_error(text)

        self.runner.submit(lambda _job: job(), done=done, failed=failed)

    def _note_changes(self) -> None:
        now = time.monotonic()
        board = self.state.board
        for r in board:
            role = r.shown_role(now)
            before = self._roles.get(r.replica)
            if before != role:
                self.log(f"{r.replica} is {role}" + (f" at epoch {r.epoch}" if role == "primary" else "")
                         + (f": {r.halted}" if r.halted else "") + (f" (was {before})" if before else ""))
                self._roles[r.replica] = role
        self.summary.setText(self._summary(board.primary, len(board)))

    def _summary(self, primary: ReplicaRow | None, n: int) -> str:
        if n == 0:
            return f"no replica heard on prefix <b>{self.settings.names.prefix}</b>"
        head = max(r.seq for r in self.state.board)
        who = (f"primary <b>{primary.replica}</b> at epoch {primary.epoch}" if primary
               else "<span style='color:#8b1a10'><b>no primary</b></span>")
        fee = f" · commission {self.state.fee_bps / 100:.2f}%" if self.state.fee_bps is not None else ""
        return f"{n} replica{'s' if n != 1 else ''} · {who} · head seq {head}{fee}"

    # -- operator actions --------------------------------------------------------------------------
    def _ledger_info(self) -> None:
        def done(info: dict[str, Any]) -> None:
            self.state.fee_bps = info["fee_bps"]
            self.fee_now.setText(f"{info['fee_bps']} bps ({info['fee_bps'] / 100:.2f}%)")
            self.fee_bps.setValue(info["fee_bps"])
            self.summary.setText(self._summary(self.state.board.primary, len(self.state.board)))
            self._loaded("info")

        self._operate(lambda op: op.ledger_info(), done)

    def look_up(self, account: str) -> None:
        if not account:
            return

        def done(b: dict[str, Any]) -> None:
            self.balance.setText(f"<b>{b['account']}</b>: available <b>{format_minor(b['available'])}</b>, "
                                 f"held {format_minor(b['held'])} <small>(seq {b['seq']})</small>")

        self.balance.setText(f"looking up {account}…")
        self._operate(lambda op: op.balance(account), done)

    def deposit_from_form(self) -> None:
        try:
            amount = parse_minor(self.deposit_amount.text())
        except ValueError as exc:
            self.show_error(str(exc))
            return
        self.deposit(self.deposit_login.text().strip(), amount, self.deposit_memo.text().strip())

    def deposit(self, account: str, amount: int, memo: str = "") -> None:
        def done(res: dict[str, Any]) -> None:
            self.log(f"deposited {format_minor(amount)} to {account}; balance {format_minor(res['balance'])}")
            self.deposit_amount.clear()
            self.deposit_memo.clear()
            self.account.setText(account)
            self.look_up(account)

        self._operate(lambda op: op.deposit(account, amount, memo), done)

    def set_fee(self, bps: int) -> None:
        def done(_res: Any) -> None:
            self.log(f"commission set to {bps} bps ({bps / 100:.2f}%)")
            self._ledger_info()

        self._operate(lambda op: op.set_fee(bps), done)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.timer.stop()
        super().closeEvent(event)
