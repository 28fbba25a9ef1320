"""The evidence a consumer keeps of one segment, for a dispute.

It lives apart from the consumer so that :mod:`peer.transfer.errors` can name it
(``ContentMismatch.evidence``) without importing the consumer.
"""

from __future__ import annotations

from typing import NamedTuple

from broker.content import SignedEntry, SignedHeader

__all__ = ["Evidence"]


class Evidence(NamedTuple):
    """What a dispute about one segment needs; unpacks as ``header, entry, ciphertext``."""

    header: SignedHeader
    entry: SignedEntry
    ciphertext: bytes

    @property
    def segment(self) -> int:
        """The segment the evidence is about (as the signed entry says)."""
        return self.entry.entry.index
