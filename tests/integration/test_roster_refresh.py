"""A peer learns a new roster from the next answer it gets, keeps it, and is never talked back to an older one."""
from __future__ import annotations

import shutil
from pathlib import Path

from broker import commands as c
from broker.client import BrokerClient
from broker.trust import Roster, Trust
from ledger.keys import certify_replica, load_roster
from peer.client import Client
from tests.conftest import Deployment


def test_a_peer_catches_up_with_the_roster_and_keeps_it(deployment: Deployment, tmp_path: Path) -> None:
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    shutil.copy(deployment.home / "system" / "operator.pub", laptop / "operator.pub")
    trust = Trust.load(laptop)
    with BrokerClient(deployment.url, deployment.names, trust=trust) as broker:
        peer = Client(broker, laptop)
        peer.ledger_info()
        before = trust.serial
        assert before >= 1 and (laptop / "roster.json").exists()
        # The operator certifies another replica and tells the ledger.
        roster = certify_replica(deployment.home, "r9")
        deployment.client().send(c.SetRoster(roster=roster.to_wire()), sender=c.OPERATOR,
                                 key=deployment.operator_key())
        peer.last_seq = deployment.state.seq
        peer.ledger_info()  # any answer says which roster its replica holds; the peer fetches it
        assert trust.serial == roster.serial > before and trust.replica_key("r9") is not None
    kept = Roster.model_validate_json((laptop / "roster.json").read_text())
    assert kept.serial == roster.serial
    # An older roster offered later (say, by a replica the operator removed) is not taken.
    again = Trust.load(laptop)
    older = load_roster(deployment.home)
    assert older is not None
    assert again.adopt(older.model_copy()) is False and again.serial == roster.serial
