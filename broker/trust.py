"""Who may sign what: the operator's key certifies the replicas' keys in a signed roster.

The operator key made by ``acb init`` is the root of trust. It signs a
:class:`Roster`: the replica ids and their Ed25519 public keys, with a serial
that grows with every change. A replica signs its log entries, answers,
snapshots and status with its own key; anyone holding the operator's public
key checks a roster, then checks a replica's signature against the newest
roster it has seen (:class:`Trust`). Removing a replica is a new roster
without it: from then on its signatures count for nothing.

Rosters travel freely (in the log, in answers, in files): they are
self-authenticating, so where one came from does not matter.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broker import errors
from broker.codec import canonical
from broker.settings import load_environment

__all__ = ["Roster", "Trust", "sign_roster", "signed", "check_signed", "raw_public", "digest", "tagged",
           "OPERATOR_KEY_ENV", "signature_valid", "sign_known", "VERIFIED_MEMORY"]

OPERATOR_KEY_ENV = "ACB_OPERATOR_KEY"
_MAX_REPLICAS = 64
# Signatures remembered as verified: a command's is checked when the primary authenticates it and again
# when it folds its own entry, and the entry's own is made there; about 100 bytes each.
VERIFIED_MEMORY = 8192
_VerifiedKey = tuple[bytes, bytes, bytes]  # (public key, signature, SHA-256 of the message)


class _Verified:
    """A bounded memory of (public key, signature, message digest) triples known to verify.

    Verifying Ed25519 is deterministic, so a triple that verified once verifies again: remembering it
    changes no outcome, only spares the second check (the costliest step of the primary's own fold).
    The message enters by its SHA-256, so a different message never matches a remembered one.
    Thread-safe; the oldest are forgotten first.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: dict[_VerifiedKey, None] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: _VerifiedKey) -> bool:
        return key in self._known

    def add(self, key: _VerifiedKey) -> None:
        with self._lock:
            self._known[key] = None
            while len(self._known) > self.limit:
                del self._known[next(iter(self._known))]


_verified = _Verified(VERIFIED_MEMORY)


