"""Wire format of one transfer session.

1. Consumer -> provider, plaintext: ``ACB1 {"sale_id": ..., "min_seq": ...}\\n``.
   The provider does not know who is calling until it asks the ledger about the
   sale, so this line is all it reads before deciding.
2. Provider -> consumer, plaintext: ``ACB1 {"ok": true}\\n`` or ``ACB1 {"refused": reason}\\n``.
3. TLS 1.3 handshake, each side pinned to the other's registered certificate.
4. Over TLS, length-prefixed JSON messages: consumer sends ``request`` (first
   segment wanted, whether the bulk stream stays inside TLS); provider answers
   ``header`` (the signed manifest header) or ``error``.
5. Bulk stream of segment frames, then an end frame. By default both sides shut
   TLS down first and the frames travel on the bare TCP connection: every
   ciphertext is already AES-GCM under a per-sale key only the buyer receives,
   so encrypting it again inside TLS adds nothing but cost (it halved
   throughput). What else a frame carries, the provider-signed manifest entry
   (sale, ciphertext hash, the plaintext segment's Merkle path), would tell an
   eavesdropper about the plaintext, so it is sealed with AES-GCM under a fresh
   per-session key that the header message carried inside TLS (``FrameSeal``),
   with the frame header as associated data and the segment index as nonce.

Segment frame: ``_FRAME`` struct (magic, index, entry length, ciphertext length),
then the entry's canonical JSON and its 64-byte Ed25519 signature (sealed, 16
bytes longer, when the stream left TLS), then the ciphertext.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import struct
import time
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peer.transfer.errors import ConnectionLost, ManifestInvalid, ProtocolError, TransferRefused

__all__ = [
    "FRAME",
    "FrameSeal",
    "Hello",
    "MAX_HELLO",
    "SEAL_OVERHEAD",
    "MAGIC_END",
    "MAGIC_ERROR",
    "MAGIC_SEGMENT",
    "SIGNATURE_SIZE",
    "hello_may_continue",
    "pack_frame",
    "parse_hello",
    "read_hello",
    "refusal_line",
    "read_message",
    "read_reply",
    "recv_exactly",
    "send_at_once",
    "send_hello",
    "send_message",
    "send_reply",
]

_LINE_PREFIX = b"ACB1 "
_MAX_LINE = 4096
# An honest hello is ~130 bytes (an 80-character sale id and a 19-digit sequence); room for spaces, no more.
MAX_HELLO = 512
MAX_SEQ = (1 << 63) - 1
_SALE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,80}")  # the ledger's Ident
_NOT_ACB1 = "peer does not speak ACB1 (expected an 'ACB1 {...}' line)"
_MAX_MESSAGE = 1 << 20
MAX_ENTRY = 1 << 16

MAGIC_SEGMENT = b"SEG1"
MAGIC_END = b"END1"
MAGIC_ERROR = b"ERR1"
FRAME = struct.Struct(">4sQII")
SIGNATURE_SIZE = 64
_LEN = struct.Struct(">I")


def _read_line(sock: socket.socket, limit: int = _MAX_LINE, deadline: float | None = None) -> bytes:
    # The other side waits for our answer before sending more, so nothing
    # beyond the newline can arrive; anything that does is a protocol error.
    data = bytearray()
    while not data.endswith(b"\n"):
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionLost("no opening line in time")
            sock.settimeout(left)
        try:
            chunk = sock.recv(limit + 1 - len(data))
        except TimeoutError as exc:
            raise ConnectionLost("no opening line in time" if deadline is not None
                                 else "timed out waiting for the peer's opening line") from exc
        except OSError as exc:
            raise ConnectionLost(f"connection failed during opening: {exc}") from exc
        if not chunk:
            raise ConnectionLost("peer closed the connection during opening")
        data += chunk
        # Fail fast on a client speaking something else (a bare TLS ClientHello,
        # HTTP): it would otherwise wait for a newline that never comes.
        if not data.startswith(_LINE_PREFIX[: len(data)]):
            raise ProtocolError(_NOT_ACB1)
        if len(data) > limit:
            raise ProtocolError(f"the opening line is too long (at most {limit} bytes)")
    if data.count(b"\n") != 1:
        raise ProtocolError("unexpected bytes after the opening line")
    return bytes(data)


def _parse_line(line: bytes) -> dict[str, Any]:
    if not line.startswith(_LINE_PREFIX):
        raise ProtocolError(_NOT_ACB1)
    try:
        obj = json.loads(line[len(_LINE_PREFIX) :])
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("the peer's answer is not a JSON object") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("the peer's answer is not a JSON object")
    return obj


def _line(obj: dict[str, Any]) -> bytes:
    return _LINE_PREFIX + json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class Hello(NamedTuple):
    """What a consumer's opening line says; nothing in it is believed before the ledger confirms the sale."""

    sale_id: str
    min_seq: int


