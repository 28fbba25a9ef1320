"""The desktop app (the heir of ACBpoint): Search, Share, Downloads and Account, on PySide6.

Qt lives only here. :mod:`peer.gui.state` holds what is shown as plain
Python; :mod:`peer.gui.models` wraps it for Qt views; every call to the
ledger or a provider runs on a worker thread (:mod:`peer.gui.worker`) with
its own broker connection. :func:`peer.gui.app.main` is the entry point.
"""
from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from peer.gui.app import main as app_main

    return app_main(argv)
