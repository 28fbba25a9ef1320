"""A user's keys, kept on the user's machine, encrypted with a key derived from the password.

The password never leaves the client: scrypt turns it into a key that
encrypts the keystore (AES-256-GCM). The ledger stores only public keys and
the encrypted keystore (so a user can log in from another machine); a wrong
password fails to decrypt it, here, on the client.

Keys: Ed25519 signs commands and authenticates TLS to other peers (its
self-signed certificate is registered); X25519 receives released sale keys.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from broker.codec import b64d, b64e
from peer.errors import PeerError, WrongPassword
from peer.transfer.tls import make_certificate

__all__ = ["Identity", "create_identity", "seal_keystore", "open_keystore", "Profile"]

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_RAW = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


@dataclass(frozen=True)
class Identity:
    login: str
    sign_key: Ed25519PrivateKey
    box_key: X25519PrivateKey
    cert_pem: bytes

    @property
    def sign_public(self) -> bytes:
        return self.sign_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def box_public(self) -> bytes:
        return self.box_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def secrets_json(self) -> bytes:
        return json.dumps({
            "login": self.login, "sign": self.sign_key.private_bytes(*_RAW).hex(),
            "box": self.box_key.private_bytes(*_RAW).hex(), "cert_pem": self.cert_pem.decode(),
        }).encode()

    @classmethod
    def from_secrets_json(cls, data: bytes) -> Identity:
        d = json.loads(data)
        return cls(d["login"], Ed25519PrivateKey.from_private_bytes(bytes.fromhex(d["sign"])),
                   X25519PrivateKey.from_private_bytes(bytes.fromhex(d["box"])), d["cert_pem"].encode())


def create_identity(login: str) -> Identity:
    """Fresh keys and a self-signed certificate for ``login``."""
    sign = Ed25519PrivateKey.generate()
    return Identity(login, sign, X25519PrivateKey.generate(), make_certificate(sign, login))


def _kdf(password: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, **_SCRYPT).derive(password.encode())


def seal_keystore(identity: Identity, password: str) -> str:
    """The encrypted keystore (base64 text), safe to store on the ledger."""
    if len(password) < 8:
        raise PeerError("a password needs at least 8 characters")
    salt, nonce = os.urandom(16), os.urandom(12)
    ct = AESGCM(_kdf(password, salt)).encrypt(nonce, identity.secrets_json(), identity.login.encode())
    blob = {"v": 1, "kdf": "scrypt", **_SCRYPT, "salt": salt.hex(), "nonce": nonce.hex(), "ct": b64e(ct),
            "login": identity.login}
    return b64e(json.dumps(blob, sort_keys=True).encode())


def open_keystore(keystore: str, password: str) -> Identity:
    """Decrypt a keystore; WrongPassword if the password does not open it."""
    try:
        blob = json.loads(b64d(keystore))
        salt, nonce, ct = bytes.fromhex(blob["salt"]), bytes.fromhex(blob["nonce"]), b64d(blob["ct"])
        key = Scrypt(salt=salt, length=32, n=blob["n"], r=blob["r"], p=blob["p"]).derive(password.encode())
    except (ValueError, KeyError) as exc:
        raise PeerError(f"keystore is damaged: {exc}") from exc
    try:
        return Identity.from_secrets_json(AESGCM(key).decrypt(nonce, ct, blob["login"].encode()))
    except InvalidTag as exc:
        raise WrongPassword(f"wrong password for {blob['login']}") from exc


class Profile:
    """The files of one user on this machine: ``$ACB_HOME/users/<login>/``."""

    def __init__(self, home: Path, login: str) -> None:
        self.home = home
        self.login = login
        self.dir = home / "users" / login

    @staticmethod
    def current(home: Path) -> str | None:
        f = home / "current"
        return f.read_text().strip() if f.exists() else None

    def make_current(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "current").write_text(self.login + "\n")

    @property
    def keystore_path(self) -> Path:
        return self.dir / "keystore"

    @property
    def session_path(self) -> Path:
        return self.dir / "session"

    def save_keystore(self, keystore: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keystore_path.write_text(keystore)

    def keystore(self) -> str | None:
        return self.keystore_path.read_text() if self.keystore_path.exists() else None

    def save_session(self, identity: Identity) -> None:
        """Keep the unlocked keys for this login session, readable by this user only."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.session_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(identity.secrets_json())
        os.replace(tmp, self.session_path)

    def session(self) -> Identity | None:
        return Identity.from_secrets_json(self.session_path.read_bytes()) if self.session_path.exists() else None

    def end_session(self) -> None:
        self.session_path.unlink(missing_ok=True)

    def subdir(self, name: str) -> Path:
        d = self.dir / name
        d.mkdir(parents=True, exist_ok=True)
        return d
