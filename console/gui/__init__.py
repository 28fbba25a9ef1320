"""The operator console (the heir of CBLcc) on PySide6: replicas, dead letters, accounts, fee, log.

Qt lives only here. :mod:`console.gui.state` and :mod:`console.gui.operator`
are plain Python; :mod:`console.gui.models` wraps the state for Qt views.
``acb console`` (:func:`console.cli.console_main`) starts it through :func:`console.gui.app.run`.
"""
