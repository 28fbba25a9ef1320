"""Envelopes on the wire: canonical signing, and a coded refusal for every way bytes can be wrong."""
from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import commands as c
from broker import errors
from broker import queries as q
from broker.codec import b64d, b64e, canonical, loads_object
from broker.envelope import open_envelope, seal, verify
from broker.replies import Reply, parse_reply

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
DEPOSIT = c.Deposit(account="bob", amount=250, memo="café")


def wire(**body_changes: Any) -> dict[str, Any]:
    """A signed deposit as a JSON object, with changes to its body applied after signing."""
    data = json.loads(seal(DEPOSIT, sender="operator", key=KEY, id="cmd-00000001").to_bytes())
    data["body"].update(body_changes)
    return data


def rejected(raw: bytes, code: str) -> str:
    with pytest.raises(errors.CommandRejected) as info:
        open_envelope(raw)
    assert info.value.code == code, str(info.value)
    return info.value.message


def test_canonical_bytes_do_not_depend_on_key_order() -> None:
    assert canonical({"b": 1, "a": [1, {"y": 2, "x": "é"}]}) == canonical({"a": [1, {"x": "é", "y": 2}], "b": 1})
    assert canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_a_sealed_envelope_opens_and_verifies() -> None:
    env = seal(DEPOSIT, sender="operator", key=KEY, min_seq=7)
    opened = open_envelope(env.to_bytes())
    assert opened.payload == DEPOSIT
    assert (opened.id, opened.sender, opened.kind, opened.min_seq) == (env.id, "operator", "command", 7)
    verify(opened, PUBLIC)


def test_the_signature_covers_the_canonical_body_not_its_spelling() -> None:
    data = wire()
    respelled = json.dumps({"signature": data["signature"],
                            "body": dict(reversed(list(data["body"].items())))}, indent=2).encode()
    verify(open_envelope(respelled), PUBLIC)


@pytest.mark.parametrize(
    "change",
    [{"id": "cmd-00000002"}, {"sender": "bob"}, {"issued_at": 1}, {"min_seq": 99},
     {"payload": {**DEPOSIT.model_dump(mode="json"), "amount": 25_000}}],
)
def test_any_change_to_the_body_breaks_the_signature(change: dict[str, Any]) -> None:
    env = open_envelope(json.dumps(wire(**change)).encode())
    with pytest.raises(errors.BadSignature, match="does not verify"):
        verify(env, PUBLIC)


def test_a_fresh_id_with_an_old_signature_does_not_verify() -> None:
    old = json.loads(seal(DEPOSIT, sender="operator", key=KEY).to_bytes())
    new = seal(DEPOSIT, sender="operator", key=KEY)
    replay = {"body": new.body, "signature": old["signature"]}
    with pytest.raises(errors.BadSignature):
        verify(open_envelope(json.dumps(replay).encode()), PUBLIC)


def test_another_key_does_not_verify() -> None:
    other = Ed25519PrivateKey.generate()
    env = open_envelope(seal(DEPOSIT, sender="operator", key=other).to_bytes())
    with pytest.raises(errors.BadSignature):
        verify(env, PUBLIC)


def test_an_unsigned_envelope_does_not_verify() -> None:
    env = open_envelope(seal(DEPOSIT, sender="operator", key=None).to_bytes())
    assert env.signature is None
    with pytest.raises(errors.BadSignature, match="deposit from operator is not signed"):
        verify(env, PUBLIC)


def test_a_signature_that_is_not_base64() -> None:
    data = wire()
    data["signature"] = "%%%"
    assert rejected(json.dumps(data).encode(), "bad_signature") == "signature is not base64"


@pytest.mark.parametrize("payload_type", ["mint_money", None, 5])
def test_unknown_type(payload_type: Any) -> None:
    message = rejected(json.dumps(wire(payload={"type": payload_type, "amount": 1})).encode(), "unknown_type")
    assert message == f"unknown message type {payload_type!r}"


def test_a_command_type_is_unknown_as_a_query() -> None:
    rejected(json.dumps(wire(kind="query")).encode(), "unknown_type")


