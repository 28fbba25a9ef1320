"""A signature made for one purpose never passes for another: envelope, login, reply, log entry, status, roster."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import commands as c
from broker import errors
from broker.codec import b64e, canonical
from broker.envelope import open_envelope, seal, verify
from broker.replies import Reply
from broker.trust import Trust, check_signed, raw_public, sign_roster, signed, tagged


def test_a_login_signature_over_a_commands_bytes_does_not_make_it_a_command() -> None:
    # A replica that answered a login challenge with a command's body gets a signature it cannot use.
    key = Ed25519PrivateKey.generate()
    env = seal(c.SettleSale(sale_id="s-1"), sender="alice", key=None)
    stolen = key.sign(tagged("login", canonical(env.body)))
    forged = open_envelope(canonical({"body": env.body, "signature": b64e(stolen)}))
    with pytest.raises(errors.BadSignature):
        verify(forged, raw_public(key))


def test_the_client_signs_only_what_looks_like_a_login_challenge() -> None:
    from peer.client import _CHALLENGE

    assert _CHALLENGE.fullmatch("al.ice.1800000000000." + "a" * 32 + "." + "b" * 32)
    env = seal(c.SettleSale(sale_id="s-1"), sender="alice", key=None)
    assert not _CHALLENGE.fullmatch(canonical(env.body).decode())


def test_a_status_signature_is_no_snapshot_and_no_reply() -> None:
    operator, key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trust = Trust(raw_public(operator), sign_roster(operator, 1, {"r1": raw_public(key).hex()}, 0))
    status = signed(key, "r1", {"replica": "r1", "seq": 3}, "status")
    assert check_signed(trust, status, "status") == "r1"
    with pytest.raises(errors.BadSignature):
        check_signed(trust, status, "snapshot")
    reply = Reply(id="abcdefgh", ok=True).signed_by(key, "r1", "0" * 64)
    as_status = {**reply.model_dump(mode="json")}
    with pytest.raises(errors.BadSignature):
        check_signed(trust, as_status, "status")


def test_an_envelope_body_with_fields_of_its_own_is_malformed() -> None:
    env = seal(c.SettleSale(sale_id="s-1"), sender="alice", key=Ed25519PrivateKey.generate())
    with pytest.raises(errors.Malformed, match="unknown field 'x'"):
        open_envelope(canonical({"body": {**env.body, "x": 1}, "signature": b64e(env.signature or b"")}))
