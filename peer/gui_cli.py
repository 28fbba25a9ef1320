"""``acb gui`` and ``acb console``: argument parsing for the two PySide6 apps.

Qt is imported only once a command runs, so the CLI starts without it. With
``--screenshot PATH`` an app renders offscreen, waits for its data, saves a
PNG of its main window and exits (0 if the data came, 1 if not).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["console_main", "desktop_main"]


def _offscreen_if(screenshot: Path | None) -> None:
    # Must happen before the QApplication exists; a screenshot needs no screen.
    if screenshot is not None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _qt_missing() -> int:
    print("acb: the desktop apps need PySide6: pip install 'acb[gui]'", file=sys.stderr)
    return 1


def desktop_main(argv: Sequence[str] | None = None) -> int:
    """``acb gui [--login LOGIN] [--tab TAB] [--screenshot PATH]``: the desktop client."""
    p = argparse.ArgumentParser(prog="acb gui", description="ACB desktop client: search, share, download, account.")
    p.add_argument("--login", help="use this user's session on this machine (default: the current one)")
    p.add_argument("--tab", choices=["search", "share", "downloads", "account"], default="search",
                   help="the tab to open on")
    p.add_argument("--screenshot", type=Path, metavar="PATH",
                   help="render offscreen, save a PNG of the window once its data is loaded, and exit")
    args = p.parse_args(argv)
    _offscreen_if(args.screenshot)
    if importlib.util.find_spec("PySide6") is None:
        return _qt_missing()
    from broker.settings import Settings
    from peer.gui.app import run

    return run(Settings.from_env(), login=args.login, screenshot=args.screenshot, tab=args.tab)


def console_main(argv: Sequence[str] | None = None) -> int:
    """``acb console [--screenshot PATH]``: the operator console (replicas, dead letters, accounts, fee)."""
    p = argparse.ArgumentParser(prog="acb console", description="ACB operator console.")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between status refreshes")
    p.add_argument("--screenshot", type=Path, metavar="PATH",
                   help="render offscreen, save a PNG of the window once replicas have reported, and exit")
    args = p.parse_args(argv)
    _offscreen_if(args.screenshot)
    if importlib.util.find_spec("PySide6") is None:
        return _qt_missing()
    from broker.settings import Settings
    from console.gui.app import run

    return run(Settings.from_env(), screenshot=args.screenshot, interval=args.interval)
