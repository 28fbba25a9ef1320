"""Signatures remembered as verified (broker.trust.signature_valid): a second check is cheap, never looser."""
from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import trust
from broker.trust import VERIFIED_MEMORY, raw_public, sign_known, signature_valid


def test_a_signature_verifies_again_and_a_changed_message_or_key_never_does() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    message = b"acb/test/1\n{\"amount\":1}"
    signature = key.sign(message)
    assert signature_valid(raw_public(key), signature, message)
    assert signature_valid(raw_public(key), signature, message)  # remembered: the same answer
    assert not signature_valid(raw_public(key), signature, message + b" ")
    assert not signature_valid(raw_public(other), signature, message)
    assert not signature_valid(raw_public(key), bytes(64), message)
    assert not signature_valid(b"short", signature, message)


def test_what_a_key_signs_here_verifies_under_its_own_public_half_only() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signature = sign_known(key, b"entry")
    assert signature_valid(raw_public(key), signature, b"entry")
    assert not signature_valid(raw_public(other), signature, b"entry")
    assert not signature_valid(raw_public(key), signature, b"entry!")


def test_a_refused_signature_is_not_remembered_and_the_memory_stays_bounded() -> None:
    key = Ed25519PrivateKey.generate()
    public = raw_public(key)
    forged = bytes(64)
    for _ in range(3):
        assert not signature_valid(public, forged, b"m")
    first = key.sign(b"first")
    assert signature_valid(public, first, b"first")
    for i in range(VERIFIED_MEMORY + 10):
        sign_known(key, b"filler %d" % i)
    # Forgotten by now, yet still valid when checked afresh.
    assert signature_valid(public, first, b"first")
    assert len(trust._verified._known) <= VERIFIED_MEMORY
