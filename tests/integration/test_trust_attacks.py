"""Attacks on the ledger by someone who holds full broker rights: only signatures stand in the way.

The attacker uses the broker's administrator account (tests/support/attacker.py), so RabbitMQ lets
every forgery through: log entries, snapshots, replies racing the real ones, a foreign consumer on
the commands queue, status messages. After each attack:

- the forged data is ignored (and, for log entries, counted by the follower);
- the ledger is unchanged: sequence, head hash, whole-state hash, balances;
- the audit of the replica's store is clean;
- the replica is not halted, and an honest user's next command is answered promptly.

(The same attacks with the peer role's credentials, where the broker itself refuses, live elsewhere.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import commands as c
from broker.codec import canonical
from broker.envelope import new_id, seal
from broker.errors import BrokerError, ReplyTimeout
from ledger import events as ev
from peer.client import Client
from tests.conftest import Deployment, Member
from tests.support.attacker import (
    Attacker,
    CommandRacer,
    Forger,
    Picture,
    QueueThief,
    ReadRacer,
    certified_key,
    forged_roster,
    fresh_deployment,
    ignored_total,
    picture,
    signed_dict,
    wait_folded,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

PROMPT = 2.0  # seconds within which the honest user's next command must be answered after an attack
LOOT = 10**8  # what the attacker tries to credit itself: 1,000,000.00


# -- the market under attack --------------------------------------------------------------------------

@dataclass
class World:
    dep: Deployment
    attacker: Attacker
    clients: dict[str, Client]
    operator: Ed25519PrivateKey
    honest_runs: int = 0


def _publish(client: Client, doc_id: str, price: int) -> None:
    client.send(c.PublishDocument(doc_id=doc_id, title=f"Document {doc_id}", topic="physics", price=price, size=2048,
                                  sha256="ab" * 32, merkle_root="cd" * 32, segment_size=1024,
                                  endpoint="127.0.0.1:9000"))


def build_world(dep: Deployment) -> World:
    """alice sells notes (10.00), cheap (0.01) and dear (4,000.00); bob and dora have money; mallory is the
    attacker's own ordinary account, selling m-doc (25.00). bob has an open sale of notes and one of cheap."""
    clients = {login: dep.client() for login in ("alice", "bob", "dora", "mallory")}
    for login, client in clients.items():
        client.register(login, f"password of {login}")
    operator = dep.operator_key()
    for login, amount in (("bob", 5000), ("dora", 3000), ("mallory", 10)):
        clients["alice"].send(c.Deposit(account=login, amount=amount), sender=c.OPERATOR, key=operator)
    for doc_id, price in (("notes", 1000), ("cheap", 1), ("dear", 400_000)):
        _publish(clients["alice"], doc_id, price)
    _publish(clients["mallory"], "m-doc", 2500)
    clients["bob"].send(c.OpenSale(sale_id="s-open", doc_id="notes", price=1000))
    clients["bob"].send(c.OpenSale(sale_id="s-cheap", doc_id="cheap", price=1))
    return World(dep, Attacker(dep.names, dep.admin_url), clients, operator)


@pytest.fixture(scope="module")
def attack_world(deployment: Deployment) -> Iterator[World]:
    w = build_world(deployment)
    try:
        yield w
    finally:
        w.attacker.close()


def _field(obj: Any, name: str) -> Any:
    """A field of an answer, whether the client returns a dict or a typed model."""
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


# -- what every attack must leave behind ----------------------------------------------------------------

def baseline(w: World) -> tuple[Any, Picture, int]:
    """An honest command first (so the real replica is primary at the current epoch), then the state to keep."""
    honest_command(w)
    return w.dep.state, picture(w.dep), ignored_total(w.dep)


def honest_command(w: World) -> float:
    """alice changes a price; it must be answered within PROMPT seconds. The time it took."""
    w.honest_runs += 1
    started = time.monotonic()
    w.clients["alice"].send(c.ChangePrice(doc_id="notes", price=1000 + w.honest_runs % 2), timeout=PROMPT + 3)
    took = time.monotonic() - started
    assert took <= PROMPT, f"the honest user's command took {took:.2f} s"
    return took


