"""The two PySide6 apps driven with qtbot against a real ledger replica on a private broker prefix.

One in-process replica (SQLite store, its own ``ACB_HOME`` and system keys)
serves the whole module; alice provides a document, bob has money, carol
has none. Screenshots go to ``$ACB_SCREENSHOT_DIR`` when set (the committed
ones in peer/gui/screenshots and console/gui/screenshots were saved from such runs),
otherwise to a temporary folder, and are checked for size either way.
"""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported anywhere

import hashlib
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QWidget

from broker import commands as c
from broker import queries as q
from broker.client import BrokerClient, connect
from broker.errors import BadSignature, BrokerError
from broker.settings import Settings
from broker.topology import Names, delete
from console.gui.app import build_window as build_console
from console.gui.models import ROLE_COLORS
from console.gui.windows import ConsoleWindow
from ledger.keys import init_system, load_operator_key, load_system
from ledger.replica import Replica, ReplicaConfig
from peer.client import Client
from peer.gui.app import build_window
from peer.gui.models import CREDIT, DEBIT
from peer.gui.session import Session
from peer.gui.windows import LoginDialog, MainWindow
from peer.gui.worker import Runner
from peer.identity import Profile

AMQP_URL = os.environ.get("ACB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PASSWORD = {"alice": "alice-secret-1", "bob": "bob-secret-12", "carol": "carol-secret-3"}
PRICE = 1250
DEPOSIT = 10_000
WAIT_MS = 20_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GuiMarket:
    """The module's replica and its settings, and alice's published document (users as the module docstring says)."""

    settings: Settings
    replica: Replica
    doc_id: str
    doc_path: Path
    endpoint: str
    shots: Path


@pytest.fixture(scope="module")
def gui_market() -> Iterator[GuiMarket]:
    """One replica on a private prefix for the whole module, with alice, bob and carol registered."""
    work = Path(tempfile.mkdtemp(prefix="acb-gui-"))
    init_system(work)
    names = Names(f"gui-{uuid.uuid4().hex[:8]}")
    replica = Replica(ReplicaConfig("gui-r1", AMQP_URL, f"sqlite:///{work / 'r1.db'}", names), load_system(work))
    replica.start()
    brokers: list[BrokerClient] = []

    def client() -> Client:
        brokers.append(BrokerClient(AMQP_URL, names))
        return Client(brokers[-1], work)

    # The apps' clients believe only replies signed by replicas this operator certified (broker.trust reads ACB_HOME).
    patch = pytest.MonkeyPatch()
    patch.setenv("ACB_HOME", str(work))
    try:
        alice, bob, carol, operator = client(), client(), client(), client()
        deadline = time.monotonic() + 20
        while True:
            try:
                operator.ledger_info()
                break
            except BrokerError:
                if time.monotonic() > deadline:
                    raise
        for who, cl in (("alice", alice), ("bob", bob), ("carol", carol)):
            cl.register(who, PASSWORD[who])
        operator.send(c.Deposit(account="bob", amount=DEPOSIT, memo="welcome credit"), sender=c.OPERATOR,
                      key=load_operator_key(work))
        doc = work / "report.pdf"
        doc.write_bytes(b"%PDF-1.4 access control and billing\n" + os.urandom(300_000))
        endpoint = f"127.0.0.1:{_free_port()}"
        shared = alice.share(doc, price=PRICE, topic="reports", title="Access control and billing report",
                             description="peer-to-peer sharing, billing, replication", endpoint=endpoint)
        alice.share(doc, price=499, topic="notes", title="Replication notes", endpoint=endpoint)
        shots = Path(os.environ.get("ACB_SCREENSHOT_DIR") or work / "shots")
        shots.mkdir(parents=True, exist_ok=True)
        yield GuiMarket(Settings(work, AMQP_URL, names, replica_url=AMQP_URL, operator_url=AMQP_URL), replica,
                     shared["doc_id"], doc, endpoint, shots)
    finally:
        patch.undo()
        for b in brokers:
            b.close()
        replica.stop()
        conn = connect(AMQP_URL)
        delete(conn.channel(), names)
        conn.close()
        shutil.rmtree(work, ignore_errors=True)


def _desktop(qtbot, gui_market: GuiMarket, login: str, tmp_path: Path) -> MainWindow:  # type: ignore[no-untyped-def]
    runner = Runner()
    session = Session(gui_market.settings, Profile(gui_market.settings.home, login).session())
    window = build_window(session, runner, download_dir=tmp_path / login, endpoint=gui_market.endpoint)
    window.confirm_actions = False
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.loaded, timeout=WAIT_MS):
        window.refresh_all()
    return window


