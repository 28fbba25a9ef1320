"""Provider side: serve sold documents, encrypted per sale, to authenticated buyers."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.content import (
    KEY_SIZE,
    FileCommitment,
    ManifestHeader,
    MerkleTree,
    sign_header,
)
from peer.transfer import protocol
from peer.transfer.control import TransferControl
from peer.transfer.errors import (
    AuthenticationFailed,
    ConnectionLost,
    ProtocolError,
    TransferCancelled,
    TransferError,
    TransferRefused,
)
from peer.transfer.source import SegmentSource
from peer.transfer.tls import check_peer, close_quietly, server_context

__all__ = ["ProviderServer", "SaleGrant", "UploadStatus"]

log = logging.getLogger(__name__)

_PIPELINE_DEPTH = 4
_LIMITED_CHUNK = 64 * 1024


@dataclass(frozen=True)
class SaleGrant:
    """What ``authorize`` returns for a sale the provider agrees to serve."""

    sale_id: str
    doc_id: str
    consumer_login: str
    consumer_cert_pem: bytes
    consumer_public_key: bytes
    path: Path
    segment_size: int
    key: bytes
    key_commitment: str
    commitment: FileCommitment
    interval_segments: int = 0  # a split sale: each interval under its own key
    limit: int | None = None  # serve no segment at or beyond this one (unpaid intervals)


@dataclass(frozen=True)
class UploadStatus:
    """Snapshot of one upload; ``state`` is one of handshake, sending, paused,
    done, refused, failed, cancelled."""

    sale_id: str
    consumer: str
    peer: str
    start_index: int
    bytes_sent: int
    segments_sent: int
    rate: float
    state: str
    error: str | None = None


class _Upload:
    """Mutable counters behind an :class:`UploadStatus`, guarded by the server lock."""

    def __init__(self, peer: str, control: TransferControl) -> None:
        self.status = UploadStatus("", "", peer, 0, 0, 0, 0.0, "handshake")
        self.control = control
        self.started = time.monotonic()

    def update(self, **changes: object) -> None:
        self.status = replace(self.status, **changes)  # type: ignore[arg-type]

    def snapshot(self) -> UploadStatus:
        s = self.status
        state = "paused" if s.state == "sending" and self.control.paused else s.state
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return replace(s, state=state, rate=s.bytes_sent / elapsed)


class ProviderServer:
    """Accepts consumers, authenticates them per sale, and streams signed ciphertext.

    ``authorize(sale_id, min_seq)`` is asked about every connection before any
    TLS happens; it returns a :class:`SaleGrant` or raises ``TransferRefused``.
    Each connection runs in its own thread, with a second thread reading and
    encrypting ahead so disk, AES and hashing overlap with the socket.
    """

    def __init__(
        self,
        identity_key: Ed25519PrivateKey,
        login: str,
        cert_pem: bytes,
        authorize: Callable[[str, int], SaleGrant],
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit_bps: int | None = None,
        *,
        handshake_timeout: float = 10.0,
        io_timeout: float = 60.0,
    ) -> None:
        self._key = identity_key
        self._login = login
        self._cert_pem = cert_pem
        self._authorize = authorize
        self._host = host
        self._requested_port = port
        self.rate = TransferControl(rate_limit_bps)
        self._handshake_timeout = handshake_timeout
        self._io_timeout = io_timeout
        self._lock = threading.Lock()
        self._uploads: list[_Upload] = []
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._trees: dict[str, MerkleTree] = {}
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Listen and accept in a background thread; returns once listening (see ``.port``)."""
        if self._listener is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._listener = socket.create_server((self._host, self._requested_port), backlog=64)
        # accept() is not reliably woken by close() from another thread; poll instead.
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="acb-provider-accept", daemon=True)
        self._acceptor.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut every active upload, and wait for the threads."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
            self._acceptor = None
        if self._listener is not None:
            close_quietly(self._listener)
            self._listener = None
        with self._lock:
            controls = [u.control for u in self._uploads]
            threads = list(self._threads)
        for control in controls:
            control.cancel()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ observation
    def uploads(self) -> list[UploadStatus]:
        """Snapshots of every upload of this server's lifetime, oldest first."""
        with self._lock:
            return [u.snapshot() for u in self._uploads]

    def control(self, sale_id: str) -> TransferControl | None:
        """The control of the latest upload for ``sale_id`` (pause, resume, cancel, rate)."""
        with self._lock:
            for u in reversed(self._uploads):
                if u.status.sale_id == sale_id:
                    return u.control
        return None

    # ------------------------------------------------------------------ connections
    def _accept_loop(self) -> None:
        assert self._listener is not None
        listener = self._listener
        while not self._stopping.is_set():
            try:
                conn, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)
                continue
            conn.setblocking(True)
            upload = _Upload(f"{addr[0]}:{addr[1]}", TransferControl())
            t = threading.Thread(target=self._serve, args=(conn, upload), name="acb-provider-conn", daemon=True)
            with self._lock:
                self._uploads.append(upload)
                self._threads.add(t)
            t.start()

    def _serve(self, conn: socket.socket, upload: _Upload) -> None:
        # Every socket object of the session (plain, TLS, unwrapped) is closed here.
        socks: list[socket.socket] = [conn]
        try:
            upload.control.attach(conn)
            self._session(conn, upload, socks)
            upload.update(state="done")
        except TransferRefused as exc:
            upload.update(state="refused", error=exc.reason)
            log.info("refused %s: %s", upload.status.peer, exc.reason)
        except TransferCancelled:
            upload.update(state="cancelled", error="stopped by the provider")
        except (TransferError, OSError) as exc:
            if upload.status.state == "handshake":
                # Anything going wrong before the peer is authenticated is a refusal.
                upload.update(state="refused", error=str(exc))
                log.info("refused %s: %s", upload.status.peer, exc)
            elif upload.control.cancelled:
                upload.update(state="cancelled", error="stopped by the provider")
            else:
                upload.update(state="failed", error=str(exc))
                log.info("upload to %s failed: %s", upload.status.peer, exc)
        except Exception as exc:  # a thread must never die silently
            upload.update(state="failed", error=f"internal error: {exc!r}")
            log.exception("upload to %s crashed", upload.status.peer)
        finally:
            for sock in socks:
                upload.control.detach(sock)
                close_quietly(sock)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _session(self, conn: socket.socket, upload: _Upload, socks: list[socket.socket]) -> None:
        conn.settimeout(self._handshake_timeout)
        try:
            sale_id, min_seq = protocol.read_hello(conn)
        except ProtocolError as exc:
            with contextlib.suppress(OSError):
                protocol.send_reply(conn, str(exc))
            raise TransferRefused(str(exc)) from exc
        upload.update(sale_id=sale_id)
        try:
            grant = self._authorize(sale_id, min_seq)
            self._check_grant(grant, sale_id)
        except TransferRefused as exc:
            protocol.send_reply(conn, exc.reason)
            raise
        except Exception as exc:
            log.exception("authorize(%s) failed", sale_id)
            protocol.send_reply(conn, "provider could not check the sale")
            raise TransferRefused(f"authorize failed: {exc!r}") from exc
        upload.update(consumer=grant.consumer_login)
        protocol.send_reply(conn, None)

        ctx = server_context(self._key, self._cert_pem, grant.consumer_cert_pem)
        try:
            tls = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            socks.append(tls)
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            raise AuthenticationFailed(
                f"peer is not {grant.consumer_login}, the buyer of sale {sale_id}: TLS handshake failed ({exc})"
            ) from exc
        upload.control.attach(tls)
        try:
            check_peer(tls, grant.consumer_public_key, f"consumer of sale {sale_id}")
            upload.update(state="sending")
            request = protocol.read_message(tls)
            try:
                start, until, bulk_tls = self._check_request(request, grant)
            except (TransferRefused, ProtocolError) as exc:
                # Say why before hanging up, so the consumer reports the reason rather than a lost connection.
                with contextlib.suppress(OSError, ssl.SSLError):
                    protocol.send_message(tls, {"type": "error", "reason": str(exc)})
                raise
            upload.update(start_index=start)
            header = ManifestHeader(
                sale_id=sale_id,
                doc_id=grant.doc_id,
                provider=self._login,
                consumer=grant.consumer_login,
                key_commitment=grant.key_commitment,
                size=grant.commitment.size,
                segment_size=grant.segment_size,
                segment_count=grant.commitment.segment_count,
                merkle_root=grant.commitment.merkle_root,
            )
            signed = sign_header(self._key, header)
            message: dict[str, object] = {"type": "header", "header": signed.to_wire()}
            seal = None
            if not bulk_tls:
                bulk_key = protocol.FrameSeal.new_key()
                message["bulk_key"] = bulk_key.hex()
                seal = protocol.FrameSeal(bulk_key)
            protocol.send_message(tls, message)
            stream = tls if bulk_tls else _unwrap(tls)
            socks.append(stream)
        except ssl.SSLError as exc:
            raise ConnectionLost(f"TLS failed with {grant.consumer_login}: {exc}") from exc
        upload.control.attach(stream)
        if isinstance(stream, ssl.SSLSocket):
            stream.settimeout(self._io_timeout)
        else:
            protocol.use_kernel_timeouts(stream, self._io_timeout)
        self._stream_segments(stream, grant, start, upload, seal, until)
        _finish(stream)

    def _check_grant(self, grant: SaleGrant, sale_id: str) -> None:
        c = grant.commitment
        if grant.sale_id != sale_id:
            raise TransferRefused("provider granted a different sale")
        if len(grant.key) != KEY_SIZE:
            raise TransferRefused("provider has no valid key for this sale")
        if c.segment_size != grant.segment_size or len(c.leaves) != c.segment_count:
            raise TransferRefused("provider's commitment for this document is incomplete")
        try:
            actual = os.stat(grant.path).st_size
        except OSError as exc:
            raise TransferRefused(f"provider cannot read the document: {exc.strerror}") from exc
        if actual != c.size:
            raise TransferRefused("provider's copy of the document changed since it was published")

    def _check_request(self, request: dict[str, object], grant: SaleGrant) -> tuple[int, int, bool]:
        if request.get("type") != "request":
            raise ProtocolError("expected a request message")
        count = grant.commitment.segment_count
        start, until = request.get("start"), request.get("until", count)
        if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= count:
            raise ProtocolError(f"requested start segment {start!r} is out of range")
        if not isinstance(until, int) or isinstance(until, bool) or not start <= until <= count:
            raise ProtocolError(f"requested end segment {until!r} is out of range")
        if grant.limit is not None and until > grant.limit:
            raise TransferRefused(f"segments from {grant.limit} on belong to an interval not paid for yet; "
                                  f"settle the interval before it first")
        return start, until, bool(request.get("bulk_tls", False))

    def _tree(self, commitment: FileCommitment) -> MerkleTree:
        with self._lock:
            tree = self._trees.get(commitment.merkle_root)
        if tree is None:
            tree = commitment.tree()
            with self._lock:
                self._trees[commitment.merkle_root] = tree
        return tree

    # ------------------------------------------------------------------ bulk
    def _open_source(self, grant: SaleGrant) -> SegmentSource:
        """The frame producer for one upload (a subclass may substitute its own)."""
        return SegmentSource(grant, self._key, self._tree(grant.commitment))

    def _stream_segments(self, sock: socket.socket, grant: SaleGrant, start: int, upload: _Upload,
                         seal: protocol.FrameSeal | None = None, until: int | None = None) -> None:
        """Send segments ``start..`` while a reader thread prepares the next ones."""
        control, shared = upload.control, self.rate
        use_sendmsg = not isinstance(sock, ssl.SSLSocket)
        sent_bytes = sent_segments = 0
        source = self._open_source(grant)
        try:
            end = source.count if until is None else until
            for _index, head, ct in source.frames(start, _PIPELINE_DEPTH, end):
                control.check()
                if seal is not None:
                    head = seal.seal(head)
                if control.limited or shared.limited:
                    sock.sendall(head)
                    for off in range(0, len(ct), _LIMITED_CHUNK):
                        piece = ct[off : off + _LIMITED_CHUNK]
                        control.throttle(len(piece))
                        shared.throttle(len(piece))
                        sock.sendall(piece)
                elif use_sendmsg:
                    _sendmsg_all(sock, head, ct)
                else:
                    sock.sendall(head)
                    sock.sendall(ct)
                sent_bytes += len(head) + len(ct)
                sent_segments += 1
                upload.update(bytes_sent=sent_bytes, segments_sent=sent_segments)
            sock.sendall(protocol.pack_frame(protocol.MAGIC_END, end, 0, 0))
        except ssl.SSLError as exc:
            raise ConnectionLost(f"TLS failed while sending: {exc}") from exc
        finally:
            source.close()


def _sendmsg_all(sock: socket.socket, head: bytes, body: memoryview) -> None:
    """Header and ciphertext in one syscall; loops because sendmsg may send part."""
    total = len(head) + len(body)
    sent = sock.sendmsg([head, body])
    while sent < total:
        if sent < len(head):
            sent += sock.sendmsg([head[sent:], body])
        else:
            sent += sock.send(body[sent - len(head) :])


def _unwrap(tls: ssl.SSLSocket) -> socket.socket:
    """Shut TLS down and return the bare TCP socket for the bulk stream."""
    plain = tls.unwrap()
    return socket.socket(plain.family, plain.type, fileno=plain.detach())


def _finish(sock: socket.socket) -> None:
    """Half-close and wait for the consumer to hang up, so it surely read the end frame."""
    with contextlib.suppress(OSError):
        # On a TLS stream this skips close_notify; the end frame already marks the end.
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10.0)
        while sock.recv(4096):
            pass
