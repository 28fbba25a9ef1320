"""Consumer's bulk phase: receive, verify and store segments in a three-stage pipeline.

The receiving thread only moves bytes from the socket into page-aligned
buffers; a verify thread checks each entry's signature and the ciphertext's
BLAKE3 hash; a write thread stores verified segments (O_DIRECT when possible)
and a commit thread makes them durable in groups. Hashing, signature checks,
socket and disk calls all release the GIL, so the stages overlap on separate
cores instead of adding up.
"""

from __future__ import annotations

import errno
import mmap
import queue
import socket
import threading
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.content import ContentError, SignedEntry, ciphertext_hash, verify_entry
from peer.transfer import protocol
from peer.transfer.control import TransferControl
from peer.transfer.errors import (
    ConnectionLost,
    JournalError,
    ManifestInvalid,
    ProtocolError,
    SegmentCorrupt,
    SegmentOutOfOrder,
    SegmentTruncated,
    TransferCancelled,
    TransferError,
)
from peer.transfer.expected import Expected
from peer.transfer.journal import DownloadStore, slot_size

__all__ = ["Receiver"]

_BUFFERS = 8
_BATCH = 4  # segments written with one system call at most

# (segment index, raw entry + signature, aligned slot buffer, ciphertext length)
_Item = tuple[int, bytearray, mmap.mmap, int]


