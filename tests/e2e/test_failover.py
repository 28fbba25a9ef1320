"""Replicated ledger under faults, with real replica processes: nothing lost, nothing doubled."""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from typing import Any

import pika
import pytest

from broker import commands as c
from broker.client import BrokerClient
from broker.envelope import seal
from console.drill import drill
from console.netns import netns_available
from ledger.keys import load_operator_key
from peer.client import Client
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for


def _check(report: dict[str, Any]) -> None:
    assert report["acknowledged"] > 0
    assert report["lost"] == 0, report
    assert report["duplicated"] == 0, report
    assert report["money_conserved"] is True, report
    assert report["replicas_identical"] is True, report
    assert report["audits_ok"] is True, report.get("audit_violations")


def test_kill_and_pause_of_the_primary_under_load() -> None:
    report = drill(3, 2, clients=3, faults=("kill", "pause"), round_seconds=1.5, say=lambda _m: None)
    _check(report)
    kill = report["unavailable_by_fault"]["kill"]
    assert kill["max_ms"] < 1000, report["round_reports"]
    assert [r["fault"] for r in report["round_reports"]] == ["kill", "pause"]
    assert all(r["new"] and r["new"] != r["old"] for r in report["round_reports"])


@pytest.mark.skipif(not netns_available(), reason="network cuts need root and ip netns")
def test_network_cut_of_the_primary() -> None:
    report = drill(2, 1, clients=2, faults=("cut",), round_seconds=1.5, say=lambda _m: None)
    _check(report)


def test_rabbitmq_restart_under_load() -> None:
    report = drill(2, 1, clients=2, faults=("broker",), round_seconds=1.5, say=lambda _m: None)
    _check(report)


def _pipelined_deposits(cluster: Cluster, account: str, n: int) -> None:
    """Send n operator deposits without waiting for each answer, then collect every answer."""
    key = load_operator_key(cluster.home)
    conn = pika.BlockingConnection(pika.URLParameters(cluster.peer_url))
    ch = conn.channel()
    answers: set[str] = set()
    ch.basic_consume("amq.rabbitmq.reply-to", lambda _c, _m, p, b: answers.add(p.correlation_id), auto_ack=True)
    ids = []
    for _ in range(n):
        # A well-behaved pipelining client: at most 200 in flight (the primary answers `busy` past its share).
        while len(ids) - len(answers) >= 200:
            conn.process_data_events(time_limit=0.05)
        env = seal(c.Deposit(account=account, amount=1), sender=c.OPERATOR, key=key)
        ids.append(env.id)
        ch.basic_publish(cluster.names.commands, "command", env.to_bytes(),
                         pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=env.id, delivery_mode=2))
    deadline = time.monotonic() + 120
    while len(answers) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.5)
    conn.close()
    assert answers == set(ids)


def test_backup_rejoins_after_missing_ten_thousand_events(cluster: Cluster) -> None:
    cluster.start("r1", "--snapshot-every", "2000")
    cluster.start("r2", "--snapshot-every", "2000")
    client = Client(BrokerClient(cluster.peer_url, cluster.names), cluster.home)
    client.register("dave", "dave-secret-1")
    rows = cluster.wait_for(lambda rs: len(rs) == 2 and any(r["role"] == "primary" for r in rs), what="a primary")
    backup = next(r["replica"] for r in rows if r["role"] == "backup")
    assert cluster.stop(backup) == 0
    _pipelined_deposits(cluster, "dave", 10_000)
    assert client.balance()["available"] == 10_000
    client.broker.close()

    started = time.monotonic()
    cluster.start(backup)
    rows = cluster.wait_for(lambda rs: len(rs) == 2 and len({r["seq"] for r in rs}) == 1, timeout=60,
                            what="the backup to catch up")
    caught_up = time.monotonic() - started
    assert rows[0]["seq"] >= 10_002
    assert caught_up < 30
    for rid in ("r1", "r2"):
        cluster.stop(rid)
    audits = {rid: cluster.audit(rid) for rid in ("r1", "r2")}
    assert all(a["ok"] for a in audits.values()), audits
    common = min(a["head_seq"] for a in audits.values())
    hashes = {json.loads(cluster.acb("audit", "hash", "--store", cluster.store(rid), "--at", str(common),
                                     "--json").stdout)["state_hash"] for rid in ("r1", "r2")}
    assert len(hashes) == 1
    # The primary took snapshots every 2,000 events; replay from the newest one agrees with replay from zero.
    from_snapshot = cluster.audit("r1", "--from-snapshot")
    assert 0 < from_snapshot["from_snapshot"] < audits["r1"]["head_seq"]
    assert from_snapshot["events"] == audits["r1"]["head_seq"] - from_snapshot["from_snapshot"]
    assert from_snapshot["state_hash"] == audits["r1"]["state_hash"]


