"""The system's own keys, made once at set-up (``acb init``).

- the operator's Ed25519 key signs deposits and fee changes; the ledger knows
  only its public half;
- the ledger's X25519 key opens escrowed sale keys; every replica holds it, so
  any of them can release a key when it becomes primary. A secret for login
  challenges is derived from it.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ledger.errors import ConfigError

__all__ = ["SystemKeys", "system_dir", "init_system", "load_system", "load_operator_key"]


def system_dir(home: Path | None = None) -> Path:
    base = home or Path(os.environ.get("ACB_HOME", Path.home() / ".acb"))
    return base / "system"


@dataclass(frozen=True)
class SystemKeys:
    operator_public: bytes
    ledger_key: X25519PrivateKey

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
    return SystemKeys(operator_public, key)


def load_operator_key(home: Path | None = None) -> Ed25519PrivateKey:
    path = system_dir(home) / "operator.key"
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"operator key missing or unreadable at {path}: run `acb init` ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key
