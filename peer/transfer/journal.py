"""Crash-safe storage of a download: the ciphertext file plus an append-only journal.

Ciphertext segment i lives at a fixed, 4 KiB-aligned offset of ``<sale_id>.ct``
(segments are padded to whole blocks, and the file is trimmed when complete),
so it can be written with O_DIRECT: the data goes from the receive buffer
to the disk without a page-cache copy or a later writeback, and making it
durable costs a cache flush instead of a large fsync. Filesystems without
O_DIRECT (tmpfs) get ordinary buffered writes. The journal
``<sale_id>.journal`` holds CRC-framed records:

* HEADER   the provider-signed manifest header (evidence for disputes);
* ENTRY i  the provider-signed entry of segment i, appended after its data was
           written but before that data is known to be durable ("pending");
* COMMIT n segments 0..n-1 are verified and durable: written only after the
           ciphertext file was fdatasync'ed, then the journal itself is fsync'ed;
* COMPLETE every segment is committed, so a later open checks nothing (written
           with the COMMIT of the last segment, under the same fsync).

After a crash, segments below the last COMMIT are trusted as they are, and
only pending segments beyond it are re-hashed against their signed entries; a
torn record at the tail is cut off. Commits are grouped (every few MiB) because
one fsync per segment would cost more than the transfer itself.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import zlib
from pathlib import Path

from broker.content import TAG_SIZE, SignedEntry, SignedHeader, ciphertext_hash, segment_count_for
from peer.transfer.errors import JournalError

__all__ = ["BLOCK", "DownloadStore", "slot_size"]

BLOCK = 4096

_HEADER, _ENTRY, _COMMIT, _COMPLETE = 1, 2, 3, 4
_REC = struct.Struct(">BI")
_CRC = struct.Struct(">I")
_IDX = struct.Struct(">Q")
_SIG = 64


def slot_size(segment_size: int) -> int:
    """Bytes reserved per ciphertext segment in the .ct file (block-aligned)."""
    return -(-(segment_size + TAG_SIZE) // BLOCK) * BLOCK


def _record(kind: int, payload: bytes) -> bytes:
    head = _REC.pack(kind, len(payload))
    return head + payload + _CRC.pack(zlib.crc32(head + payload))


class DownloadStore:
    """Ciphertext file and journal of one sale in ``dest_dir``.

    Not a general database: one writer thread appends entries and one committer
    thread commits, coordinated by an internal lock.
    """

    def __init__(self, dest_dir: Path, sale_id: str, size: int, segment_size: int) -> None:
        if not sale_id or any(c in sale_id for c in "/\\\x00") or sale_id in (".", ".."):
            raise JournalError(f"sale id {sale_id!r} cannot name a file")
        dest_dir.mkdir(parents=True, exist_ok=True)
        self.sale_id = sale_id
        self.size = size
        self.segment_size = segment_size
        self.ct_path = dest_dir / f"{sale_id}.ct"
        self.journal_path = dest_dir / f"{sale_id}.journal"
        self.header: SignedHeader | None = None
        self.entries: dict[int, SignedEntry] = {}
        self.committed = 0
        self.complete = False
        self.rechecked = 0
        self._lock = threading.Lock()
        self._ct_fd = os.open(self.ct_path, os.O_RDWR | os.O_CREAT, 0o600)
        self._direct_fd = -1
        self._j_fd = -1
        try:
            self._load()
            self._j_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            direct = getattr(os, "O_DIRECT", 0)
            if direct:
                try:
                    self._direct_fd = os.open(self.ct_path, os.O_WRONLY | direct)
                except OSError:
                    self._direct_fd = -1
        except BaseException:
            self.close()
            raise

    @property
    def direct(self) -> bool:
        """Whether segments are written with O_DIRECT (callers then pass aligned buffers)."""
        return self._direct_fd >= 0

    @classmethod
    def open_existing(cls, dest_dir: Path, sale_id: str) -> DownloadStore:
        """Open a store whose layout is taken from its journaled header."""
        if not (dest_dir / f"{sale_id}.journal").exists():
            raise JournalError(f"no download of sale {sale_id} in {dest_dir}")
        store = cls(dest_dir, sale_id, 0, 1)
        if store.header is None:
            store.close()
            raise JournalError(f"download of sale {sale_id} has no manifest header yet")
        h = store.header.header
        store.size, store.segment_size = h.size, h.segment_size
        return store

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        try:
            data = self.journal_path.read_bytes()
        except FileNotFoundError:
            return
        pos, good = 0, 0
        while pos + _REC.size <= len(data):
            kind, n = _REC.unpack_from(data, pos)
            end = pos + _REC.size + n + _CRC.size
            if end > len(data):
                break
            (crc,) = _CRC.unpack_from(data, end - _CRC.size)
            if zlib.crc32(data[pos : end - _CRC.size]) != crc:
                break
            self._apply(kind, data[pos + _REC.size : end - _CRC.size])
            pos = good = end
        if good != len(data):
            # A torn tail is the normal trace of a crash mid-append: cut it off.
            with open(self.journal_path, "r+b") as fh:
                fh.truncate(good)
                os.fsync(fh.fileno())

    def _apply(self, kind: int, payload: bytes) -> None:
        if kind == _HEADER:
            self.header = SignedHeader(body=payload[_SIG:], signature=payload[:_SIG])
        elif kind == _ENTRY:
            (index,) = _IDX.unpack_from(payload)
            sig = payload[_IDX.size : _IDX.size + _SIG]
            self.entries[index] = SignedEntry(body=payload[_IDX.size + _SIG :], signature=sig)
        elif kind == _COMMIT:
            (self.committed,) = _IDX.unpack(payload)
        elif kind == _COMPLETE:
            self.complete = True
        else:
            raise JournalError(f"{self.journal_path}: unknown record type {kind}")

    # ------------------------------------------------------------------ layout
    def offset(self, index: int) -> int:
        """Byte offset of ciphertext segment ``index`` in the .ct file."""
        return index * slot_size(self.segment_size)

    def ct_length(self, index: int) -> int:
        """Ciphertext length of segment ``index``."""
        return min(self.segment_size, self.size - index * self.segment_size) + TAG_SIZE

    def read_ciphertext(self, index: int) -> bytes:
        """The stored ciphertext of segment ``index`` (may be short if never written)."""
        return os.pread(self._ct_fd, self.ct_length(index), self.offset(index))

    # ------------------------------------------------------------------ recovery
    def recover(self, segment_count: int) -> int:
        """Re-check pending segments past the last commit; returns the resume index.

        Only segments that have a journaled entry but no commit are hashed again,
        so a clean shutdown or a finished download costs nothing here.
        """
        if self.complete:
            return segment_count
        index = self.committed
        while index < segment_count and index in self.entries:
            entry = self.entries[index].entry
            data = self.read_ciphertext(index)
            if len(data) != entry.ct_size or ciphertext_hash(data) != entry.ct_hash:
                break
            index += 1
        self.rechecked = index - self.committed
        for stale in [i for i in self.entries if i >= index]:
            del self.entries[stale]
        if index > self.committed:
            self.commit(index)
        return index

    # ------------------------------------------------------------------ writing
    def _append(self, record: bytes, sync: bool) -> None:
        with self._lock:
            os.write(self._j_fd, record)
        if sync:
            # Outside the lock: the writer thread's next pending entry need not wait for
            # the disk flush, and fsync covers every record written before it anyway.
            os.fsync(self._j_fd)

    def write_header(self, signed: SignedHeader) -> None:
        """Record the signed manifest header (durably, before any segment)."""
        self.header = signed
        self._append(_record(_HEADER, signed.signature + signed.body), sync=True)

    def write_segment(self, index: int, signed: SignedEntry, slot: memoryview, ct_len: int) -> None:
        """Write a verified segment and its pending entry; durable only after :meth:`commit`.

        ``slot`` holds the ciphertext in its first ``ct_len`` bytes; with O_DIRECT
        it must be page-aligned and it is written up to the next block boundary.
        """
        self.write_segments(index, [(signed, slot, ct_len)])

    def write_segments(self, first: int, segments: list[tuple[SignedEntry, memoryview, int]]) -> None:
        """:meth:`write_segment` for segments ``first, first + 1, ...`` in one system call.

        Their slots are adjacent in the file, so with O_DIRECT a run of segments is one
        large write: the disk sees fewer, bigger requests (measured here: 4 MiB writes
        reach about 1.0 GB/s, 16 MiB ones 1.25 GB/s).
        """
        if self._direct_fd >= 0:
            views = []
            for _signed, slot, ct_len in segments:
                padded = -(-ct_len // BLOCK) * BLOCK
                slot[ct_len:padded] = bytes(padded - ct_len)
                views.append(slot[:padded])
            try:
                _pwritev_all(self._direct_fd, views, self.offset(first))
                for k, (signed, _slot, _len) in enumerate(segments):
                    self._pending(first + k, signed)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Filesystem refused O_DIRECT after all: continue buffered.
                os.close(self._direct_fd)
                self._direct_fd = -1
        for k, (signed, slot, ct_len) in enumerate(segments):
            _pwrite_all(self._ct_fd, slot[:ct_len], self.offset(first + k))
            self._pending(first + k, signed)

    def _pending(self, index: int, signed: SignedEntry) -> None:
        with self._lock:
            self.entries[index] = signed
        self._append(_record(_ENTRY, _IDX.pack(index) + signed.signature + signed.body), sync=False)

    def commit(self, upto: int) -> None:
        """Make segments below ``upto`` durable: data first, then the journal that claims them.

        Committing the last segment also completes the download (see :meth:`mark_complete`),
        in the same two flushes rather than four.
        """
        last = self.size > 0 and upto == segment_count_for(self.size, self.segment_size)
        if last:
            self._trim(upto)
        # Also flushes the disk cache and the extent changes of O_DIRECT writes.
        os.fdatasync(self._ct_fd)
        record = _record(_COMMIT, _IDX.pack(upto))
        self._append(record + _record(_COMPLETE, b"") if last else record, sync=True)
        self.committed = upto
        self.complete = self.complete or last

    def mark_complete(self, segment_count: int) -> None:
        """Record that the whole download is verified and durable; trims any stale tail."""
        if self.complete:
            return
        if self._trim(segment_count):
            os.fdatasync(self._ct_fd)
        self._append(_record(_COMPLETE, b""), sync=True)
        self.complete = True

    def _trim(self, segment_count: int) -> bool:
        """Cut the block padding after the last segment; True if the file was longer."""
        end = self.offset(segment_count - 1) + self.ct_length(segment_count - 1) if segment_count else 0
        if os.fstat(self._ct_fd).st_size > end:
            os.ftruncate(self._ct_fd, end)
            return True
        return False

    def close(self) -> None:
        """Close both files (idempotent)."""
        for name in ("_ct_fd", "_j_fd", "_direct_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def _pwritev_all(fd: int, views: list[memoryview], offset: int) -> None:
    """Write adjacent ``views`` from ``offset``; a short write is finished piece by piece."""
    done = os.pwritev(fd, views, offset)
    for view in views:
        if done >= len(view):
            done -= len(view)
        else:
            _pwrite_all(fd, view[done:], offset + done)
            done = 0
        offset += len(view)
