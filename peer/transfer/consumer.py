"""Consumer side: fetch a bought document's ciphertext, verifying every segment on arrival."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.content import (
    SignedEntry,
    SignedHeader,
    segment_count_for,
)
from peer.transfer import protocol
from peer.transfer.control import TransferControl
from peer.transfer.errors import (
    AuthenticationFailed,
    ConnectionLost,
    JournalError,
    ManifestInvalid,
    ProtocolError,
    TransferCancelled,
    TransferRefused,
)
from peer.transfer.evidence import Evidence
from peer.transfer.expected import Expected
from peer.transfer.journal import DownloadStore, slot_size
from peer.transfer.receiver import Receiver
from peer.transfer.tls import certificate_login, check_peer, client_context, close_quietly

__all__ = ["DownloadResult", "Evidence", "download", "load_download"]

_COMMIT_BYTES = 32 << 20


@dataclass(frozen=True)
class DownloadResult:
    """A finished download: where the ciphertext is and the signed manifest that covers it."""

    sale_id: str
    ct_path: Path
    journal_path: Path
    size: int
    segment_size: int
    segment_count: int
    header: SignedHeader
    entries: tuple[SignedEntry, ...]
    resumed_from: int = 0
    segments_received: int = 0
    segments_rechecked: int = 0
    bytes_received: int = 0
    elapsed: float = 0.0

    @property
    def stored(self) -> int:
        """Segments ``0..stored-1`` are verified and on disk (all of them once complete)."""
        return len(self.entries)

    @property
    def complete(self) -> bool:
        return self.stored == self.segment_count

    def ct_offset(self, index: int) -> int:
        """Offset of ciphertext segment ``index`` in :attr:`ct_path` (block-aligned slots)."""
        return index * slot_size(self.segment_size)

    def ct_length(self, index: int) -> int:
        """Length of ciphertext segment ``index``."""
        return min(self.segment_size, self.size - index * self.segment_size) + 16

    def read_ciphertext(self, index: int) -> bytes:
        """Stored ciphertext of segment ``index``."""
        with open(self.ct_path, "rb", buffering=0) as fh:
            return os.pread(fh.fileno(), self.ct_length(index), self.ct_offset(index))

    def evidence_for(self, index: int) -> Evidence:
        """Signed header, signed entry and ciphertext of segment ``index`` for a dispute."""
        if not 0 <= index < self.stored:
            raise IndexError(f"segment {index} is not stored (have 0..{self.stored - 1})")
        return Evidence(self.header, self.entries[index], self.read_ciphertext(index))

    def discard(self) -> None:
        """Delete the ciphertext and journal (after a successful decrypt, or to start over)."""
        for path in (self.ct_path, self.journal_path):
            path.unlink(missing_ok=True)


def download(
    *,
    host: str,
    port: int,
    identity_key: Ed25519PrivateKey,
    cert_pem: bytes,
    sale_id: str,
    min_seq: int,
    provider_login: str,
    provider_cert_pem: bytes,
    provider_public_key: bytes,
    size: int,
    segment_size: int,
    merkle_root_hex: str,
    dest_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    rate_limit_bps: int | None = None,
    control: TransferControl | None = None,
    doc_id: str | None = None,
    key_commitment: str | None = None,
    bulk_tls: bool = False,
    connect_timeout: float = 10.0,
    io_timeout: float = 60.0,
    commit_bytes: int = _COMMIT_BYTES,
    until: int | None = None,
) -> DownloadResult:
    """Download (or resume) the ciphertext of ``sale_id`` from its provider into ``dest_dir``.

    Stores ``<sale_id>.ct`` and ``<sale_id>.journal``; calling again after any
    interruption resumes at the first segment not yet verified and durable. Raises
    a :class:`TransferError` subclass; verified segments stay stored either way.
    ``bulk_tls`` keeps the segment stream inside TLS (slower, hides ciphertext).
    ``until`` stops after segment ``until - 1`` (one interval of a split sale); the
    result then holds segments ``0..until-1`` and a later call continues from there.
    """
    control = control or TransferControl()
    if rate_limit_bps is not None:
        control.set_rate_limit(rate_limit_bps)
    count = segment_count_for(size, segment_size)
    me = certificate_login(cert_pem)
    began = time.monotonic()
    store = DownloadStore(Path(dest_dir), sale_id, size, segment_size)
    try:
        expected = Expected(sale_id, doc_id, provider_login, me, size, segment_size, count, merkle_root_hex,
                            key_commitment, provider_public_key)
        if store.complete and store.header is not None:
            expected.check_header(store.header)
            return _result(store, count, resumed_from=count, received=0, nbytes=0, began=began)
        end = count if until is None else max(0, min(until, count))
        start = store.recover(count)
        if start >= end and store.header is not None:
            # Everything asked for was durable already (e.g. a crash before the completion mark).
            expected.check_header(store.header)
            if end == count:
                store.mark_complete(count)
            return _result(store, count, resumed_from=start, received=0, nbytes=0, began=began,
                           rechecked=store.rechecked, stored=end)
        session = Receiver(store, expected, control, progress, commit_bytes, until=end)
        with _connect(host, port, control, connect_timeout) as socks:
            stream, seal = _open(socks, identity_key, cert_pem, provider_cert_pem, expected, store, start,
                                 min_seq, bulk_tls, io_timeout, end)
            session.seal = seal
            session.run(stream, start)
        if end == count:
            store.mark_complete(count)
        if progress is not None:
            progress(min(size, end * segment_size), size)
        return _result(store, count, resumed_from=start, received=session.received, nbytes=session.nbytes,
                       began=began, rechecked=store.rechecked, stored=end)
    finally:
        store.close()


def load_download(dest_dir: Path, sale_id: str) -> DownloadResult:
    """Reopen a finished download from its journal (e.g. when the key arrives later)."""
    store = DownloadStore.open_existing(Path(dest_dir), sale_id)
    try:
        if not store.complete or store.header is None:
            raise JournalError(f"download of sale {sale_id} is not complete")
        count = store.header.header.segment_count
        return _result(store, count, resumed_from=count, received=0, nbytes=0, began=time.monotonic())
    finally:
        store.close()


def _result(
    store: DownloadStore, count: int, *, resumed_from: int, received: int, nbytes: int, began: float,
    rechecked: int = 0, stored: int | None = None,
) -> DownloadResult:
    assert store.header is not None
    stored = count if stored is None else stored
    missing = [i for i in range(stored) if i not in store.entries]
    if missing:
        raise JournalError(f"journal lacks manifest entries for segments {missing[:5]}")
    return DownloadResult(
        sale_id=store.sale_id,
        ct_path=store.ct_path,
        journal_path=store.journal_path,
        size=store.size,
        segment_size=store.segment_size,
        segment_count=count,
        header=store.header,
        entries=tuple(store.entries[i] for i in range(stored)),
        resumed_from=resumed_from,
        segments_received=received,
        segments_rechecked=rechecked,
        bytes_received=nbytes,
        elapsed=time.monotonic() - began,
    )


class _Sockets:
    """Every socket object of one session, closed together on exit."""

    def __init__(self, control: TransferControl) -> None:
        self.control = control
        self.items: list[socket.socket] = []

    def add(self, sock: socket.socket) -> socket.socket:
        self.items.append(sock)
        self.control.attach(sock)
        return sock

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in self.items:
            self.control.detach(sock)
            close_quietly(sock)


def _connect(host: str, port: int, control: TransferControl, timeout: float) -> _Sockets:
    socks = _Sockets(control)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ConnectionLost(f"cannot reach provider at {host}:{port}: {exc}") from exc
    protocol.send_at_once(sock)
    try:
        socks.add(sock)
    except TransferCancelled:
        close_quietly(sock)
        raise
    return socks


def _open(
    socks: _Sockets,
    identity_key: Ed25519PrivateKey,
    cert_pem: bytes,
    provider_cert_pem: bytes,
    expected: Expected,
    store: DownloadStore,
    start: int,
    min_seq: int,
    bulk_tls: bool,
    io_timeout: float,
    until: int,
) -> tuple[socket.socket, protocol.FrameSeal | None]:
    """Hello, mutual TLS, request and manifest header; returns the bulk stream and its frame seal."""
    sock = socks.items[0]
    protocol.send_hello(sock, expected.sale_id, min_seq)
    protocol.read_reply(sock)
    ctx = client_context(identity_key, cert_pem, provider_cert_pem)
    try:
        tls = ctx.wrap_socket(sock, do_handshake_on_connect=False)
        socks.add(tls)
        tls.do_handshake()
    except (ssl.SSLError, OSError) as exc:
        if socks.control.cancelled:
            raise TransferCancelled("transfer cancelled") from exc
        raise AuthenticationFailed(
            f"provider is not {expected.provider} (TLS handshake failed: {exc})"
        ) from exc
    check_peer(tls, expected.provider_public_key, f"provider {expected.provider}")
    try:
        protocol.send_message(tls, {"type": "request", "start": start, "until": until, "bulk_tls": bulk_tls})
        message = protocol.read_message(tls)
    except (ConnectionLost, ssl.SSLError, OSError) as exc:
        if socks.control.cancelled:
            raise TransferCancelled("transfer cancelled") from exc
        cause = exc.__cause__ if isinstance(exc, ConnectionLost) else exc
        if isinstance(cause, ssl.SSLError):
            # In TLS 1.3 the server judges our certificate after our handshake
            # returned, so its rejection shows up as an alert on the first read.
            raise AuthenticationFailed(f"provider rejected our certificate: {cause.reason or cause}") from exc
        raise
    if message.get("type") == "error":
        raise TransferRefused(f"provider refused: {message.get('reason')}")
    if message.get("type") != "header" or not isinstance(message.get("header"), dict):
        raise ProtocolError("expected the manifest header")
    try:
        signed = SignedHeader.from_wire(message["header"])
    except (KeyError, ValueError, AttributeError) as exc:
        raise ManifestInvalid(f"malformed manifest header: {exc}") from exc
    expected.check_header(signed)
    if store.header is None:
        store.write_header(signed)
    elif store.header != signed:
        raise ManifestInvalid(
            "provider sent a different manifest header than for the stored part of this download"
        )
    if bulk_tls:
        stream: socket.socket = tls
        stream.settimeout(io_timeout)
        return stream, None
    try:
        seal = protocol.FrameSeal(bytes.fromhex(str(message["bulk_key"])))
    except (KeyError, ValueError) as exc:
        raise ProtocolError("provider sent no valid key for sealing the bulk stream") from exc
    try:
        plain = tls.unwrap()
    except (ssl.SSLError, OSError) as exc:
        raise ConnectionLost(f"connection to {expected.provider} broke while leaving TLS: {exc}") from exc
    stream = socks.add(socket.socket(plain.family, plain.type, fileno=plain.detach()))
    protocol.use_kernel_timeouts(stream, io_timeout)
    return stream, seal
