"""Signed envelopes: who sends what, when, under which id.

Wire shape::

    {"body": {"id": ..., "sender": ..., "issued_at": ms, "kind": "command"|"query",
              "payload": {...}, "min_seq": int, "deadline": ms}, "signature": base64}

``deadline`` (optional: old clients send none) is when the sender stops waiting, on its own clock.
It is signed with the rest, so nobody on the way can stretch or shorten it. A request still
waiting past it is not worth carrying out: the primary and the read servers answer it ``expired``
instead (:func:`expired`), allowing :data:`DEADLINE_GRACE_MS` for the clocks to disagree.

The signature is Ed25519 over the canonical encoding of ``body`` exactly as it
arrived, so a command whose id (or anything else) was changed no longer
verifies. Parsing checks the type and schema version before the fields, so the
error says which of the three is wrong.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ValidationError

from broker import errors
from broker.codec import b64d, b64e, canonical, loads_object
from broker.commands import COMMAND_ADAPTER, Command
from broker.queries import QUERY_ADAPTER, Query
from broker.trust import signature_valid, tagged

__all__ = ["Envelope", "seal", "open_envelope", "verify", "new_id", "now_ms", "expired", "DEADLINE_GRACE_MS"]

_SUPPORTED_VERSIONS = {1}
_BODY_KEYS = frozenset({"id", "sender", "issued_at", "kind", "payload", "min_seq", "deadline"})
# How far a client's clock and the ledger's may disagree before deadlines misfire. NTP keeps them within
# milliseconds; a client whose clock is further behind sees its requests answered `expired` at once, and
# the answer says why. A clock ahead only makes its requests live longer (never past its own patience).
DEADLINE_GRACE_MS = 2_000
# Envelopes opened lately, by their exact bytes: the primary opens a command when it takes it in and again,
# from the same bytes, when it folds the entry carrying it, a batch (64) later at most. Only small ones (a
# dispute's evidence is not kept), and few: the memory stays under a few MB.
_OPENED_MEMORY = 512
_OPENED_MAX_BYTES = 16 * 1024


def new_id() -> str:
    """A fresh client-generated id."""
    return uuid.uuid4().hex


def now_ms() -> int:
    """Wall-clock time in milliseconds, as envelopes carry it."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: its body as received, the typed payload and the signature."""

    id: str
    sender: str
    issued_at: int
    kind: Literal["command", "query"]
    payload: Command | Query
    min_seq: int
    body: dict[str, Any]
    signature: bytes | None
    deadline: int | None = None  # ms on the sender's clock; None: an old client, no deadline
    # The bytes the signature is over, once worked out (checked on intake and again in the fold).
    _signed: bytes | None = field(default=None, init=False, compare=False, repr=False)

    def signed_bytes(self) -> bytes:
        """What the sender's signature covers: the canonical body, tagged as an envelope."""
        if self._signed is None:
            object.__setattr__(self, "_signed", tagged("envelope", canonical(self.body)))
        assert self._signed is not None
        return self._signed

    def wire(self) -> dict[str, Any]:
        """The envelope as the JSON object that travels (and that a log entry carries)."""
        wire: dict[str, Any] = {"body": self.body}
        if self.signature is not None:
            wire["signature"] = b64e(self.signature)
        return wire

    def to_bytes(self) -> bytes:
        return canonical(self.wire())


def seal(
    payload: BaseModel,
    *,
    sender: str,
    key: Ed25519PrivateKey | None,
    kind: Literal["command", "query"] = "command",
    id: str | None = None,
    min_seq: int = 0,
    issued_at: int | None = None,
    deadline: int | None = None,
) -> Envelope:
    """Build and sign an envelope (unsigned when ``key`` is None, for public queries).

    ``deadline`` (ms, this machine's clock) is when the sender will stop waiting for the answer.
    """
    ident = id or new_id()
    at = now_ms() if issued_at is None else issued_at
    body: dict[str, Any] = {
        "id": ident,
        "sender": sender,
        "issued_at": at,
        "kind": kind,
        "payload": payload.model_dump(mode="json"),
        "min_seq": min_seq,
    }
    if deadline is not None:
        body["deadline"] = deadline
    signature = key.sign(tagged("envelope", canonical(body))) if key is not None else None
    return Envelope(
        id=ident, sender=sender, issued_at=at, kind=kind,
        payload=payload, min_seq=min_seq, body=body, signature=signature, deadline=deadline,  # type: ignore[arg-type]
    )


