"""The operator removes a replica while the others run: it stops, the rest go on, clients stop believing it."""
from __future__ import annotations

import json

from broker import commands as c
from broker.client import BrokerClient
from ledger.keys import load_operator_key
from peer.client import Client
from tests.support.cluster import Cluster


def test_a_removed_replica_stops_and_the_others_go_on(cluster: Cluster) -> None:
    cluster.start("r1")
    cluster.wait_for(lambda rs: any(r["role"] == "primary" for r in rs), what="a primary")
    cluster.start("r2")
    cluster.wait_for(lambda rs: len(rs) == 2, what="both replicas")
    listed = cluster.acb_json("operator", "replica", "list")
    assert listed["replicas"] == ["r1", "r2"]
    out = cluster.acb("operator", "replica", "remove", "r2", "--json")
    assert out.returncode == 0, out.stderr
    removed = json.loads(out.stdout.strip().splitlines()[-1])
    assert removed["replicas"] == ["r1"] and removed["sent_to_ledger"] is True
    # r2 learns it from the log and stops with its own exit code; r1 is not disturbed.
    assert cluster.procs["r2"].wait(30) == 5
    cluster.procs.pop("r2")
    with BrokerClient(cluster.peer_url, cluster.names) as broker:
        client = Client(broker, cluster.home)
        client.register("zoe", "zoe-secret-123")
        reply = client.send(c.Deposit(account="zoe", amount=300), sender=c.OPERATOR,
                            key=load_operator_key(cluster.home))
        assert reply.signer == "r1" and client.balance()["available"] == 300
    rows = cluster.status()
    assert [r["replica"] for r in rows] == ["r1"]
    # Restarted on this machine (which holds the operator key), r2 does not quietly certify itself again.
    again = cluster.acb("ledger", "run", "--replica-id", "r2", "--store", cluster.store("r2"), timeout=60)
    assert again.returncode == 1 and "was removed by the operator" in again.stderr.strip().splitlines()[-1]
