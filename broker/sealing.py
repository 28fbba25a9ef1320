"""Sealing a short secret to someone's X25519 key: HPKE (RFC 9180) from ``cryptography``.

Used twice for a sale's key K: the provider seals K to the ledger (escrow), and
the settle event carries K sealed to the consumer (release). ``info`` binds the
ciphertext to its purpose and sale, so a sealed key cannot be replayed for
another sale or the other direction.
"""
from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from broker.errors import BrokerError

__all__ = ["seal_to", "open_sealed", "SealError", "escrow_info", "release_info", "x25519_public_raw"]

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)


class SealError(BrokerError):
    """The sealed box does not open with this key and purpose."""


def escrow_info(sale_id: str) -> bytes:
    return b"acb-escrow\x00" + sale_id.encode()


def release_info(sale_id: str, interval: int | None = None) -> bytes:
    """Purpose of a released key: the sale's key K, or (with ``interval``) one interval's key."""
    base = b"acb-release\x00" + sale_id.encode()
    return base if interval is None else base + b"\x00interval\x00" + interval.to_bytes(8, "big")


def x25519_public_raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal_to(public_key: bytes, plaintext: bytes, info: bytes) -> bytes:
    """Encrypt ``plaintext`` so that only the holder of the X25519 private key can read it."""
    try:
        recipient = X25519PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise SealError(f"not an X25519 public key: {exc}") from exc
    return _SUITE.encrypt(plaintext, recipient, info=info)


def open_sealed(private_key: X25519PrivateKey, ciphertext: bytes, info: bytes) -> bytes:
    """Decrypt a sealed box; SealError if it was not sealed to this key for this purpose."""
    try:
        return _SUITE.decrypt(ciphertext, private_key, info=info)
    except (InvalidTag, ValueError) as exc:
        raise SealError("sealed key does not open with this key for this sale") from exc
