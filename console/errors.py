"""Errors of the operator console: the ``ConsoleError`` subtree of :class:`broker.errors.AcbError`.

The whole tree, this subtree included, is drawn in :mod:`broker.errors`.
"""
from __future__ import annotations

from broker.errors import AcbError

__all__ = ["ConsoleError"]


class ConsoleError(AcbError):
    """Root of the console's own errors."""
