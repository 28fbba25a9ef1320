"""Merkle trees over plaintext segments (RFC 6962 hashing): the published commitment to a document.

A leaf is SHA-256 of 0x00 || segment, a node SHA-256 of 0x01 || left || right;
an odd node is promoted, not duplicated, so every tree has one shape per size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from broker.errors import ProofInvalid

__all__ = ["MerkleTree", "leaf_hash", "merkle_proof", "merkle_root", "verify_merkle"]

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(plaintext_segment: bytes | bytearray | memoryview) -> bytes:
    """Hash one plaintext segment as a Merkle leaf (RFC 6962: SHA-256 of 0x00 || data)."""
    h = hashlib.sha256(_LEAF_PREFIX)
    h.update(plaintext_segment)
    return h.digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


class MerkleTree:
    """All levels of an RFC 6962 tree, built once so every proof costs O(log n).

    Building bottom-up and carrying an unpaired last node up unchanged yields the
    same tree as RFC 6962's "split at the largest power of two" definition, which
    is what makes odd counts deterministic.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self._levels: list[list[bytes]] = [list(leaves)]
        level = self._levels[0]
        while len(level) > 1:
            nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            self._levels.append(nxt)
            level = nxt

    @property
    def count(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        """The tree head; SHA-256 of the empty string for an empty tree (RFC 6962)."""
        if not self._levels[0]:
            return hashlib.sha256(b"").digest()
        return self._levels[-1][0]

    def proof(self, index: int) -> list[bytes]:
        """Audit path for leaf ``index``, bottom-up."""
        if not 0 <= index < self.count:
            raise ProofInvalid(f"leaf index {index} out of range for {self.count} leaves")
        path: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index >>= 1
        return path


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Root of the RFC 6962 tree over already-hashed ``leaves``."""
    return MerkleTree(leaves).root


def merkle_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path for ``leaves[index]``; use :class:`MerkleTree` for many proofs."""
    return MerkleTree(leaves).proof(index)


def verify_merkle(leaf: bytes, index: int, count: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Check an audit path (RFC 9162 section 2.1.3.2); never raises on bad input."""
    if not 0 <= index < count:
        return False
    fn, sn, r = index, count - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root
