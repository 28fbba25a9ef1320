"""The operator console (the heir of CBLcc) on PySide6: replicas, dead letters, accounts, fee, log.

Qt lives only here. :mod:`console.gui.state` and :mod:`console.gui.operator`
are plain Python; :mod:`console.gui.models` wraps the state for Qt views.
:func:`console.gui.app.main` is the entry point.
"""
from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from console.gui.app import main as app_main

    return app_main(argv)
