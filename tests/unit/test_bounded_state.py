"""The state that decides commands stays bounded: no cash-flow history, command ids for a window only.

History leaves it deterministically, by sequence, so replicas keep equal hashes; reads of history come
from the store's projection, and a command retried after its id left the window is still answered from
the log, never applied twice.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import commands as c
from broker import queries as q
from broker.codec import canonical
from broker.envelope import seal
from ledger import events as ev
from ledger import follower as follower_module
from ledger import model
from ledger.model import COMMAND_BUCKET, COMMAND_WINDOW, Record, State, apply, state_hash, state_to_dict
from tests.unit.test_ledger_on_stub import WAIT, StubLedger, register

AT = 1_700_000_000_000


def _run(state: State, event: object, command_id: str | None = None) -> State:
    seq = state.seq + 1
    reply = {"ok": seq} if command_id is not None else None
    return apply(state, Record(seq, 1, AT + seq, event, f"{seq:064x}", command_id, reply))


def _users(n: int) -> State:
    state = State()
    for i in range(n):
        state = _run(state, ev.UserRegistered(login=f"u{i}", sign_key="aa" * 32, box_key="bb" * 32, cert_pem="pem",
                                              keystore="a2V5"))
    return state


def test_command_ids_leave_the_state_by_sequence_and_the_state_stops_growing() -> None:
    users = 50
    state = _users(users)
    sizes = {}
    for i in range(3 * COMMAND_WINDOW):
        state = _run(state, ev.Deposited(account=f"u{i % users}", amount=1), command_id=f"cmd-{i}")
        if (i + 1) % COMMAND_WINDOW == 0:
            sizes[i + 1] = len(canonical(state_to_dict(state)))
    assert COMMAND_WINDOW <= len(state.commands) <= COMMAND_WINDOW + COMMAND_BUCKET
    assert "cmd-0" not in state.commands and f"cmd-{3 * COMMAND_WINDOW - 1}" in state.commands
    assert len(state.command_buckets) <= COMMAND_WINDOW // COMMAND_BUCKET + 1
    assert not hasattr(state, "flows") and len(state.last_flows) == 1  # only what the last event caused
    # Past the window, more commands no longer make the state larger (digits of balances aside).
    second, third = sizes[2 * COMMAND_WINDOW], sizes[3 * COMMAND_WINDOW]
    assert abs(third - second) < 0.01 * second
    # What leaves, leaves by sequence: a state rebuilt from its picture continues to the same hash.
    again = model.state_from_dict(state_to_dict(state))
    for i in range(3 * COMMAND_WINDOW, 3 * COMMAND_WINDOW + 2 * COMMAND_BUCKET):
        state = _run(state, ev.Deposited(account="u0", amount=1), command_id=f"cmd-{i}")
        again = _run(again, ev.Deposited(account="u0", amount=1), command_id=f"cmd-{i}")
    assert state_hash(again) == state_hash(state) and again.commands == state.commands


def test_state_size_per_user_is_a_small_constant() -> None:
    small, large = _users(1000), _users(4000)
    per_user_small = len(canonical(state_to_dict(small))) / 1000
    per_user_large = len(canonical(state_to_dict(large))) / 4000
    assert abs(per_user_large - per_user_small) < 0.05 * per_user_small  # linear in users, nothing else


@pytest.fixture
def short_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StubLedger]:
    """A ledger whose state remembers command ids for two events only."""
    for module in (model, follower_module):
        monkeypatch.setattr(module, "COMMAND_BUCKET", 1)
        monkeypatch.setattr(module, "COMMAND_WINDOW", 2)
    running = StubLedger(tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.close()


def test_a_retry_after_its_id_left_the_window_is_answered_from_the_log(short_window: StubLedger) -> None:
    ledger = short_window
    register(ledger, "bob")
    deposit = ledger.operator_command(c.Deposit(account="bob", amount=40))
    first = ledger.request(deposit)
    for _ in range(4):
        assert ledger.request(ledger.operator_command(c.Deposit(account="bob", amount=1))).ok
    assert deposit.id not in ledger.follower.state.commands
    again = ledger.request(deposit)
    assert again.ok and again.seq == first.seq and again.result == first.result
    assert ledger.logged_command_ids().count(deposit.id) == 1
    assert ledger.follower.state.balance("bob") == 44


def test_flows_are_read_from_the_store_and_agree_across_replicas(tmp_path: Path) -> None:
    ledger = StubLedger(tmp_path)
    ledger.start()
    try:
        bob = register(ledger, "bob")
        for amount in (5, 7, 11):
            reply = ledger.request(ledger.operator_command(c.Deposit(account="bob", amount=amount, memo=f"m{amount}")))
        assert reply.seq is not None
        read = ledger.request(seal(q.Flows(account="bob", limit=2), sender="bob", key=bob.sign, kind="query",
                                   min_seq=reply.seq), "client-2")
        assert read.ok
        assert [(f["kind"], f["amount"], f["memo"]) for f in read.result["flows"]] == [("deposit", 7, "m7"),
                                                                                       ("deposit", 11, "m11")]
        backup = ledger.new_follower("r2")
        ledger.start(backup)
        assert ledger.stub.wait(lambda: backup.state.seq >= reply.seq, WAIT)  # type: ignore[operator]
        assert backup.flows("bob", 10) == ledger.follower.flows("bob", 10)
        assert [f["amount"] for f in backup.flows("bob", 10)] == [5, 7, 11]
        assert backup.flows("bob", 10, upto=reply.seq - 1) == backup.flows("bob", 10)[:-1]
    finally:
        ledger.close()
