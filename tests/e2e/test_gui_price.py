"""The desktop client asks again when the price changed between the buyer's yes and the ledger.

A real replica (the ``deployment`` fixture), alice's provider service serving
the document, bob's main window driven with qtbot offscreen. alice raises the
price while bob's "Buy ... for 2.00?" question is open; bob says yes; the
ledger refuses the sale at 2.00 and the window asks again with the new price.
Nothing is held or paid at 3.00 until bob says yes to that. The dialog is
photographed onto the window as a person sees it (``$ACB_SCREENSHOT_DIR`` when
set, as peer/gui/screenshots/price-changed.png was made; else a temporary folder).
"""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported anywhere

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtGui import QImage, QPainter
from PySide6.QtWidgets import QMessageBox, QWidget

from broker import commands as c
from broker import queries as q
from broker.settings import Settings
from peer.client import Client
from peer.gui.app import build_window
from peer.gui.session import Session
from peer.gui.state import Hit
from peer.gui.windows import MainWindow, PriceChangedDialog
from peer.gui.worker import Runner
from peer.serve import ProviderService
from tests.conftest import Deployment

WAIT_MS = 20_000
DEPOSIT = 10_000


@dataclass
class Shop:
    dep: Deployment
    alice: Client
    bob: Client
    doc_id: str
    doc: Path
    service: ProviderService


@pytest.fixture
def open_gui_shop(deployment: Deployment, tmp_path: Path) -> Iterator[Callable[[str, str], Shop]]:
    """``open_gui_shop(seller, buyer)``: the seller serves a 2.00 document, the buyer holds 100.00 (logins unique)."""
    services: list[ProviderService] = []

    def make(seller: str, buyer: str) -> Shop:
        alice, bob = deployment.client(), deployment.client()
        alice.register(seller, "alice-secret-1")
        bob.register(buyer, "bob-secret-12")
        assert bob.identity is not None and alice.identity is not None
        bob.send(c.Deposit(account=buyer, amount=DEPOSIT), sender=c.OPERATOR, key=deployment.operator_key())
        services.append(ProviderService(alice, alice.identity, control_socket=False))
        port = services[-1].start()
        doc = tmp_path / f"{seller}.pdf"
        doc.write_bytes(b"%PDF-1.4 the price of things\n" + os.urandom(200_000))
        shared = alice.share(doc, price=200, topic="reports", title=f"Quarterly report of {seller}",
                             endpoint=f"127.0.0.1:{port}")
        return Shop(deployment, alice, bob, shared["doc_id"], doc, services[-1])

    try:
        yield make
    finally:
        for service in services:
            service.stop()


def _window(qtbot: Any, shop: Shop, tmp_path: Path) -> MainWindow:
    dep = shop.dep
    session = Session(Settings(dep.home, dep.url, dep.names), shop.bob.identity)
    window = build_window(session, Runner(), download_dir=tmp_path / "bob", endpoint="127.0.0.1:9")
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.loaded, timeout=WAIT_MS):
        window.refresh_all()
    return window


def _money(shop: Shop) -> tuple[int, int, list[Any]]:
    """bob's available and held money and his sales, as the ledger has them now."""
    login = shop.bob.identity.login  # type: ignore[union-attr]
    shop.bob.last_seq = max(shop.bob.last_seq, shop.alice.last_seq)
    balance = shop.bob.ask(q.Balance(account=login))
    return balance["available"], balance["held"], shop.bob.sales()


def _first_question(window: MainWindow) -> QMessageBox:
    boxes = [b for b in window.findChildren(QMessageBox) if b.isVisible() and not isinstance(b, PriceChangedDialog)]
    assert len(boxes) == 1, [b.text() for b in boxes]
    return boxes[0]


