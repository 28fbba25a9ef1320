"""A user's keys, kept on the user's machine, encrypted with a key derived from the password.

The password never leaves the client: a memory-hard KDF turns it into a key
that encrypts the keystore (AES-256-GCM). The ledger stores only public keys
and the encrypted keystore (so a user can log in from another machine); a wrong
password fails to decrypt it, here, on the client.

Keystore versions (the ``v`` field of the wrapped blob):

- 1: scrypt N=2^14, r=8, p=1 (about 30 ms here, so an attacker holding the blob
  tries ~32 passwords a second per core). Still opens; re-wrapped at the next login.
- 2: Argon2id with m=64 MiB, t=3, p=4: RFC 9106's second recommended setting,
  above OWASP's minimum (m=19 MiB, t=2, p=1, or any of its equivalents): each guess
  costs 64 MiB of memory, which is what limits attackers' GPUs and ASICs. About
  140 ms per unlock on this project's 2-core machine (OWASP's minimum: ~20 ms),
  paid once per login or registration. The header (version, KDF and its
  parameters, login) is the AEAD's associated data, so it cannot be altered.

A keystore is at most :data:`broker.commands.KEYSTORE_MAX` characters, and the
KDF parameters of one being opened are bounded, so a hostile blob can neither
fill memory nor hang the client.

Keys: Ed25519 signs commands and authenticates TLS to other peers (its
self-signed certificate is registered); X25519 receives released sale keys.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from broker.codec import b64d, b64e, canonical
from broker.commands import KEYSTORE_MAX
from peer.errors import PeerError, WrongPassword
from peer.transfer.tls import make_certificate

__all__ = ["Identity", "create_identity", "seal_keystore", "open_keystore", "keystore_version", "needs_rewrap",
           "Profile", "KEYSTORE_VERSION", "ARGON2ID"]

KEYSTORE_VERSION = 2
ARGON2ID = {"m": 64 * 1024, "t": 3, "p": 4}  # memory in KiB, passes, lanes
_SCRYPT_V1 = {"n": 2**14, "r": 8, "p": 1}
# What a keystore being opened may ask for: generous next to today's settings, but never hours or gigabytes.
_ARGON2ID_BOUNDS = {"m": (8 * 1024, 1024 * 1024), "t": (1, 16), "p": (1, 16)}
_SCRYPT_BOUNDS = {"n": (2**10, 2**20), "r": (1, 16), "p": (1, 16)}
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


def _argon2id(password: str, salt: bytes, m: int, t: int, p: int) -> bytes:
    return Argon2id(salt=salt, length=32, iterations=t, lanes=p, memory_cost=m).derive(password.encode())


def _header_aad(header: dict[str, Any]) -> bytes:
    return b"acb-keystore\0" + canonical(header)


def seal_keystore(identity: Identity, password: str, *, params: dict[str, int] | None = None) -> str:
    """The encrypted keystore (base64 text, version :data:`KEYSTORE_VERSION`), safe to store on the ledger.

    ``params`` overrides the Argon2id settings (``m`` KiB, ``t`` passes, ``p`` lanes); only tests should.
    """
    if len(password) < 8:
        raise PeerError("a password needs at least 8 characters")
    kdf = {**ARGON2ID, **(params or {})}
    salt, nonce = os.urandom(16), os.urandom(12)
    header = {"v": KEYSTORE_VERSION, "kdf": "argon2id", **kdf, "salt": salt.hex(), "login": identity.login}
    key = _argon2id(password, salt, kdf["m"], kdf["t"], kdf["p"])
    ct = AESGCM(key).encrypt(nonce, identity.secrets_json(), _header_aad(header))
    keystore = b64e(canonical({**header, "nonce": nonce.hex(), "ct": b64e(ct)}))
    if len(keystore) > KEYSTORE_MAX:
        raise PeerError(f"the keystore of {identity.login} would be {len(keystore)} characters; "
                        f"at most {KEYSTORE_MAX} are allowed")
    return keystore


def _seal_keystore_v1(identity: Identity, password: str) -> str:
    """A version-1 keystore (scrypt N=2^14), as clients before version 2 made them; for tests of the upgrade."""
    salt, nonce = os.urandom(16), os.urandom(12)
    key = Scrypt(salt=salt, length=32, **_SCRYPT_V1).derive(password.encode())
    ct = AESGCM(key).encrypt(nonce, identity.secrets_json(), identity.login.encode())
    blob = {"v": 1, "kdf": "scrypt", **_SCRYPT_V1, "salt": salt.hex(), "nonce": nonce.hex(), "ct": b64e(ct),
            "login": identity.login}
    return b64e(json.dumps(blob, sort_keys=True).encode())


def _parse(keystore: str) -> dict[str, Any]:
    if len(keystore) > KEYSTORE_MAX:
        raise PeerError(f"keystore is damaged: {len(keystore)} characters, at most {KEYSTORE_MAX} are allowed")
    try:
        blob = json.loads(b64d(keystore))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PeerError("keystore is damaged: it is not an encoded keystore") from exc
    if not isinstance(blob, dict) or not isinstance(blob.get("login"), str):
        raise PeerError("keystore is damaged: it is not an encoded keystore")
    return blob


def _bounded(blob: dict[str, Any], bounds: dict[str, tuple[int, int]]) -> dict[str, int]:
    out = {}
    for name, (low, high) in bounds.items():
        value = blob.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise PeerError(f"keystore is damaged: its {name} setting {value!r} is outside {low}..{high}")
        out[name] = value
    return out


def keystore_version(keystore: str) -> int:
    """The version of a wrapped keystore (1: scrypt N=2^14; 2: Argon2id)."""
    version = _parse(keystore).get("v", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise PeerError("keystore is damaged: its version is not a number")
    return version


def needs_rewrap(keystore: str) -> bool:
    """True when the keystore is of an older version, or wrapped with weaker settings than today's."""
    blob = _parse(keystore)
    if blob.get("v", 1) != KEYSTORE_VERSION:
        return True
    return any(not isinstance(blob.get(k), int) or blob[k] < v for k, v in ARGON2ID.items())


