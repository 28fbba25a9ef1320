"""The system's own keys, made once at set-up (``acb init``).

- the operator's Ed25519 key signs deposits and fee changes; the ledger knows
  only its public half;
- the ledger's X25519 key opens escrowed sale keys; every replica holds it, so
  any of them can release a key when it becomes primary. A secret for login
  challenges is derived from it;
- each replica has an Ed25519 key of its own (``system/replicas/ID.key``) that
  signs its log entries, answers, snapshots and status. The operator certifies
  those keys in a signed roster (``system/roster.json``, see
  :mod:`broker.trust`); adding or removing a replica is a new roster.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from broker.errors import BrokerError
from broker.settings import load_environment
from broker.trust import Roster, Trust, raw_public, sign_roster
from ledger.errors import ConfigError

__all__ = ["SystemKeys", "system_dir", "init_system", "load_system", "load_operator_key", "certify_replica",
           "remove_replica", "load_roster", "replica_key_path", "REPLICA_ID"]

REPLICA_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_REMOVED = "removed-replicas"  # in the system directory: ids the operator removed, one a line


def system_dir(home: Path | None = None) -> Path:
    base = home or load_environment().home
    return base / "system"


@dataclass(frozen=True)
class SystemKeys:
    operator_public: bytes
    ledger_key: X25519PrivateKey
    home: Path | None = None

    def trust(self) -> Trust:
        """The operator key with the newest roster kept beside it."""
        trust = Trust(self.operator_public)
        if self.home is not None:
            roster = load_roster(self.home)
            if roster is not None:
                trust.adopt(roster)
        return trust

    def operator_key(self) -> Ed25519PrivateKey | None:
        """The operator's private key when it is kept on this machine (a single-machine installation)."""
        if self.home is None or not (system_dir(self.home) / "operator.key").exists():
            return None
        return load_operator_key(self.home)

    def replica_key(self, replica_id: str, *, certify: bool = True) -> Ed25519PrivateKey:
        """This replica's signing key, certified in the roster (certifying it when the operator key is here)."""
        if self.home is None:
            raise ConfigError("no system directory to find the replica's key in")
        return replica_identity(self.home, replica_id, certify=certify)

    @property
    def ledger_public(self) -> bytes:
        return self.ledger_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def challenge_secret(self) -> bytes:
        raw = self.ledger_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                            serialization.NoEncryption())
        return hmac.new(raw, b"acb-login-challenge", hashlib.sha256).digest()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def init_system(home: Path | None = None) -> tuple[Path, bool]:
    """Create the operator and ledger keys unless they exist. Returns (dir, created)."""
    d = system_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    if (d / "ledger.key").exists() and (d / "operator.key").exists():
        return d, False
    pem = serialization.PrivateFormat.PKCS8
    op = Ed25519PrivateKey.generate()
    _write_private(d / "operator.key", op.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption()))
    (d / "operator.pub").write_text(
        op.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex() + "\n")
    lk = X25519PrivateKey.generate()
    _write_private(d / "ledger.key", lk.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption()))
    return d, True


def load_system(home: Path | None = None) -> SystemKeys:
    d = system_dir(home)
    try:
        operator_public = bytes.fromhex((d / "operator.pub").read_text().strip())
        key = serialization.load_pem_private_key((d / "ledger.key").read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"system keys missing or unreadable in {d}: run `acb init` ({exc})") from exc
    if not isinstance(key, X25519PrivateKey):
        raise ConfigError(f"{d / 'ledger.key'} is not an X25519 key")
    return SystemKeys(operator_public, key, home or d.parent)


def load_operator_key(home: Path | None = None) -> Ed25519PrivateKey:
    return _load_ed25519(system_dir(home) / "operator.key", hint="run `acb init`")


# -- replica keys and the roster ------------------------------------------------------------------

