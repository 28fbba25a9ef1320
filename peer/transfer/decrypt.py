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

__all__ = ["decrypt_file"]


def decrypt_file(
    result: DownloadResult, key: bytes, out_path: Path, *, sha256_hex: str, merkle_root_hex: str
) -> Path:
    """Decrypt every segment, checking each against the published Merkle root and the
    whole file against the published SHA-256; returns ``out_path``.

    Raises :class:`WrongKey` if ``key`` is not the committed one, and
    :class:`ContentMismatch` (with ``index`` and dispute ``evidence``) if the
    provider's content is not the published document. Nothing is left at
    ``out_path`` on failure; the ciphertext and journal are kept.
    """
    out_path = Path(out_path)
    if key_commitment(result.sale_id, key) != result.header.header.key_commitment:
        raise WrongKey(f"key for sale {result.sale_id} does not match the provider's key commitment")
    try:
        root = bytes.fromhex(merkle_root_hex)
    except ValueError as exc:
        raise ContentMismatch("published Merkle root is not hex", None, None) from exc
    cipher = SegmentCipher(key, result.sale_id)
    whole = hashlib.sha256()
    part = out_path.with_name(out_path.name + ".part")
    pt = bytearray(result.segment_size)
    ok = False
    try:
        with open(result.ct_path, "rb", buffering=0) as src, open(part, "wb", buffering=0) as dst:
            for index in range(result.segment_count):
                ct = os.pread(src.fileno(), result.ct_length(index), result.ct_offset(index))
                try:
                    n = cipher.decrypt_into(index, ct, pt)
                except ContentError as exc:
                    raise ContentMismatch(
                        f"segment {index} does not decrypt with the released key: {exc}",
                        index,
                        result.evidence_for(index),
                    ) from exc
                plain = memoryview(pt)[:n]
                entry = result.entries[index].entry
                if entry.index != index or not verify_merkle(
                    leaf_hash(plain), index, result.segment_count, entry.proof, root
                ):
                    raise ContentMismatch(
                        f"segment {index} is not part of the published document", index, result.evidence_for(index)
                    )
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
