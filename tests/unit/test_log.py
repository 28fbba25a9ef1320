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
def funded_with_backups(book: Book) -> Book:
    book.register("bob")
    book.deposit("bob", 1000)
    book.certify("r2", "r3")
    return book


def unchanged(book: Book, outcome, verdict: str, before: State, rows: int) -> None:  # type: ignore[no-untyped-def]
    assert outcome.verdict == verdict, outcome.reason
    assert book.state is before
    assert len(book.rows) == rows


# -- epochs ----------------------------------------------------------------------------------------

def test_a_higher_epoch_takes_over(funded_with_backups: Book) -> None:
    outcome = funded_with_backups.announce(2, "r2")
    assert outcome.verdict == ACCEPTED
    assert (funded_with_backups.state.epoch, funded_with_backups.state.primary) == (2, "r2")
    assert funded_with_backups.rows[-1].type == "epoch_started" and funded_with_backups.rows[-1].seq == funded_with_backups.state.seq


@pytest.mark.parametrize("epoch", [0, 1])
def test_an_epoch_not_above_the_current_one_is_ignored(funded_with_backups: Book, epoch: int) -> None:
    before, rows = funded_with_backups.state, len(funded_with_backups.rows)
    outcome = funded_with_backups.announce(epoch, "r2")
    unchanged(funded_with_backups, outcome, IGNORED, before, rows)
    assert "is not above 1" in outcome.reason
    assert funded_with_backups.state.primary == "r1"


def test_an_announcement_must_name_its_own_epoch_and_writer(funded_with_backups: Book) -> None:
    before, rows = funded_with_backups.state, len(funded_with_backups.rows)
    entry = funded_with_backups.entry([ev.EpochStarted(epoch=3, replica="r2")], epoch=2, writer="r2")
    unchanged(funded_with_backups, funded_with_backups.fold(entry), IGNORED, before, rows)
    entry = funded_with_backups.entry([ev.EpochStarted(epoch=2, replica="r2")], epoch=2, writer="r3")
    unchanged(funded_with_backups, funded_with_backups.fold(entry), IGNORED, before, rows)


def test_the_old_primary_is_fenced_off_after_a_new_epoch(funded_with_backups: Book) -> None:
    funded_with_backups.announce(2, "r2")
    before, rows = funded_with_backups.state, len(funded_with_backups.rows)
    # r1 wakes up and writes at exactly the right place, but in its old epoch.
    outcome = funded_with_backups.fold(deposit_entry(funded_with_backups, epoch=1, writer="r1"))
    unchanged(funded_with_backups, outcome, IGNORED, before, rows)
    assert outcome.reason.startswith("fenced")
    assert funded_with_backups.state.balance("bob") == 1000


def test_another_writer_in_the_current_epoch_is_ignored(funded_with_backups: Book) -> None:
    before, rows = funded_with_backups.state, len(funded_with_backups.rows)
    outcome = funded_with_backups.fold(deposit_entry(funded_with_backups, writer="r2"))
    unchanged(funded_with_backups, outcome, IGNORED, before, rows)


def test_the_new_primary_writes_after_its_announcement(funded_with_backups: Book) -> None:
    funded_with_backups.announce(2, "r2")
    outcome = funded_with_backups.fold(deposit_entry(funded_with_backups, epoch=2, writer="r2"))
    assert outcome.verdict == ACCEPTED
    assert funded_with_backups.state.balance("bob") == 1100


# -- once only -------------------------------------------------------------------------------------

def test_a_command_id_is_applied_once(funded_with_backups: Book) -> None:
    env = funded_with_backups.envelope(c.Deposit(account="bob", amount=50), c.OPERATOR)
    funded_with_backups.submit_envelope(env)
    assert funded_with_backups.state.balance("bob") == 1050
    before, rows = funded_with_backups.state, len(funded_with_backups.rows)
    # The same command written again (a retry decided before the first landed): a new entry, same command id.
    again = funded_with_backups.entry([ev.Deposited(account="bob", amount=50)], command_id=env.id, reply={"account": "bob"},
                         command=env)
    outcome = funded_with_backups.fold(again)
    unchanged(funded_with_backups, outcome, IGNORED, before, rows)
    assert "already applied" in outcome.reason
    assert funded_with_backups.state.balance("bob") == 1050


def test_the_first_answer_of_a_command_is_kept(funded_with_backups: Book) -> None:
    env = funded_with_backups.envelope(c.Deposit(account="bob", amount=50), c.OPERATOR)
    decision = funded_with_backups.submit_envelope(env)
    assert funded_with_backups.state.commands[env.id] == {"seq": funded_with_backups.state.seq, "result": decision.result,
                                             "digest": command_digest(env.wire())}


def test_a_command_never_causes_more_than_its_one_event(funded_with_backups: Book) -> None:
    # A second deposit riding on the operator's signature for one would be money nobody authorized.
    env = funded_with_backups.envelope(c.Deposit(account="bob", amount=1), c.OPERATOR)
    entry = funded_with_backups.entry([ev.Deposited(account="bob", amount=1), ev.Deposited(account="bob", amount=1)],
                         command_id=env.id, reply={"ok": 1}, command=env)
    before, rows = funded_with_backups.state, len(funded_with_backups.rows)
    outcome = funded_with_backups.fold(entry)
    unchanged(funded_with_backups, outcome, IGNORED, before, rows)
    assert outcome.kind == "unauthorized"


