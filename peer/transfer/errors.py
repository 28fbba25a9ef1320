"""Errors of the peer-to-peer transfer.

TransferError
├── TransferRefused          the provider (or our own checks) refused the session
│   └── AuthenticationFailed the other side's TLS certificate or key is not the expected one
├── ProtocolError            the other side broke the wire protocol
├── ConnectionLost           the connection dropped or timed out mid-transfer
├── TransferCancelled        cancelled through a TransferControl
├── IntegrityError           a received segment or manifest failed verification
│   ├── ManifestInvalid      header/entry not signed by the provider, or for another sale/document
│   ├── SegmentCorrupt       ciphertext does not match the signed hash
│   ├── SegmentTruncated     segment shorter than the document layout says
│   └── SegmentOutOfOrder    segment index is not the one expected next
├── JournalError             the local download journal is unusable
├── WrongKey                 the released key is not the one the provider committed to
└── ContentMismatch          decrypted content fails the published commitment (carries evidence)

Errors of ``ssl`` and ``socket`` are converted to these at the boundary.
"""

from __future__ import annotations

from peer.errors import PeerError
from peer.transfer.evidence import Evidence


class TransferError(PeerError):
    """Root of all transfer errors."""


class TransferRefused(TransferError):
    """The session was refused; ``reason`` is meant for a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthenticationFailed(TransferRefused):
    """Mutual TLS authentication failed or the peer key is not the pinned one."""


class ProtocolError(TransferError):
    """The peer sent something the protocol does not allow."""


class ConnectionLost(TransferError):
    """The connection closed or timed out before the transfer finished."""


class TransferCancelled(TransferError):
    """The transfer was cancelled through its control object."""


class IntegrityError(TransferError):
    """A segment or manifest failed verification; stored good segments are kept."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class ManifestInvalid(IntegrityError):
    """Manifest header or entry is unsigned, mis-signed, or describes something else."""


class SegmentCorrupt(IntegrityError):
    """Ciphertext hash differs from the signed manifest entry."""


class SegmentTruncated(IntegrityError):
    """A segment is shorter than the document layout requires."""


class SegmentOutOfOrder(IntegrityError):
    """A segment arrived with an unexpected index."""


class JournalError(TransferError):
    """The download journal cannot be used (corrupt beyond repair, or for another sale)."""


class WrongKey(TransferError):
    """The key does not match the key commitment in the provider's signed header."""


class ContentMismatch(TransferError):
    """Decrypted content fails the published commitment.

    ``index`` is the failing segment (None when only the whole-file hash failed);
    ``evidence`` holds the signed header, entry and ciphertext for a dispute.
    """

    def __init__(self, message: str, index: int | None, evidence: Evidence | None) -> None:
        super().__init__(message)
        self.index = index
        self.evidence = evidence
