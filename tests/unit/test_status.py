"""Only a certified replica's recent, signed word about itself counts as its status."""
from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.codec import canonical
from broker.trust import Trust, raw_public, sign_roster, signed
from console.status import STATUS_FRESH_MS, verified_status

NOW = 1_800_000_000_000


def setup() -> tuple[Trust, Ed25519PrivateKey]:
    operator, key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    return Trust(raw_public(operator), sign_roster(operator, 1, {"r1": raw_public(key).hex()}, 0)), key


def status(key: Ed25519PrivateKey, at_ms: int, replica: str = "r1", signer: str = "r1") -> bytes:
    return canonical(signed(key, signer, {"replica": replica, "seq": 5, "role": "primary", "at_ms": at_ms}, "status"))


def test_a_recent_signed_status_counts() -> None:
    trust, key = setup()
    assert verified_status(trust, status(key, NOW - 1000), NOW) is not None


def test_an_old_genuine_status_replayed_does_not() -> None:
    trust, key = setup()
    assert verified_status(trust, status(key, NOW - STATUS_FRESH_MS - 1), NOW) is None


def test_a_status_about_another_replica_or_by_a_stranger_does_not() -> None:
    trust, key = setup()
    assert verified_status(trust, status(key, NOW, replica="r2"), NOW) is None
    assert verified_status(trust, status(Ed25519PrivateKey.generate(), NOW), NOW) is None
    assert verified_status(trust, b"{not json", NOW) is None
