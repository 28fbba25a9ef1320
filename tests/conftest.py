"""Fixtures shared by the test tiers.

Unit tests get :class:`Book`: a ledger with no broker and no database, where a
command is taken in by the primary's own rules (:func:`ledger.intake.decide_batch`)
and folded in with :func:`ledger.log.fold_entry`, as the primary and every follower do.

Integration tests get isolated real resources: broker objects under a prefix
of their own (deleted afterwards), a PostgreSQL database of their own (dropped
afterwards), and a running in-process ledger replica.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID
from pydantic import BaseModel

from broker import commands as c
from broker import content
from broker.codec import b64e
from broker.envelope import Envelope, seal
from broker.sealing import escrow_info, seal_to, x25519_public_raw
from broker.trust import Roster, raw_public, sign_roster
from ledger import events as ev
from ledger.handlers import Context, Decision, decide
from ledger.intake import Incoming, Plan, Refusals, Writer, decide_batch
from ledger.log import ACCEPTED, LogEntry, Outcome, fold_entry
from ledger.model import State
from ledger.store import Row

AMQP_URL = os.environ.get("ACB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_URL = os.environ.get("ACB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

T0 = 1_800_000_000_000  # a fixed "now" for pure tests: no test reads the clock
SEGMENT = 1024  # the smallest segment size a document may declare
_RAW_PUBLIC = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
_DEFAULT: Any = object()


# -- pure ledger ---------------------------------------------------------------------------------

def self_signed_cert(key: Ed25519PrivateKey, login: str) -> str:
    """A PEM certificate over ``key``, as registration requires."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, login)])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Member:
    """A user's keys, held by the test."""

    login: str
    sign: Ed25519PrivateKey
    box: X25519PrivateKey
    cert_pem: str

    @classmethod
    def create(cls, login: str) -> Member:
        sign = Ed25519PrivateKey.generate()
        return cls(login, sign, X25519PrivateKey.generate(), self_signed_cert(sign, login))

    @property
    def sign_public(self) -> str:
        return self.sign.public_key().public_bytes(*_RAW_PUBLIC).hex()

    @property
    def box_public(self) -> str:
        return x25519_public_raw(self.box).hex()

    def registration(self, login: str | None = None) -> c.RegisterUser:
        return c.RegisterUser(login=login or self.login, sign_key=self.sign_public, box_key=self.box_public,
                              cert_pem=self.cert_pem, keystore="a2V5c3RvcmU=")


