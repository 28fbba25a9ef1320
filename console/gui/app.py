"""The operator console's composition root (``acb console`` starts it)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import cast

from PySide6.QtWidgets import QApplication

from broker.settings import Settings
from console.gui.windows import ConsoleWindow
from ledger.errors import ConfigError
from ledger.keys import load_operator_key
from peer.gui.shot import exec_window
from peer.gui.worker import Runner

__all__ = ["build_window", "run"]


def build_window(settings: Settings, runner: Runner, *, interval: float = 1.0) -> ConsoleWindow:
    """The console window with the operator key of ``settings.home``, if there is one (else read-only)."""
    try:
        key, problem = load_operator_key(settings.home), ""
    except ConfigError as exc:
        key, problem = None, f"Read-only: {exc}"
    return ConsoleWindow(settings, runner, key, key_problem=problem, interval=interval)


def run(settings: Settings, *, screenshot: Path | None = None, interval: float = 1.0,
        timeout_s: float = 30.0) -> int:
    """Run the console; with ``screenshot``, save the window once replicas have reported, and exit."""
    app = cast(QApplication, QApplication.instance()) or QApplication(sys.argv[:1])
    app.setApplicationName("ACB console")
    runner = Runner()
    window = build_window(settings, runner, interval=interval)
    code = exec_window(app, window, window.start, screenshot=screenshot, timeout_s=timeout_s,
                       silence="acb console: nothing heard from the replicas")
    window.timer.stop()
    runner.shutdown()
    return code

