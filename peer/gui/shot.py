"""Running a window, or only long enough to photograph it once its data arrived (``--screenshot``)."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QWidget

__all__ = ["exec_window"]


def exec_window(app: QApplication, window: QWidget, start: Callable[[], None], *, screenshot: Path | None,
                timeout_s: float, silence: str) -> int:
    """Show ``window``, call ``start()`` and run the event loop.

    With ``screenshot`` the window is saved as a PNG 300 ms after it emits ``loaded``
    and the app quits; if ``loaded`` does not come within ``timeout_s``, ``silence`` is
    printed and the exit code is 1.
    """
    outcome = {"code": 0}
    if screenshot is not None:
        def shoot() -> None:
            window.grab().save(str(screenshot))
            print(f"saved {screenshot}")
            app.quit()

        def too_slow() -> None:
            print(f"{silence} within {timeout_s:.0f} s; no screenshot", file=sys.stderr)
            outcome["code"] = 1
            app.quit()

        window.loaded.connect(lambda: QTimer.singleShot(300, shoot))  # type: ignore[attr-defined]
        QTimer.singleShot(int(timeout_s * 1000), too_slow)
    window.show()
    start()
    code = app.exec()
    return outcome["code"] or code
