"""What a provider agrees to serve for one sale.

Both the server (:mod:`peer.transfer.provider`) and the frame producer
(:mod:`peer.transfer.source`) read a grant, so it lives beside them rather than in either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.content import FileCommitment

__all__ = ["SaleGrant"]


@dataclass(frozen=True)
class SaleGrant:
    """What ``authorize`` returns for a sale the provider agrees to serve.

    ``key`` and ``key_commitment`` may be left empty by ``authorize`` when the
    server's ``authenticated`` hook supplies them once the buyer is authenticated.
    """

    sale_id: str
    doc_id: str
    consumer_login: str
    consumer_cert_pem: bytes
    consumer_public_key: bytes
    path: Path
    segment_size: int
    key: bytes
    key_commitment: str
    commitment: FileCommitment
    interval_segments: int = 0  # a split sale: each interval under its own key
    limit: int | None = None  # serve no segment at or beyond this one (unpaid intervals)