def signature_valid(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is Ed25519 by ``public`` over ``message``; remembered, so the same check
    made again (the primary's own fold of what it just authenticated and signed) costs a hash."""
    key = (bytes(public), bytes(signature), hashlib.sha256(message).digest())
    if key in _verified:
        return True
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    _verified.add(key)
    return True


def sign_known(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """``key``'s signature over ``message``, remembered as verifying under ``key``'s public half, so checking
    it in this process costs a hash rather than a verification."""
    signature = key.sign(message)
    _verified.add((_public_of(key), signature, hashlib.sha256(message).digest()))
    return signature


# A process signs with a handful of keys; their public halves are remembered (with the key itself, so its
# id is not reused while it is here).
_publics: dict[int, tuple[Ed25519PrivateKey, bytes]] = {}
_PUBLICS_MAX = 64


def _public_of(key: Ed25519PrivateKey) -> bytes:
    known = _publics.get(id(key))
    if known is not None and known[0] is key:
        return known[1]
    public = raw_public(key)
    if len(_publics) >= _PUBLICS_MAX:
        _publics.clear()
    _publics[id(key)] = (key, public)
    return public


def raw_public(key: Ed25519PrivateKey) -> bytes:
    """The raw 32 bytes of a private key's public half."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def tagged(purpose: str, data: bytes) -> bytes:
    """The bytes a signature is made over: ``data`` behind a tag naming what it is, so a signature made for one
    purpose (an answer, a log entry, a login) can never be passed off as one for another."""
    return b"acb/" + purpose.encode("ascii") + b"/1\n" + data


def digest(data: bytes) -> str:
    """The hex SHA-256 that binds an answer to the exact request bytes it answers."""
    return hashlib.sha256(data).hexdigest()


def _verify(public: bytes, signature_hex: Any, message: bytes) -> bool:
    if not isinstance(signature_hex, str) or len(signature_hex) != 128:
        return False
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    return signature_valid(public, signature, message)


class Roster(BaseModel):
    """The certified replicas, signed by the operator. A higher serial supersedes a lower one."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    serial: int = Field(ge=1)
    replicas: dict[str, str] = Field(max_length=_MAX_REPLICAS)  # replica id -> raw Ed25519 public key, hex
    issued_at: int
    signature: str = ""

    def body(self) -> bytes:
        return tagged("roster", canonical(self.model_dump(mode="json", exclude={"signature"})))

    def verify(self, operator_key: bytes) -> None:
        """Raise BadSignature unless the operator signed exactly this roster."""
        if not _verify(operator_key, self.signature, self.body()):
            raise errors.BadSignature(f"replica roster {self.serial} is not signed by the operator")

    def key_of(self, replica_id: str | None) -> bytes | None:
        """The certified key of ``replica_id``, or None when it is not certified."""
        hexkey = self.replicas.get(replica_id or "")
        if hexkey is None:
            return None
        try:
            key = bytes.fromhex(hexkey)
        except ValueError:
            return None
        return key if len(key) == 32 else None

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_wire(cls, data: Any) -> Roster:
        """Parse a roster from untrusted data; raise Malformed when it does not fit."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise errors.Malformed(f"replica roster does not parse: {exc.errors()[0]['msg']}") from exc

    @classmethod
    def verified(cls, data: Any, operator_key: bytes) -> Roster:
        roster = cls.from_wire(data)
        roster.verify(operator_key)
        return roster


def sign_roster(operator: Ed25519PrivateKey, serial: int, replicas: dict[str, str], issued_at: int) -> Roster:
    unsigned = Roster(serial=serial, replicas=dict(sorted(replicas.items())), issued_at=issued_at)
    return unsigned.model_copy(update={"signature": operator.sign(unsigned.body()).hex()})


def signed(key: Ed25519PrivateKey, signer: str, body: dict[str, Any], purpose: str) -> dict[str, Any]:
    """``body`` with ``signer`` and a ``signature`` over the canonical encoding of everything else, for ``purpose``."""
    out = {**body, "signer": signer}
    out.pop("signature", None)
    out["signature"] = key.sign(tagged(purpose, canonical(out))).hex()
    return out


def check_signed(trust: Trust, data: Any, purpose: str) -> str:
    """The signer of a dict made by :func:`signed` when its signature verifies against a certified key.

    Raises BadSignature otherwise (unsigned, unknown or removed signer, wrong signature).
    """
    if not isinstance(data, dict):
        raise errors.BadSignature("not a signed object")
    signer = data.get("signer")
    key = trust.replica_key(signer) if isinstance(signer, str) else None
    if key is None:
        raise errors.BadSignature(f"signer {str(signer)[:40]!r} is not a certified replica")
    body = {k: v for k, v in data.items() if k != "signature"}
    if not _verify(key, data.get("signature"), tagged(purpose, canonical(body))):
        raise errors.BadSignature(f"signature of {signer} does not verify")
    return str(signer)


class Trust:
    """What a client or replica believes: the operator's public key and the newest verified roster.

    Thread-safe; :meth:`adopt` only ever moves to a higher serial.
    """

    def __init__(self, operator_key: bytes, roster: Roster | None = None) -> None:
        if len(operator_key) != 32:
            raise errors.BadSignature("the operator key must be 32 raw bytes")
        self.operator_key = operator_key
        self.home: Path | None = None  # where load() found the roster, to look again
        self._roster: Roster | None = None
        self._lock = threading.Lock()
        if roster is not None:
            self.adopt(roster)

    @property
    def roster(self) -> Roster | None:
        return self._roster

    @property
    def serial(self) -> int:
        return self._roster.serial if self._roster is not None else 0

    def adopt(self, roster: Roster | dict[str, Any]) -> bool:
        """Take ``roster`` if the operator signed it and it is newer; True when it was taken."""
        if not isinstance(roster, Roster):
            roster = Roster.from_wire(roster)
        roster.verify(self.operator_key)
        with self._lock:
            if self._roster is not None and roster.serial <= self._roster.serial:
                return False
            self._roster = roster
        self._keep(roster)
        return True

    def _keep(self, roster: Roster) -> None:
        # Remember the newest roster seen, so this machine is never talked back to an older one (which might
        # still list a replica the operator removed). The operator's own copy in system/ is not touched.
        if self.home is None or (self.home / "system" / "roster.json").exists():
            return
        path = self.home / "roster.json"
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(roster.model_dump_json())
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home only costs the memory of it

    def replica_key(self, replica_id: str | None) -> bytes | None:
        roster = self._roster
        return roster.key_of(replica_id) if roster is not None else None

    # -- where the trust root comes from -------------------------------------------------------------
    @classmethod
    def load(cls, home: Path) -> Trust:
        """The operator key and roster kept under ``home`` (``system/`` on the operator's and replicas' machines,
        ``operator.pub`` at the top on a peer's)."""
        key_hex = (load_environment().operator_key or "").strip()
        if not key_hex:
            for path in (home / "system" / "operator.pub", home / "operator.pub"):
                if path.exists():
                    key_hex = path.read_text().strip()
                    break
        if not key_hex:
            raise errors.ConfigurationError(
                f"no operator public key: set {OPERATOR_KEY_ENV} or put operator.pub in {home} "
                "(the operator gives it out; `acb init` makes it)")
        try:
            trust = cls(bytes.fromhex(key_hex))
        except ValueError as exc:
            raise errors.ConfigurationError("the operator public key is not 64 hex digits") from exc
        trust.home = home
        trust.reload()
        return trust

    def reload(self) -> None:
        """Look again at the roster files where :meth:`load` found the trust root (the operator's machine
        keeps the newest one there)."""
        if self.home is None:
            return
        for path in (self.home / "system" / "roster.json", self.home / "roster.json"):
            if path.exists():
                try:
                    self.adopt(Roster.model_validate_json(path.read_bytes()))
                except (ValueError, errors.BrokerError):
                    pass  # a stale or damaged copy: the ledger hands out the current roster

    @classmethod
    def from_env(cls) -> Trust:
        return cls.load(load_environment().home)
