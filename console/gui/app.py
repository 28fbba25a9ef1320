"""The operator console's composition root."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from console.gui.windows import ConsoleWindow
from console.gui.worker import Runner
from ledger.errors import ConfigError
from ledger.keys import load_operator_key
from peer.config import Settings

__all__ = ["build_window", "main", "run"]


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
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("ACB console")
    runner = Runner()
    window = build_window(settings, runner, interval=interval)
    outcome = {"code": 0}
    if screenshot is not None:
        def shoot() -> None:
            window.grab().save(str(screenshot))
            print(f"saved {screenshot}")
            app.quit()

        def too_slow() -> None:
            print(f"acb console: nothing heard within {timeout_s:.0f} s; no screenshot", file=sys.stderr)
            outcome["code"] = 1
            app.quit()

        window.loaded.connect(lambda: QTimer.singleShot(300, shoot))
        QTimer.singleShot(int(timeout_s * 1000), too_slow)
    window.show()
    window.start()
    code = app.exec()
    window.timer.stop()
    runner.shutdown()
    return outcome["code"] or code


def main(argv: Sequence[str] | None = None) -> int:
    from peer.gui_cli import console_main

    return console_main(argv)


if __name__ == "__main__":
    sys.exit(main())
