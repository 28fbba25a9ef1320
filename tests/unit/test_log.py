"""Folding the replicated log: epoch fencing, once-only commands, divergence, and the hash chain."""
from __future__ import annotations

import dataclasses

import pytest

from broker import commands as c
from ledger import events as ev
from ledger.errors import ChainBroken
from ledger.log import ACCEPTED, HALT, IGNORED, command_digest, replay_row
from ledger.model import GENESIS_HASH, State, state_hash
from tests.conftest import Book


def deposit_entry(book: Book, amount: int = 100, **kw: object):  # type: ignore[no-untyped-def]
    """A deposit entry backed by the operator's signed command, as a primary writes it."""
    env = book.envelope(c.Deposit(account="bob", amount=amount), c.OPERATOR)
    return book.entry([ev.Deposited(account="bob", amount=amount)], command_id=env.id, command=env,
                      reply={"account": "bob"}, **kw)


@pytest.fixture
def funded(book: Book) -> Book:
    book.register("bob")
    book.deposit("bob", 1000)
    book.certify("r2", "r3")
    return book


def unchanged(book: Book, outcome, verdict: str, before: State, rows: int) -> None:  # type: ignore[no-untyped-def]
    assert outcome.verdict == verdict, outcome.reason
    assert book.state is before
    assert len(book.rows) == rows


# -- epochs ----------------------------------------------------------------------------------------

def test_a_higher_epoch_takes_over(funded: Book) -> None:
    outcome = funded.announce(2, "r2")
    assert outcome.verdict == ACCEPTED
    assert (funded.state.epoch, funded.state.primary) == (2, "r2")
    assert funded.rows[-1].type == "epoch_started" and funded.rows[-1].seq == funded.state.seq


@pytest.mark.parametrize("epoch", [0, 1])
def test_an_epoch_not_above_the_current_one_is_ignored(funded: Book, epoch: int) -> None:
    before, rows = funded.state, len(funded.rows)
    outcome = funded.announce(epoch, "r2")
    unchanged(funded, outcome, IGNORED, before, rows)
    assert "is not above 1" in outcome.reason
    assert funded.state.primary == "r1"


def test_an_announcement_must_name_its_own_epoch_and_writer(funded: Book) -> None:
    before, rows = funded.state, len(funded.rows)
    entry = funded.entry([ev.EpochStarted(epoch=3, replica="r2")], epoch=2, writer="r2")
    unchanged(funded, funded.fold(entry), IGNORED, before, rows)
    entry = funded.entry([ev.EpochStarted(epoch=2, replica="r2")], epoch=2, writer="r3")
    unchanged(funded, funded.fold(entry), IGNORED, before, rows)


def test_the_old_primary_is_fenced_off_after_a_new_epoch(funded: Book) -> None:
    funded.announce(2, "r2")
    before, rows = funded.state, len(funded.rows)
    # r1 wakes up and writes at exactly the right place, but in its old epoch.
    outcome = funded.fold(deposit_entry(funded, epoch=1, writer="r1"))
    unchanged(funded, outcome, IGNORED, before, rows)
    assert outcome.reason.startswith("fenced")
    assert funded.state.balance("bob") == 1000


def test_another_writer_in_the_current_epoch_is_ignored(funded: Book) -> None:
    before, rows = funded.state, len(funded.rows)
    outcome = funded.fold(deposit_entry(funded, writer="r2"))
    unchanged(funded, outcome, IGNORED, before, rows)


def test_the_new_primary_writes_after_its_announcement(funded: Book) -> None:
    funded.announce(2, "r2")
    outcome = funded.fold(deposit_entry(funded, epoch=2, writer="r2"))
    assert outcome.verdict == ACCEPTED
    assert funded.state.balance("bob") == 1100


# -- once only -------------------------------------------------------------------------------------

def test_a_command_id_is_applied_once(funded: Book) -> None:
    env = funded.envelope(c.Deposit(account="bob", amount=50), c.OPERATOR)
    funded.submit_envelope(env)
    assert funded.state.balance("bob") == 1050
    before, rows = funded.state, len(funded.rows)
    # The same command written again (a retry decided before the first landed): a new entry, same command id.
    again = funded.entry([ev.Deposited(account="bob", amount=50)], command_id=env.id, reply={"account": "bob"},
                         command=env)
    outcome = funded.fold(again)
    unchanged(funded, outcome, IGNORED, before, rows)
    assert "already applied" in outcome.reason
    assert funded.state.balance("bob") == 1050


def test_the_first_answer_of_a_command_is_kept(funded: Book) -> None:
    env = funded.envelope(c.Deposit(account="bob", amount=50), c.OPERATOR)
    decision = funded.submit_envelope(env)
    assert funded.state.commands[env.id] == {"seq": funded.state.seq, "result": decision.result,
                                             "digest": command_digest(env.wire())}


