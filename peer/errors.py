"""Errors of the peer (client) side: the ``PeerError`` subtree of :class:`broker.errors.AcbError`.

The whole tree, this subtree included, is drawn in :mod:`broker.errors`. Ledger refusals
arrive as :class:`broker.errors.CommandRejected`; transfer failures as
:class:`peer.transfer.errors.TransferError`, a ``PeerError`` too.
"""
from __future__ import annotations

from broker.errors import AcbError

__all__ = ["PeerError", "WrongPassword", "NotLoggedIn", "VerificationFailed"]


class PeerError(AcbError):
    """Root of the peer's own errors."""


class WrongPassword(PeerError):
    """The password does not decrypt the keystore."""


class NotLoggedIn(PeerError):
    """No unlocked identity for this command."""


class VerificationFailed(PeerError):
    """Downloaded content does not match its published commitment."""