def open_keystore(keystore: str, password: str) -> Identity:
    """Decrypt a keystore of any known version; WrongPassword if the password does not open it."""
    blob = _parse(keystore)
    version = blob.get("v", 1)
    try:
        salt, nonce, ct = bytes.fromhex(blob["salt"]), bytes.fromhex(blob["nonce"]), b64d(blob["ct"])
        if len(nonce) != 12 or len(salt) < 8:
            raise ValueError("its nonce or salt has the wrong length")
        if version == 1 and blob.get("kdf", "scrypt") == "scrypt":
            kdf = _bounded(blob, _SCRYPT_BOUNDS)
            key = Scrypt(salt=salt, length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(password.encode())
            aad = blob["login"].encode()
        elif version == 2 and blob.get("kdf") == "argon2id":
            kdf = _bounded(blob, _ARGON2ID_BOUNDS)
            key = _argon2id(password, salt, kdf["m"], kdf["t"], kdf["p"])
            aad = _header_aad({k: v for k, v in blob.items() if k not in ("nonce", "ct")})
        else:
            raise PeerError(f"keystore version {version!r} ({blob.get('kdf')!r}) is not one this client knows; "
                            "update ACB")
    except (ValueError, KeyError, TypeError, UnsupportedAlgorithm) as exc:
        raise PeerError(f"keystore is damaged: {exc}") from exc
    try:
        secrets = AESGCM(key).decrypt(nonce, ct, aad)
    except InvalidTag as exc:
        raise WrongPassword(f"wrong password for {blob['login']}") from exc
    try:
        return Identity.from_secrets_json(secrets)
    except (ValueError, KeyError, TypeError) as exc:
        raise PeerError(f"keystore is damaged: {exc}") from exc


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
        """Keep the (encrypted) keystore here; replaced whole, so a crash leaves the old one or the new."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.keystore_path.with_suffix(".tmp")
        tmp.write_text(keystore)
        os.replace(tmp, self.keystore_path)

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