def test_corrupted_event_in_a_backup_store_halts_it_loudly(cluster: Cluster) -> None:
    cluster.start("r1")
    cluster.start("r2")
    client = Client(BrokerClient(cluster.peer_url, cluster.names), cluster.home)
    client.register("erin", "erin-secret-1")
    op = load_operator_key(cluster.home)
    for _ in range(5):
        client.send(c.Deposit(account="erin", amount=100), sender=c.OPERATOR, key=op)
    rows = cluster.wait_for(lambda rs: len(rs) == 2 and len({r["seq"] for r in rs}) == 1, what="both replicas")
    backup = next(r["replica"] for r in rows if r["role"] == "backup")
    assert cluster.stop(backup) == 0
    db = sqlite3.connect(cluster.home / f"{backup}.db")
    payload = json.loads(db.execute("SELECT payload FROM events WHERE type='deposited' LIMIT 1").fetchone()[0])
    payload["amount"] = 1_000_000  # someone edits the store by hand
    db.execute("UPDATE events SET payload=? WHERE seq=(SELECT seq FROM events WHERE type='deposited' LIMIT 1)",
               (json.dumps(payload, sort_keys=True, separators=(",", ":")).encode(),))
    db.commit()
    db.close()

    tampered = cluster.audit(backup)
    assert not tampered["ok"] and any("hash chain broken" in v for v in tampered["violations"])
    proc = cluster.start(backup)
    assert proc.wait(30) == 3  # halted: exit code 3, applying nothing more
    log = (cluster.home / f"{backup}.log").read_text()
    assert "HALTED" in log and "altered" in log
    # The primary goes on serving.
    client.send(c.Deposit(account="erin", amount=1), sender=c.OPERATOR, key=op)
    assert client.balance()["available"] == 501
    client.broker.close()
    del cluster.procs[backup]


def test_holds_expire_by_the_primarys_clock(cluster: Cluster) -> None:
    cluster.start("r1", "--hold-ttl", "1")
    seller = Client(BrokerClient(cluster.peer_url, cluster.names), cluster.home)
    buyer = Client(BrokerClient(cluster.peer_url, cluster.names), cluster.home)
    seller.register("fay", "fay-secret-12")
    buyer.register("gus", "gus-secret-12")
    buyer.send(c.Deposit(account="gus", amount=900), sender=c.OPERATOR, key=load_operator_key(cluster.home))
    seller.send(c.PublishDocument(doc_id="d1", title="t", topic="x", price=300, size=10, sha256="0" * 64,
                                  merkle_root="0" * 64, segment_size=1024, endpoint="127.0.0.1:9"))
    sale_id = f"s-{uuid.uuid4().hex[:8]}"
    buyer.send(c.OpenSale(sale_id=sale_id, doc_id="d1", price=300))
    assert buyer.balance() == {"account": "gus", "available": 600, "held": 300, "seq": buyer.last_seq}

    def resolved() -> dict[str, Any] | None:
        sale = buyer.sale(sale_id)
        return None if sale["status"] == "open" else sale

    # The hold's one second runs on the replica process's own clock, so the test waits for its effect.
    sale = wait_for(resolved, 15, "the hold to expire", interval=0.3)
    assert sale["status"] == "voided" and sale["reason"] == "expired"
    bal = buyer.balance()
    assert (bal["available"], bal["held"]) == (900, 0)
    seller.broker.close()
    buyer.broker.close()


def test_a_replica_with_an_empty_store_joins_from_the_shared_snapshot(cluster: Cluster) -> None:
    cluster.start("r1", "--snapshot-every", "500")
    client = Client(BrokerClient(cluster.peer_url, cluster.names), cluster.home)
    client.register("ivy", "ivy-secret-12")
    cluster.wait_for(lambda rs: any(r["role"] == "primary" for r in rs), what="a primary")
    _pipelined_deposits(cluster, "ivy", 1_200)
    client.broker.close()
    cluster.start("r2")  # a new machine: nothing in its store
    rows = cluster.wait_for(lambda rs: len(rs) == 2 and len({r["seq"] for r in rs}) == 1, timeout=60,
                            what="the new replica to catch up")
    joined = next(r for r in rows if r["replica"] == "r2")["joined_from_snapshot"]
    assert joined is not None and joined >= 500  # it did not replay the log from the start
    for rid in ("r1", "r2"):
        cluster.stop(rid)
    a1, a2 = cluster.audit("r1"), cluster.audit("r2")
    assert a1["ok"] and a2["ok"], (a1, a2)
    assert a2["from_snapshot"] == joined and a2["events"] < a1["events"]
    common = min(a1["head_seq"], a2["head_seq"])
    hashes = {json.loads(cluster.acb("audit", "hash", "--store", cluster.store(rid), "--at", str(common),
                                     "--json").stdout)["state_hash"] for rid in ("r1", "r2")}
    assert len(hashes) == 1


def test_reads_are_served_by_backups_and_by_the_primary_when_alone(cluster: Cluster) -> None:
    from broker import queries as q

    cluster.start("r1")
    client = Client(BrokerClient(cluster.peer_url, cluster.names), cluster.home)
    client.register("jon", "jon-secret-123")
    primary = cluster.wait_for(lambda rs: any(r["role"] == "primary" for r in rs), what="a primary")[0]["replica"]

    def served_by() -> set[str | None]:
        seen = set()
        for _ in range(20):
            env = seal(q.Search(text=""), sender="anonymous", key=None, kind="query", min_seq=client.last_seq)
            seen.add(client.broker.request(env).unwrap().served_by)
        return seen

    assert served_by() == {primary}  # no backup alive: the primary answers
    cluster.start("r2")
    cluster.start("r3")
    cluster.wait_for(lambda rs: len(rs) == 3, what="two backups")
    # The backups' read consumers take over at their higher priority once they have subscribed; then the reads
    # are spread over the backups and the primary is left alone.
    wait_for(lambda: served_by() == {"r2", "r3"}, 10, "the backups to serve every read", interval=0.1)
    client.broker.close()
