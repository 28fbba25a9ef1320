"""A real replica on RabbitMQ with a SQLite store, driven through the client library."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from broker import commands as c
from broker import queries as q
from broker.envelope import new_id, seal
from broker.replies import Reply
from ledger.model import state_hash
from tests.conftest import Deployment

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def alice_and_bob(deployment: Deployment) -> dict[str, Any]:
    alice, bob = deployment.client(), deployment.client()
    alice.register("alice", "correct horse")
    bob.register("bob", "battery staple")
    return {"alice": alice, "bob": bob}


def deposit(deployment: Deployment, client: Any, account: str, amount: int) -> Reply:
    return client.send(c.Deposit(account=account, amount=amount), sender=c.OPERATOR, key=deployment.operator_key())


def test_ledger_info_is_public(deployment: Deployment, alice_and_bob: dict[str, Any]) -> None:
    info = alice_and_bob["alice"].ledger_info()
    assert info["ledger_box_key"] == deployment.replica.keys.ledger_public.hex()
    assert (info["primary"], info["epoch"], info["fee_bps"]) == ("r1", 1, 100)


def test_register_and_deposit_then_read_your_own_balance(deployment: Deployment, alice_and_bob: dict[str, Any]) -> None:
    bob = alice_and_bob["bob"]
    reply = deposit(deployment, bob, "bob", 5000)
    assert reply.ok and reply.result == {"account": "bob", "balance": 5000}
    assert reply.seq == deployment.state.seq == deployment.head_seq()
    balance = bob.balance()
    assert (balance["available"], balance["held"]) == (5000, 0)
    assert balance["seq"] >= reply.seq
    assert deployment.state.users["bob"].sign_key == bob.identity.sign_public.hex()


def test_a_read_waits_for_the_sequence_it_asks_for(deployment: Deployment, alice_and_bob: dict[str, Any]) -> None:
    bob = alice_and_bob["bob"]
    target = deployment.state.seq + 1
    answers: list[Reply] = []
    reader = deployment.broker()

    def read() -> None:
        env = seal(q.Balance(account="bob"), sender="bob", key=bob.identity.sign_key, kind="query", min_seq=target)
        answers.append(reader.request(env, timeout=20))

    thread = threading.Thread(target=read)
    thread.start()
    before = bob.balance()["available"]
    deposit(deployment, alice_and_bob["alice"], "bob", 11)
    thread.join(20)
    [answer] = answers
    assert answer.ok
    assert answer.result["seq"] >= target
    assert answer.result["available"] == before + 11


def test_private_reads_need_the_owner(deployment: Deployment, alice_and_bob: dict[str, Any]) -> None:
    from broker import errors

    with pytest.raises(errors.NotAuthorized):
        alice_and_bob["alice"].balance("bob")


def test_publish_and_search_through_the_reads_queue(deployment: Deployment, alice_and_bob: dict[str, Any],
                                                    tmp_path: Path) -> None:
    alice = alice_and_bob["alice"]
    path = tmp_path / "notes.txt"
    path.write_bytes(b"the renormalisation group, explained slowly\n" * 200)
    shared = alice.share(path, price=1000, topic="physics", title="Quantum field notes", endpoint="127.0.0.1:9500",
                         description="Lectures", doc_id="qft-notes", segment_size=1024)
    cheap = tmp_path / "bread.txt"
    cheap.write_bytes(b"flour water salt\n" * 10)
    alice.share(cheap, price=200, topic="cooking", title="Bread", endpoint="127.0.0.1:9500", doc_id="bread")

    bob = alice_and_bob["bob"]
    [hit] = bob.search("quantum")
    assert (hit["doc_id"], hit["price"], hit["provider"]) == ("qft-notes", 1000, "alice")
    assert (hit["sha256"], hit["merkle_root"], hit["size"]) == (shared["sha256"], shared["merkle_root"],
                                                               path.stat().st_size)
    assert [h["doc_id"] for h in bob.search(topic="cooking")] == ["bread"]
    assert [h["doc_id"] for h in bob.search("", max_price=500)] == ["bread"]
    assert bob.search("nothing-like-this") == []
    doc = bob.document("qft-notes")
    assert doc["provider_sign_key"] == alice.identity.sign_public.hex()
    assert doc["published"] is True

    alice.change_price("bread", 250)
    assert [h["price"] for h in alice.search("bread")] == [250]
    alice.unpublish("bread")
    assert alice.search("bread") == []


def test_a_command_sent_twice_takes_effect_once(deployment: Deployment, alice_and_bob: dict[str, Any]) -> None:
    client = deployment.broker()
    fixed = new_id()
    env = seal(c.Deposit(account="bob", amount=7, memo="once"), sender=c.OPERATOR, key=deployment.operator_key(),
               id=fixed)
    before = deployment.state.balance("bob")
    first = client.request(env, timeout=20).unwrap()
    second = client.request(env, timeout=20).unwrap()
    assert first.seq == second.seq
    assert first.result == second.result
    assert deployment.state.balance("bob") == before + 7
    assert [r.seq for r in deployment.replica.store.rows() if r.command_id == fixed] == [first.seq]
    assert alice_and_bob["bob"].balance()["available"] == before + 7


def test_a_restarted_replica_recovers_and_continues(deployment: Deployment, alice_and_bob: dict[str, Any]) -> None:
    bob = alice_and_bob["bob"]
    deposit(deployment, bob, "bob", 3)
    seq, digest = deployment.state.seq, state_hash(deployment.state)
    available = bob.balance()["available"]

    deployment.restart()
    assert deployment.state.seq == seq
    assert state_hash(deployment.state) == digest

    reply = deposit(deployment, bob, "bob", 4)
    # The new incarnation announces a fresh epoch, then applies the deposit after it.
    assert reply.seq == seq + 2
    assert deployment.state.epoch == 2
    assert bob.balance()["available"] == available + 4
    assert [h["doc_id"] for h in bob.search("quantum")] == ["qft-notes"]  # the catalog is rebuilt too
    assert deployment.head_seq() == reply.seq
