"""Errors of the peer (client) side.

    PeerError               anything this package raises of its own
    ├── WrongPassword       the password does not open the keystore
    ├── NotLoggedIn         no session: run `acb login`
    └── VerificationFailed  downloaded content does not match what was published

Ledger refusals arrive as :class:`broker.errors.CommandRejected`; transfer
failures as :class:`peer.transfer.errors.TransferError`.
"""
from __future__ import annotations

__all__ = ["PeerError", "WrongPassword", "NotLoggedIn", "VerificationFailed"]


class PeerError(Exception):
    """Root of the peer's own errors."""


class WrongPassword(PeerError):
    """The password does not decrypt the keystore."""


class NotLoggedIn(PeerError):
    """No unlocked identity for this command."""


class VerificationFailed(PeerError):
    """Downloaded content does not match its published commitment."""
