"""How a document is cut into segments and committed to: sizes, counts and its :class:`FileCommitment`."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.errors import ProofInvalid
from broker.merkle import MerkleTree, leaf_hash, merkle_root

__all__ = [
    "TAG_SIZE", "FileCommitment", "LARGE_FILE", "LARGE_SEGMENT_SIZE", "SEGMENT_SIZE", "SPLIT_THRESHOLD",
    "INTERVAL_BYTES",
    "choose_interval_segments", "choose_segment_size", "ciphertext_size_for", "describe_file", "segment_count_for",
]

TAG_SIZE = 16  # AES-GCM tag appended to every encrypted segment

SEGMENT_SIZE = 1 << 20
LARGE_SEGMENT_SIZE = 4 << 20
LARGE_FILE = 64 << 20


SPLIT_THRESHOLD = 256 << 20
INTERVAL_BYTES = 64 << 20


def choose_interval_segments(size: int, segment_size: int, interval_bytes: int | None = None) -> int:
    """Segments per paid interval for a new share: 0 (paid whole) below 256 MiB, else 64 MiB intervals.

    ``interval_bytes`` overrides the choice (0: never split). Splitting bounds what either
    side risks to one interval; below the threshold one payment is simpler and costs less.
    """
    if interval_bytes is None:
        interval_bytes = INTERVAL_BYTES if size >= SPLIT_THRESHOLD else 0
    if interval_bytes <= 0:
        return 0
    every = max(1, interval_bytes // segment_size)
    return every if every < segment_count_for(size, segment_size) else 0


def choose_segment_size(size: int) -> int:
    """The segment size a new share gets: 1 MiB, or 4 MiB from 64 MiB up.

    Per segment the provider signs and the consumer verifies one manifest entry and
    both hand a buffer between threads; at 4 MiB that fixed cost is a quarter per byte
    (measured: about +15% throughput on large files), while resume and dispute
    granularity stay small next to such a file.
    """
    return LARGE_SEGMENT_SIZE if size >= LARGE_FILE else SEGMENT_SIZE


def segment_count_for(size: int, segment_size: int) -> int:
    """Number of segments of a ``size``-byte file (0 for an empty file)."""
    if segment_size <= 0:
        raise ValueError("segment_size must be positive")
    return math.ceil(size / segment_size)


def ciphertext_size_for(index: int, size: int, segment_size: int) -> int:
    """Length of ciphertext segment ``index``: plaintext length plus the GCM tag."""
    start = index * segment_size
    return min(segment_size, size - start) + TAG_SIZE


@dataclass(frozen=True)
class FileCommitment:
    """What a provider publishes about a document, plus the leaves it keeps for proofs."""

    size: int
    sha256: str
    merkle_root: str
    segment_size: int
    segment_count: int
    leaves: tuple[bytes, ...] = field(default=(), repr=False, compare=False)

    def public(self) -> dict[str, Any]:
        """The catalog-facing fields (leaves stay with the provider)."""
        return {
            "size": self.size,
            "sha256": self.sha256,
            "merkle_root": self.merkle_root,
            "segment_size": self.segment_size,
            "segment_count": self.segment_count,
        }

    def tree(self) -> MerkleTree:
        """Build the Merkle tree over the kept leaves."""
        if len(self.leaves) != self.segment_count:
            raise ProofInvalid("commitment was loaded without its leaves")
        return MerkleTree(self.leaves)


def describe_file(path: str | Path, segment_size: int = SEGMENT_SIZE) -> FileCommitment:
    """Stream ``path`` once and compute its commitment (size, SHA-256, Merkle root, leaves)."""
    whole = hashlib.sha256()
    leaves: list[bytes] = []
    size = 0
    buf = bytearray(segment_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = _read_full(fh, view)
            if n == 0:
                break
            chunk = view[:n]
            whole.update(chunk)
            leaves.append(leaf_hash(chunk))
            size += n
            if n < segment_size:
                break
    return FileCommitment(
        size=size,
        sha256=whole.hexdigest(),
        merkle_root=merkle_root(leaves).hex(),
        segment_size=segment_size,
        segment_count=len(leaves),
        leaves=tuple(leaves),
    )


def _read_full(fh: Any, view: memoryview) -> int:
    """Fill ``view`` unless EOF comes first; raw reads may return short counts."""
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got
