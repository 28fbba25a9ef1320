"""Errors of the ledger: the ``LedgerError`` subtree of :class:`broker.errors.AcbError`.

The whole tree, this subtree included, is drawn in :mod:`broker.errors`. Refusals of commands
are not ledger errors: they are coded :class:`broker.errors.CommandRejected` that travel back
to the client.
"""
from __future__ import annotations

from broker.errors import AcbError

__all__ = ["LedgerError", "StoreError", "ChainBroken", "ConfigError"]


class LedgerError(AcbError):
    """Root of the ledger's own errors."""


class StoreError(LedgerError):
    """The event store failed."""


class ChainBroken(LedgerError):
    """An event does not follow from the one before: a gap, a fork or tampering."""


class ConfigError(LedgerError):
    """Keys or settings are missing or unreadable."""