def audit_store(dep: Deployment) -> Any:
    from ledger.audit import audit
    from ledger.store import Store

    store = Store(dep.store_url, create=False)
    try:
        return audit(store, operator_key=dep.replica.keys.operator_public)
    finally:
        store.close()


def assert_unharmed(w: World, before: Picture, ignored_before: int, offsets: list[int]) -> None:
    """The attack's entries were read, ignored and counted; nothing changed; the replica goes on."""
    dep = w.dep
    for offset in offsets:
        wait_folded(dep, offset)
    halted = dep.replica.follower.halted
    assert halted is None, f"the forged entries halted the replica: {halted}"
    after = picture(dep)
    assert after == before, f"the forged entries changed the ledger:\n before {before}\n after  {after}"
    assert ignored_total(dep) > ignored_before, "the replica did not count the forged entries it ignored"
    report = audit_store(dep)
    assert report.ok, report.violations
    assert report.signed_entries > 0, "the audit checked no signature"
    honest_command(w)


def announce(epoch: int, replica: str, roster: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = ev.EpochStarted(epoch=epoch, replica=replica).model_dump(mode="json")
    if roster is not None:
        payload["roster"] = roster
    return payload


def credit(account: str = "mallory", amount: int = LOOT) -> dict[str, Any]:
    return ev.Deposited(account=account, amount=amount).model_dump(mode="json")


def wire(env: Any) -> dict[str, Any]:
    return json.loads(env.to_bytes())


# -- forged log entries ---------------------------------------------------------------------------------

def test_a_forged_new_epoch_is_ignored(attack_world: World) -> None:
    w = attack_world
    st, before, ignored = baseline(w)
    a = w.attacker
    epoch = st.epoch + 1
    offsets = []
    # As today's replicas write: mallory announces itself primary, then credits itself.
    f = Forger(st.seq, st.head_hash)
    offsets.append(a.publish_log([
        f.next([announce(epoch, "mallory")], epoch=epoch, writer="mallory"),
        f.next([credit()], epoch=epoch, writer="mallory", command_id=new_id(), reply={"balance": LOOT}),
    ]))
    # Signed with the attacker's key, bringing a roster that certifies it (signed by the attacker, not the operator).
    f = Forger(st.seq, st.head_hash)
    roster = forged_roster(a.key, {"mallory": a.public_hex})
    offsets.append(a.publish_log([
        f.next([announce(epoch, "mallory", roster)], epoch=epoch, writer="mallory", key=a.key),
        f.next([credit()], epoch=epoch, writer="mallory", command_id=new_id(), reply={"balance": LOOT}, key=a.key),
    ]))
    # Signed with the attacker's key in the name of the real primary.
    f = Forger(st.seq, st.head_hash)
    offsets.append(a.publish_log([
        f.next([announce(epoch, st.primary)], epoch=epoch, writer=st.primary, key=a.key),
        f.next([credit()], epoch=epoch, writer=st.primary, command_id=new_id(), reply={"balance": LOOT}, key=a.key),
    ]))
    assert_unharmed(w, before, ignored, offsets)


def test_an_entry_written_as_the_current_primary_is_ignored(attack_world: World) -> None:
    w = attack_world
    st, before, ignored = baseline(w)
    a = w.attacker
    offsets = []
    for key in (None, a.key):  # unsigned, as today's entries; and signed, but not by the primary's key
        f = Forger(st.seq, st.head_hash)
        offsets.append(a.publish_log([f.next([credit()], epoch=st.epoch, writer=st.primary, command_id=new_id(),
                                             reply={"account": "mallory", "balance": LOOT}, key=key)]))
    assert_unharmed(w, before, ignored, offsets)


def test_an_entry_far_ahead_neither_halts_nor_changes_anything(tmp_path: Path) -> None:
    # A replica of its own: on today's code this attack halts it, and it halts again on every restart.
    with fresh_deployment(tmp_path) as dep:
        w = build_world(dep)
        try:
            st, before, ignored = baseline(w)
            a = w.attacker
            offsets = []
            for key in (None, a.key):
                f = Forger(st.seq + 1000, "f" * 64)
                offsets.append(a.publish_log([f.next([credit()], epoch=st.epoch, writer=st.primary,
                                                     command_id=new_id(), reply={"balance": LOOT}, key=key)]))
            assert_unharmed(w, before, ignored, offsets)
            dep.restart()
            assert dep.replica.follower.halted is None, f"halted after a restart: {dep.replica.follower.halted}"
            honest_command(w)
        finally:
            w.attacker.close()


def test_re_registering_a_user_with_the_attackers_keys_gives_no_access_to_its_money(attack_world: World) -> None:
    w = attack_world
    st, before, ignored = baseline(w)
    a = w.attacker
    thief = Member.create("dora")  # the attacker's keys, under dora's name
    registration = thief.registration()
    command = seal(registration, sender="dora", key=thief.sign)  # self-signed, as every registration is
    event = ev.UserRegistered(login="dora", sign_key=registration.sign_key, box_key=registration.box_key,
                              cert_pem=registration.cert_pem, keystore=registration.keystore).model_dump(mode="json")
    variants: list[tuple[Ed25519PrivateKey | None, dict[str, Any] | None]] = [
        (None, None),
        (a.key, wire(command)),
        (certified_key(w.dep), wire(command)),  # even the primary's own key may not replace a user's keys
    ]
    offsets = []
    for key, carried in variants:
        f = Forger(st.seq, st.head_hash)
        offsets.append(a.publish_log([f.next([event], epoch=st.epoch, writer=st.primary, command_id=command.id,
                                             reply={"login": "dora"}, command=carried, key=key)]))
    for offset in offsets:
        wait_folded(w.dep, offset)
    # Now spend dora's money with the attacker's key: buy mallory's document with it.
    spend = seal(c.OpenSale(sale_id=f"s-{uuid.uuid4().hex[:12]}", doc_id="m-doc", price=2500), sender="dora",
                 key=thief.sign)
    reply = w.dep.broker().request(spend, timeout=10)
    assert not reply.ok, f"the attacker spent dora's money with its own key: {reply}"
    dora = w.clients["dora"].identity
    assert dora is not None
    assert w.dep.state.users["dora"].sign_key == dora.sign_public.hex()
    assert_unharmed(w, before, ignored, offsets)


def test_a_deposit_without_the_operators_signature_is_ignored(attack_world: World) -> None:
    w = attack_world
    st, before, ignored = baseline(w)
    a = w.attacker
    by_attacker = seal(c.Deposit(account="mallory", amount=LOOT), sender=c.OPERATOR, key=a.key)
    unsigned = seal(c.Deposit(account="mallory", amount=LOOT), sender=c.OPERATOR, key=None)
    primary_key = certified_key(w.dep)
    variants: list[tuple[Ed25519PrivateKey | None, Any, bool]] = [
        (None, by_attacker, False),
        (a.key, by_attacker, True),
        # Signed by the real primary, carrying a command the operator never signed.
        (primary_key, by_attacker, True),
        (primary_key, unsigned, True),
    ]
    offsets = []
    for key, command, carried in variants:
        f = Forger(st.seq, st.head_hash)
        offsets.append(a.publish_log([f.next([credit()], epoch=st.epoch, writer=st.primary, command_id=command.id,
                                             reply={"account": "mallory", "balance": LOOT},
                                             command=wire(command) if carried else None, key=key)]))
    assert_unharmed(w, before, ignored, offsets)


def test_an_event_with_no_command_behind_it_is_ignored(attack_world: World) -> None:
    w = attack_world
    st, before, ignored = baseline(w)
    a = w.attacker
    # The primary writes events of its own, but never a deposit.
    keys: list[Ed25519PrivateKey | None] = [None, a.key, certified_key(w.dep)]
    offsets = []
    for key in keys:
        f = Forger(st.seq, st.head_hash)
        offsets.append(a.publish_log([f.next([credit()], epoch=st.epoch, writer=st.primary, key=key)]))
    assert_unharmed(w, before, ignored, offsets)


def test_a_hold_expired_before_its_deadline_is_ignored(attack_world: World) -> None:
    w = attack_world
    st, before, ignored = baseline(w)
    assert st.sales["s-open"].status == "open"
    a = w.attacker
    void = ev.SaleVoided(sale_id="s-open", reason="expired").model_dump(mode="json")
    # The primary's own kind of event, but 15 minutes early.
    keys: list[Ed25519PrivateKey | None] = [None, certified_key(w.dep)]
    offsets = []
    for key in keys:
        f = Forger(st.seq, st.head_hash)
        offsets.append(a.publish_log([f.next([void], epoch=st.epoch, writer=st.primary, key=key)]))
    assert_unharmed(w, before, ignored, offsets)


# -- genuine entries misused ----------------------------------------------------------------------------

def test_old_genuine_entries_published_again_are_duplicates_not_a_halt(tmp_path: Path) -> None:
    with fresh_deployment(tmp_path) as dep:
        w = build_world(dep)
        try:
            # An entry the primary writes on its own: a hold that expires (here after 0.3 s).
            config = dep.replica.config
            dep.replica.config = replace(config, hold_ttl_ms=300)
            try:
                w.clients["bob"].send(c.OpenSale(sale_id="s-expiring", doc_id="notes", price=1000))
            finally:
                dep.replica.config = config
            wait_for(lambda: dep.state.sales["s-expiring"].status == "voided", 10, "the hold to expire")
            st, before, ignored = baseline(w)
            a = w.attacker
            batches = a.log_batches()
            assert any(e["command_id"] is None and e["events"][0]["type"] == "sale_voided"
                       for _offset, batch in batches for e in batch["entries"]), "no expiry in the log to replay"
            mark = uuid.uuid4().hex
            for i, (_offset, batch) in enumerate(batches):
                a.publish_raw_log(canonical(batch), mark if i == len(batches) - 1 else None)
            assert_unharmed(w, before, ignored, [a.offset_of(mark)])
            assert dep.state.seq == st.seq + 1  # the honest command, once
        finally:
            w.attacker.close()


def _acb(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ACB_HOME": str(dep.home), **dep.roles.env()}
    return subprocess.run([str(Path(sys.executable).parent / "acb"), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_entries_signed_by_a_removed_replica_are_ignored(attack_world: World) -> None:
    w = attack_world
    added = _acb(w.dep, "operator", "replica", "add", "r2")
    assert added.returncode == 0, f"acb operator replica add r2: {added.stderr.strip()}"
    wait_for(lambda: "r2" in getattr(getattr(w.dep.state, "roster", None), "replicas", {}), 10,
               "the roster with r2 in the log")
    removed = _acb(w.dep, "operator", "replica", "remove", "r2")
    assert removed.returncode == 0, f"acb operator replica remove r2: {removed.stderr.strip()}"
    wait_for(lambda: "r2" not in getattr(w.dep.state.roster, "replicas", {"r2": ""}), 10,
               "the roster without r2 in the log")
    stolen = certified_key(w.dep, "r2")  # r2's machine is gone, and its key with it
    st, before, ignored = baseline(w)
    a = w.attacker
    epoch = st.epoch + 1
    f = Forger(st.seq, st.head_hash)
    offset = a.publish_log([
        f.next([announce(epoch, "r2")], epoch=epoch, writer="r2", key=stolen),
        f.next([credit()], epoch=epoch, writer="r2", key=stolen),
    ])
    assert_unharmed(w, before, ignored, [offset])


# -- a forged snapshot ----------------------------------------------------------------------------------

def _joining_follower(dep: Deployment, store_url: str) -> Any:
    from ledger.follower import Follower
    from ledger.store import Store

    return Follower(Store(store_url), dep.roles.replica_url, dep.names, "r2", dep.trust())


def test_a_joining_replica_rejects_a_forged_snapshot(attack_world: World, tmp_path: Path) -> None:
    from ledger.model import state_from_dict, state_hash, state_to_dict

    w = attack_world
    st, before, _ignored = baseline(w)
    a = w.attacker
    forged = state_to_dict(st)
    forged["balances"]["mallory"] = forged["balances"].get("mallory", 0) + LOOT
    forged["deposited"] += LOOT  # money "conserved": the invented balance passes the invariants too
    digest = state_hash(state_from_dict(forged))
    head = {"seq": st.seq, "state_hash": digest, "stream_offset": w.dep.replica.follower.next_offset}
    a.publish_snapshot({**head, "state": forged})  # unsigned, as snapshots were before they were signed
    a.publish_snapshot({"head": head, "state": forged})  # the signed shape, without a signature
    # In the primary's name, with the attacker's key; and with a roster of the attacker's certifying that key.
    a.publish_snapshot({"head": signed_dict(a.key, st.primary, head, "snapshot"), "state": forged})
    rostered = {**forged, "roster": forged_roster(a.key, {st.primary: a.public_hex})}
    head = {**head, "state_hash": state_hash(state_from_dict(rostered))}
    a.publish_snapshot({"head": signed_dict(a.key, st.primary, head, "snapshot"), "state": rostered})
    joiner = _joining_follower(w.dep, f"sqlite:///{tmp_path / 'r2.db'}")
    stop = threading.Event()
    runner = threading.Thread(target=joiner.run, args=(stop,), daemon=True)
    try:
        joiner.recover()
        joiner.join_from_snapshot()
        assert joiner.state.balance("mallory") < LOOT, \
            f"the joining replica took the forged snapshot: mallory has {joiner.state.balance('mallory')}"
        runner.start()
        wait_for(lambda: joiner.state.seq >= w.dep.state.seq or joiner.halted, 20, "the joining replica to catch up")
        assert joiner.halted is None, joiner.halted
        assert state_hash(joiner.state) == state_hash(w.dep.state)
    finally:
        stop.set()
        if runner.is_alive():
            runner.join(10)
        joiner.store.close()
    assert picture(w.dep) == before
    honest_command(w)


# -- forged replies racing the real ones ----------------------------------------------------------------

VARIANTS = {"unsigned": False, "signed by the attacker": True}


def _forged_count(client: Client) -> int:
    return int(getattr(client.broker, "forged_replies", 0))


def _ask(what: str, call: Any) -> Any:
    try:
        return call()
    except BrokerError as exc:
        pytest.fail(f"{what}: the client gave up on a forged reply instead of waiting for the real one: {exc!r}")


@pytest.mark.parametrize("signed", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_forged_reply_to_a_command_loses_to_the_real_one(attack_world: World, signed: bool) -> None:
    w = attack_world
    operator = w.dep.client()
    balance = w.dep.state.balance("bob")
    with CommandRacer(w.dep.names, w.dep.admin_url, lambda _req: {"account": "bob", "balance": 10**9},
                      key=w.attacker.key if signed else None) as racer:
        reply = _ask("deposit", lambda: operator.send(c.Deposit(account="bob", amount=100), sender=c.OPERATOR,
                                                      key=w.operator, timeout=10))
        answered_at = time.monotonic()
    assert racer.forged >= 1, "the attacker never saw the command"
    assert reply.result == {"account": "bob", "balance": balance + 100}, f"the client believed {reply}"
    assert reply.seq == w.dep.state.seq
    # The forgery is sent within a millisecond, the real answer only after a round through the log; should the
    # real one still come first, the client never saw the forgery and had nothing to count.
    if racer.first_forged_at is not None and racer.first_forged_at < answered_at - 0.002:
        assert _forged_count(operator) >= 1, "the client did not count the forged reply it dropped"
    honest_command(w)


@pytest.mark.parametrize("signed", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_forged_answer_to_a_balance_query_loses_to_the_real_one(attack_world: World, signed: bool) -> None:
    w = attack_world
    bob = w.clients["bob"]
    forged_before = _forged_count(bob)
    with ReadRacer(w.dep.names, w.dep.admin_url, lambda _req: {"account": "bob", "available": 10**9, "held": 0, "seq": 0},
                   key=w.attacker.key if signed else None) as racer:
        answer = _ask("balance", bob.balance)
    assert racer.forged >= 1, "the attacker never saw the query"
    assert _field(answer, "available") == w.dep.state.balance("bob"), f"the client believed {answer}"
    assert _field(answer, "held") == w.dep.state.holds("bob")
    assert _forged_count(bob) > forged_before, "the client did not count the forged answer it dropped"
    honest_command(w)


@pytest.mark.parametrize("signed", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_forged_answer_to_the_providers_sale_check_loses_to_the_real_one(attack_world: World, signed: bool) -> None:
    import dataclasses

    w = attack_world
    alice = w.clients["alice"]
    real = w.dep.state.sales["s-cheap"]
    # The attacker says bob's 0.01 sale is a sale of the 4,000.00 document: alice would stream that one.
    lie = {**dataclasses.asdict(real), "doc_id": "dear", "price": 400_000}
    lie.pop("sealed_key")
    forged_before = _forged_count(alice)
    with ReadRacer(w.dep.names, w.dep.admin_url, lambda _req: lie, key=w.attacker.key if signed else None) as racer:
        answer = _ask("sale", lambda: alice.sale("s-cheap"))
    assert racer.forged >= 1, "the attacker never saw the query"
    assert (_field(answer, "doc_id"), _field(answer, "price"), _field(answer, "consumer")) == ("cheap", 1, "bob"), \
        f"the provider believed {answer}"
    assert _forged_count(alice) > forged_before, "the client did not count the forged answer it dropped"
    honest_command(w)


# -- a foreign consumer on the commands queue -------------------------------------------------------------

def test_a_foreign_consumer_on_the_commands_queue_cannot_fake_an_operators_deposit(tmp_path: Path) -> None:
    with fresh_deployment(tmp_path) as dep:
        w = build_world(dep)
        try:
            before = picture(dep)
            with QueueThief(dep.names, dep.admin_url, lambda _req: {"account": "bob", "balance": 10**9}) as thief:
                dep.replica.stop()  # the primary dies: the thief, next in line, gets the commands queue
                operator = dep.client()
                try:
                    reply = operator.send(c.Deposit(account="bob", amount=LOOT), sender=c.OPERATOR, key=w.operator,
                                          timeout=5)
                except ReplyTimeout:
                    pass  # the right outcome: the thief swallowed it and nobody believable answered
                except BrokerError as exc:
                    pytest.fail(f"the client gave up on a forged reply instead of waiting: {exc!r}")
                else:
                    pytest.fail(f"the operator's client believed the thief: {reply}")
                assert thief.swallowed >= 1, "the thief never got the queue"
                assert _forged_count(operator) >= 1, "the client did not count the forged replies it dropped"
            dep.start()
            wait_for(lambda: dep.state.seq == before.seq, 10, "the restarted replica to recover")
            assert picture(dep) == before, "money moved"
            assert audit_store(dep).ok
            honest_command(w)
            assert dep.state.balance("bob") == before.balances["bob"]
        finally:
            w.attacker.close()


# -- fake status ----------------------------------------------------------------------------------------

def test_fake_status_messages_are_not_shown(attack_world: World) -> None:
    from console.status import collect_status

    w = attack_world
    honest_command(w)
    now = int(time.time() * 1000)
    base = {"type": "replica_status", "epoch": 99, "primary": "r9", "seq": 10**6, "head_hash": "0" * 64,
            "applied_events": 0, "commands_handled": 0, "reads_served": 0, "store": "sqlite:///x", "host": "x",
            "pid": 1, "uptime_s": 1.0, "halted": None, "joined_from_snapshot": None, "at_ms": now,
            "commands_per_s": 0.0}
    fakes = [
        {**base, "replica": "r9", "role": "primary"},  # a replica that does not exist
        {**base, "replica": "r1", "role": "halted", "halted": "forged"},  # the real one, shown as halted
    ]
    fakes += [signed_dict(w.attacker.key, str(f["replica"]), f, "status") for f in fakes]
    stop = threading.Event()

    def spam() -> None:
        with Attacker(w.dep.names, w.dep.admin_url) as spammer:
            while not stop.is_set():
                for fake in fakes:
                    spammer.publish_status({**fake, "at_ms": int(time.time() * 1000)})
                stop.wait(0.05)

    thread = threading.Thread(target=spam, daemon=True)
    thread.start()
    try:
        statuses = collect_status(w.dep.roles.operator_url, w.dep.names, trust=w.dep.trust())
    finally:
        stop.set()
        thread.join(10)
    assert [s["replica"] for s in statuses] == ["r1"], f"fake replicas shown: {statuses}"
    [status] = statuses
    assert (status["role"], status["halted"], status["seq"]) == ("primary", None, w.dep.state.seq), \
        f"a fake status of r1 shown: {status}"
    honest_command(w)