def test_a_command_never_causes_more_than_its_one_event(funded: Book) -> None:
    # A second deposit riding on the operator's signature for one would be money nobody authorized.
    env = funded.envelope(c.Deposit(account="bob", amount=1), c.OPERATOR)
    entry = funded.entry([ev.Deposited(account="bob", amount=1), ev.Deposited(account="bob", amount=1)],
                         command_id=env.id, reply={"ok": 1}, command=env)
    before, rows = funded.state, len(funded.rows)
    outcome = funded.fold(entry)
    unchanged(funded, outcome, IGNORED, before, rows)
    assert outcome.kind == "unauthorized"


def test_the_last_row_of_an_entry_keeps_the_signed_entry(funded: Book) -> None:
    entry = deposit_entry(funded)
    assert funded.fold(entry).verdict == ACCEPTED
    assert funded.rows[-1].entry == entry.model_dump(mode="json")


# -- divergence ------------------------------------------------------------------------------------

def test_an_entry_for_a_place_already_passed_is_a_duplicate_not_a_divergence(funded: Book) -> None:
    before, rows = funded.state, len(funded.rows)
    outcome = funded.fold(deposit_entry(funded, expected_seq=funded.state.seq))
    unchanged(funded, outcome, IGNORED, before, rows)
    assert outcome.kind == "duplicate"


@pytest.mark.parametrize("offset", [1, 2])
def test_a_gap_from_the_primary_halts(funded: Book, offset: int) -> None:
    before, rows = funded.state, len(funded.rows)
    outcome = funded.fold(deposit_entry(funded, expected_seq=funded.state.seq + 1 + offset))
    unchanged(funded, outcome, HALT, before, rows)
    assert "the logs diverge" in outcome.reason


def test_a_wrong_previous_hash_from_the_primary_halts(funded: Book) -> None:
    before, rows = funded.state, len(funded.rows)
    outcome = funded.fold(deposit_entry(funded, prev_hash="f" * 64))
    unchanged(funded, outcome, HALT, before, rows)


def test_empty_or_unreadable_entries_are_ignored(funded: Book) -> None:
    before, rows = funded.state, len(funded.rows)
    unchanged(funded, funded.fold(funded.entry([])), IGNORED, before, rows)
    bad = funded.entry([ev.Deposited(account="bob", amount=5)]).model_copy(
        update={"events": [{"type": "deposited", "account": "bob"}]})
    unchanged(funded, funded.fold(bad), IGNORED, before, rows)
    unknown = bad.model_copy(update={"events": [{"type": "money_printed", "amount": 10**9}]})
    unchanged(funded, funded.fold(unknown), IGNORED, before, rows)


# -- the hash chain --------------------------------------------------------------------------------

def test_rows_form_a_chain_from_genesis(funded: Book) -> None:
    assert funded.rows[0].prev_hash == GENESIS_HASH
    assert [r.seq for r in funded.rows] == list(range(1, len(funded.rows) + 1))
    for prev, row in zip(funded.rows, funded.rows[1:]):
        assert row.prev_hash == prev.hash
    assert funded.state.head_hash == funded.rows[-1].hash


def replay(rows) -> State:  # type: ignore[no-untyped-def]
    state = State()
    for row in rows:
        state = replay_row(state, row)
    return state


def test_replaying_the_rows_gives_the_same_state(funded: Book) -> None:
    assert state_hash(replay(funded.rows)) == state_hash(funded.state)


def test_replay_detects_an_altered_payload(funded: Book) -> None:
    rows = list(funded.rows)
    last = rows[-1]
    rows[-1] = dataclasses.replace(last, payload={**last.payload, "amount": 10**6})
    with pytest.raises(ChainBroken, match=f"event {last.seq} was altered"):
        replay(rows)


def test_replay_detects_an_altered_reply(funded: Book) -> None:
    rows = list(funded.rows)
    rows[-1] = dataclasses.replace(rows[-1], reply={"account": "bob", "balance": 1})
    with pytest.raises(ChainBroken, match="was altered"):
        replay(rows)


def test_replay_detects_a_gap(funded: Book) -> None:
    rows = funded.rows[:1] + funded.rows[2:]
    with pytest.raises(ChainBroken, match="gap in the store: seq 3 after 1"):
        replay(rows)


def test_replay_detects_a_wrong_previous_hash(funded: Book) -> None:
    rows = list(funded.rows)
    rows[2] = dataclasses.replace(rows[2], prev_hash="e" * 64)
    with pytest.raises(ChainBroken, match="previous hash differs"):
        replay(rows)


def test_replay_detects_a_forged_row_with_its_own_hash(funded: Book) -> None:
    # A forger who recomputes the row's hash still breaks the next row's link.
    other = Book()
    other.register("bob")
    other.deposit("bob", 10**6)
    rows = list(funded.rows)
    with pytest.raises(ChainBroken):
        replay(rows[:1] + other.rows[1:2] + rows[2:])
