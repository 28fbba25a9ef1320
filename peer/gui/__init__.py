"""The desktop app (the heir of ACBpoint): Search, Share, Downloads and Account, on PySide6.

Qt lives only here. :mod:`peer.gui.state` holds what is shown as plain
Python; :mod:`peer.gui.models` wraps it for Qt views; every call to the
ledger or a provider runs on a worker thread (:mod:`peer.gui.worker`) with
its own broker connection. ``acb gui`` (:func:`peer.gui_cli.desktop_main`) starts it
through :func:`peer.gui.app.run`.
"""
