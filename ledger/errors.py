"""Errors of the ledger.

    LedgerError                 anything this package raises of its own
    ├── StoreError              the database refused or failed (SQLAlchemy errors are wrapped)
    ├── ChainBroken             a stored or received event does not fit the hash chain or sequence
    └── ConfigError             keys or settings missing or unreadable

Refusals of commands are not ledger errors: they are coded
:class:`broker.errors.CommandRejected` that travel back to the client.
"""
from __future__ import annotations

__all__ = ["LedgerError", "StoreError", "ChainBroken", "ConfigError"]


class LedgerError(Exception):
    """Root of the ledger's own errors."""


class StoreError(LedgerError):
    """The event store failed."""


class ChainBroken(LedgerError):
    """An event does not follow from the one before: a gap, a fork or tampering."""


class ConfigError(LedgerError):
    """Keys or settings are missing or unreadable."""
