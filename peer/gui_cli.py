"""``acb gui``: the desktop client's own options, parsed before Qt is imported.

With ``--screenshot PATH`` the app renders offscreen, waits for its data, saves a PNG of its
main window and exits (0 if the data came, 1 if not).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from broker.settings import Settings
from peer.gui.startup import qt_ready

__all__ = ["desktop_main"]


def desktop_main(argv: Sequence[str], settings: Settings) -> int:
    """``acb gui [--login LOGIN] [--tab TAB] [--screenshot PATH]``: the desktop client."""
    p = argparse.ArgumentParser(prog="acb gui", description="ACB desktop client: search, share, download, account.")
    p.add_argument("--login", help="use this user's session on this machine (default: the current one)")
    p.add_argument("--tab", choices=["search", "share", "downloads", "account"], default="search",
                   help="the tab to open on")
    p.add_argument("--screenshot", type=Path, metavar="PATH",
                   help="render offscreen, save a PNG of the window once its data is loaded, and exit")
    args = p.parse_args(argv)
    if not qt_ready(args.screenshot):
        return 1
    # lazy: Qt takes a fifth of a second to import and may be absent; qt_ready has just found it
    from peer.gui.app import run

    return run(settings, login=args.login, screenshot=args.screenshot, tab=args.tab)