def send_hello(sock: socket.socket, sale_id: str, min_seq: int) -> None:
    """Consumer's plaintext opening: which sale, and the ledger sequence it has seen."""
    sock.sendall(_line({"sale_id": sale_id, "min_seq": min_seq}))


def hello_may_continue(data: bytes | bytearray) -> None:
    """Raise :class:`ProtocolError` as soon as the first bytes of an opening line cannot become a hello."""
    if not data.startswith(_LINE_PREFIX[: len(data)]):
        raise ProtocolError(_NOT_ACB1)
    if len(data) > MAX_HELLO and b"\n" not in data[: MAX_HELLO]:
        raise ProtocolError(f"the opening line is too long (at most {MAX_HELLO} bytes)")


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ProtocolError("the opening line names a field twice")
    return dict(pairs)


def _refuse_constant(name: str) -> Any:
    raise ProtocolError(f"min_seq must be a whole number, not {name}")


def parse_hello(line: bytes) -> Hello:
    """The consumer's opening line, checked before anything else is done with it.

    Strict on purpose, because a stranger writes it: printable ASCII only (no
    escapes, so no hidden or look-alike characters), at most :data:`MAX_HELLO`
    bytes, one flat object with exactly ``sale_id`` (a ledger id) and
    ``min_seq`` (a whole number). Raises :class:`ProtocolError` with a reason a
    person can read; never anything else.
    """
    hello_may_continue(line)
    if not line.endswith(b"\n") or line.count(b"\n") != 1:
        raise ProtocolError("the opening line must be one line ending in a newline")
    body = line[len(_LINE_PREFIX) : -1]
    if len(line) > MAX_HELLO:
        raise ProtocolError(f"the opening line is too long (at most {MAX_HELLO} bytes)")
    if any(b < 0x20 or b > 0x7E for b in body):
        raise ProtocolError("the opening line must be plain printable ASCII")
    if b"\\" in body:
        raise ProtocolError("the opening line may not use escapes")
    # One flat object: no nesting means the JSON parser can never recurse on a stranger's bytes.
    if body.count(b"{") != 1 or body.count(b"}") != 1 or b"[" in body or b"]" in body:
        raise ProtocolError('the opening line must be one flat object: {"sale_id": ..., "min_seq": ...}')
    try:
        obj = json.loads(body, object_pairs_hook=_refuse_repeats, parse_constant=_refuse_constant)
    except ValueError as exc:  # our own refusals from the hooks are ProtocolErrors and pass through
        raise ProtocolError('the opening line is not a JSON object like {"sale_id": ..., "min_seq": ...}') from exc
    if not isinstance(obj, dict):
        raise ProtocolError('the opening line is not a JSON object like {"sale_id": ..., "min_seq": ...}')
    unknown = sorted(set(obj) - {"sale_id", "min_seq"})
    if unknown:
        raise ProtocolError(f"the opening line has fields this provider does not take: {', '.join(unknown)[:60]}")
    sale_id, min_seq = obj.get("sale_id"), obj.get("min_seq")
    if not isinstance(sale_id, str) or not _SALE_ID.fullmatch(sale_id) or not sale_id.strip("."):
        raise ProtocolError("the opening line's sale_id is not a sale id (1 to 80 letters, digits or _ . : -)")
    if not isinstance(min_seq, int) or isinstance(min_seq, bool) or not 0 <= min_seq <= MAX_SEQ:
        raise ProtocolError("the opening line's min_seq is not a whole number from 0 up")
    return Hello(sale_id, min_seq)


def read_hello(sock: socket.socket, deadline: float | None = None) -> Hello:
    """Provider side of :func:`send_hello`, blocking until ``deadline`` (a ``time.monotonic()`` value)."""
    return parse_hello(_read_line(sock, MAX_HELLO, deadline))


def refusal_line(reason: str) -> bytes:
    """The provider's plaintext refusal, for sending without blocking."""
    return _line({"refused": reason})