def test_the_last_row_of_an_entry_keeps_the_signed_entry(funded_with_backups: Book) -> None:
    entry = deposit_entry(funded_with_backups)
    assert funded_with_backups.fold(entry).verdict == ACCEPTED
    assert funded_with_backups.rows[-1].entry == entry.model_dump(mode="json")


# -- divergence ------------------------------------------------------------------------------------

def test_an_entry_for_a_place_already_passed_is_a_duplicate_not_a_divergence(funded_with_backups: Book) -> None:
    before, rows = funded_with_backups.state, len(funded_with_backups.rows)
    outcome = funded_with_backups.fold(deposit_entry(funded_with_backups, expected_seq=funded_with_backups.state.seq))
    unchanged(funded_with_backups, outcome, IGNORED, before, rows)
    assert outcome.kind == "duplicate"


@pytest.mark.parametrize("offset", [1, 2])
def test_a_gap_from_the_primary_halts(funded_with_backups: Book, offset: int) -> None:
    before, rows = funded_with_backups.state, len(funded_with_backups.rows)
    outcome = funded_with_backups.fold(deposit_entry(funded_with_backups, expected_seq=funded_with_backups.state.seq + 1 + offset))
    unchanged(funded_with_backups, outcome, HALT, before, rows)
    assert "the logs diverge" in outcome.reason


def test_a_wrong_previous_hash_from_the_primary_halts(funded_with_backups: Book) -> None:
    before, rows = funded_with_backups.state, len(funded_with_backups.rows)
    outcome = funded_with_backups.fold(deposit_entry(funded_with_backups, prev_hash="f" * 64))
    unchanged(funded_with_backups, outcome, HALT, before, rows)


def test_empty_or_unreadable_entries_are_ignored(funded_with_backups: Book) -> None:
    before, rows = funded_with_backups.state, len(funded_with_backups.rows)
    unchanged(funded_with_backups, funded_with_backups.fold(funded_with_backups.entry([])), IGNORED, before, rows)
    bad = funded_with_backups.entry([ev.Deposited(account="bob", amount=5)]).model_copy(
        update={"events": [{"type": "deposited", "account": "bob"}]})
    unchanged(funded_with_backups, funded_with_backups.fold(bad), IGNORED, before, rows)
    unknown = bad.model_copy(update={"events": [{"type": "money_printed", "amount": 10**9}]})
    unchanged(funded_with_backups, funded_with_backups.fold(unknown), IGNORED, before, rows)


# -- the hash chain --------------------------------------------------------------------------------

def test_rows_form_a_chain_from_genesis(funded_with_backups: Book) -> None:
    assert funded_with_backups.rows[0].prev_hash == GENESIS_HASH
    assert [r.seq for r in funded_with_backups.rows] == list(range(1, len(funded_with_backups.rows) + 1))
    for prev, row in zip(funded_with_backups.rows, funded_with_backups.rows[1:]):
        assert row.prev_hash == prev.hash
    assert funded_with_backups.state.head_hash == funded_with_backups.rows[-1].hash


def replay(rows) -> State:  # type: ignore[no-untyped-def]
    state = State()
    for row in rows:
        state = replay_row(state, row)
    return state


def test_replaying_the_rows_gives_the_same_state(funded_with_backups: Book) -> None:
    assert state_hash(replay(funded_with_backups.rows)) == state_hash(funded_with_backups.state)


def test_replay_detects_an_altered_payload(funded_with_backups: Book) -> None:
    rows = list(funded_with_backups.rows)
    last = rows[-1]
    rows[-1] = dataclasses.replace(last, payload={**last.payload, "amount": 10**6})
    with pytest.raises(ChainBroken, match=f"event {last.seq} was altered"):
        replay(rows)


def test_replay_detects_an_altered_reply(funded_with_backups: Book) -> None:
    rows = list(funded_with_backups.rows)
    rows[-1] = dataclasses.replace(rows[-1], reply={"account": "bob", "balance": 1})
    with pytest.raises(ChainBroken, match="was altered"):
        replay(rows)


def test_replay_detects_a_gap(funded_with_backups: Book) -> None:
    rows = funded_with_backups.rows[:1] + funded_with_backups.rows[2:]
    with pytest.raises(ChainBroken, match="gap in the store: seq 3 after 1"):
        replay(rows)


def test_replay_detects_a_wrong_previous_hash(funded_with_backups: Book) -> None:
    rows = list(funded_with_backups.rows)
    rows[2] = dataclasses.replace(rows[2], prev_hash="e" * 64)
    with pytest.raises(ChainBroken, match="previous hash differs"):
        replay(rows)


def test_replay_detects_a_forged_row_with_its_own_hash(funded_with_backups: Book) -> None:
    # A forger who recomputes the row's hash still breaks the next row's link.
    other = Book()
    other.register("bob")
    other.deposit("bob", 10**6)
    rows = list(funded_with_backups.rows)
    with pytest.raises(ChainBroken):
        replay(rows[:1] + other.rows[1:2] + rows[2:])