class Receiver:
    """Receives segments ``start..count-1`` of one sale into a :class:`DownloadStore`."""

    def __init__(
        self,
        store: DownloadStore,
        expected: Expected,
        control: TransferControl,
        progress: Callable[[int, int], None] | None,
        commit_bytes: int,
        until: int | None = None,
    ) -> None:
        self.store = store
        self.expected = expected
        self.until = expected.segment_count if until is None else until
        self.control = control
        self.progress = progress
        self.commit_segments = max(1, commit_bytes // max(1, expected.segment_size))
        self.public_key = Ed25519PublicKey.from_public_bytes(expected.provider_public_key)
        self.received = 0
        self.nbytes = 0
        self._written = 0
        self._failure: BaseException | None = None
        self._cond = threading.Condition()
        self._finished = False
        self.seal: protocol.FrameSeal | None = None  # set when the stream left TLS

    # ------------------------------------------------------------------ receive (caller's thread)
    def run(self, stream: socket.socket, start: int) -> None:
        """Receive until the end frame; raises the first failure of any stage."""
        free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(_BUFFERS):
            # Anonymous mmaps are page-aligned, as O_DIRECT writes require.
            free.put(mmap.mmap(-1, slot_size(self.expected.segment_size)))
        to_verify: queue.Queue[_Item | None] = queue.Queue()
        to_write: queue.Queue[_Item | None] = queue.Queue()
        self._written = start
        threads = [
            threading.Thread(target=self._verify_loop, args=(to_verify, to_write, free), name="acb-verify"),
            threading.Thread(target=self._write_loop, args=(to_write, free), name="acb-write"),
            threading.Thread(target=self._commit_loop, name="acb-commit"),
        ]
        for t in threads:
            t.start()
        try:
            self._receive(stream, start, free, to_verify)
        except BaseException as exc:  # noqa: BLE001 - handed to the receiving thread
            self._fail(exc)
        finally:
            to_verify.put(None)
            threads[0].join()
            threads[1].join()
            with self._cond:
                self._finished = True
                self._cond.notify_all()
            threads[2].join()
        self._raise_failure()

    def _receive(
        self, stream: socket.socket, start: int, free: queue.Queue[mmap.mmap], out: queue.Queue[_Item | None]
    ) -> None:
        count, seg, size = self.until, self.expected.segment_size, self.expected.size
        head = bytearray(protocol.FRAME.size)
        index = start
        while True:
            self._raise_failure()
            self.control.check()
            self._recv(stream, head, index)
            magic, got, elen, clen = protocol.FRAME.unpack(head)
            if magic == protocol.MAGIC_END:
                if index != count:
                    raise SegmentTruncated(f"provider ended the stream after {index} of {count} segments", index)
                return
            if magic == protocol.MAGIC_ERROR:
                reason = bytearray(min(elen, 4096))
                self._recv(stream, reason, index)
                raise TransferError(f"provider failed: {reason.decode(errors='replace')}")
            if magic != protocol.MAGIC_SEGMENT:
                raise ProtocolError(f"unexpected frame {bytes(magic)!r} where segment {index} was due")
            if index >= count:
                raise ProtocolError(f"provider sent segment {got} beyond the last one ({count - 1})")
            if got != index:
                raise SegmentOutOfOrder(f"expected segment {index}, provider sent segment {got}", index)
            want = self.store.ct_length(index)
            if clen < want:
                raise SegmentTruncated(f"segment {index} is {clen} bytes, the document needs {want}", index)
            if clen > want or elen > protocol.MAX_ENTRY:
                raise SegmentCorrupt(f"segment {index} frame is oversized ({elen}+{clen} bytes)", index)
            if self.seal is None:
                entry = bytearray(elen + protocol.SIGNATURE_SIZE)
                self._recv(stream, entry, index)
            else:
                sealed = bytearray(elen + protocol.SIGNATURE_SIZE + protocol.SEAL_OVERHEAD)
                self._recv(stream, sealed, index)
                entry = bytearray(self.seal.open(bytes(head), bytes(sealed), index))
            buf = self._take(free)
            self.control.throttle(clen)
            with memoryview(buf) as view:
                self._recv(stream, view[:clen], index)
            self.nbytes += protocol.FRAME.size + len(entry) + clen
            self.received += 1
            out.put((index, entry, buf, clen))
            index += 1
            if self.progress is not None:
                self.progress(min(size, self._written * seg), size)

    def _recv(self, stream: socket.socket, buf: bytearray | memoryview, index: int) -> None:
        try:
            protocol.recv_exactly(stream, memoryview(buf))
        except ConnectionLost as exc:
            if self.control.cancelled:
                raise TransferCancelled("transfer cancelled") from exc
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise ConnectionLost(f"provider went silent while sending segment {index}") from exc
            raise ConnectionLost(f"segment {index}: {exc}") from exc

    def _take(self, free: queue.Queue[mmap.mmap]) -> mmap.mmap:
        while True:
            self._raise_failure()
            try:
                return free.get(timeout=0.2)
            except queue.Empty:
                continue

    # ------------------------------------------------------------------ failure handling
    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._failure is None:
                self._failure = exc
            self._cond.notify_all()

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is not None:
            if self.control.cancelled and not isinstance(failure, TransferError):
                raise TransferCancelled("transfer cancelled") from failure
            raise failure

    # ------------------------------------------------------------------ verify thread
    def _verify_loop(
        self, inbox: queue.Queue[_Item | None], outbox: queue.Queue[_Item | None], free: queue.Queue[mmap.mmap]
    ) -> None:
        # Segments received before a connection failure are still verified and
        # stored; after a segment fails verification, nothing later is.
        broken = False
        try:
            while (item := inbox.get()) is not None:
                if not broken:
                    try:
                        self._verify(*item)
                        outbox.put(item)
                        continue
                    except BaseException as exc:  # noqa: BLE001 - handed to the receiving thread
                        broken = True
                        self._fail(exc)
                free.put(item[2])
        finally:
            outbox.put(None)

    def _verify(self, index: int, raw: bytearray, buf: mmap.mmap, clen: int) -> None:
        elen = len(raw) - protocol.SIGNATURE_SIZE
        signed = SignedEntry(body=bytes(raw[:elen]), signature=bytes(raw[elen:]))
        try:
            entry = verify_entry(signed, self.public_key)
        except ContentError as exc:
            raise ManifestInvalid(f"segment {index}: {exc}", index) from exc
        if entry.sale_id != self.expected.sale_id:
            raise ManifestInvalid(f"segment {index}: manifest entry is for sale {entry.sale_id!r}", index)
        if entry.index != index:
            raise ManifestInvalid(f"segment {index}: manifest entry is for segment {entry.index}", index)
        if entry.ct_size != clen:
            raise ManifestInvalid(f"segment {index}: manifest entry size {entry.ct_size} != {clen}", index)
        with memoryview(buf) as view:
            if ciphertext_hash(view[:clen]) != entry.ct_hash:
                raise SegmentCorrupt(f"segment {index}: ciphertext does not match the signed hash", index)

    # ------------------------------------------------------------------ write thread
    def _write_loop(self, inbox: queue.Queue[_Item | None], free: queue.Queue[mmap.mmap]) -> None:
        # Whatever verified segments are waiting are written together: when the disk
        # falls behind, its requests grow, which is what lets it catch up.
        done = False
        while not done:
            item = inbox.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < _BATCH:
                try:
                    more = inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                    break
                batch.append(more)
            self._write_batch(batch, free)

    def _write_batch(self, batch: list[_Item], free: queue.Queue[mmap.mmap]) -> None:
        first = batch[0][0]
        views = [memoryview(buf) for _index, _raw, buf, _clen in batch]
        try:
            # Commits claim a prefix, so only the next contiguous segments may be stored.
            if first == self._written and not isinstance(self._failure, JournalError):
                segments = []
                for (_index, raw, _buf, clen), view in zip(batch, views, strict=True):
                    elen = len(raw) - protocol.SIGNATURE_SIZE
                    segments.append((SignedEntry(body=bytes(raw[:elen]), signature=bytes(raw[elen:])), view, clen))
                self.store.write_segments(first, segments)
                with self._cond:
                    self._written = first + len(batch)
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the receiving thread
            self._fail(JournalError(f"cannot store segments {first}..{first + len(batch) - 1}: {exc}"))
        finally:
            for view in views:
                view.release()
            for _index, _raw, buf, _clen in batch:
                free.put(buf)

    # ------------------------------------------------------------------ commit thread
    def _commit_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._finished and self._written - self.store.committed < self.commit_segments:
                        self._cond.wait()
                    upto, finished = self._written, self._finished
                if upto > self.store.committed:
                    self.store.commit(upto)
                if finished:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the receiving thread
            self._fail(JournalError(f"cannot make the download durable: {exc}"))
