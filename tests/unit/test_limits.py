"""Field size limits: every oversized field is refused as ``malformed`` when the envelope is opened.

Each case builds the wire bytes by hand (the models would refuse to build them),
opens them with :func:`broker.envelope.open_envelope` and checks the refusal
names the message type, the field and the limit. The largest legitimate value
of each field opens.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import commands as c
from broker import content
from broker import queries as q
from broker.codec import b64e, canonical
from broker.envelope import open_envelope
from broker.errors import CommandRejected
from broker.money import interval_prices
from peer.identity import create_identity, seal_keystore

LOGIN32 = "a" + "b" * 31
ID80 = "d" * 80
HEX64 = "ab" * 32


def _raw(kind: str, payload: dict[str, Any]) -> bytes:
    body = {"id": "limit-test-0001", "sender": "bob", "issued_at": 1, "kind": kind, "payload": payload, "min_seq": 0}
    return canonical({"body": body, "signature": b64e(b"\0" * 64)})


def _refused(kind: str, payload: dict[str, Any]) -> str:
    with pytest.raises(CommandRejected) as info:
        open_envelope(_raw(kind, payload))
    assert info.value.code == "malformed", str(info.value)
    return info.value.message


def _opens(kind: str, payload: dict[str, Any]) -> Any:
    return open_envelope(_raw(kind, payload)).payload


def _register(**kw: Any) -> dict[str, Any]:
    return {"type": "register", "login": "bob", "sign_key": HEX64, "box_key": HEX64, "cert_pem": "PEM",
            "keystore": "a2V5", **kw}


def _publish(**kw: Any) -> dict[str, Any]:
    return {"type": "publish", "doc_id": "doc-1", "title": "T", "topic": "t", "description": "", "price": 100,
            "size": 4096, "sha256": HEX64, "merkle_root": HEX64, "segment_size": 1024, "endpoint": "127.0.0.1:9000",
            **kw}


def _dispute(**kw: Any) -> dict[str, Any]:
    part = {"body": "{}", "signature": "cd" * 64}
    return {"type": "dispute", "sale_id": "s-1", "index": 0, "header": part, "entry": part, "ciphertext": "", **kw}


# (kind, payload, field named in the refusal, words of the refusal)
OVERSIZED: list[tuple[str, dict[str, Any], str, str]] = [
    ("command", _register(keystore="k" * (c.KEYSTORE_MAX + 1)), "keystore", "at most 8192 characters"),
    ("command", _register(cert_pem="p" * (c.CERT_PEM_MAX + 1)), "cert_pem", "at most 4096 characters"),
    ("command", _register(login="a" * 33), "login", "match pattern"),
    ("command", {"type": "deposit", "account": "bob", "amount": 1, "memo": "m" * (c.MEMO_MAX + 1)}, "memo",
     "at most 200 characters"),
    ("command", {"type": "deposit", "account": "bob", "amount": c.MONEY_MAX + 1}, "amount", "less than or equal"),
    ("command", {"type": "deposit", "account": "b" * 40, "amount": 1}, "account", "match pattern"),
    ("command", _publish(title="t" * (c.TITLE_MAX + 1)), "title", "at most 200 characters"),
    ("command", _publish(topic="t" * (c.TOPIC_MAX + 1)), "topic", "at most 80 characters"),
    ("command", _publish(description="d" * (c.DESCRIPTION_MAX + 1)), "description", "at most 2000 characters"),
    ("command", _publish(endpoint="h" * 256 + ":9000"), "endpoint", "at most 260 characters"),
    ("command", _publish(doc_id="d" * 81), "doc_id", "match pattern"),
    ("command", _publish(segment_size=c.SEGMENT_MAX + 1), "segment_size", "less than or equal to 4194304"),
    ("command", _publish(size=c.DOCUMENT_SIZE_MAX + 1), "size", "less than or equal"),
    ("command", _publish(size=4097 * 1024, interval_segments=1), "publish",
     "4097 intervals; a document is split into at most 4096"),
    ("command", {"type": "change_price", "doc_id": "d" * 81, "price": 1}, "doc_id", "match pattern"),
    ("command", {"type": "unpublish", "doc_id": "d" * 81}, "doc_id", "match pattern"),
    ("command", {"type": "open_sale", "sale_id": "s" * 81, "doc_id": "doc-1", "price": 1}, "sale_id", "match pattern"),
    ("command", {"type": "open_sale", "sale_id": "s-1", "doc_id": "doc-1", "price": 4097,
                 "interval_prices": [1] * (c.INTERVALS_MAX + 1)}, "interval_prices", "at most 4096 items"),
    ("command", {"type": "escrow_key", "sale_id": "s-1", "sealed_key": "k" * (c.SEALED_KEY_MAX + 1),
                 "key_commitment": HEX64, "doc_id": "doc-1", "merkle_root": HEX64}, "sealed_key",
     "at most 512 characters"),
    ("command", {"type": "void", "sale_id": "s-1", "reason": "r" * (c.REASON_MAX + 1)}, "reason",
     "at most 200 characters"),
    ("command", _dispute(ciphertext="A" * (c.CIPHERTEXT_MAX + 1)), "ciphertext", "at most 5592428 characters"),
    ("command", _dispute(header={"body": "b" * (c.HEADER_BODY_MAX + 1), "signature": "cd"}), "header",
     "body has 4097 characters, at most 4096 allowed"),
    ("command", _dispute(header={"body": "{}", "signature": "c" * 129}), "header",
     "signature has 129 characters, at most 128 allowed"),
    ("command", _dispute(entry={"body": "b" * (c.ENTRY_BODY_MAX + 1), "signature": "cd"}), "entry",
     "body has 8193 characters, at most 8192 allowed"),
    ("command", _dispute(entry={"body": "{}", "signature": "cd", "padding": "x" * 1000}), "entry",
     "expected body and signature"),
    ("command", {"type": "change_keystore", "keystore": "k" * (c.KEYSTORE_MAX + 1)}, "keystore",
     "at most 8192 characters"),
    ("query", {"type": "balance", "account": "a" * 33}, "account", "at most 32 characters"),
    ("query", {"type": "flows", "account": "a" * 33}, "account", "at most 32 characters"),
    ("query", {"type": "sales", "account": "a" * 33}, "account", "at most 32 characters"),
    ("query", {"type": "sale", "sale_id": "s" * 81}, "sale_id", "at most 80 characters"),
    ("query", {"type": "user", "login": "a" * 33}, "login", "at most 32 characters"),
    ("query", {"type": "document", "doc_id": "d" * 81}, "doc_id", "at most 80 characters"),
    ("query", {"type": "search", "text": "w" * (q.SEARCH_TEXT_MAX + 1)}, "text", "at most 200 characters"),
    ("query", {"type": "search", "topic": "t" * 81}, "topic", "at most 80 characters"),
    ("query", {"type": "login_challenge", "login": "a" * 33}, "login", "at most 32 characters"),
    ("query", {"type": "login", "login": "bob", "challenge": "c" * (q.CHALLENGE_MAX + 1), "signature": "ab"},
     "challenge", "at most 256 characters"),
    ("query", {"type": "login", "login": "bob", "challenge": "c", "signature": "s" * 129}, "signature",
     "at most 128 characters"),
]


@pytest.mark.parametrize(("kind", "payload", "field", "words"), OVERSIZED,
                         ids=[f"{p['type']}-{f}-{i}" for i, (_k, p, f, _w) in enumerate(OVERSIZED)])
def test_an_oversized_field_is_refused_as_malformed(kind: str, payload: dict[str, Any], field: str,
                                                    words: str) -> None:
    message = _refused(kind, payload)
    assert message.startswith(f"{payload['type']}: "), message
    assert field in message and words in message, message


# -- the largest legitimate values open ------------------------------------------------------------

def test_a_real_registration_of_the_longest_login_fits_with_room() -> None:
    me = create_identity(LOGIN32)
    keystore = seal_keystore(me, "a long password of a careful person" * 3)
    assert len(keystore) * 3 < c.KEYSTORE_MAX and len(me.cert_pem) * 4 < c.CERT_PEM_MAX
    reg = _opens("command", _register(login=LOGIN32, cert_pem=me.cert_pem.decode(), keystore=keystore))
    assert reg.keystore == keystore
    assert _opens("command", {"type": "change_keystore", "keystore": keystore}).keystore == keystore


@pytest.mark.parametrize(("kind", "payload"), [
    ("command", _register(keystore="k" * c.KEYSTORE_MAX, cert_pem="p" * c.CERT_PEM_MAX, login=LOGIN32)),
    ("command", {"type": "deposit", "account": LOGIN32, "amount": c.MONEY_MAX, "memo": "m" * c.MEMO_MAX}),
    ("command", _publish(doc_id=ID80, title="t" * c.TITLE_MAX, topic="t" * c.TOPIC_MAX,
                         description="d" * c.DESCRIPTION_MAX, endpoint="h" * 253 + ":65535",
                         segment_size=c.SEGMENT_MAX, size=c.DOCUMENT_SIZE_MAX,
                         interval_segments=c.DOCUMENT_SIZE_MAX // c.SEGMENT_MAX // c.INTERVALS_MAX)),
    ("command", _publish(size=c.INTERVALS_MAX * 1024, interval_segments=1)),
    ("command", {"type": "open_sale", "sale_id": ID80, "doc_id": ID80, "price": 10 * c.INTERVALS_MAX,
                 "interval_prices": interval_prices(10 * c.INTERVALS_MAX, c.INTERVALS_MAX)}),
    ("command", {"type": "escrow_key", "sale_id": ID80, "sealed_key": "k" * c.SEALED_KEY_MAX,
                 "key_commitment": HEX64, "doc_id": ID80, "merkle_root": HEX64}),
    ("command", {"type": "void", "sale_id": ID80, "reason": "r" * c.REASON_MAX}),
    ("query", {"type": "search", "text": "w" * q.SEARCH_TEXT_MAX, "topic": "t" * c.TOPIC_MAX}),
    ("query", {"type": "login_challenge", "login": LOGIN32, "want_keystore": True}),
    ("query", {"type": "login", "login": LOGIN32, "challenge": "c" * q.CHALLENGE_MAX, "signature": "ab" * 64}),
    ("query", {"type": "sale", "sale_id": ID80}),
    ("query", {"type": "document", "doc_id": ID80}),
    ("query", {"type": "balance", "account": LOGIN32}),
])
def test_the_largest_legitimate_value_opens(kind: str, payload: dict[str, Any]) -> None:
    assert _opens(kind, payload).type == payload["type"]


def test_a_dispute_of_the_largest_segment_with_the_deepest_proof_opens() -> None:
    provider = Ed25519PrivateKey.generate()
    key = os.urandom(32)
    ct = content.encrypt_segment(key, ID80, 0, os.urandom(c.SEGMENT_MAX))
    header = content.sign_header(provider, content.ManifestHeader(
        sale_id=ID80, doc_id=ID80, provider=LOGIN32, consumer=LOGIN32, key_commitment=content.key_commitment(ID80, key),
        size=c.DOCUMENT_SIZE_MAX, segment_size=c.SEGMENT_MAX, segment_count=c.DOCUMENT_SIZE_MAX // c.SEGMENT_MAX,
        merkle_root=HEX64))
    # 64 levels: a Merkle tree over more segments than any file can have.
    proof = tuple(hashlib.sha256(bytes([i])).digest() for i in range(64))
    entry = content.sign_entry(provider, content.ManifestEntry(
        sale_id=ID80, index=2**62, ct_hash=content.ciphertext_hash(ct), ct_size=len(ct), proof=proof))
    payload = _dispute(sale_id=ID80, index=2**62, header=header.to_wire(), entry=entry.to_wire(), ciphertext=b64e(ct))
    assert len(payload["ciphertext"]) == c.CIPHERTEXT_MAX
    opened = _opens("command", payload)
    assert content.SignedEntry.from_wire(opened.entry).entry.proof == proof
    assert content.SignedHeader.from_wire(opened.header).header.sale_id == ID80


def test_the_model_refuses_to_build_an_oversized_command() -> None:
    with pytest.raises(ValueError, match="at most 8192 characters"):
        c.ChangeKeystore(keystore="k" * (c.KEYSTORE_MAX + 1))