class _Opened:
    """Envelopes recently opened, by their exact bytes (parsing is pure: the same bytes, the same envelope)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_bytes: dict[bytes, Envelope] = {}
        self._lock = threading.Lock()

    def get(self, raw: bytes) -> Envelope | None:
        return self._by_bytes.get(raw)

    def add(self, raw: bytes, envelope: Envelope) -> None:
        with self._lock:
            self._by_bytes[raw] = envelope
            while len(self._by_bytes) > self.limit:
                del self._by_bytes[next(iter(self._by_bytes))]


_opened = _Opened(_OPENED_MEMORY)


def open_envelope(raw: bytes) -> Envelope:
    """Parse wire bytes into an Envelope; raise a coded CommandRejected when they do not fit.

    The same bytes give the same envelope (the very object, when they were opened lately)."""
    raw = bytes(raw)
    known = _opened.get(raw)
    if known is not None:
        return known
    envelope = _open(raw)
    if len(raw) <= _OPENED_MAX_BYTES:
        _opened.add(raw, envelope)
    return envelope


def _open(raw: bytes) -> Envelope:
    try:
        wire = loads_object(raw)
    except ValueError as exc:
        raise errors.Malformed(str(exc)) from exc
    body = wire.get("body")
    if not isinstance(body, dict):
        raise errors.Malformed("envelope has no body object")
    kind = body.get("kind")
    if kind not in ("command", "query"):
        raise errors.Malformed(f"envelope kind must be 'command' or 'query', got {kind!r}")
    payload = body.get("payload")
    if not isinstance(payload, dict):
        raise errors.Malformed("envelope has no payload object")
    adapter = COMMAND_ADAPTER if kind == "command" else QUERY_ADAPTER
    _check_type_and_version(payload, adapter)
    try:
        typed = adapter.validate_python(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "payload"
        raise errors.Malformed(f"{payload.get('type')}: {where}: {first['msg']}") from exc
    signature = wire.get("signature")
    sig_bytes: bytes | None = None
    if signature is not None:
        try:
            sig_bytes = b64d(str(signature))
        except ValueError as exc:
            raise errors.BadSignature("signature is not base64") from exc
    unknown = set(body) - _BODY_KEYS
    if unknown:
        raise errors.Malformed(f"envelope body has unknown field {sorted(unknown)[0][:40]!r}")
    try:
        ident, sender, issued_at, min_seq = body["id"], body["sender"], body["issued_at"], body.get("min_seq", 0)
    except KeyError as exc:
        raise errors.Malformed(f"envelope body lacks {exc.args[0]!r}") from exc
    if not (isinstance(ident, str) and 8 <= len(ident) <= 80 and isinstance(sender, str) and len(sender) <= 32
            and isinstance(issued_at, int) and isinstance(min_seq, int)):
        raise errors.Malformed("envelope id, sender, issued_at or min_seq has the wrong type")
    deadline = body.get("deadline")
    if deadline is not None and not (isinstance(deadline, int) and not isinstance(deadline, bool)
                                     and deadline >= issued_at):
        raise errors.Malformed("envelope deadline must be a time in ms no earlier than issued_at")
    return Envelope(ident, sender, issued_at, kind, typed, min_seq, body, sig_bytes, deadline)


def expired(envelope: Envelope, now_ms: int) -> bool:
    """Whether ``envelope`` waited past its sender's deadline, by the clock of ``now_ms`` (with the grace
    for clocks that disagree). An envelope without a deadline (an old client's) never expires."""
    return envelope.deadline is not None and now_ms > envelope.deadline + DEADLINE_GRACE_MS


def _check_type_and_version(payload: dict[str, Any], adapter: Any) -> None:
    known = _known_types(adapter)
    kind = payload.get("type")
    if kind not in known:
        raise errors.UnknownType(f"unknown message type {kind!r}")
    version = payload.get("schema_version", 1)
    if version not in _SUPPORTED_VERSIONS:
        raise errors.UnsupportedVersion(
            f"{kind} schema_version {version!r} is not supported (know {sorted(_SUPPORTED_VERSIONS)})")


def _known_types(adapter: Any) -> frozenset[str]:
    cached = getattr(adapter, "_acb_types", None)
    if cached is None:
        schema = adapter.json_schema()
        cached = frozenset(schema["discriminator"]["mapping"])
        adapter._acb_types = cached
    return cached


def verify(envelope: Envelope, public_key: bytes) -> None:
    """Check the envelope's signature against a raw Ed25519 public key."""
    if envelope.signature is None:
        raise errors.BadSignature(f"{envelope.payload.type} from {envelope.sender} is not signed")
    # Remembered when it verifies: the primary checks a command when it takes it in and again when it folds
    # the entry that carries it.
    if not signature_valid(public_key, envelope.signature, envelope.signed_bytes()):
        raise errors.BadSignature(f"signature of {envelope.sender} does not verify")
