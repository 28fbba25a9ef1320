"""The desktop app's windows: the login dialog, the main window (which runs what the tabs ask for) and the
question asked again when a price changed before a purchase opened."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from broker import errors
from broker.money import format_minor, parse_minor
from peer.client import BuyResult, Offer, Purchases
from peer.gui.models import downloads_model, flows_model, hits_model, sales_model
from peer.gui.session import Session
from peer.gui.state import DesktopState, Download, FlowLine, Hit, SaleLine
from peer.gui.views import AccountPanel, DownloadsPanel, SearchPanel, SharePanel
from peer.gui.worker import Job, Runner
from peer.identity import Profile
from peer.serve import ProviderService

__all__ = ["LoginDialog", "MainWindow", "PriceChange", "PriceChangedDialog"]


class LoginDialog(QDialog):
    """Log in, or create an account. The password unlocks (or seals) the keys here and is never sent."""

    def __init__(self, session: Session, runner: Runner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.runner = runner
        self.setWindowTitle("ACB: log in")
        self.login = QLineEdit(placeholderText="lower-case letters, digits, . _ -")
        self.password = QLineEdit(echoMode=QLineEdit.EchoMode.Password)
        self.confirm = QLineEdit(echoMode=QLineEdit.EchoMode.Password)
        self.new_account = QCheckBox("Create a new account")
        self.error = QLabel("")
        self.error.setStyleSheet("color: #b3261e")
        self.error.setWordWrap(True)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.hide()
        names = session.settings.names
        where = QLabel(f"<small>market <b>{names.prefix}</b> on {_host(session.settings.broker_url)}; "
                       f"keys kept in {session.settings.home}</small>")
        where.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Login", self.login)
        form.addRow("Password", self.password)
        self.confirm_label = QLabel("Password again")
        form.addRow(self.confirm_label, self.confirm)
        form.addRow("", self.new_account)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        layout = QVBoxLayout(self)
        layout.addWidget(where)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(self.busy)
        layout.addWidget(self.buttons)
        self.new_account.toggled.connect(self._mode)
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        self._mode(False)
        self.setMinimumWidth(420)

    def _mode(self, register: bool) -> None:
        self.confirm.setVisible(register)
        self.confirm_label.setVisible(register)
        self.ok.setText("Create account" if register else "Log in")

    def submit(self) -> None:
        login, password = self.login.text().strip(), self.password.text()
        register = self.new_account.isChecked()
        if not login or not password:
            self.error.setText("type a login and a password")
            return
        if register and password != self.confirm.text():
            self.error.setText("the two passwords differ")
            return
        self.error.setText("")
        self.busy.show()
        self.ok.setEnabled(False)
        session = self.session

        def work(_job: Job) -> None:
            with session.client() as client:
                if register:
                    client.register(login, password)
                else:
                    client.login(login, password)

        self.runner.submit(work, done=self._done, failed=self._failed)

    def _done(self, _result: Any) -> None:
        self.busy.hide()
        self.password.clear()
        self.confirm.clear()
        self.accept()

    def _failed(self, text: str) -> None:
        self.busy.hide()
        self.ok.setEnabled(True)
        self.error.setText(text)


@dataclass(frozen=True)
class PriceChange:
    """A purchase the ledger refused because the price is no longer the one agreed to; nothing was held."""

    offer: Offer  # at the new price
    agreed: int


class PriceChangedDialog(QMessageBox):
    """Asks again: the price changed between the buyer's yes and the ledger. ``answered(True)``: buy at the new one.

    Buying is never the default: Enter and Escape both keep the money.
    """

    answered = Signal(bool)

    def __init__(self, change: PriceChange, parent: QWidget | None = None) -> None:
        now, was = format_minor(change.offer.price), format_minor(change.agreed)
        super().__init__(QMessageBox.Icon.Warning, "ACB: price changed",
                         f"The price of “{change.offer.title}” changed while you were deciding.\n\n"
                         f"Now {now}, you agreed to {was}.", QMessageBox.StandardButton.NoButton, parent)
        self.change = change
        self.setInformativeText(f"Nothing was held or paid. Buy it from {change.offer.provider} for "
                                f"{change.offer.describe()}?")
        self.buy_button = self.addButton(f"Buy for {now}", QMessageBox.ButtonRole.AcceptRole)
        self.keep_button = self.addButton("Don't buy", QMessageBox.ButtonRole.RejectRole)
        self.setDefaultButton(self.keep_button)
        self.setEscapeButton(self.keep_button)
        self.buttonClicked.connect(lambda button: self.answered.emit(button == self.buy_button))


def _host(url: str) -> str:
    return url.rsplit("@", 1)[-1].rstrip("/")


def _safe_name(title: str, doc_id: str) -> str:
    name = "".join(ch if ch.isalnum() or ch in "._- " else "_" for ch in title).strip() or doc_id
    return name[:80]


class MainWindow(QMainWindow):
    """Search, Share, Downloads and Account for one logged-in user.

    Every call to the ledger or a provider runs on the :class:`Runner`; the
    results land in :class:`DesktopState`, which the tables show.
    ``loaded`` fires once, when the first refresh of every tab has answered.
    """

    loaded = Signal()

    def __init__(self, session: Session, runner: Runner, *, download_dir: Path, endpoint: str,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        assert session.login is not None, "the main window needs a logged-in session"
        self.session = session
        self.runner = runner
        self.state = DesktopState(session.login)
        self.confirm_actions = True  # ask before spending money or withdrawing a document
        self.price_question: PriceChangedDialog | None = None  # asked whatever confirm_actions says
        self.last_error = ""
        self.service: Any = None
        self._serving_at = ""
        self._initial = 0

        self.hits = hits_model(self.state.hits, self)
        self.mine = hits_model(self.state.mine, self)
        self.flows = flows_model(self.state.flows, self)
        self.sales = sales_model(self.state.sales, session.login, self)
        self.downloads = downloads_model(self.state.downloads, self)

        self.search_panel = SearchPanel(self.hits)
        self.share_panel = SharePanel(self.mine, endpoint)
        self.downloads_panel = DownloadsPanel(self.downloads, download_dir)
        self.account_panel = AccountPanel(self.flows, self.sales)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.search_panel, "Search")
        self.tabs.addTab(self.share_panel, "Share")
        self.tabs.addTab(self.downloads_panel, "Downloads")
        self.tabs.addTab(self.account_panel, "Account")
        self.setCentralWidget(self.tabs)
        self.setWindowTitle(f"ACB: {session.login} on {session.settings.names.prefix}")
        self.resize(980, 640)

        self.who = QLabel()
        self.activity = QProgressBar()
        self.activity.setRange(0, 0)
        self.activity.setMaximumWidth(120)
        self.activity.setMaximumHeight(14)
        self.activity.hide()
        self.statusBar().addPermanentWidget(self.activity)
        self.statusBar().addPermanentWidget(self.who)
        self._show_who()

        self.search_panel.search_requested.connect(self.search)
        self.search_panel.buy_requested.connect(self.ask_buy)
        self.share_panel.share_requested.connect(self.share_from_form)
        self.share_panel.serve_toggled.connect(self.set_serving)
        self.share_panel.refresh_requested.connect(self.refresh_mine)
        self.share_panel.change_price_requested.connect(self.ask_price)
        self.share_panel.unshare_requested.connect(self.ask_unshare)
        self.account_panel.refresh_requested.connect(self.refresh_account)
        self.downloads_panel.retry_requested.connect(self.retry)
        self.downloads_panel.cancel_requested.connect(
            lambda d: self._confirm(f"Void the open sale for “{d.title}” and release the held money?",
                                    lambda: self.cancel_sale(d)))
        self.runner.busy_changed.connect(lambda n: self.activity.setVisible(n > 0))
        self.runner.error.connect(self.show_error)

    # -- start-up ----------------------------------------------------------------------------------
    def refresh_all(self) -> None:
        """Fill every tab; ``loaded`` fires when all four reads have answered (or failed)."""
        self._initial = 4
        self.search(initial=True)
        self.refresh_mine(initial=True)
        self.refresh_account(initial=True)
        self._ledger_info(initial=True)

    def _answered(self) -> None:
        if self._initial > 0:
            self._initial -= 1
            if self._initial == 0:
                self.loaded.emit()

    def _run(self, work: Callable[[Any], Any], done: Callable[[Any], None], *, initial: bool = False,
             failed: Callable[[str], None] | None = None, modal: bool = False) -> int:
        """Run ``work(client)`` on the pool with a fresh client; errors go to the status bar."""
        session = self.session

        def job(_job: Job) -> Any:
            with session.client() as client:
                return work(client)

        def ok(result: Any) -> None:
            done(result)
            if initial:
                self._answered()

        def bad(text: str) -> None:
            if failed is not None:
                failed(text)
            self.show_error(text, modal=modal)
            if initial:
                self._answered()

        return self.runner.submit(job, done=ok, failed=bad)

    def show_error(self, text: str, *, modal: bool = False) -> None:
        """Say what went wrong: in the status bar, and in a (non-blocking) box for user actions."""
        self.last_error = text
        self.statusBar().showMessage(f"Error: {text}", 15_000)
        if modal:
            box = QMessageBox(QMessageBox.Icon.Warning, "ACB", text, QMessageBox.StandardButton.Ok, self)
            box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            box.open()

    def _confirm(self, text: str, then: Callable[[], object]) -> None:
        if not self.confirm_actions:
            then()
            return
        box = QMessageBox(QMessageBox.Icon.Question, "ACB", text,
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda result: then() if result == QMessageBox.StandardButton.Yes else None)
        box.open()

    def _show_who(self) -> None:
        money = (f"available {format_minor(self.state.available)}" if self.state.available is not None else "")
        held = f", held {format_minor(self.state.held)}" if self.state.held else ""
        self.who.setText(f"<b>{self.state.login}</b>  {money}{held}")

    # -- search and buy ----------------------------------------------------------------------------
    def search(self, text: str = "", topic: str = "", *, initial: bool = False) -> None:
        self.statusBar().showMessage("searching…")

        def done(hits: list[dict[str, Any]]) -> None:
            self.state.hits.replace(Hit.from_wire(h) for h in hits)
            self.statusBar().showMessage(f"{len(hits)} document{'s' if len(hits) != 1 else ''} found", 5000)

        self._run(lambda c: c.search(text, topic=topic or None, limit=200), done, initial=initial)

    def ask_buy(self, hit: Hit) -> None:
        if hit.provider == self.state.login:
            self.show_error("own_document: you are the provider of this document", modal=True)
            return
        self._confirm(f"Buy “{hit.title}” from {hit.provider} for {format_minor(hit.price)}?\n\n"
                      f"The price is held from your balance now and paid when the download verifies.",
                      lambda: self.buy(hit))

    def buy(self, hit: Hit) -> Download:
        """Start a purchase: open the sale, download, settle, decrypt and verify, in the background."""
        folder = Path(self.downloads_panel.folder.text()).expanduser()
        dest = folder / _safe_name(hit.title, hit.doc_id)
        n = 1
        while dest.exists() or any(d.dest == dest for d in self.state.downloads):
            n += 1
            dest = folder / f"{_safe_name(hit.title, hit.doc_id)} ({n})"
        download = Download(hit.doc_id, hit.title, hit.price, hit.size, dest, state="starting", total=hit.size)
        self.state.downloads.append(download)
        self.tabs.setCurrentWidget(self.downloads_panel)
        self._purchase(download)
        return download

    def retry(self, download: Download) -> None:
        """Buy a failed download again: an open sale is resumed, not paid twice."""
        download.restart()
        self.state.downloads.touch(download)
        self._purchase(download)

    def cancel_sale(self, download: Download) -> None:
        """Void the open sale a failed download left behind; the held money comes back."""
        session, login = self.session, self.state.login

        def work(client: Any) -> dict[str, Any] | None:
            purchases = Purchases(Profile(session.settings.home, login))
            sale_id = purchases.open_sale_for(download.doc_id)
            if sale_id is None:
                return None
            result: dict[str, Any] = client.cancel(sale_id, reason="cancelled by the buyer")
            purchases.forget(download.doc_id)
            return result

        def done(result: dict[str, Any] | None) -> None:
            download.state = "cancelled"
            download.message = ("no sale was open" if result is None
                                else f"sale voided; {format_minor(result['released'])} released")
            self.state.downloads.touch(download)
            self.downloads_panel.log(f"{download.title}: {download.message}")
            self.refresh_account()

        self._run(work, done, modal=True)

    def _purchase(self, download: Download) -> None:
        session, doc_id, dest, agreed = self.session, download.doc_id, download.dest, download.price

        def work(job: Job) -> BuyResult | PriceChange:
            with session.client() as client:
                try:
                    # At the price the person said yes to (download.price), never one read again here.
                    return client.buy(doc_id, dest, agreed_price=agreed, progress=job.progress, on_step=job.step)
                except errors.PriceChanged as exc:
                    return PriceChange(client.changed_offer(client.offer(doc_id).at(agreed), exc), agreed)

        def progress(done: int, total: int) -> None:
            download.state = "downloading" if done < total else "settling"
            download.record(done, total)
            self.state.downloads.touch(download)

        def step(text: str) -> None:
            download.message = text
            self.state.downloads.touch(download)
            self.downloads_panel.log(text)

        def done(result: BuyResult | PriceChange) -> None:
            if isinstance(result, PriceChange):
                self.ask_new_price(download, result)
                return
            download.sale_id = result.sale_id
            download.finish("done" if result.verified else "disputed")
            if not result.verified:
                download.message = f"content did not verify; dispute filed: {result.dispute}"
            self.state.downloads.touch(download)
            self.statusBar().showMessage(f"bought {download.title} for {format_minor(result.price)}", 10_000)
            self.refresh_account()

        def failed(text: str) -> None:
            download.finish("failed")
            download.message = text
            self.state.downloads.touch(download)
            self.downloads_panel.log(f"failed: {text}")
            self.show_error(text, modal=True)
            self.refresh_account()

        self.runner.submit(work, done=done, failed=failed, progress=progress, step=step)

    def ask_new_price(self, download: Download, change: PriceChange) -> PriceChangedDialog:
        """The price changed before the sale opened (nothing held): ask again, always, with the new price."""
        now, was = format_minor(change.offer.price), format_minor(change.agreed)
        download.state = "price changed"
        download.message = f"price changed: now {now}, you agreed to {was}; nothing was held"
        self.state.downloads.touch(download)
        self.downloads_panel.log(f"{download.title}: {download.message}")
        dialog = PriceChangedDialog(change, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.answered.connect(lambda yes: self._new_price_answered(download, change, yes))
        self.price_question = dialog
        dialog.open()
        return dialog

    def _new_price_answered(self, download: Download, change: PriceChange, yes: bool) -> None:
        self.price_question = None
        if yes:
            download.price = change.offer.price
            download.restart()
            self.state.downloads.touch(download)
            self._purchase(download)
            return
        download.finish("cancelled")
        download.message = (f"not bought: the price changed to {format_minor(change.offer.price)} "
                            f"(you agreed to {format_minor(change.agreed)}); nothing was held")
        self.state.downloads.touch(download)
        self.downloads_panel.log(f"{download.title}: {download.message}")

    # -- sharing -----------------------------------------------------------------------------------
    def share_from_form(self) -> None:
        try:
            form = self.share_panel.form()
        except ValueError as exc:
            self.show_error(str(exc), modal=True)
            return
        self.share(**form)

    def share(self, *, path: Path, title: str, topic: str, price: int, endpoint: str, description: str = "") -> None:
        """Commit to the file's content and publish it (hashing runs in the background)."""
        self.share_panel.set_busy(True)
        self.statusBar().showMessage(f"hashing and publishing {path.name}…")

        def done(res: dict[str, Any]) -> None:
            self.share_panel.set_busy(False)
            self.share_panel.clear_form()
            self.statusBar().showMessage(f"shared {title} as {res['doc_id']} at {format_minor(price)}", 10_000)
            self.refresh_mine()

        self._run(lambda c: c.share(path, price=price, topic=topic, title=title, endpoint=endpoint,
                                    description=description),
                  done, failed=lambda _t: self.share_panel.set_busy(False), modal=True)

    def refresh_mine(self, *, initial: bool = False) -> None:
        me = self.state.login

        def done(hits: list[dict[str, Any]]) -> None:
            self.state.mine.replace(Hit.from_wire(h) for h in hits if h["provider"] == me)
            self._show_serving()

        self._run(lambda c: c.search("", limit=1000), done, initial=initial)

    def ask_price(self, hit: Hit) -> None:
        dialog = QInputDialog(self)
        dialog.setWindowTitle("Change price")
        dialog.setLabelText(f"New price for “{hit.title}” (now {format_minor(hit.price)}):")
        dialog.setTextValue(format_minor(hit.price))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.textValueSelected.connect(lambda text: self._price_typed(hit, text))
        dialog.open()

    def _price_typed(self, hit: Hit, text: str) -> None:
        try:
            price = parse_minor(text)
        except ValueError as exc:
            self.show_error(str(exc), modal=True)
            return
        self.change_price(hit, price)

    def change_price(self, hit: Hit, price: int) -> None:
        def done(_r: Any) -> None:
            self.statusBar().showMessage(f"{hit.title} now costs {format_minor(price)}", 10_000)
            self.refresh_mine()

        self._run(lambda c: c.change_price(hit.doc_id, price), done, modal=True)

    def ask_unshare(self, hit: Hit) -> None:
        self._confirm(f"Stop offering “{hit.title}”?", lambda: self.unshare(hit))

    def unshare(self, hit: Hit) -> None:
        def done(_r: Any) -> None:
            self.statusBar().showMessage(f"{hit.title} is no longer offered", 10_000)
            self.refresh_mine()

        self._run(lambda c: c.unpublish(hit.doc_id), done, modal=True)

    def set_serving(self, on: bool) -> None:
        """Start or stop serving this user's shares to buyers on the endpoint of the form."""
        if on and self.service is None:
            endpoint = self.share_panel.endpoint.text().strip()
            client = self.session.new_client()
            try:
                host, port = endpoint.rsplit(":", 1)
                assert self.session.identity is not None
                service = ProviderService(client, self.session.identity, host=host, port=int(port))
                self._serving_at = f"{host}:{service.start()}"
            except (ValueError, OSError) as exc:
                client.broker.close()
                self.show_error(f"cannot serve on {endpoint}: {exc}", modal=True)
                self.share_panel.serve_button.setChecked(False)
                return
            self.service = service
        elif not on and self.service is not None:
            service, self.service = self.service, None
            service.stop()
            service.client.broker.close()
        self._show_serving()

    def _show_serving(self) -> None:
        button, label = self.share_panel.serve_button, self.share_panel.serving
        if self.service is None:
            button.setText("Start serving")
            label.setText("Not serving: buyers cannot download your documents until you start.")
            return
        button.setText("Stop serving")
        n = len(self.state.mine)
        label.setText(f"Serving {n} document{'s' if n != 1 else ''} to buyers on {self._serving_at}.")

    # -- account -----------------------------------------------------------------------------------
    def refresh_account(self, *, initial: bool = False) -> None:

        def work(c: Any) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
            return c.balance(), c.flows(limit=500), c.sales()

        def done(res: tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]) -> None:
            balance, flows, sales = res
            self.state.available, self.state.held = balance["available"], balance["held"]
            self.account_panel.show_balance(balance["available"], balance["held"])
            # Newest first: the last thing that happened is what a person looks for.
            self.state.flows.replace(sorted((FlowLine.from_wire(f) for f in flows), key=lambda f: -f.seq))
            self.state.sales.replace(reversed([SaleLine.from_wire(s) for s in sales]))
            self._show_who()

        self._run(work, done, initial=initial)

    def _ledger_info(self, *, initial: bool = False) -> None:
        def done(info: dict[str, Any]) -> None:
            self.state.fee_bps = info["fee_bps"]
            self.account_panel.show_fee(info["fee_bps"])

        self._run(lambda c: c.ledger_info(), done, initial=initial)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.set_serving(False)
        super().closeEvent(event)