def _close(window: QWidget, runner: Runner) -> None:
    window.close()
    runner.shutdown()


def _texts(model, column: int) -> list[str]:  # type: ignore[no-untyped-def]
    return [model.index(r, column).data() for r in range(model.rowCount())]


def _shoot(widget: QWidget, path: Path) -> None:
    widget.resize(1100, 700)
    widget.grab().save(str(path))
    image = QImage(str(path))
    assert image.width() >= 900 and image.height() >= 600, f"{path} looks empty"


def test_login_dialog_unlocks_keys_locally(qtbot, gui_market: GuiMarket) -> None:  # type: ignore[no-untyped-def]
    runner = Runner()
    session = Session(gui_market.settings)
    dialog = LoginDialog(session, runner)
    qtbot.addWidget(dialog)
    assert dialog.password.echoMode() == dialog.password.EchoMode.Password

    dialog.login.setText("bob")
    dialog.password.setText("not-the-password")
    dialog.ok.click()
    qtbot.waitUntil(lambda: dialog.error.text() != "", timeout=WAIT_MS)
    assert dialog.error.text() == "wrong password for bob"
    assert session.identity is None

    dialog.password.setText(PASSWORD["bob"])
    with qtbot.waitSignal(dialog.accepted, timeout=WAIT_MS):
        dialog.ok.click()
    assert session.login == "bob"
    assert dialog.password.text() == ""
    runner.shutdown()


