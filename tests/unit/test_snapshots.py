"""Snapshots are taken beside the command path, not on it, and replicas take them at different events.

Over the in-memory broker: the snapshot's write to the store is held (an event the test releases),
and meanwhile the follower keeps applying, the primary keeps answering commands and reads are answered.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import commands as c
from broker import queries as q
from broker.codec import canonical
from broker.envelope import seal
from ledger.follower import Follower, snapshot_due, snapshot_phase
from ledger.model import canonical_pieces, state_from_dict, state_hash
from ledger.store import Store
from tests.unit.test_ledger_on_stub import WAIT, StubLedger, register

EVERY = 4


class HeldStore(Store):
    """A store whose snapshot writes wait until the test lets them go."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.writing = threading.Event()
        self.release = threading.Event()

    def save_snapshot(self, *args: Any, **kwargs: Any) -> None:
        self.writing.set()
        assert self.release.wait(WAIT), "the test never released the snapshot"
        super().save_snapshot(*args, **kwargs)


class HeldLedger(StubLedger):
    def new_follower(self, replica_id: str) -> Follower:
        store = HeldStore(f"sqlite:///{self.tmp / f'{replica_id}.db'}")
        self.stores.append(store)
        follower = Follower(store, self.stub, self.names, replica_id, self.trust, ledger_key=self.ledger_key,
                            snapshot_every=EVERY)
        follower.recover()
        return follower


@pytest.fixture
def held(tmp_path: Path) -> Iterator[HeldLedger]:
    running = HeldLedger(tmp_path)
    running.start()
    try:
        yield running
    finally:
        store = running.follower.store
        assert isinstance(store, HeldStore)
        store.release.set()
        running.follower.wait_for_snapshot()
        running.close()


def test_a_snapshot_being_written_stops_neither_commands_nor_applies_nor_reads(held: HeldLedger) -> None:
    store = held.follower.store
    assert isinstance(store, HeldStore)
    bob = register(held, "bob")
    amount = 0
    while not store.writing.is_set():  # at most EVERY events until this replica's snapshot point
        amount += 1
        assert held.request(held.operator_command(c.Deposit(account="bob", amount=1))).ok
        assert amount <= EVERY + 1, "no snapshot was started"
    assert held.stub.wait(store.writing.is_set, WAIT)
    taken_at = held.follower._last_snapshot
    assert store.latest_snapshot() is None  # the write is still held

    for _ in range(2 * EVERY):  # past the next snapshot point too: a snapshot never queues behind another
        reply = held.request(held.operator_command(c.Deposit(account="bob", amount=10)))
        assert reply.ok and reply.seq is not None
        assert held.follower.state.seq >= reply.seq
        amount += 10
    read = held.request(seal(q.Balance(account="bob"), sender="bob", key=bob.sign, kind="query",
                             min_seq=held.follower.state.seq), "client-2")
    assert read.ok and read.result["available"] == amount
    assert store.latest_snapshot() is None and held.follower._snapshotter is not None
    assert held.follower._snapshotter.is_alive()

    store.release.set()
    held.follower.wait_for_snapshot()
    snap = store.latest_snapshot()
    assert snap is not None
    seq, digest, _offset, picture = snap
    assert seq == taken_at and state_hash(state_from_dict(picture)) == digest


def test_replicas_of_one_log_snapshot_at_different_events() -> None:
    every = 5000
    points = {}
    for replica in ("r1", "r2", "r3", "r4"):
        points[replica] = next(seq for seq in range(1, every + 1) if snapshot_due(0, seq, every, replica))
        assert points[replica] == every - snapshot_phase(replica, every) or snapshot_phase(replica, every) == 0
        # and then every ``every`` events after that, never twice in one period
        assert not snapshot_due(points[replica], points[replica] + every - 1, every, replica)
        assert snapshot_due(points[replica], points[replica] + every, every, replica)
    assert len(set(points.values())) == len(points)
    assert not snapshot_due(0, 10**9, 0, "r1")  # snapshot_every 0: never


@pytest.mark.parametrize("size", [0, 1, 255, 256, 257, 2000])
def test_a_picture_encoded_in_pieces_is_the_canonical_encoding(size: int) -> None:
    picture = {"users": {f"u{i:05d}": {"login": f"u{i}", "é": [i]} for i in range(size)}, "seq": 3,
               "held": {}, "balances": {str(i): i for i in range(size // 2)}}
    assert b"".join(canonical_pieces(picture)) == canonical(picture)