def document_bytes(doc_id: str, size: int) -> bytes:
    """Deterministic content for a document id."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{doc_id}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


@dataclass
class Book:
    """A ledger in memory: commands are decided and folded in through the log's rules."""

    hold_ttl_ms: int = 60_000
    writer: str = "r1"
    now_ms: int = T0
    state: State = field(default_factory=State)
    rows: list[Row] = field(default_factory=list)
    log: list[LogEntry] = field(default_factory=list)  # every entry folded, accepted or not
    members: dict[str, Member] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)  # doc id -> plaintext
    sale_keys: dict[str, bytes] = field(default_factory=dict)  # sale id -> K escrowed for it
    operator: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    ledger_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    replica_keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)  # the certified replicas' keys
    roster: Roster | None = None  # the newest roster the operator signed

    def __post_init__(self) -> None:
        self.certify(self.writer)
        outcome = self.announce(1)
        assert outcome.verdict == ACCEPTED, outcome.reason

    def certify(self, *replicas: str, remove: tuple[str, ...] = ()) -> Roster:
        """A new operator-signed roster with these replicas added (keys made as needed) and ``remove`` removed."""
        for rid in replicas:
            self.replica_keys.setdefault(rid, Ed25519PrivateKey.generate())
        current = dict(self.roster.replicas) if self.roster is not None else {}
        current.update({rid: raw_public(self.replica_keys[rid]).hex() for rid in replicas})
        for rid in remove:
            current.pop(rid, None)
        self.roster = sign_roster(self.operator, (self.roster.serial if self.roster else 0) + 1, current, self.now_ms)
        return self.roster

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def ledger_public(self) -> bytes:
        return x25519_public_raw(self.ledger_key)

    def context(self) -> Context:
        return Context(operator_key=self.operator.public_key().public_bytes(*_RAW_PUBLIC),
                       ledger_key=self.ledger_key, now_ms=self.now_ms, hold_ttl_ms=self.hold_ttl_ms)

    def envelope(self, payload: BaseModel, sender: str, *, key: Any = _DEFAULT, id: str | None = None,
                 issued_at: int | None = None) -> Envelope:
        """Sign ``payload`` as ``sender`` (with the sender's own key unless ``key`` is given)."""
        if key is _DEFAULT:
            key = self.operator if sender == c.OPERATOR else self.members[sender].sign
        return seal(payload, sender=sender, key=key, id=id,
                    issued_at=self.now_ms if issued_at is None else issued_at)

    def decide(self, payload: BaseModel, sender: str, **kw: Any) -> Decision:
        """Decide without applying (raises the refusal)."""
        return decide(self.state, self.envelope(payload, sender, **kw), self.context())

    @property
    def operator_public(self) -> bytes:
        return self.operator.public_key().public_bytes(*_RAW_PUBLIC)

    def entry(self, events: list[Any], *, command_id: str | None = None, reply: dict[str, Any] | None = None,
              epoch: int | None = None, writer: str | None = None, expected_seq: int | None = None,
              prev_hash: str | None = None, command: Envelope | None = None,
              sign_with: Ed25519PrivateKey | None | Any = _DEFAULT) -> LogEntry:
        """An entry as a primary writes it: signed by the writer's key unless ``sign_with`` says otherwise
        (None: unsigned)."""
        writer = writer or self.writer
        entry = LogEntry(
            entry_id=uuid.uuid4().hex, epoch=self.state.epoch if epoch is None else epoch,
            writer=writer,
            expected_seq=self.state.seq + 1 if expected_seq is None else expected_seq,
            prev_hash=self.state.head_hash if prev_hash is None else prev_hash, at_ms=self.now_ms,
            command_id=command_id, reply=reply, events=[e.model_dump(mode="json") for e in events],
            command=command.wire() if command is not None else None,
        )
        key = self.replica_keys.get(writer) if sign_with is _DEFAULT else sign_with
        return entry.signed_by(key) if key is not None else entry

    def fold(self, entry: LogEntry) -> Outcome:
        self.log.append(entry)
        outcome, self.state, rows = fold_entry(self.state, entry, self.operator_public, self.ledger_key)
        self.rows.extend(rows)
        return outcome

    def announce(self, epoch: int, writer: str | None = None) -> Outcome:
        writer = writer or self.writer
        roster = self.roster.to_wire() if self.roster is not None and (
            self.state.roster is None or self.roster.serial > self.state.roster.serial) else None
        return self.fold(self.entry([ev.EpochStarted(epoch=epoch, replica=writer, roster=roster)], epoch=epoch,
                                    writer=writer))

    def submit_envelope(self, env: Envelope) -> Decision:
        """Take ``env`` in as the primary does (:func:`ledger.intake.decide_batch`) and apply what it decides.

        Raises the refusal; a command applied already gives an empty decision with the logged answer.
        """
        [verdict] = self._intake(Incoming(env.to_bytes(), env.id)).verdicts
        if verdict.error is not None:
            raise verdict.error
        assert verdict.reply is not None
        return verdict.decision or Decision(events=[], result=verdict.reply.result)

    def _intake(self, message: Incoming) -> Plan:
        writer = Writer(self.writer, self.state.epoch, self.replica_keys.get(self.writer), self.operator_public,
                        self.ledger_key)
        plan = decide_batch(self.state, [message], self.context(), writer, Refusals())
        for entry in plan.entries:
            outcome, _state, rows = plan.folds[entry.entry_id][1]
            assert outcome.verdict == ACCEPTED, outcome.reason
            self.log.append(entry)
            self.rows.extend(rows)
        self.state = plan.state
        return plan

    def submit(self, payload: BaseModel, sender: str, **kw: Any) -> Decision:
        """Decide and apply, as the primary does; raises the refusal."""
        return self.submit_envelope(self.envelope(payload, sender, **kw))

    def tick(self) -> list[Any]:
        """Expire overdue holds on the book's clock, as a tick in the primary's intake does."""
        [verdict] = self._intake(Incoming(b"{}", tick=True)).verdicts
        return list(verdict.events)

    # -- the domain, one call per step ---------------------------------------------------------
    def register(self, login: str) -> Member:
        member = Member.create(login)
        self.members[login] = member
        self.submit(member.registration(), login)
        return member

    def deposit(self, login: str, amount: int) -> Decision:
        return self.submit(c.Deposit(account=login, amount=amount), c.OPERATOR)

    def publish_command(self, doc_id: str, *, price: int, size: int = 2500, title: str | None = None,
                        topic: str = "science", description: str = "") -> c.PublishDocument:
        data = self.contents.setdefault(doc_id, document_bytes(doc_id, size))
        leaves = [content.leaf_hash(data[i:i + SEGMENT]) for i in range(0, len(data), SEGMENT)]
        return c.PublishDocument(
            doc_id=doc_id, title=title or f"Document {doc_id}", topic=topic, description=description, price=price,
            size=len(data), sha256=hashlib.sha256(data).hexdigest(), merkle_root=content.merkle_root(leaves).hex(),
            segment_size=SEGMENT, endpoint="127.0.0.1:9000",
        )

    def publish(self, provider: str, doc_id: str, *, price: int, **kw: Any) -> Decision:
        return self.submit(self.publish_command(doc_id, price=price, **kw), provider)

    def open_sale(self, consumer: str, sale_id: str, doc_id: str, price: int | None = None) -> Decision:
        doc = self.state.documents[doc_id]
        return self.submit(c.OpenSale(sale_id=sale_id, doc_id=doc_id, price=doc.price if price is None else price),
                           consumer)

    def escrow_command(self, sale_id: str, key: bytes, *, sealed_for: str | None = None,
                       commitment: str | None = None) -> c.EscrowKey:
        """An escrow of ``key``; ``sealed_for`` seals it for another sale id, ``commitment`` overrides."""
        sealed = seal_to(self.ledger_public, key, escrow_info(sealed_for or sale_id))
        sale = self.state.sales.get(sale_id)
        doc = self.state.documents.get(sale.doc_id) if sale is not None else None
        return c.EscrowKey(sale_id=sale_id, sealed_key=b64e(sealed),
                           key_commitment=commitment or content.key_commitment(sale_id, key),
                           doc_id=doc.doc_id if doc else "no-such-doc", merkle_root=doc.merkle_root if doc else "0" * 64)

    def escrow(self, sale_id: str, key: bytes | None = None) -> bytes:
        key = key or os.urandom(32)
        provider = self.state.sales[sale_id].provider
        self.submit(self.escrow_command(sale_id, key), provider)
        self.sale_keys[sale_id] = key
        return key

    def settle(self, consumer: str, sale_id: str) -> Decision:
        return self.submit(c.SettleSale(sale_id=sale_id), consumer)

    def evidence(self, sale_id: str, index: int, *, cheat: bool) -> c.FileDispute:
        """Signed dispute evidence for one segment; with ``cheat`` the provider sent other content."""
        sale = self.state.sales[sale_id]
        doc = self.state.documents[sale.doc_id]
        data = self.contents[sale.doc_id]
        key = self.sale_keys[sale_id]
        segments = [data[i:i + SEGMENT] for i in range(0, len(data), SEGMENT)]
        plaintext = segments[index]
        if cheat:
            plaintext = bytes(b ^ 0xFF for b in plaintext)
        ct = content.encrypt_segment(key, sale_id, index, plaintext)
        tree = content.MerkleTree([content.leaf_hash(s) for s in segments])
        provider = self.members[sale.provider].sign
        header = content.sign_header(provider, content.ManifestHeader(
            sale_id=sale_id, doc_id=doc.doc_id, provider=sale.provider, consumer=sale.consumer,
            key_commitment=content.key_commitment(sale_id, key), size=doc.size, segment_size=doc.segment_size,
            segment_count=len(segments), merkle_root=doc.merkle_root))
        entry = content.sign_entry(provider, content.ManifestEntry(
            sale_id=sale_id, index=index, ct_hash=content.ciphertext_hash(ct), ct_size=len(ct),
            proof=tuple(tree.proof(index))))
        return c.FileDispute(sale_id=sale_id, index=index, header=header.to_wire(), entry=entry.to_wire(),
                             ciphertext=b64e(ct))


