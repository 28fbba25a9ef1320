"""Forged log entries against two replica processes: every replica ignores them alike, none halts, not even
after a restart (on the code before signed entries, one entry far ahead halted every replica for good).

The attacker holds the broker's administrator account on the cluster's vhost (tests/support/attacker.py): the
broker lets it write into the log, and only the entries' signatures stand in the way.
"""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import pytest

from broker import commands as c
from broker.client import BrokerClient
from broker.envelope import new_id
from ledger import events as ev
from ledger.keys import load_operator_key
from peer.client import Client
from tests.support.attacker import Attacker, Forger
from tests.support.cluster import Cluster

pytestmark = pytest.mark.timeout(180)

LOOT = 10**8


def _events(cluster: Cluster, rid: str, after: int) -> list[tuple[str, str | None]]:
    """(type, command id or announcing replica) of a replica's stored events after ``after``."""
    with sqlite3.connect(f"file:{cluster.home / (rid + '.db')}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT type, command_id, payload FROM events WHERE seq > ? ORDER BY seq", (after,))
        return [(t, json.loads(p).get("replica") if t == "epoch_started" else cid) for t, cid, p in rows]


def _agree(rows: list[dict[str, Any]], seq: int) -> bool:
    return len(rows) == 2 and all(r["seq"] >= seq for r in rows) and any(r["role"] == "primary" for r in rows)


def test_forged_entries_are_ignored_by_every_replica_alike_and_halt_none(cluster: Cluster) -> None:
    cluster.start("r1")
    cluster.start("r2")
    cluster.wait_for(lambda rs: len(rs) == 2, what="both replicas up")  # they set up the broker objects
    with BrokerClient(cluster.peer_url, cluster.names) as broker:
        client = Client(broker, cluster.home)
        client.register("alice", "alice-secret-1")
        operator = load_operator_key(cluster.home)
        seq = client.send(c.Deposit(account="alice", amount=500), sender=c.OPERATOR, key=operator).seq or 0
        rows = cluster.wait_for(lambda rs: _agree(rs, seq), what="both replicas at the deposit")
        [primary] = [r for r in rows if r["role"] == "primary"]
        epoch, head = primary["epoch"], primary["head_hash"]
        ignored_before = {r["replica"]: sum((r.get("ignored") or {}).values()) for r in rows}
        credit = ev.Deposited(account="alice", amount=LOOT).model_dump(mode="json")
        with Attacker(cluster.names, cluster.admin_url) as a:
            # A new epoch of the attacker's, crediting alice; an entry in the primary's name signed by the attacker;
            # an unsigned entry of the primary's far ahead of the log.
            f = Forger(seq, head)
            a.publish_log([f.next([ev.EpochStarted(epoch=epoch + 1, replica="mallory").model_dump(mode="json")],
                                  epoch=epoch + 1, writer="mallory"),
                           f.next([credit], epoch=epoch + 1, writer="mallory", command_id=new_id(), reply={})])
            f = Forger(seq, head)
            a.publish_log([f.next([credit], epoch=epoch, writer=primary["replica"], command_id=new_id(), reply={},
                                  key=a.key)])
            f = Forger(seq + 1000, "f" * 64)
            a.publish_log([f.next([credit], epoch=epoch, writer=primary["replica"], command_id=new_id(), reply={})])
        # The honest operator's next deposit comes after the forgeries in the log: once both replicas have it, both
        # have read past every forged entry.
        started = time.monotonic()
        reply = client.send(c.Deposit(account="alice", amount=1), sender=c.OPERATOR, key=operator, timeout=10)
        took = time.monotonic() - started
        assert took <= 2.0, f"the honest deposit took {took:.2f} s"
        honest = reply.seq or 0
        rows = cluster.wait_for(lambda rs: _agree(rs, honest), what="both replicas at the honest deposit")
        assert all(r["role"] != "halted" and not r["halted"] for r in rows), rows
        assert {r["seq"] for r in rows} == {honest}, rows
        assert len({r["head_hash"] for r in rows}) == 1, f"the replicas disagree: {rows}"
        # Between the first deposit and the honest one the log may hold a replica's epoch announcement or the
        # operator's new roster (a replica certified at start), nothing else.
        added = _events(cluster, "r2", after=seq)
        assert added[-1] == ("deposited", reply.id) and all(
            (t == "epoch_started" and who in ("r1", "r2")) or t == "roster_changed" for t, who in added[:-1]), added
        for r in rows:
            if "ignored" in r:
                assert sum(r["ignored"].values()) >= ignored_before[r["replica"]] + 4, \
                    f"{r['replica']} did not count the forged entries: {r['ignored']}"
        assert client.balance()["available"] == 501
        # A restart reads the same log again: still nothing halts.
        for rid in ("r1", "r2"):
            assert cluster.stop(rid) == 0
        cluster.start("r1")
        cluster.start("r2")
        reply = client.send(c.Deposit(account="alice", amount=1), sender=c.OPERATOR, key=operator, timeout=20)
        rows = cluster.wait_for(lambda rs: _agree(rs, reply.seq or 0), what="both replicas back")
        assert all(not r["halted"] for r in rows), rows
        assert len({r["head_hash"] for r in rows}) == 1, rows
        for rid in ("r1", "r2"):
            report = cluster.audit(rid)
            assert report["ok"], report
