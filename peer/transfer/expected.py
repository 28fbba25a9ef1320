"""What a consumer was told about a sale, against which the provider's signed header is checked.

Both the session set-up (:mod:`peer.transfer.consumer`) and the bulk phase
(:mod:`peer.transfer.receiver`) read it, so it lives beside them rather than in either.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.content import ContentError, SignedHeader, verify_header
from peer.transfer.errors import ManifestInvalid

__all__ = ["Expected"]


@dataclass(frozen=True)
class Expected:
    """What the ledger and catalog told us; the provider's header must agree."""

    sale_id: str
    doc_id: str | None
    provider: str
    consumer: str
    size: int
    segment_size: int
    segment_count: int
    merkle_root: str
    key_commitment: str | None
    provider_public_key: bytes

    def check_header(self, signed: SignedHeader) -> None:
        """Raise :class:`ManifestInvalid` unless ``signed`` is the provider's and describes this sale."""
        try:
            h = verify_header(signed, self.provider_public_key)
        except ContentError as exc:
            raise ManifestInvalid(f"manifest header rejected: {exc}") from exc
        wrong = [
            f"{name} is {got!r}, expected {want!r}"
            for name, got, want in (
                ("sale_id", h.sale_id, self.sale_id),
                ("provider", h.provider, self.provider),
                ("consumer", h.consumer, self.consumer),
                ("size", h.size, self.size),
                ("segment_size", h.segment_size, self.segment_size),
                ("segment_count", h.segment_count, self.segment_count),
                ("merkle_root", h.merkle_root, self.merkle_root),
                ("doc_id", h.doc_id, self.doc_id if self.doc_id is not None else h.doc_id),
                ("key_commitment", h.key_commitment,
                 self.key_commitment if self.key_commitment is not None else h.key_commitment),
            )
            if got != want
        ]
        if wrong:
            raise ManifestInvalid("manifest header does not describe this sale: " + "; ".join(wrong))
