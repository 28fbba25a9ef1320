"""Provider's producer of wire frames: read, encrypt, hash, sign one segment at a time."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.content import TAG_SIZE, ManifestEntry, MerkleTree, SegmentCipher, ciphertext_hash, sign_entry
from peer.transfer import protocol
from peer.transfer.errors import TransferError
from peer.transfer.grant import SaleGrant

__all__ = ["Frame", "SegmentSource"]

Frame = tuple[int, bytes, memoryview]
"""(segment index, frame header + signed entry, ciphertext)."""


class SegmentSource:
    """Turns plaintext segments of one sale into signed ciphertext frames."""

    def __init__(self, grant: SaleGrant, identity_key: Ed25519PrivateKey, tree: MerkleTree) -> None:
        self._grant = grant
        self._key = identity_key
        self._tree = tree
        self._cipher = SegmentCipher(grant.key, grant.sale_id, grant.interval_segments)
        self._seg = grant.segment_size
        self._size = grant.commitment.size
        self.count = grant.commitment.segment_count
        self._fd = os.open(grant.path, os.O_RDONLY)

    def close(self) -> None:
        """Close the document (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def buffers(self) -> tuple[bytearray, bytearray]:
        """A plaintext and a ciphertext buffer sized for this sale's segments."""
        return bytearray(self._seg), bytearray(self._seg + TAG_SIZE)

    def prepare(self, index: int, bufs: tuple[bytearray, bytearray]) -> Frame:
        """Read, encrypt, hash and sign segment ``index`` into ``bufs``."""
        want = min(self._seg, self._size - index * self._seg)
        pt = memoryview(bufs[0])[:want]
        got = 0
        while got < want:
            n = os.preadv(self._fd, [pt[got:]], index * self._seg + got)
            if n == 0:
                raise TransferError(f"document shrank while serving segment {index}")
            got += n
        ct_len = self._cipher.encrypt_into(index, pt, bufs[1])
        ct = memoryview(bufs[1])[:ct_len]
        entry = ManifestEntry(
            sale_id=self._grant.sale_id,
            index=index,
            ct_hash=ciphertext_hash(ct),
            ct_size=ct_len,
            proof=tuple(self._tree.proof(index)),
        )
        signed = sign_entry(self._key, entry)
        head = protocol.pack_frame(protocol.MAGIC_SEGMENT, index, len(signed.body), ct_len)
        return index, head + signed.body + signed.signature, ct

    def frames(self, start: int, depth: int, until: int | None = None) -> Iterator[Frame]:
        """Frames ``start..count-1``; with ``depth`` > 1 a thread prepares ahead.

        A yielded frame's buffers are reused once the next frame is requested,
        so the caller must have sent it by then.
        """
        if depth <= 1:
            bufs = self.buffers()
            for index in range(start, self.count if until is None else until):
                yield self.prepare(index, bufs)
            return
        yield from _Prefetch(self, start, depth, self.count if until is None else until)


class _Prefetch:
    """Background preparation, ``depth`` frames ahead, stopping when abandoned."""

    def __init__(self, source: SegmentSource, start: int, depth: int, until: int) -> None:
        self._until = until
        self._source = source
        self._free: queue.Queue[tuple[bytearray, bytearray]] = queue.Queue()
        for _ in range(depth):
            self._free.put(source.buffers())
        self._ready: queue.Queue[tuple[Frame, tuple[bytearray, bytearray]] | BaseException | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(start,), name="acb-provider-read", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[Frame]:
        held: tuple[bytearray, bytearray] | None = None
        try:
            while True:
                item = self._ready.get()
                if held is not None:
                    self._free.put(held)
                    held = None
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                frame, held = item
                yield frame
        finally:
            self._stop.set()
            self._thread.join()

    def _run(self, start: int) -> None:
        try:
            for index in range(start, self._until):
                bufs = self._take()
                if bufs is None:
                    return
                self._ready.put((self._source.prepare(index, bufs), bufs))
            self._ready.put(None)
        except Exception as exc:  # noqa: BLE001 - handed to the consuming thread, which reports it
            self._ready.put(exc)

    def _take(self) -> tuple[bytearray, bytearray] | None:
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                continue
        return None