@pytest.fixture
def book() -> Book:
    """A fresh in-memory ledger at epoch 1, fee 100 bps."""
    return Book()


@pytest.fixture
def stocked_book(book: Book) -> Book:
    """alice publishes doc-1 at 1000; bob holds 5000; carol holds 300."""
    for login in ("alice", "bob", "carol"):
        book.register(login)
    book.deposit("bob", 5000)
    book.deposit("carol", 300)
    book.publish("alice", "doc-1", price=1000, title="Quantum field notes", topic="physics")
    return book


# -- real resources ------------------------------------------------------------------------------

def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def delete_topology(names: Any) -> None:
    from broker.client import connect
    from broker.topology import delete

    conn = connect(AMQP_URL, name="acb-test-cleanup")
    try:
        delete(conn.channel(), names)
    finally:
        conn.close()


@pytest.fixture
def names() -> Iterator[Any]:
    """Broker names under a prefix of this test's own, deleted afterwards."""
    from broker.client import BrokerClient
    from broker.topology import Names

    n = Names(unique_prefix())
    yield n
    # Declare first so delete finds every object even if the test never touched the broker.
    with BrokerClient(AMQP_URL, n, declare_topology=True) as bc:
        bc._ensure()
    delete_topology(n)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test session's own, dropped afterwards."""
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"acb_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        # The README's test line starts PostgreSQL: its absence is a failure, not a reason to skip.
        pytest.fail(f"PostgreSQL is not reachable at {sa.engine.make_url(PG_URL).render_as_string()}: {exc}")
    try:
        yield sa.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Deployment:
    """One running ledger replica in a throwaway vhost with ACB's roles, and the clients made against it.

    The replica runs on the replica account and clients on the peer account, as in production;
    ``admin_url`` (all rights on the vhost) is for the harness and for attackers in attack tests.
    """

    home: Path
    roles: Any  # tests.support.broker_roles.RoleVhost
    store_url: str
    replica: Any
    clients: list[Any] = field(default_factory=list)

    @property
    def names(self) -> Any:
        return self.roles.names

    @property
    def url(self) -> str:
        """The peer role's URL: what every client of this deployment uses."""
        return str(self.roles.peer_url)

    @property
    def admin_url(self) -> str:
        return str(self.roles.admin_url)

    @property
    def state(self) -> State:
        return self.replica.follower.state

    def head_seq(self) -> int:
        return self.replica.store.head()[0]

    def operator_key(self) -> Ed25519PrivateKey:
        from ledger.keys import load_operator_key

        return load_operator_key(self.home)

    def trust(self) -> Any:
        """What a peer of this deployment trusts: its operator's key and the roster kept beside it."""
        from broker.trust import Trust

        return Trust.load(self.home)

    def client(self) -> Any:
        """A peer client with its own broker connection (closed with the deployment)."""
        from broker.client import BrokerClient
        from peer.client import Client

        cl = Client(BrokerClient(self.url, self.names, trust=self.trust()), self.home)
        self.clients.append(cl)
        return cl

    def broker(self) -> Any:
        from broker.client import BrokerClient

        bc = BrokerClient(self.url, self.names, trust=self.trust())
        self.clients.append(bc)
        return bc

    def start(self) -> None:
        from ledger.keys import load_system
        from ledger.replica import Replica, ReplicaConfig

        config = ReplicaConfig("r1", self.roles.replica_url, self.store_url, self.names, status_interval=1.0)
        self.replica = Replica(config, load_system(self.home))
        self.replica.start()

    def restart(self) -> None:
        self.replica.stop()
        self.start()

    def close(self) -> None:
        for cl in self.clients:
            (cl.broker if hasattr(cl, "broker") else cl).close()
        if self.replica is not None:
            self.replica.stop()


@contextmanager
def running_deployment(home: Path) -> Iterator[Deployment]:
    """A ledger replica (SQLite store) in a vhost of its own with ACB's broker roles, its system keys in ``home``."""
    from ledger.keys import init_system
    from tests.support.broker_roles import role_vhost

    init_system(home)
    # Peers made by the tests trust this deployment's operator (broker.trust.Trust.from_env reads ACB_HOME).
    with role_vhost(prefix=unique_prefix()) as roles, pytest.MonkeyPatch.context() as mp:
        dep = Deployment(home, roles, f"sqlite:///{home / 'r1.db'}", None)
        mp.setenv("ACB_HOME", str(home))
        try:
            dep.start()
            yield dep
        finally:
            dep.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A ledger replica of this module's own (see :func:`running_deployment`)."""
    with running_deployment(tmp_path_factory.mktemp("acb-home")) as dep:
        yield dep
