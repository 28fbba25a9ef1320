"""A replica's processor, follower and read server over the in-memory broker (broker.stub): no RabbitMQ.

The parts run on their own threads as in a replica; the test talks to them as a client would, through
the stub's queues, and waits on the stub's condition for answers.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from broker import commands as c
from broker import queries as q
from broker.envelope import Envelope, seal
from broker.replies import Reply, parse_reply
from broker.stub import StubBroker
from broker.topology import Names
from broker.trust import Trust, digest, raw_public, sign_roster
from catalog import Catalog
from ledger.follower import Follower
from ledger.handlers import Context
from ledger.intake import HOLD_LOOK_MS
from ledger.keys import SystemKeys
from ledger.log import LogBatch
from ledger.model import state_hash
from ledger.primary import TICK, CommandProcessor
from ledger.reads import ReadServer
from ledger.store import Store
from tests.conftest import Member

WAIT = 10.0  # seconds: generous for a loaded machine; every wait returns as soon as its condition holds


@dataclass
class StubLedger:
    """One replica's three parts on a stub broker, and a client's view of it."""

    tmp: Path
    stub: StubBroker = field(default_factory=StubBroker)
    names: Names = field(default_factory=lambda: Names("t"))
    operator: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    ledger_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    stores: list[Store] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.trust = Trust(raw_public(self.operator), sign_roster(self.operator, 1, {"r1": raw_public(self.key).hex()},
                                                                  int(time.time() * 1000)))
        self.follower = self.new_follower("r1")
        self.commands = CommandProcessor(self.follower, self.stub, self.names, "r1", self.context, self.key,
                                         self.trust)
        catalog = Catalog()
        self.follower.listeners.append(catalog.on_rows)
        self.reads = ReadServer(self.follower, self.stub, self.names, "r1",
                                SystemKeys(raw_public(self.operator), self.ledger_key), catalog,
                                lambda: self.commands.is_primary, self.key, self.trust)
        self.client = self.stub.open("client")
        self.client.declare(self.names)

    def context(self) -> Context:
        return Context(operator_key=raw_public(self.operator), ledger_key=self.ledger_key,
                       now_ms=int(time.time() * 1000))

    def new_follower(self, replica_id: str) -> Follower:
        store = Store(f"sqlite:///{self.tmp / f'{replica_id}.db'}")
        self.stores.append(store)
        follower = Follower(store, self.stub, self.names, replica_id, self.trust, ledger_key=self.ledger_key)
        follower.recover()
        return follower

    def start(self, *parts: object) -> None:
        for part in parts or (self.follower, self.commands, self.reads):
            thread = threading.Thread(target=part.run, args=(self.stop,), daemon=True)  # type: ignore[attr-defined]
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(WAIT)
        for store in self.stores:
            store.close()

    # -- a client's side -----------------------------------------------------------------------
    def send(self, env: Envelope, mailbox: str = "client-1", body: bytes | None = None) -> None:
        command = env.kind == "command"
        self.client.publish(self.names.commands if command else self.names.reads, "command" if command else "query",
                            env.to_bytes() if body is None else body, reply_to=mailbox, correlation_id=env.id,
                            type=env.kind, persistent=command)

    def answer(self, mailbox: str = "client-1") -> Reply:
        """The one reply in ``mailbox``, checked as a client checks it: signed by r1 for what was asked."""
        assert self.stub.wait(lambda: bool(self.stub.waiting(mailbox)), WAIT), f"no answer in {mailbox}"
        [delivery] = self.stub.take(mailbox)
        reply = parse_reply(delivery.body)
        assert reply.signer == "r1" and reply.signature is not None
        Ed25519PublicKey.from_public_bytes(raw_public(self.key)).verify(bytes.fromhex(reply.signature),
                                                                         reply.signing_bytes())
        return reply

    def request(self, env: Envelope, mailbox: str = "client-1") -> Reply:
        self.send(env, mailbox)
        reply = self.answer(mailbox)
        assert reply.request == digest(env.to_bytes())
        return reply

    def operator_command(self, payload: c.Deposit) -> Envelope:
        return seal(payload, sender=c.OPERATOR, key=self.operator)

    def logged_command_ids(self) -> list[str | None]:
        return [e.command_id for d in self.stub.waiting(self.names.log)
                for e in LogBatch.model_validate_json(d.body).entries]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[StubLedger]:
    """A replica's processor, follower and read server running on a stub broker."""
    running = StubLedger(tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.close()


def register(ledger: StubLedger, login: str) -> Member:
    member = Member.create(login)
    reply = ledger.request(seal(member.registration(), sender=login, key=member.sign))
    assert reply.ok, reply.error
    return member


def test_a_command_is_logged_applied_answered_and_then_read(ledger: StubLedger) -> None:
    bob = register(ledger, "bob")
    deposit = ledger.operator_command(c.Deposit(account="bob", amount=250))
    reply = ledger.request(deposit)
    assert reply.ok and reply.seq is not None
    assert deposit.id in ledger.logged_command_ids()  # it went through the stub's log stream
    assert ledger.follower.state.seq >= reply.seq and ledger.follower.state.balance("bob") == 250
    # A read sent with the answer's seq sees the deposit, whichever moment it arrives.
    query = seal(q.Balance(account="bob"), sender="bob", key=bob.sign, kind="query", min_seq=reply.seq)
    read = ledger.request(query, "client-2")
    assert read.ok and read.result["available"] == 250 and read.seq is not None and read.seq >= reply.seq
    assert ledger.commands.is_primary and ledger.commands.commands_handled >= 2


def test_a_retried_command_is_answered_from_the_log_and_applied_once(ledger: StubLedger) -> None:
    register(ledger, "bob")
    deposit = ledger.operator_command(c.Deposit(account="bob", amount=40))
    first = ledger.request(deposit)
    again = ledger.request(deposit)  # the same bytes, as a client resends after a lost answer
    assert again.ok and again.seq == first.seq and again.result == first.result
    assert ledger.logged_command_ids().count(deposit.id) == 1
    assert ledger.follower.state.balance("bob") == 40


def test_what_no_ledger_could_apply_is_dead_lettered_with_its_reason_and_answered(ledger: StubLedger) -> None:
    env = ledger.operator_command(c.Deposit(account="bob", amount=1))
    ledger.send(env, body=b"\xff not an envelope")
    reply = ledger.answer()
    assert not reply.ok and reply.error is not None and reply.error["code"] == "malformed"
    [letter] = ledger.stub.waiting(ledger.names.dlq)
    assert letter.body == b"\xff not an envelope" and "not JSON" in letter.headers["x-acb-reason"]
    assert letter.headers["x-acb-replica"] == "r1" and letter.correlation_id == env.id


def test_a_refusal_is_answered_and_not_dead_lettered(ledger: StubLedger) -> None:
    reply = ledger.request(ledger.operator_command(c.Deposit(account="nobody", amount=1)))
    assert not reply.ok and reply.error is not None and reply.error["code"] == "unknown_user"
    assert ledger.stub.waiting(ledger.names.dlq) == []


def test_ticks_are_taken_and_never_answered(ledger: StubLedger) -> None:
    register(ledger, "bob")
    handled = ledger.commands.commands_handled
    ledger.client.publish(ledger.names.commands, "command", b"{}", type=TICK)
    assert ledger.stub.wait(lambda: not ledger.stub.waiting(ledger.names.commands), WAIT)
    reply = ledger.request(ledger.operator_command(c.Deposit(account="bob", amount=1)))  # after the tick
    assert reply.ok and ledger.commands.commands_handled == handled + 1
    assert ledger.stub.take("client-1") == []


def test_another_follower_on_the_same_log_reaches_the_same_state(ledger: StubLedger) -> None:
    register(ledger, "bob")
    reply = ledger.request(ledger.operator_command(c.Deposit(account="bob", amount=7)))
    assert reply.seq is not None
    backup = ledger.new_follower("r2")
    ledger.start(backup)
    assert ledger.stub.wait(lambda: backup.state.seq >= reply.seq, WAIT)  # type: ignore[operator]
    assert state_hash(backup.state) == state_hash(ledger.follower.state)


def test_an_overdue_hold_is_voided_promptly_with_no_tick_at_all(ledger: StubLedger) -> None:
    # Ticks can wait behind a backlog and expire in the queue: here none is ever sent, and commands keep coming.
    ledger.commands.context = lambda: dataclasses.replace(ledger.context(), hold_ttl_ms=300)
    alice, bob = register(ledger, "alice"), register(ledger, "bob")
    assert ledger.request(ledger.operator_command(c.Deposit(account="bob", amount=5000))).ok
    doc = c.PublishDocument(doc_id="d-1", title="Field notes", topic="physics", price=100, size=1, sha256="0" * 64,
                            merkle_root="0" * 64, segment_size=1 << 20, endpoint="127.0.0.1:9")
    assert ledger.request(seal(doc, sender="alice", key=alice.sign)).ok
    opened = ledger.request(seal(c.OpenSale(sale_id="s-1", doc_id="d-1", price=100), sender="bob", key=bob.sign))
    assert opened.ok and opened.result is not None
    deadline = int(opened.result["deadline_ms"])

    def voided_at() -> int | None:
        for d in ledger.stub.waiting(ledger.names.log):
            for entry in LogBatch.model_validate_json(d.body).entries:
                if any(e["type"] == "sale_voided" and e["sale_id"] == "s-1" for e in entry.events):
                    return entry.at_ms
        return None

    end = time.monotonic() + WAIT
    while (at := voided_at()) is None and time.monotonic() < end:
        assert ledger.request(ledger.operator_command(c.Deposit(account="alice", amount=1))).ok
    assert at is not None, "the overdue hold was never voided"
    assert deadline <= at <= deadline + HOLD_LOOK_MS + 500, f"voided {at - deadline} ms after its deadline"
    assert ledger.follower.state.balance("bob") == 5000
