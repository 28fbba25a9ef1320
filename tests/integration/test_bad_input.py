"""Bad input against a real replica: raw bytes on the commands exchange, each refused with a code,
changing nothing, never stopping the ledger, and the unreadable or forged ones dead-lettered."""
from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import commands as c
from broker import content
from broker.client import BrokerClient
from broker.codec import b64e
from broker.envelope import seal
from broker.replies import Reply, parse_reply
from broker.sealing import escrow_info, seal_to
from ledger.model import state_hash
from peer.client import Client
from peer.errors import WrongPassword
from peer.identity import open_keystore
from tests.conftest import Deployment, Member

pytestmark = pytest.mark.timeout(90)
_REPLY_TO = "amq.rabbitmq.reply-to"


class RawPublisher:
    """Publishes bytes to the commands exchange as any client could, and collects replies."""

    def __init__(self, deployment: Deployment) -> None:
        self.names = deployment.names
        self.conn = pika.BlockingConnection(pika.URLParameters(deployment.url))
        self.ch = self.conn.channel()
        self.replies: dict[str, bytes] = {}
        self.ch.basic_consume(_REPLY_TO, self._on_reply, auto_ack=True)
        # Peers may not read the dead-letter queue; the test looks at it as the operator does.
        self.operator = pika.BlockingConnection(pika.URLParameters(deployment.roles.operator_url))
        self.operator_ch = self.operator.channel()

    def _on_reply(self, _ch: Any, _method: Any, props: Any, body: bytes) -> None:
        self.replies[props.correlation_id] = body

    def send(self, body: bytes, correlation_id: str, timeout: float = 15.0) -> Reply:
        self.ch.basic_publish(self.names.commands, "command", body, pika.BasicProperties(
            reply_to=_REPLY_TO, correlation_id=correlation_id, delivery_mode=2))
        deadline = time.monotonic() + timeout
        while correlation_id not in self.replies:
            assert time.monotonic() < deadline, f"no reply to {correlation_id}"
            self.conn.process_data_events(time_limit=0.1)
        return parse_reply(self.replies.pop(correlation_id))

    def dead_letter(self, correlation_id: str, timeout: float = 10.0) -> tuple[Any, bytes]:
        """The dead-lettered message with this correlation id (others found on the way are dropped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, props, body = self.operator_ch.basic_get(self.names.dlq, auto_ack=True)
            if method is None:
                self.operator.process_data_events(time_limit=0.1)
                continue
            if props.correlation_id == correlation_id:
                return props, body
        raise AssertionError(f"{correlation_id} never reached {self.names.dlq}")

    def close(self) -> None:
        self.conn.close()
        self.operator.close()


@dataclass
class World:
    deployment: Deployment
    raw: RawPublisher
    clients: dict[str, Client]
    operator: Ed25519PrivateKey
    old_deposit: bytes  # a good command already applied: material for a replay

    def signed(self, payload: Any, sender: str, *, key: Any = "own", id: str | None = None) -> tuple[bytes, str]:
        if key == "own":
            key = self.operator if sender == c.OPERATOR else self.clients[sender].identity.sign_key
        env = seal(payload, sender=sender, key=key, id=id)
        return env.to_bytes(), env.id

    def snapshot(self) -> tuple[int, str, dict[str, int]]:
        state = self.deployment.state
        return self.deployment.head_seq(), state_hash(state), dict(state.balances)


def _escrow(client: Client, ledger_public: bytes, sale_id: str) -> None:
    key = os.urandom(32)
    doc = client.document(client.sale(sale_id)["doc_id"])
    client.send(c.EscrowKey(sale_id=sale_id, sealed_key=b64e(seal_to(ledger_public, key, escrow_info(sale_id))),
                            key_commitment=content.key_commitment(sale_id, key), doc_id=doc["doc_id"],
                            merkle_root=doc["merkle_root"]))


@pytest.fixture(scope="module")
def bad_input_world(deployment: Deployment) -> Iterator[World]:
    clients = {login: deployment.client() for login in ("alice", "bob", "carol", "dave")}
    for login, client in clients.items():
        client.register(login, f"password of {login}")
    operator = deployment.operator_key()
    old = seal(c.Deposit(account="bob", amount=2000), sender=c.OPERATOR, key=operator)
    clients["bob"].broker.request(old, timeout=20).unwrap()
    doc = c.PublishDocument(doc_id="doc-1", title="Quantum notes", topic="physics", price=1000, size=2048,
                            sha256="ab" * 32, merkle_root="cd" * 32, segment_size=1024, endpoint="127.0.0.1:9000")
    clients["alice"].send(doc)
    ledger_public = bytes.fromhex(clients["bob"].ledger_info()["ledger_box_key"])
    bob = clients["bob"]
    bob.send(c.OpenSale(sale_id="s-settled", doc_id="doc-1", price=1000))
    _escrow(clients["alice"], ledger_public, "s-settled")
    bob.send(c.SettleSale(sale_id="s-settled"))
    bob.send(c.OpenSale(sale_id="s-open", doc_id="doc-1", price=1000))
    _escrow(clients["alice"], ledger_public, "s-open")
    raw = RawPublisher(deployment)
    try:
        yield World(deployment, raw, clients, operator, old.to_bytes())
    finally:
        raw.close()


def _not_json(w: World) -> tuple[bytes, str]:
    return b"\x00\xffthis is not json{", uuid.uuid4().hex


def _json_array(w: World) -> tuple[bytes, str]:
    return b'[{"body": {}}]', uuid.uuid4().hex


def _deeply_nested(w: World) -> tuple[bytes, str]:
    # Deep enough to exhaust the JSON decoder's recursion: must be refused, not crash the consumer.
    return b'{"body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", uuid.uuid4().hex


def _unknown_type(w: World) -> tuple[bytes, str]:
    body, ident = w.signed(c.Deposit(account="bob", amount=1), c.OPERATOR)
    data = json.loads(body)
    data["body"]["payload"] = {"type": "print_money", "schema_version": 1, "amount": 10**9}
    return json.dumps(data).encode(), ident


def _unsupported_version(w: World) -> tuple[bytes, str]:
    body, ident = w.signed(c.Deposit(account="bob", amount=1), c.OPERATOR)
    data = json.loads(body)
    data["body"]["payload"]["schema_version"] = 2
    return json.dumps(data).encode(), ident


def _missing_body_field(w: World) -> tuple[bytes, str]:
    body, ident = w.signed(c.Deposit(account="bob", amount=1), c.OPERATOR)
    data = json.loads(body)
    del data["body"]["sender"]
    return json.dumps(data).encode(), ident


def _bad_signature(w: World) -> tuple[bytes, str]:
    return w.signed(c.Deposit(account="bob", amount=10**6), c.OPERATOR, key=Ed25519PrivateKey.generate())


def _missing_signature(w: World) -> tuple[bytes, str]:
    return w.signed(c.Deposit(account="bob", amount=10**6), c.OPERATOR, key=None)


def _replay_with_fresh_id(w: World) -> tuple[bytes, str]:
    data = json.loads(w.old_deposit)
    data["body"]["id"] = uuid.uuid4().hex
    return json.dumps(data).encode(), data["body"]["id"]


def _unknown_user(w: World) -> tuple[bytes, str]:
    mallory = Member.create("mallory")
    return w.signed(c.OpenSale(sale_id="s-m", doc_id="doc-1", price=1000), "mallory", key=mallory.sign)


def _duplicate_registration(w: World) -> tuple[bytes, str]:
    impostor = Member.create("alice")
    return w.signed(impostor.registration(), "alice", key=impostor.sign)


def _reserved_login(w: World) -> tuple[bytes, str]:
    owner = Member.create("owner")
    return w.signed(owner.registration(), "owner", key=owner.sign)


def _deposit_by_a_user(w: World) -> tuple[bytes, str]:
    return w.signed(c.Deposit(account="bob", amount=10**6), "bob")


def _price(price: int) -> Callable[[World], tuple[bytes, str]]:
    def build(w: World) -> tuple[bytes, str]:
        return w.signed(c.PublishDocument(doc_id=f"doc-p{abs(price)}", title="Free?", topic="physics", price=price,
                                          size=10, sha256="ab" * 32, merkle_root="cd" * 32, segment_size=1024,
                                          endpoint="127.0.0.1:9000"), "alice")
    return build


def _own_document(w: World) -> tuple[bytes, str]:
    return w.signed(c.OpenSale(sale_id="s-own", doc_id="doc-1", price=1000), "alice")


def _insufficient_funds(w: World) -> tuple[bytes, str]:
    return w.signed(c.OpenSale(sale_id="s-poor", doc_id="doc-1", price=1000), "carol")


def _price_changed(w: World) -> tuple[bytes, str]:
    return w.signed(c.OpenSale(sale_id="s-cheap", doc_id="doc-1", price=1), "bob")


def _someone_elses_sale(w: World) -> tuple[bytes, str]:
    return w.signed(c.SettleSale(sale_id="s-open"), "carol")


def _settle_twice(w: World) -> tuple[bytes, str]:
    return w.signed(c.SettleSale(sale_id="s-settled"), "bob")


def _stale(w: World) -> tuple[bytes, str]:
    env = seal(c.Deposit(account="bob", amount=5), sender=c.OPERATOR, key=w.operator,
               issued_at=int(time.time() * 1000) - 3 * 3600 * 1000)
    return env.to_bytes(), env.id


CASES = [
    # (builder, code, part of the message, dead-lettered)
    pytest.param(_not_json, "malformed", "body is not JSON", True, id="not_json"),
    pytest.param(_json_array, "malformed", "body is JSON list, expected an object", True, id="json_array"),
    pytest.param(_deeply_nested, "malformed", "nested too deeply", True, id="deeply_nested"),
    pytest.param(_missing_body_field, "malformed", "envelope body lacks 'sender'", True,
                 id="missing_body_field"),
    pytest.param(_unknown_type, "unknown_type", "unknown message type 'print_money'", True,
                 id="unknown_type"),
    pytest.param(_unsupported_version, "unsupported_version", "deposit schema_version 2 is not supported", True,
                 id="unsupported_version"),
    pytest.param(_bad_signature, "bad_signature", "signature of operator does not verify", True,
                 id="bad_signature"),
    pytest.param(_missing_signature, "bad_signature", "deposit from operator is not signed", True,
                 id="missing_signature"),
    pytest.param(_replay_with_fresh_id, "bad_signature", "does not verify", True, id="replay_with_fresh_id"),
    pytest.param(_unknown_user, "unknown_user", "no user 'mallory'", False, id="unknown_user"),
    pytest.param(_duplicate_registration, "duplicate_registration", "login 'alice' is taken", False,
                 id="duplicate_registration"),
    pytest.param(_reserved_login, "bad_login", "'owner' is reserved", False, id="reserved_login"),
    pytest.param(_deposit_by_a_user, "not_authorized", "only the operator may deposit", False,
                 id="deposit_by_a_user"),
    pytest.param(_price(0), "bad_price", "got 0", False, id="price_0"),
    pytest.param(_price(-100), "bad_price", "got -100", False, id="price_minus_100"),
    pytest.param(_own_document, "own_document", "alice provides doc-1", False, id="own_document"),
    pytest.param(_insufficient_funds, "insufficient_funds", "balance 0, price 1000", False,
                 id="insufficient_funds"),
    pytest.param(_price_changed, "price_changed", "now 10.00, you agreed to 0.01", False, id="price_changed"),
    pytest.param(_someone_elses_sale, "not_your_sale", "between bob and alice", False,
                 id="someone_elses_sale"),
    pytest.param(_settle_twice, "sale_closed", "already settled", False, id="settle_twice"),
    pytest.param(_stale, "stale_command", "min apart", False, id="stale"),
]


@pytest.mark.parametrize(("build", "code", "message", "dead"), CASES)
def test_bad_command_is_refused_and_changes_nothing(bad_input_world: World, build: Any, code: str, message: str,
                                                    dead: bool) -> None:
    before = bad_input_world.snapshot()
    body, ident = build(bad_input_world)
    reply = bad_input_world.raw.send(body, ident)
    assert not reply.ok
    assert reply.error is not None
    assert reply.error["code"] == code, reply.error
    assert message in reply.error["message"]
    assert reply.id == ident
    assert bad_input_world.snapshot() == before

    if dead:
        props, dead_body = bad_input_world.raw.dead_letter(ident)
        assert dead_body == body
        assert message in props.headers["x-acb-reason"]
        assert props.headers["x-acb-replica"] == "r1"

    # The ledger goes on: the next good command is applied right after.
    good, good_id = bad_input_world.signed(c.Deposit(account="dave", amount=1), c.OPERATOR)
    after = bad_input_world.raw.send(good, good_id)
    assert after.ok, after.error
    assert after.seq == before[0] + 1
    assert bad_input_world.deployment.state.balance("dave") == before[2].get("dave", 0) + 1


def test_a_refused_command_retried_gets_the_same_answer(bad_input_world: World) -> None:
    body, ident = _insufficient_funds(bad_input_world)
    first = bad_input_world.raw.send(body, ident)
    bad_input_world.clients["alice"].send(c.Deposit(account="carol", amount=5000), sender=c.OPERATOR, key=bad_input_world.operator)
    second = bad_input_world.raw.send(body, ident)
    assert (first.ok, second.ok) == (False, False)
    assert first.error == second.error


def test_wrong_password_fails_on_the_client_and_changes_nothing(bad_input_world: World, tmp_path: Path) -> None:
    before = bad_input_world.snapshot()
    keystore = bad_input_world.deployment.state.users["bob"].keystore
    with pytest.raises(WrongPassword, match="wrong password for bob"):
        open_keystore(keystore, "not the password")
    elsewhere = Client(BrokerClient(bad_input_world.deployment.url, bad_input_world.deployment.names), tmp_path)
    try:
        with pytest.raises(WrongPassword):
            elsewhere.login("bob", "not the password")
        assert elsewhere.identity is None
        assert bad_input_world.snapshot() == before
        result = elsewhere.login("bob", "password of bob")
        assert result["login"] == "bob"
        assert elsewhere.identity is not None
        assert elsewhere.identity.sign_public == bad_input_world.clients["bob"].identity.sign_public
    finally:
        elsewhere.broker.close()
    assert bad_input_world.snapshot() == before