def test_search_shows_the_published_document(qtbot, gui_market: GuiMarket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    window = _desktop(qtbot, gui_market, "bob", tmp_path)
    titles = _texts(window.hits, 0)
    assert "Access control and billing report" in titles and "Replication notes" in titles
    row = titles.index("Access control and billing report")
    assert [window.hits.index(row, col).data() for col in range(6)] == [
        "Access control and billing report", "reports", "alice", "12.50", "293.0 KiB", gui_market.doc_id]

    panel = window.search_panel
    panel.query.setText("billing")
    with qtbot.waitSignal(window.hits.modelReset, timeout=WAIT_MS):
        panel.search_button.click()
    assert _texts(window.hits, 0) == ["Access control and billing report"]
    assert panel.count.text() == "1 document found"

    panel.table.selectRow(0)
    assert panel.buy_button.isEnabled()
    assert "by alice, 12.50" in panel.detail.text()

    panel.query.setText("")
    panel.topic.setCurrentText("notes")
    with qtbot.waitSignal(window.hits.modelReset, timeout=WAIT_MS):
        panel.search_button.click()
    assert _texts(window.hits, 0) == ["Replication notes"]
    panel.topic.setCurrentText("")
    with qtbot.waitSignal(window.hits.modelReset, timeout=WAIT_MS):
        panel.search_button.click()
    _close(window, window.runner)


def test_account_tab_shows_deposit_and_flows(qtbot, gui_market: GuiMarket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    window = _desktop(qtbot, gui_market, "bob", tmp_path)
    panel = window.account_panel
    assert panel.available.text() == "100.00"
    assert panel.held.text() == "0.00"
    assert panel.fee.text() == "1.00%"
    assert "available 100.00" in window.who.text()
    flows = window.flows
    assert flows.rowCount() == 1
    assert [flows.index(0, col).data() for col in (1, 2, 5)] == ["deposit", "+100.00", "welcome credit"]
    assert flows.index(0, 2).data(Qt.ItemDataRole.ForegroundRole).color() == CREDIT
    assert window.sales.rowCount() == 0
    _close(window, window.runner)


def test_share_tab_lists_my_documents_and_reprices(qtbot, gui_market: GuiMarket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    window = _desktop(qtbot, gui_market, "alice", tmp_path)
    panel = window.share_panel
    assert sorted(_texts(window.mine, 0)) == ["Access control and billing report", "Replication notes"]

    # A bad form says why, without a round trip.
    panel.path.setText(str(gui_market.doc_path))
    panel.title.setText("Draft")
    panel.topic.setText("drafts")
    panel.price.setText("1.234")
    panel.share_button.click()
    assert window.last_error == "an amount has at most two decimals: '1.234'"

    # A good one publishes (hashing in the background) and shows up in the list.
    panel.price.setText("2.00")
    with qtbot.waitSignal(window.mine.modelReset, timeout=WAIT_MS):
        panel.share_button.click()
    assert "Draft" in _texts(window.mine, 0)
    assert panel.title.text() == ""

    draft = next(h for h in window.state.mine if h.title == "Draft")
    with qtbot.waitSignal(window.mine.modelReset, timeout=WAIT_MS):
        window.change_price(draft, 250)
    assert next(h for h in window.state.mine if h.title == "Draft").price == 250
    with qtbot.waitSignal(window.mine.modelReset, timeout=WAIT_MS):
        window.unshare(draft)
    assert "Draft" not in _texts(window.mine, 0)

    # Repricing to nothing is refused by the ledger, and the refusal keeps its code.
    report = next(h for h in window.state.mine if h.doc_id == gui_market.doc_id)
    window.change_price(report, 0)
    qtbot.waitUntil(lambda: window.last_error != "an amount has at most two decimals: '1.234'", timeout=WAIT_MS)
    assert window.last_error.startswith("bad_price: ")
    _close(window, window.runner)


def test_buy_runs_in_the_background_with_progress(qtbot, gui_market: GuiMarket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = _desktop(qtbot, gui_market, "alice", tmp_path)
    alice.share_panel.serve_button.click()  # serve on the endpoint the documents were published with
    assert alice.service is not None
    assert alice.share_panel.serving.text() == f"Serving 2 documents to buyers on {gui_market.endpoint}."

    bob = _desktop(qtbot, gui_market, "bob", tmp_path)
    panel = bob.search_panel
    row = _texts(bob.hits, 5).index(gui_market.doc_id)
    panel.table.selectRow(panel.table.model().mapFromSource(bob.hits.index(row, 0)).row())
    panel.buy_button.click()
    assert bob.tabs.currentWidget() is bob.downloads_panel
    download = bob.state.downloads[0]
    qtbot.waitUntil(lambda: download.state in ("done", "failed", "disputed"), timeout=WAIT_MS)
    assert download.state == "done", download.message
    assert [bob.downloads.index(0, col).data() for col in (0, 1, 2)] == [
        "Access control and billing report", "done", "100%"]
    assert hashlib.sha256(download.dest.read_bytes()).digest() == hashlib.sha256(gui_market.doc_path.read_bytes()).digest()
    assert "decrypted and verified" in bob.downloads_panel.steps.text()

    qtbot.waitUntil(lambda: bob.account_panel.available.text() == "87.50", timeout=WAIT_MS)
    # Newest first: the hold took the money from the available balance; the payment settled it from the hold.
    assert _texts(bob.flows, 1) == ["payment", "hold", "deposit"]
    assert _texts(bob.flows, 2) == ["0.00", "-12.50", "+100.00"]
    assert bob.flows.index(1, 2).data(Qt.ItemDataRole.ForegroundRole).color() == DEBIT
    assert [bob.sales.index(0, col).data() for col in (1, 2, 4, 5, 6)] == ["bought", "settled", "alice", "12.50", "0.13"]

    # Screenshots with real data: the search results, the finished download, the account.
    bob.tabs.setCurrentWidget(bob.search_panel)
    _shoot(bob, gui_market.shots / "desktop.png")
    bob.tabs.setCurrentWidget(bob.downloads_panel)
    _shoot(bob, gui_market.shots / "desktop-downloads.png")
    bob.tabs.setCurrentWidget(bob.account_panel)
    _shoot(bob, gui_market.shots / "desktop-account.png")
    alice.refresh_account()
    qtbot.waitUntil(lambda: alice.account_panel.available.text() == "12.37", timeout=WAIT_MS)
    alice.tabs.setCurrentWidget(alice.share_panel)
    _shoot(alice, gui_market.shots / "desktop-share.png")

    alice.share_panel.serve_button.click()
    assert alice.service is None
    _close(bob, bob.runner)
    _close(alice, alice.runner)


def test_a_failed_download_can_be_cancelled_or_retried(qtbot, gui_market: GuiMarket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bob = _desktop(qtbot, gui_market, "bob", tmp_path)
    notes = next(h for h in bob.state.hits if h.title == "Replication notes")
    panel = bob.downloads_panel

    # Nobody serves the document: the sale opens (the price is held), the download fails.
    first = bob.buy(notes)
    qtbot.waitUntil(lambda: first.state == "failed", timeout=WAIT_MS)
    qtbot.waitUntil(lambda: bob.account_panel.held.text() == "4.99", timeout=WAIT_MS)
    assert bob.account_panel.available.text() == "82.51"
    assert not panel.retry_button.isEnabled()
    panel.table.selectRow(0)
    assert panel.retry_button.isEnabled() and panel.cancel_button.isEnabled()
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: first.state == "cancelled", timeout=WAIT_MS)
    assert first.message == "sale voided; 4.99 released"
    qtbot.waitUntil(lambda: bob.account_panel.held.text() == "0.00", timeout=WAIT_MS)
    assert bob.account_panel.available.text() == "87.50"
    assert not panel.cancel_button.isEnabled()

    # Fails again; once alice serves, Retry resumes the same sale instead of opening another.
    second = bob.buy(notes)
    qtbot.waitUntil(lambda: second.state == "failed", timeout=WAIT_MS)
    alice = _desktop(qtbot, gui_market, "alice", tmp_path)
    alice.set_serving(True)
    panel.table.selectRow(1)
    panel.retry_button.click()
    qtbot.waitUntil(lambda: second.state in ("done", "failed"), timeout=WAIT_MS)
    assert second.state == "done", second.message
    assert "resuming sale" in panel.steps.text()
    qtbot.waitUntil(lambda: bob.account_panel.held.text() == "0.00", timeout=WAIT_MS)
    assert bob.account_panel.available.text() == "82.51"
    assert [s.status for s in bob.state.sales][:2] == ["settled", "voided"]
    alice.set_serving(False)
    _close(bob, bob.runner)
    _close(alice, alice.runner)


def test_a_refused_purchase_shows_the_coded_error(qtbot, gui_market: GuiMarket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    carol = _desktop(qtbot, gui_market, "carol", tmp_path)
    hit = next(h for h in carol.state.hits if h.doc_id == gui_market.doc_id)
    download = carol.buy(hit)
    qtbot.waitUntil(lambda: download.state == "failed", timeout=WAIT_MS)
    assert download.message.startswith("insufficient_funds: ")
    assert carol.last_error == download.message
    assert carol.downloads.index(0, 1).data(Qt.ItemDataRole.ForegroundRole).color() == DEBIT
    _close(carol, carol.runner)


def _console(qtbot, gui_market: GuiMarket) -> ConsoleWindow:  # type: ignore[no-untyped-def]
    window = build_console(gui_market.settings, Runner())
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.loaded, timeout=WAIT_MS):
        window.start()
    return window


def test_console_shows_the_replica_dead_letters_and_operates(qtbot, gui_market: GuiMarket) -> None:  # type: ignore[no-untyped-def]
    # A command signed with a key that is not the operator's is dead-lettered with its reason.
    with BrokerClient(AMQP_URL, gui_market.settings.names) as broker, pytest.raises(BadSignature):
        Client(broker, gui_market.settings.home).send(c.Deposit(account="carol", amount=1), sender=c.OPERATOR,
                                                  key=Ed25519PrivateKey.generate())

    window = _console(qtbot, gui_market)
    model = window.replicas
    assert model.rowCount() == 1
    assert [model.index(0, col).data() for col in (0, 1, 2)] == ["gui-r1", "primary", "1"]
    assert int(model.index(0, 3).data()) >= 10 and model.index(0, 4).data() == "0"
    assert model.index(0, 1).data(Qt.ItemDataRole.BackgroundRole).color() == ROLE_COLORS["primary"][0]
    assert "primary <b>gui-r1</b> at epoch 1" in window.summary.text()
    assert window.fee_now.text() == "100 bps (1.00%)"
    assert "gui-r1 is primary at epoch 1" in window.log_view.toPlainText()

    qtbot.waitUntil(lambda: window.dead_count.text() == "1", timeout=WAIT_MS)
    assert window.dead_model.rowCount() == 1
    assert window.dead_model.index(0, 0).data().startswith("bad_signature: ")
    assert [window.dead_model.index(0, col).data() for col in (1, 2, 3)] == ["deposit", "operator", "gui-r1"]

    window.deposit_login.setText("carol")
    window.deposit_amount.setText("5.00")
    window.deposit_memo.setText("console credit")
    window.deposit_button.click()
    qtbot.waitUntil(lambda: "available <b>5.00</b>" in window.balance.text(), timeout=WAIT_MS)
    assert window.balance.text().startswith("<b>carol</b>")
    assert "deposited 5.00 to carol; balance 5.00" in window.log_view.toPlainText()

    window.account.setText("owner")
    window.lookup_button.click()
    qtbot.waitUntil(lambda: window.balance.text().startswith("<b>owner</b>"), timeout=WAIT_MS)

    window.fee_bps.setValue(150)
    window.fee_button.click()
    qtbot.waitUntil(lambda: window.fee_now.text() == "150 bps (1.50%)", timeout=WAIT_MS)
    with BrokerClient(AMQP_URL, gui_market.settings.names) as broker:
        assert Client(broker, gui_market.settings.home).ask(q.LedgerInfo(), signed=False)["fee_bps"] == 150

    window.account.setText("owner")
    window.lookup_button.click()
    # The commissions of the two sales: 12.50 and 4.99 at 1% (0.125 and 0.0499, each rounded half up).
    qtbot.waitUntil(lambda: "available <b>0.18</b>" in window.balance.text(), timeout=WAIT_MS)
    _shoot(window, gui_market.shots / "console.png")

    window.deposit_login.setText("nobody")
    window.deposit_amount.setText("1.00")
    window.deposit_button.click()
    qtbot.waitUntil(lambda: window.last_error != "", timeout=WAIT_MS)
    assert window.last_error == "unknown_user: no user 'nobody'"
    _close(window, window.runner)


def test_replica_board_keeps_a_replica_that_stops_reporting() -> None:
    from console.gui.state import SILENT_AFTER_S, ReplicaBoard

    def status(rid: str, role: str, seq: int) -> dict[str, object]:
        return {"replica": rid, "role": role, "epoch": 2, "primary": "r1", "seq": seq, "lag": 0, "store": "",
                "host": "h", "pid": 1, "uptime_s": 1.0, "halted": None, "commands_per_s": 0.0}

    board = ReplicaBoard()
    phases: list[str] = []
    board.listeners.append(phases.append)
    board.update([status("r2", "backup", 9), status("r1", "primary", 10)], now=100.0)
    assert [r.replica for r in board] == ["r1", "r2"] and board[1].lag == 1
    assert phases == ["before", "after"]

    later = 100.0 + SILENT_AFTER_S + 1
    board.update([status("r2", "primary", 15)], now=later)
    assert [(r.replica, r.shown_role(later), r.lag) for r in board] == [("r2", "primary", 0), ("r1", "silent", 5)]