def send_reply(sock: socket.socket, refused: str | None) -> None:
    """Provider's plaintext answer to the hello."""
    sock.sendall(_line({"ok": True} if refused is None else {"refused": refused}))


def read_reply(sock: socket.socket) -> None:
    """Consumer side of :func:`send_reply`; raises :class:`TransferRefused`."""
    obj = _parse_line(_read_line(sock))
    if "refused" in obj:
        raise TransferRefused(f"provider refused: {obj['refused']}")
    if obj.get("ok") is not True:
        raise ProtocolError("provider's answer is neither ok nor refused")


def send_message(sock: socket.socket, obj: dict[str, Any]) -> None:
    """Length-prefixed JSON message (used inside TLS)."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    sock.sendall(_LEN.pack(len(body)) + body)


def read_message(sock: socket.socket) -> dict[str, Any]:
    """Read one :func:`send_message` message."""
    head = bytearray(_LEN.size)
    recv_exactly(sock, memoryview(head))
    (n,) = _LEN.unpack(head)
    if n > _MAX_MESSAGE:
        raise ProtocolError(f"message of {n} bytes exceeds the limit")
    body = bytearray(n)
    recv_exactly(sock, memoryview(body))
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("message is not a JSON object")
    return obj


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``; raises :class:`ConnectionLost` on EOF or timeout."""
    got, want = 0, len(view)
    # MSG_WAITALL lets the kernel fill a whole segment in one call; ssl sockets
    # do not accept flags and return at most one TLS record per call anyway.
    flags = 0 if isinstance(sock, ssl.SSLSocket) else socket.MSG_WAITALL
    while got < want:
        try:
            n = sock.recv_into(view[got:], want - got, flags)
        except TimeoutError as exc:
            raise ConnectionLost(f"timed out after {got} of {want} bytes") from exc
        except ssl.SSLError as exc:
            raise ConnectionLost(f"TLS error after {got} of {want} bytes: {exc.reason or exc}") from exc
        except OSError as exc:
            raise ConnectionLost(f"connection failed after {got} of {want} bytes: {exc}") from exc
        if n == 0:
            raise ConnectionLost(f"connection closed after {got} of {want} bytes")
        got += n


def pack_frame(magic: bytes, index: int, entry_len: int, ct_len: int) -> bytes:
    """Fixed-size frame header."""
    return FRAME.pack(magic, index, entry_len, ct_len)


def send_at_once(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off on ``sock``.

    The session opens with a ping-pong of small messages (hello, TLS records, request,
    header). With Nagle on, a small write that follows one not yet acknowledged waits
    for the peer's delayed ACK, 40 ms on Linux: about a tenth of a 512 MiB transfer.
    Big writes are unaffected, as they fill whole packets anyway.
    """
    with contextlib.suppress(OSError):  # not a TCP socket (a test's socketpair): nothing to turn off
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def use_kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Make ``sock`` blocking with kernel send/receive timeouts.

    Python's own timeouts make the socket non-blocking and poll before every
    call, so big sends return early and MSG_WAITALL stops working; with kernel
    timeouts one call moves a whole segment. A timeout then surfaces as EAGAIN.
    """
    sock.settimeout(None)
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


SEAL_OVERHEAD = 16  # the AES-GCM tag


class FrameSeal:
    """Seals each frame's manifest entry under a per-session key agreed inside TLS.

    The nonce is the segment index: a session sends each index at most once, and
    a resumed download opens a new session with a new key.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @staticmethod
    def new_key() -> bytes:
        return AESGCM.generate_key(bit_length=256)

    @staticmethod
    def _nonce(index: int) -> bytes:
        return b"\x00\x00\x00\x00" + index.to_bytes(8, "big")

    def seal(self, frame: bytes) -> bytes:
        """Frame header in the clear, the entry and its signature sealed."""
        head = frame[: FRAME.size]
        index = FRAME.unpack(head)[1]
        return head + self._aead.encrypt(self._nonce(index), frame[FRAME.size :], head)

    def open(self, head: bytes, sealed: bytes, index: int) -> bytes:
        """The entry and signature of a sealed frame; ManifestInvalid if it was not sealed for this session."""
        try:
            return self._aead.decrypt(self._nonce(index), sealed, head)
        except InvalidTag as exc:
            raise ManifestInvalid(f"segment {index}: sealed manifest entry does not open (tampered or replayed)",
                                  index) from exc
