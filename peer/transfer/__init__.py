"""Peer-to-peer transfer of sold documents: mutual TLS, signed encrypted segments, resume.

The provider runs a :class:`ProviderServer`; the consumer calls :func:`download`
and, once the ledger releases the key, :func:`decrypt_file`. Content crypto
(segment encryption, manifests, disputes) lives in :mod:`broker.content`.
"""

from peer.transfer.consumer import DownloadResult, download, load_download
from peer.transfer.control import TransferControl
from peer.transfer.decrypt import check_interval, decrypt_file
from peer.transfer.errors import (
    AuthenticationFailed,
    ConnectionLost,
    ContentMismatch,
    IntegrityError,
    JournalError,
    ManifestInvalid,
    ProtocolError,
    SegmentCorrupt,
    SegmentOutOfOrder,
    SegmentTruncated,
    TransferCancelled,
    TransferError,
    TransferRefused,
    WrongKey,
)
from peer.transfer.evidence import Evidence
from peer.transfer.provider import ProviderServer, SaleGrant, UploadStatus
from peer.transfer.tls import certificate_login, certificate_public_key, make_certificate

__all__ = [
    "AuthenticationFailed",
    "ConnectionLost",
    "ContentMismatch",
    "DownloadResult",
    "Evidence",
    "IntegrityError",
    "JournalError",
    "ManifestInvalid",
    "ProtocolError",
    "ProviderServer",
    "SaleGrant",
    "SegmentCorrupt",
    "SegmentOutOfOrder",
    "SegmentTruncated",
    "TransferCancelled",
    "TransferControl",
    "TransferError",
    "TransferRefused",
    "UploadStatus",
    "WrongKey",
    "certificate_login",
    "check_interval",
    "certificate_public_key",
    "decrypt_file",
    "download",
    "load_download",
    "make_certificate",
]
