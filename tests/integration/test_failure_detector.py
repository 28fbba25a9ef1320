"""The failure detector on real RabbitMQ: a primary busy for longer than its heartbeat timeout keeps its role.

RabbitMQ hands the commands queue to a backup only when it drops the primary's connection, and it
drops a connection it heard nothing from for two to three heartbeat timeouts (1 s each for the
commands connection). A primary whose deciding thread is CPU-bound for longer than that must keep
its connection, its queue and its epoch: the backup stays a backup, and the slow command is
answered by the same primary in the same epoch.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker import commands as c
from broker.client import BrokerClient
from ledger.handlers import Context
from ledger.keys import init_system, load_operator_key, load_system
from ledger.replica import Replica, ReplicaConfig
from peer.client import Client
from tests.support.broker_roles import RoleVhost, role_vhost
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

BUSY_S = 4.0  # longer than the 3 s after which RabbitMQ surely drops a silent connection with heartbeat 1


@dataclass
class Pair:
    home: Path
    roles: RoleVhost
    primary: Replica
    backup: Replica


def _replica(home: Path, roles: RoleVhost, rid: str) -> Replica:
    config = ReplicaConfig(rid, roles.replica_url, f"sqlite:///{home / f'{rid}.db'}", roles.names,
                           status_interval=0.5)
    replica = Replica(config, load_system(home))
    replica.start()
    return replica


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    """r1 primary and r2 its caught-up backup, in a vhost of their own."""
    home = tmp_path / "acb"
    init_system(home)
    monkeypatch.setenv("ACB_HOME", str(home))
    with role_vhost(prefix="fd") as roles:
        r1 = _replica(home, roles, "r1")
        replicas = [r1]
        try:
            # r1 alone first, so it is the one RabbitMQ hands the queue to.
            wait_for(lambda: r1.commands.is_primary, 30, "r1 to become primary")
            r2 = _replica(home, roles, "r2")
            replicas.append(r2)
            wait_for(lambda: r2.follower.state.seq == r1.follower.state.seq, 30, "r2 to catch up")
            yield Pair(home, roles, r1, r2)
        finally:
            for replica in replicas:
                replica.stop()


def test_a_primary_busy_for_longer_than_its_heartbeat_keeps_its_role(pair: Pair) -> None:
    primary, backup = pair.primary, pair.backup
    epoch = primary.follower.state.epoch
    backup_roles: list[bool] = []
    role_changed = backup.commands.on_role_change

    def watch(is_primary: bool) -> None:
        backup_roles.append(is_primary)
        if role_changed is not None:
            role_changed(is_primary)

    backup.commands.on_role_change = watch

    # The hook: the next batch the primary decides first costs BUSY_S of pure-Python CPU work on the
    # deciding thread (a huge batch would do the same, less predictably).
    armed = threading.Event()
    busy: list[float] = []
    context = primary.commands.context

    def slow_context() -> Context:
        if armed.is_set():
            armed.clear()
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < BUSY_S:
                n += sum(i * i for i in range(1000)) & 1
            busy.append(time.monotonic() - start)
        return context()

    primary.commands.context = slow_context
    client = Client(BrokerClient(pair.roles.peer_url, pair.roles.names), pair.home)
    try:
        armed.set()  # whatever batch comes next (a tick, or the registration) waits behind the busy spell
        client.register("slow", "slow-password-1")
        answer = client.send(c.Deposit(account="slow", amount=500), sender=c.OPERATOR,
                             key=load_operator_key(pair.home), timeout=60)
    finally:
        client.broker.close()
    assert answer.ok
    # The same primary answered, in the same epoch; the backup never took the role.
    assert backup_roles == []
    assert (primary.follower.state.epoch, primary.follower.state.primary) == (epoch, "r1")
    assert backup.follower.state.epoch == epoch
    assert primary.commands.is_primary and not backup.commands.is_primary
    assert busy and busy[0] >= BUSY_S  # and the primary really was busy, for longer than the detector's bound