@pytest.mark.parametrize("version", [2, 0, "1"])
def test_unsupported_schema_version(version: Any) -> None:
    payload = {**DEPOSIT.model_dump(mode="json"), "schema_version": version}
    message = rejected(json.dumps(wire(payload=payload)).encode(), "unsupported_version")
    assert message == f"deposit schema_version {version!r} is not supported (know [1])"


def test_unsupported_query_version() -> None:
    env = seal(q.Balance(account="bob"), sender="bob", key=KEY, kind="query")
    data = json.loads(env.to_bytes())
    data["body"]["payload"]["schema_version"] = 2
    rejected(json.dumps(data).encode(), "unsupported_version")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\xffnot json", "body is not JSON"),
        (b"{unquoted: 1}", "body is not JSON"),
        (b"", "body is not JSON"),
        (b"[1, 2, 3]", "body is JSON list, expected an object"),
        (b'"a string"', "body is JSON str, expected an object"),
        (b"{}", "envelope has no body object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"body": ' + b"[" * 100_000 + b"}", "nested too deeply"),
        (b'{"body": []}', "envelope has no body object"),
        (b'{"body": {"kind": "shout", "payload": {}}}', "envelope kind must be 'command' or 'query', got 'shout'"),
        (b'{"body": {"kind": "command"}}', "envelope has no payload object"),
    ],
)
def test_malformed_bytes(raw: bytes, message: str) -> None:
    assert message in rejected(raw, "malformed")


@pytest.mark.parametrize("missing", ["id", "sender", "issued_at"])
def test_a_body_without_its_fields_is_malformed(missing: str) -> None:
    data = wire()
    del data["body"][missing]
    assert rejected(json.dumps(data).encode(), "malformed") == f"envelope body lacks {missing!r}"


@pytest.mark.parametrize("change", [{"id": "short"}, {"id": 12345678}, {"sender": None}, {"issued_at": "now"},
                                    {"min_seq": "7"}])
def test_a_body_field_of_the_wrong_type_is_malformed(change: dict[str, Any]) -> None:
    assert "wrong type" in rejected(json.dumps(wire(**change)).encode(), "malformed")


@pytest.mark.parametrize(
    ("payload_change", "message"),
    [
        ({"amount": None}, "deposit: amount: "),
        ({"amount": 2.5}, "deposit: amount: "),
        ({"amount": "250"}, "deposit: amount: "),
        ({"account": "Not A Login"}, "deposit: account: "),
        ({"surprise": 1}, "deposit: surprise: Extra inputs are not permitted"),
    ],
)
def test_a_payload_that_does_not_fit_its_model_is_malformed(payload_change: dict[str, Any], message: str) -> None:
    payload = {**DEPOSIT.model_dump(mode="json"), **payload_change}
    assert message in rejected(json.dumps(wire(payload=payload)).encode(), "malformed")


def test_a_payload_missing_a_field_is_malformed() -> None:
    payload = DEPOSIT.model_dump(mode="json")
    del payload["amount"]
    assert rejected(json.dumps(wire(payload=payload)).encode(), "malformed") == "deposit: amount: Field required"


def test_codec_helpers() -> None:
    assert b64d(b64e(b"\x00\x01binary")) == b"\x00\x01binary"
    with pytest.raises(ValueError):
        b64d("not base64!")
    with pytest.raises(ValueError, match="expected an object"):
        loads_object(b"null")


def test_a_reply_carries_a_coded_refusal_back_as_its_class() -> None:
    failure = Reply.failure("cmd-1", errors.InsufficientFunds("balance 40, price 100"), "r1")
    back = parse_reply(failure.to_bytes())
    with pytest.raises(errors.InsufficientFunds, match="balance 40, price 100") as info:
        back.unwrap()
    assert str(info.value) == "insufficient_funds: balance 40, price 100"


def test_an_unregistered_code_arrives_as_a_remote_error() -> None:
    exc = errors.rejection({"code": "solar_flare", "message": "try later"})
    assert isinstance(exc, errors.RemoteError)
    assert (exc.code, exc.message) == ("solar_flare", "try later")


def test_a_reply_that_does_not_parse() -> None:
    with pytest.raises(errors.MalformedMessage):
        parse_reply(b'{"ok": true}')
    with pytest.raises(errors.MalformedMessage):
        parse_reply(b"\xff")
