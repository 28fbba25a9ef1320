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
from typing import Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.content import (
    KEY_SIZE,
    FileCommitment,
    ManifestHeader,
    MerkleTree,
    key_commitment,
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
from peer.transfer.gate import Arrival, HelloGate, Slots
from peer.transfer.grant import SaleGrant
from peer.transfer.source import BufferPool, SegmentSource
from peer.transfer.tls import check_peer, close_quietly, server_context

__all__ = ["MAX_RECORDS", "ProviderServer", "SaleGrant", "UploadStatus"]

log = logging.getLogger(__name__)

_PIPELINE_DEPTH = 4
_LIMITED_CHUNK = 64 * 1024
MAX_RECORDS = 512  # finished uploads and refusals kept for the uploads view; live ones are always kept
_FINAL = ("done", "refused", "failed", "cancelled")


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
        self.slot: str | None = None  # the source address whose checking slot this connection holds

    def update(self, **changes: object) -> None:
        self.status = replace(self.status, **changes)  # type: ignore[arg-type]

    def snapshot(self) -> UploadStatus:
        s = self.status
        state = "paused" if s.state == "sending" and self.control.paused else s.state
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return replace(s, state=state, rate=s.bytes_sent / elapsed)


class ProviderServer:
    """Accepts consumers, authenticates them per sale, and streams signed ciphertext.

    Nothing a caller says is believed until the ledger and the TLS handshake
    confirm it, and nothing it costs before then is unbounded:

    1. :class:`~peer.transfer.gate.HelloGate` holds new connections, thread-free,
       until they say a valid hello (deadline ``hello_timeout``; at most
       ``max_waiting`` of them, ``max_waiting_per_address`` per address).
    2. ``authorize(sale_id, min_seq)`` is asked about the hello's sale before
       any TLS happens; it returns a :class:`SaleGrant` or raises
       ``TransferRefused``. At most ``max_checking`` (``max_checking_per_address``)
       connections are in this step or the handshake at once, and the whole
       unauthenticated phase has ``handshake_timeout`` seconds.
    3. Mutual TLS pins the grant's buyer; only then is ``authenticated(grant)``
       called (the provider escrows the sale key there, so a stranger's
       connection never causes a write) and the document streamed.

    Each authenticated connection runs in its own thread, with a second thread
    reading and encrypting ahead so disk, AES and hashing overlap with the socket.
    Segment buffers outlive their upload in a pool of at most 48 MiB, so the next
    upload starts sending without first allocating them.
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
        authenticated: Callable[[SaleGrant], SaleGrant] | None = None,
        handshake_timeout: float = 10.0,
        hello_timeout: float = 5.0,
        io_timeout: float = 60.0,
        max_waiting: int = 256,
        max_waiting_per_address: int = 16,
        max_checking: int = 64,
        max_checking_per_address: int = 16,
    ) -> None:
        self._key = identity_key
        self._login = login
        self._cert_pem = cert_pem
        self._authorize = authorize
        self._authenticated = authenticated
        self._host = host
        self._requested_port = port
        self.rate = TransferControl(rate_limit_bps)
        self._handshake_timeout = handshake_timeout
        self._hello_timeout = min(hello_timeout, handshake_timeout)
        self._io_timeout = io_timeout
        self._gate_limits = (max_waiting, max_waiting_per_address)
        self._slots = Slots(max_checking, max_checking_per_address)
        self._lock = threading.Lock()
        self._uploads: list[_Upload] = []
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._gate: HelloGate | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._trees: dict[str, MerkleTree] = {}
        self._buffers = BufferPool()
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Listen and accept in a background thread; returns once listening (see ``.port``)."""
        if self._listener is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._listener = socket.create_server((self._host, self._requested_port), backlog=128)
        self.port = self._listener.getsockname()[1]
        waiting, per_address = self._gate_limits
        self._gate = HelloGate(self._listener, self._on_hello, self._on_turned_away, timeout=self._hello_timeout,
                               max_waiting=waiting, max_waiting_per_address=per_address)
        self._acceptor = threading.Thread(target=self._gate.run, args=(self._stopping,), name="acb-provider-accept",
                                          daemon=True)
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
        """Snapshots of the uploads of this server's lifetime, oldest first.

        Live uploads are always listed; of the finished ones the newest
        :data:`MAX_RECORDS` are kept (strangers' refusals are dropped first).
        """
        with self._lock:
            return [u.snapshot() for u in self._uploads]

    @property
    def turned_away(self) -> int:
        """Connections refused before they said a valid hello."""
        return self._gate.turned_away if self._gate is not None else 0

    def control(self, sale_id: str) -> TransferControl | None:
        """The control of the latest upload for ``sale_id`` (pause, resume, cancel, rate)."""
        with self._lock:
            for u in reversed(self._uploads):
                if u.status.sale_id == sale_id:
                    return u.control
        return None

    def _record(self, upload: _Upload) -> None:
        """Keep ``upload`` for :meth:`uploads`, dropping the oldest finished records beyond the bound."""
        with self._lock:
            self._uploads.append(upload)
            excess = len(self._uploads) - MAX_RECORDS
            for states in (("refused",), _FINAL):
                if excess <= 0:
                    break
                kept = []
                for u in self._uploads:
                    if excess > 0 and u.status.state in states and u is not upload:
                        excess -= 1
                        continue
                    kept.append(u)
                self._uploads = kept

    # ------------------------------------------------------------------ connections
    def _on_turned_away(self, arrival: Arrival, reason: str) -> None:
        upload = _Upload(arrival.peer, TransferControl())
        upload.update(state="refused", error=reason)
        self._record(upload)
        log.debug("turned away %s: %s", arrival.peer, reason)

    def _on_hello(self, arrival: Arrival, hello: protocol.Hello) -> None:
        """A connection said a valid hello: check its sale on a thread of its own, if a slot is free."""
        conn = arrival.sock
        upload = _Upload(arrival.peer, TransferControl())
        upload.update(sale_id=hello.sale_id)
        busy = self._slots.take(arrival.address)
        if busy is not None or self._stopping.is_set():
            reason = busy or "the provider is shutting down"
            conn.setblocking(False)  # this runs on the front door's thread: never wait for a stranger
            with contextlib.suppress(OSError):
                conn.send(protocol.refusal_line(reason))
            close_quietly(conn)
            upload.update(state="refused", error=reason)
            self._record(upload)
            return
        upload.slot = arrival.address
        deadline = arrival.opened + self._handshake_timeout
        t = threading.Thread(target=self._serve, args=(conn, upload, hello, deadline), name="acb-provider-conn",
                             daemon=True)
        with self._lock:
            self._threads.add(t)
        self._record(upload)
        t.start()

    def _leave_slot(self, upload: _Upload) -> None:
        if upload.slot is not None:
            self._slots.give_back(upload.slot)
            upload.slot = None

    def _serve(self, conn: socket.socket, upload: _Upload, hello: protocol.Hello, deadline: float) -> None:
        # Every socket object of the session (plain, TLS, unwrapped) is closed here.
        socks: list[socket.socket] = [conn]
        protocol.send_at_once(conn)
        try:
            upload.control.attach(conn)
            self._session(conn, upload, socks, hello, deadline)
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
            self._leave_slot(upload)
            for sock in socks:
                upload.control.detach(sock)
                close_quietly(sock)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _session(self, conn: socket.socket, upload: _Upload, socks: list[socket.socket], hello: protocol.Hello,
                 deadline: float) -> None:
        sale_id = hello.sale_id

        def left() -> float:
            # One deadline for the whole unauthenticated phase: a slow step cannot stretch the next one.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransferRefused("the handshake took too long")
            return remaining

        try:
            # The hello's min_seq goes to this connection's own question to the ledger and nowhere else.
            grant = self._authorize(sale_id, hello.min_seq)
            self._check_grant(grant, sale_id)
            conn.settimeout(left())
        except TransferRefused as exc:
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                protocol.send_reply(conn, exc.reason)
            raise
        except Exception as exc:
            log.exception("authorize(%s) failed", sale_id)
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                protocol.send_reply(conn, "provider could not check the sale")
            raise TransferRefused(f"authorize failed: {exc!r}") from exc
        upload.update(consumer=grant.consumer_login)
        protocol.send_reply(conn, None)

        ctx = server_context(self._key, self._cert_pem, grant.consumer_cert_pem)
        try:
            tls = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            socks.append(tls)
            tls.settimeout(left())
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            raise AuthenticationFailed(
                f"peer is not {grant.consumer_login}, the buyer of sale {sale_id}: TLS handshake failed ({exc})"
            ) from exc
        upload.control.attach(tls)
        try:
            check_peer(tls, grant.consumer_public_key, f"consumer of sale {sale_id}", login=grant.consumer_login)
            # Authenticated: from here on the connection is the buyer's, not a stranger's.
            self._leave_slot(upload)
            tls.settimeout(self._handshake_timeout)
            upload.update(state="sending")
            request = protocol.read_message(tls)
            try:
                start, until, bulk_tls = self._check_request(request, grant)
                if self._authenticated is not None:
                    grant = self._authenticated(grant)
                self._check_key(grant, sale_id)
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
        if c.segment_size != grant.segment_size or len(c.leaves) != c.segment_count:
            raise TransferRefused("provider's commitment for this document is incomplete")
        try:
            actual = os.stat(grant.path).st_size
        except OSError as exc:
            raise TransferRefused(f"provider cannot read the document: {exc.strerror}") from exc
        if actual != c.size:
            raise TransferRefused("provider's copy of the document changed since it was published")

    @staticmethod
    def _check_key(grant: SaleGrant, sale_id: str) -> None:
        if grant.sale_id != sale_id:
            raise TransferRefused("provider granted a different sale")
        if len(grant.key) != KEY_SIZE:
            raise TransferRefused("provider has no valid key for this sale")
        if key_commitment(sale_id, grant.key) != grant.key_commitment:
            # Never stream under a key other than the one committed to in the header (and escrowed).
            raise TransferRefused("provider's key for this sale does not match its commitment")

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
        return SegmentSource(grant, self._key, self._tree(grant.commitment), self._buffers)

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