def replica_key_path(home: Path, replica_id: str) -> Path:
    if not REPLICA_ID.match(replica_id):
        raise ConfigError(f"replica id {replica_id!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    return system_dir(home) / "replicas" / f"{replica_id}.key"


def load_roster(home: Path) -> Roster | None:
    """The roster kept in the system directory (checked against the operator key), or None."""
    path = system_dir(home) / "roster.json"
    if not path.exists():
        return None
    try:
        operator_public = bytes.fromhex((system_dir(home) / "operator.pub").read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"operator public key missing or unreadable in {system_dir(home)}: {exc}") from exc
    try:
        return _verified_file(path, operator_public)
    except OSError as exc:
        raise ConfigError(f"replica roster at {path} is unreadable: {exc}") from exc


def _verified_file(path: Path, operator_public: bytes) -> Roster:
    try:
        roster = Roster.model_validate_json(path.read_bytes())
        roster.verify(operator_public)
    except BrokerError as exc:
        raise ConfigError(f"replica roster at {path}: {exc}") from exc
    return roster


@contextlib.contextmanager
def _roster_lock(home: Path) -> Iterator[None]:
    # Replicas started together on one machine certify themselves at once: one roster change at a time.
    d = system_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "roster.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save_roster(home: Path, roster: Roster) -> None:
    path = system_dir(home) / "roster.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(roster.model_dump_json())
    os.replace(tmp, path)


def _change_roster(home: Path, change: dict[str, str | None]) -> Roster:
    operator = load_operator_key(home)
    current = load_roster(home)
    replicas = dict(current.replicas) if current is not None else {}
    for rid, key in change.items():
        if key is None:
            replicas.pop(rid, None)
        else:
            replicas[rid] = key
    roster = sign_roster(operator, (current.serial if current else 0) + 1, replicas, int(time.time() * 1000))
    _save_roster(home, roster)
    return roster


def certify_replica(home: Path, replica_id: str) -> Roster:
    """Make ``replica_id``'s key (unless it has one) and certify it in a new roster. Needs the operator key."""
    path = replica_key_path(home, replica_id)
    with _roster_lock(home):
        removed = _removed(home)
        if replica_id in removed:
            (system_dir(home) / _REMOVED).write_text("".join(f"{r}\n" for r in sorted(removed - {replica_id})))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        key = _load_ed25519(path)
        current = load_roster(home)
        if current is not None and current.replicas.get(replica_id) == raw_public(key).hex():
            return current
        return _change_roster(home, {replica_id: raw_public(key).hex()})


def remove_replica(home: Path, replica_id: str) -> Roster:
    """A new roster without ``replica_id``: its signatures stop counting. Needs the operator key.

    The id is remembered as removed, so that a supervisor restarting the replica on this machine does not
    quietly certify it again: only ``acb operator replica add`` brings it back.
    """
    with _roster_lock(home):
        current = load_roster(home)
        if current is None or replica_id not in current.replicas:
            raise ConfigError(f"replica {replica_id} is not in the roster")
        removed = _removed(home) | {replica_id}
        (system_dir(home) / _REMOVED).write_text("".join(f"{r}\n" for r in sorted(removed)))
        return _change_roster(home, {replica_id: None})


def _removed(home: Path) -> set[str]:
    path = system_dir(home) / _REMOVED
    return set(path.read_text().split()) if path.exists() else set()


def replica_identity(home: Path, replica_id: str, *, certify: bool = True) -> Ed25519PrivateKey:
    """The replica's key, certified in the roster kept here; certifies it when allowed and the operator key is here."""
    path = replica_key_path(home, replica_id)
    roster = load_roster(home)
    if path.exists():
        key = _load_ed25519(path)
        if roster is not None and roster.key_of(replica_id) == raw_public(key):
            return key
    if replica_id in _removed(home):
        raise ConfigError(f"replica {replica_id} was removed by the operator; `acb operator replica add "
                          f"{replica_id}` brings it back")
    if certify and (system_dir(home) / "operator.key").exists():
        certify_replica(home, replica_id)
        return _load_ed25519(path)
    raise ConfigError(f"replica {replica_id} is not certified: run `acb operator replica add {replica_id}` on the "
                      f"operator's machine and copy its key to {path} and the roster to {system_dir(home)}")


def _load_ed25519(path: Path, *, hint: str = "") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"key missing or unreadable at {path}{': ' + hint if hint else ''} ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key
