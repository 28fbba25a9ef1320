"""Turn a downloaded ciphertext into the document once the ledger has released the key."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from broker.content import (
    ContentError,
    SegmentCipher,
    key_commitment,
    leaf_hash,
    verify_merkle,
)
from peer.transfer.consumer import DownloadResult
from peer.transfer.errors import ContentMismatch, WrongKey

__all__ = ["decrypt_file", "check_interval"]


def decrypt_file(
    result: DownloadResult, key: bytes | None, out_path: Path, *, sha256_hex: str, merkle_root_hex: str,
    interval_segments: int = 0, interval_keys: dict[int, bytes] | None = None,
) -> Path:
    """Decrypt every segment, checking each against the published Merkle root and the
    whole file against the published SHA-256; returns ``out_path``.

    A split sale passes its ``interval_segments`` and either the sale key or the
    released ``interval_keys``. Raises :class:`WrongKey` if ``key`` is not the
    committed one, and :class:`ContentMismatch` (with ``index`` and dispute
    ``evidence``) if the provider's content is not the published document.
    Nothing is left at ``out_path`` on failure; the ciphertext and journal are kept.
    """
    out_path = Path(out_path)
    if key is not None and key_commitment(result.sale_id, key) != result.header.header.key_commitment:
        raise WrongKey(f"key for sale {result.sale_id} does not match the provider's key commitment")
    if not result.complete:
        raise ContentMismatch(f"only {result.stored} of {result.segment_count} segments are stored", None, None)
    root = _root(merkle_root_hex)
    cipher = SegmentCipher(key, result.sale_id, interval_segments, interval_keys)
    whole = hashlib.sha256()
    part = out_path.with_name(out_path.name + ".part")
    pt = bytearray(result.segment_size)
    ok = False
    try:
        with open(result.ct_path, "rb", buffering=0) as src, open(part, "wb", buffering=0) as dst:
            for index in range(result.segment_count):
                plain = _open_segment(result, cipher, src.fileno(), index, pt, root)
                whole.update(plain)
                dst.write(plain)
            os.fsync(dst.fileno())
        if whole.hexdigest() != sha256_hex:
            raise ContentMismatch("decrypted file does not match the published SHA-256", None, None)
        os.replace(part, out_path)
        ok = True
        return out_path
    finally:
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


def check_interval(result: DownloadResult, interval_key: bytes, interval: int, interval_segments: int, *,
                   merkle_root_hex: str) -> int:
    """Check one paid interval of a split sale as soon as its key is released; returns its segment count.

    Raises :class:`ContentMismatch` with dispute evidence at the first bad segment, so
    a consumer stops paying the moment the provider is caught.
    """
    root = _root(merkle_root_hex)
    cipher = SegmentCipher(None, result.sale_id, interval_segments, {interval: interval_key})
    first = interval * interval_segments
    last = min(first + interval_segments, result.segment_count)
    if result.stored < last:
        raise ContentMismatch(f"interval {interval + 1} is not fully stored", None, None)
    pt = bytearray(result.segment_size)
    with open(result.ct_path, "rb", buffering=0) as src:
        for index in range(first, last):
            _open_segment(result, cipher, src.fileno(), index, pt, root)
    return last - first


def _root(merkle_root_hex: str) -> bytes:
    try:
        return bytes.fromhex(merkle_root_hex)
    except ValueError as exc:
        raise ContentMismatch("published Merkle root is not hex", None, None) from exc


def _open_segment(result: DownloadResult, cipher: SegmentCipher, fd: int, index: int, pt: bytearray,
                  root: bytes) -> memoryview:
    ct = os.pread(fd, result.ct_length(index), result.ct_offset(index))
    try:
        n = cipher.decrypt_into(index, ct, pt)
    except ContentError as exc:
        raise ContentMismatch(
            f"segment {index} does not decrypt with the released key: {exc}", index, result.evidence_for(index)
        ) from exc
    plain = memoryview(pt)[:n]
    entry = result.entries[index].entry
    if entry.index != index or not verify_merkle(leaf_hash(plain), index, result.segment_count, entry.proof, root):
        raise ContentMismatch(f"segment {index} is not part of the published document", index,
                              result.evidence_for(index))
    return plain
