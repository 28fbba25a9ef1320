"""The desktop app's composition root: settings in, login if needed, the main window up (``acb gui`` starts it)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import cast

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QApplication, QDialog

from broker.settings import Settings
from peer.gui.session import Session
from peer.gui.shot import exec_window
from peer.gui.windows import LoginDialog, MainWindow
from peer.gui.worker import Runner
from peer.identity import Profile

__all__ = ["build_window", "run"]

TABS = ("search", "share", "downloads", "account")


def default_download_dir(settings: Settings) -> Path:
    downloads = Path.home() / "Downloads"
    return downloads if downloads.is_dir() else settings.home / "downloads"


def build_window(session: Session, runner: Runner, *, download_dir: Path | None = None,
                 endpoint: str | None = None) -> MainWindow:
    """The main window for a logged-in session, with its menu; the caller shows it and calls refresh_all."""
    window = MainWindow(session, runner, download_dir=download_dir or default_download_dir(session.settings),
                        endpoint=endpoint or session.settings.env.endpoint)
    menu = window.menuBar().addMenu("&ACB")
    refresh = QAction("&Refresh everything", window, shortcut=QKeySequence(QKeySequence.StandardKey.Refresh))
    refresh.triggered.connect(window.refresh_all)
    logout = QAction("Log &out", window)
    logout.triggered.connect(lambda: _log_out(window))
    quit_ = QAction("&Quit", window, shortcut=QKeySequence(QKeySequence.StandardKey.Quit))
    quit_.triggered.connect(window.close)
    for action in (refresh, logout, quit_):
        menu.addAction(action)
    return window


def _log_out(window: MainWindow) -> None:
    settings, login = window.session.settings, window.session.login
    if login:
        Profile(settings.home, login).end_session()
        if Profile.current(settings.home) == login:
            (settings.home / "current").unlink(missing_ok=True)
    window.close()


def run(settings: Settings, *, login: str | None = None, screenshot: Path | None = None,
        tab: str = "search", timeout_s: float = 30.0) -> int:
    """Run the desktop app; with ``screenshot``, save the loaded window as a PNG and exit."""
    # The app is always a QApplication here (widgets need one); instance() is typed as its base class.
    app = cast(QApplication, QApplication.instance()) or QApplication(sys.argv[:1])
    app.setApplicationName("ACB")
    runner = Runner()
    session = Session.resume(settings, login)
    if session.identity is None:
        if screenshot is not None:
            print("acb gui: not logged in: run `acb login LOGIN` first", file=sys.stderr)
            return 1
        dialog = LoginDialog(session, runner)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            runner.shutdown()
            return 1
    window = build_window(session, runner)
    window.tabs.setCurrentIndex(TABS.index(tab))
    code = exec_window(app, window, window.refresh_all, screenshot=screenshot, timeout_s=timeout_s,
                       silence="acb gui: no answer from the ledger")
    window.set_serving(False)
    runner.shutdown()
    return code