def _shoot(window: QWidget, dialog: QWidget, path: Path) -> None:
    """The window with the dialog over it, where a window manager would centre it."""
    window.resize(1100, 700)
    dialog.adjustSize()
    shot = window.grab()
    painter = QPainter(shot)
    painter.drawPixmap((shot.width() - dialog.width()) // 2, (shot.height() - dialog.height()) // 3, dialog.grab())
    painter.end()
    shot.save(str(path))
    image = QImage(str(path))
    assert image.width() >= 900 and image.height() >= 600, f"{path} looks empty"


def test_a_changed_price_is_asked_again_and_never_paid_without_a_second_yes(
        qtbot: Any, open_gui_shop: Callable[[str, str], Shop], tmp_path: Path) -> None:
    shop = open_gui_shop("alice", "bob")
    window = _window(qtbot, shop, tmp_path)
    hit = next(h for h in window.state.hits if h.doc_id == shop.doc_id)
    assert hit.price == 200
    before = _money(shop)

    # bob is asked "for 2.00?"; while the question is open, alice raises the price.
    window.ask_buy(hit)
    question = _first_question(window)
    assert "for 2.00?" in question.text()
    shop.alice.change_price(shop.doc_id, 300)
    question.button(QMessageBox.StandardButton.Yes).click()

    qtbot.waitUntil(lambda: window.price_question is not None, timeout=WAIT_MS)
    dialog = window.price_question
    assert dialog is not None
    assert dialog.text() == f"The price of “{hit.title}” changed while you were deciding.\n\nNow 3.00, you agreed to 2.00."
    assert dialog.informativeText().startswith("Nothing was held or paid. Buy it from ")
    assert dialog.buy_button.text() == "Buy for 3.00"
    assert dialog.defaultButton() == dialog.keep_button and dialog.escapeButton() == dialog.keep_button
    download = window.state.downloads[0]
    assert download.state == "price changed"
    assert _money(shop) == before, "nothing may be held before the second yes"

    shots = Path(os.environ.get("ACB_SCREENSHOT_DIR") or tmp_path)
    window.tabs.setCurrentWidget(window.downloads_panel)
    _shoot(window, dialog, shots / "price-changed.png")

    # "Don't buy": nothing held, nothing paid, the row says why.
    dialog.keep_button.click()
    assert window.price_question is None
    assert download.state == "cancelled"
    assert download.message == "not bought: the price changed to 3.00 (you agreed to 2.00); nothing was held"
    assert _money(shop) == before

    # Again from the stale search result (2.00): refused, asked, and this time bought at 3.00.
    window.confirm_actions = False
    second = window.buy(hit)
    qtbot.waitUntil(lambda: window.price_question is not None, timeout=WAIT_MS)
    assert _money(shop) == before
    window.price_question.buy_button.click()
    qtbot.waitUntil(lambda: second.state in ("done", "failed", "disputed", "price changed"), timeout=WAIT_MS)
    assert second.state == "done", second.message
    available, held, sales = _money(shop)
    assert (available, held) == (before[0] - 300, 0)
    assert [(s["price"], s["status"]) for s in sales] == [(300, "settled")]
    assert second.dest.read_bytes() == shop.doc.read_bytes()
    window.close()
    window.runner.shutdown()


def test_a_price_that_did_not_change_is_bought_without_a_second_question(
        qtbot: Any, open_gui_shop: Callable[[str, str], Shop], tmp_path: Path) -> None:
    shop = open_gui_shop("amy", "ben")
    window = _window(qtbot, shop, tmp_path)
    window.confirm_actions = False
    hit = next(h for h in window.state.hits if h.doc_id == shop.doc_id)
    download = window.buy(Hit(hit.doc_id, hit.title, hit.topic, hit.provider, hit.price, hit.size))
    qtbot.waitUntil(lambda: download.state in ("done", "failed", "disputed", "price changed"), timeout=WAIT_MS)
    assert download.state == "done", download.message
    assert window.price_question is None
    assert [(s["price"], s["status"]) for s in _money(shop)[2]] == [(200, "settled")]
    window.close()
    window.runner.shutdown()
