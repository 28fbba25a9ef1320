"""What both desktop apps do before Qt is imported: a screen or none, and PySide6 there or a plain message.

Qt-free on purpose: ``acb gui`` and ``acb console`` call :func:`qt_ready` first, so the command
line starts without Qt and a machine without PySide6 gets a sentence instead of a traceback.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["qt_ready"]


def qt_ready(screenshot: Path | None) -> bool:
    """Prepare Qt's start: offscreen for a ``--screenshot``; False (and says so) when PySide6 is missing."""
    if screenshot is not None:
        # Must happen before the QApplication exists; a screenshot needs no screen.
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if importlib.util.find_spec("PySide6") is None:
        print("acb: the desktop apps need PySide6: pip install 'acb[gui]'", file=sys.stderr)
        return False
    return True
