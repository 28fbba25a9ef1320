"""The primary's intake rules (ledger.intake), with no broker: duplicates, refusals remembered, dead letters, ticks."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel

from broker import commands as c
from broker import errors
from broker import queries as q
from broker.envelope import seal
from ledger import events as ev
from ledger import intake
from ledger.intake import (
    DECIDED,
    DUPLICATE,
    FAILED,
    REFUSED,
    REJECTED,
    REMEMBERED,
    SKIPPED,
    STRANGER,
    TICK,
    Incoming,
    Plan,
    Refusals,
    Writer,
    decide_batch,
    turn_of,
)
from ledger.log import ACCEPTED
from ledger.model import OPEN
from tests.conftest import Book


def writer(book: Book) -> Writer:
    return Writer(book.writer, book.state.epoch, book.replica_keys[book.writer], book.operator_public, book.ledger_key)


def command(book: Book, payload: BaseModel, sender: str, **kw: Any) -> Incoming:
    env = book.envelope(payload, sender, **kw)
    return Incoming(env.to_bytes(), env.id)


def run(book: Book, *messages: Incoming, refusals: Refusals | None = None, now_ms: int | None = None) -> Plan:
    """Decide a batch against the book's state, and keep what it writes (as the primary does once it is logged)."""
    ctx = dataclasses.replace(book.context(), now_ms=book.now_ms if now_ms is None else now_ms)
    memory = refusals if refusals is not None else Refusals()
    plan = decide_batch(book.state, list(messages), ctx, writer(book), memory)
    for entry in plan.entries:
        assert book.fold(entry).verdict == ACCEPTED
    assert book.state == plan.state
    memory.remember(plan.refusals)
    return plan


TICK_MESSAGE = Incoming(b"{}", tick=True)


# -- duplicates ----------------------------------------------------------------------------------

def test_a_command_applied_already_is_answered_from_the_log_not_decided_again(stocked_book: Book) -> None:
    deposit = command(stocked_book, c.Deposit(account="bob", amount=50), c.OPERATOR)
    [first] = run(stocked_book, deposit).verdicts
    assert first.kind == DECIDED and first.entry is not None
    seq = stocked_book.state.seq
    plan = run(stocked_book, deposit)  # the client's retry after a lost answer
    [again] = plan.verdicts
    assert again.kind == DUPLICATE and again.entry is None and plan.entries == ()
    assert again.reply is not None and again.reply.ok
    assert again.reply.seq == seq and again.reply.result == first.reply.result  # type: ignore[union-attr]
    assert stocked_book.state.balance("bob") == 5050


def test_a_retry_within_the_same_batch_is_a_duplicate_of_the_first(stocked_book: Book) -> None:
    deposit = command(stocked_book, c.Deposit(account="bob", amount=50), c.OPERATOR)
    plan = run(stocked_book, deposit, deposit)
    assert [v.kind for v in plan.verdicts] == [DECIDED, DUPLICATE]
    assert len(plan.entries) == 1
    assert stocked_book.state.balance("bob") == 5050


def test_another_command_under_a_used_id_is_refused_not_given_the_first_ones_answer(stocked_book: Book) -> None:
    run(stocked_book, command(stocked_book, c.Deposit(account="bob", amount=50), c.OPERATOR, id="shared-id-0001"))
    [verdict] = run(stocked_book, command(stocked_book, c.Deposit(account="carol", amount=70), c.OPERATOR,
                                    id="shared-id-0001")).verdicts
    assert verdict.kind == DUPLICATE and verdict.reply is not None and not verdict.reply.ok
    assert isinstance(verdict.error, errors.IdInUse)
    assert stocked_book.state.balance("carol") == 300


# -- refusals remembered -------------------------------------------------------------------------

def test_a_refused_command_sent_again_gets_the_same_refusal_even_once_it_would_pass(stocked_book: Book) -> None:
    memory = Refusals()
    buy = command(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "carol")
    [refused] = run(stocked_book, buy, refusals=memory).verdicts
    assert refused.kind == REFUSED and isinstance(refused.error, errors.InsufficientFunds)
    assert refused.dead_letter is None  # a business refusal is an answer, not a dead letter
    stocked_book.deposit("carol", 5000)
    [again] = run(stocked_book, buy, refusals=memory).verdicts
    assert again.kind == REMEMBERED and again.reply == refused.reply
    assert "s-1" not in stocked_book.state.sales


def test_a_refusal_is_remembered_within_its_own_batch(stocked_book: Book) -> None:
    buy = command(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "carol")
    plan = run(stocked_book, buy, command(stocked_book, c.Deposit(account="carol", amount=5000), c.OPERATOR), buy)
    assert [v.kind for v in plan.verdicts] == [REFUSED, DECIDED, REMEMBERED]
    assert len(plan.refusals) == 1


def test_the_rules_only_read_the_memory(stocked_book: Book) -> None:
    memory = Refusals()
    buy = command(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "carol")
    plan = decide_batch(stocked_book.state, [buy], stocked_book.context(), writer(stocked_book), memory)
    assert len(memory) == 0 and len(plan.refusals) == 1


def test_a_stranger_cannot_plant_a_refusal_under_someone_elses_id(stocked_book: Book) -> None:
    memory = Refusals()
    forged = command(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "bob", id="bobs-id-00001",
                     key=stocked_book.members["carol"].sign)
    [verdict] = run(stocked_book, forged, refusals=memory).verdicts
    assert verdict.kind == REJECTED and isinstance(verdict.error, errors.BadSignature)
    assert len(memory) == 0
    [real] = run(stocked_book, command(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "bob",
                                 id="bobs-id-00001"), refusals=memory).verdicts
    assert real.kind == DECIDED and stocked_book.state.sales["s-1"].status == OPEN


def test_the_memory_forgets_the_oldest_beyond_its_limit(stocked_book: Book) -> None:
    memory = Refusals(limit=2)
    buys = [command(stocked_book, c.OpenSale(sale_id=f"s-{i}", doc_id="doc-1", price=1000), "carol") for i in range(3)]
    for buy in buys:
        run(stocked_book, buy, refusals=memory)
    assert len(memory) == 2
    stocked_book.deposit("carol", 5000)
    kinds = [run(stocked_book, buy, refusals=memory).verdicts[0].kind for buy in buys]
    assert kinds == [DECIDED, REMEMBERED, REMEMBERED]


# -- dead letters --------------------------------------------------------------------------------

@pytest.mark.parametrize("body, reason", [
    (b"\xff not json", "not JSON"),
    (b'{"body": {"kind": "command"}}', "payload"),
])
def test_bytes_that_do_not_parse_are_dead_lettered_and_answered(stocked_book: Book, body: bytes, reason: str) -> None:
    [verdict] = run(stocked_book, Incoming(body, "corr-1")).verdicts
    assert verdict.kind == REJECTED and verdict.dead_letter is not None and reason in verdict.dead_letter
    assert verdict.reply is not None and verdict.reply.id == "corr-1" and not verdict.reply.ok


def test_whatever_a_parser_raises_the_message_is_dead_lettered_and_the_batch_goes_on(
        stocked_book: Book, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = intake.open_envelope

    def deep(raw: bytes) -> Any:
        if raw == b"[[[[":
            raise RecursionError("too deep")
        return real_open(raw)

    monkeypatch.setattr(intake, "open_envelope", deep)
    plan = run(stocked_book, Incoming(b"[[[[", "corr-2"), command(stocked_book, c.Deposit(account="bob", amount=1),
                                                                  c.OPERATOR))
    bad, deposit = plan.verdicts
    assert bad.kind == REJECTED and bad.dead_letter is not None and "unparseable" in bad.dead_letter
    assert bad.reply is not None and bad.reply.error is not None and bad.reply.error["code"] == "malformed"
    assert deposit.kind == DECIDED


def test_a_query_sent_to_the_commands_queue_is_dead_lettered(stocked_book: Book) -> None:
    env = seal(q.LedgerInfo(), sender="anonymous", key=None, kind="query")
    [verdict] = run(stocked_book, Incoming(env.to_bytes(), env.id)).verdicts
    assert verdict.kind == REJECTED and isinstance(verdict.error, errors.Malformed)
    assert verdict.dead_letter is not None and "query" in verdict.dead_letter


def test_a_forged_signature_is_dead_lettered(stocked_book: Book) -> None:
    forged = command(stocked_book, c.Deposit(account="bob", amount=10), c.OPERATOR, key=stocked_book.members["bob"].sign)
    [verdict] = run(stocked_book, forged).verdicts
    assert verdict.dead_letter is not None and verdict.kind == REJECTED


def test_a_bug_in_deciding_is_dead_lettered_answered_internal_and_the_batch_goes_on(
        stocked_book: Book, monkeypatch: pytest.MonkeyPatch) -> None:
    real_decide = intake.decide

    def buggy(state: Any, env: Any, ctx: Any, *, authenticated: bool = False) -> Any:
        if env.payload.type == "set_fee":
            raise KeyError("a bug")
        return real_decide(state, env, ctx, authenticated=authenticated)

    monkeypatch.setattr(intake, "decide", buggy)
    plan = run(stocked_book, command(stocked_book, c.SetFee(bps=200), c.OPERATOR),
               command(stocked_book, c.Deposit(account="bob", amount=1), c.OPERATOR))
    failed, deposit = plan.verdicts
    assert failed.kind == FAILED and failed.dead_letter is not None and "internal error" in failed.dead_letter
    assert failed.reply is not None and failed.reply.error is not None and failed.reply.error["code"] == "internal"
    assert plan.refusals == ()  # a bug is not remembered: once fixed, a retry is decided
    assert deposit.kind == DECIDED and stocked_book.state.balance("bob") == 5001


# -- ticks ---------------------------------------------------------------------------------------

def test_a_tick_expires_overdue_holds_once_per_batch(stocked_book: Book) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    late = stocked_book.now_ms + stocked_book.hold_ttl_ms + 1
    plan = run(stocked_book, TICK_MESSAGE, TICK_MESSAGE, now_ms=late)
    assert [v.kind for v in plan.verdicts] == [TICK, SKIPPED]
    [expiry] = plan.entries
    assert plan.verdicts[0].entry == expiry and plan.verdicts[0].reply is None
    assert [type(e) for e in plan.verdicts[0].events] == [ev.SaleVoided]
    assert stocked_book.state.balance("bob") == 5000 and plan.answered == 0


def test_a_tick_before_the_deadline_writes_nothing(stocked_book: Book) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    plan = run(stocked_book, TICK_MESSAGE, now_ms=stocked_book.now_ms + 1)
    assert [v.kind for v in plan.verdicts] == [TICK] and plan.entries == ()
    assert stocked_book.state.sales["s-1"].status == OPEN


def test_a_command_after_a_tick_in_the_batch_sees_the_hold_released(stocked_book: Book) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    stocked_book.deposit("carol", 700)
    late = stocked_book.now_ms + stocked_book.hold_ttl_ms + 1
    buy = command(stocked_book, c.OpenSale(sale_id="s-2", doc_id="doc-1", price=1000), "bob", issued_at=late)
    plan = run(stocked_book, TICK_MESSAGE, buy, now_ms=late)
    assert [v.kind for v in plan.verdicts] == [TICK, DECIDED]
    assert [e.expected_seq for e in plan.entries] == [plan.entries[0].expected_seq, plan.entries[0].expected_seq + 1]


# -- the batch as a whole ------------------------------------------------------------------------

def test_entries_chain_and_answers_wait_for_their_seq(stocked_book: Book) -> None:
    plan = run(stocked_book, command(stocked_book, c.Deposit(account="bob", amount=1), c.OPERATOR),
               command(stocked_book, c.Deposit(account="carol", amount=2), c.OPERATOR))
    first, second = plan.entries
    assert second.expected_seq == first.expected_seq + 1
    assert all(v.reply is not None and v.reply.seq is None for v in plan.verdicts)  # filled in once written
    assert set(plan.folds) == {first.entry_id, second.entry_id}
    assert plan.state.balance("carol") == 302 and plan.answered == 2


def test_a_command_with_no_events_is_answered_at_the_current_seq(stocked_book: Book) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    key = stocked_book.escrow("s-1")
    # The same escrow sent again under a new id changes nothing: decided, answered, nothing written.
    [verdict] = run(stocked_book, command(stocked_book, stocked_book.escrow_command("s-1", key), "alice")).verdicts
    assert verdict.kind == DECIDED and verdict.entry is None and verdict.events == ()
    assert verdict.reply is not None and verdict.reply.seq == stocked_book.state.seq


def test_whose_turn_a_command_waits_for(stocked_book: Book) -> None:
    bob = command(stocked_book, c.Deposit(account="bob", amount=1), "bob").body
    operator = command(stocked_book, c.Deposit(account="bob", amount=1), c.OPERATOR).body
    nobody = command(stocked_book, c.Deposit(account="bob", amount=1), "mallory", key=None).body
    assert turn_of(bob, stocked_book.state) == "user:bob"
    assert turn_of(operator, stocked_book.state) == f"user:{c.OPERATOR}"
    assert turn_of(nobody, stocked_book.state) == STRANGER
    assert turn_of(b"garbage", stocked_book.state) == STRANGER


def test_the_primarys_own_look_expires_overdue_holds_with_no_tick_in_the_batch(stocked_book: Book) -> None:
    # Under a backlog ticks wait (and expire) in the queue: the primary asks the batch to look by itself.
    stocked_book.open_sale("bob", "s-1", "doc-1")
    late = stocked_book.now_ms + stocked_book.hold_ttl_ms + 1
    deposit = command(stocked_book, c.Deposit(account="carol", amount=5), c.OPERATOR, issued_at=late)
    ctx = dataclasses.replace(stocked_book.context(), now_ms=late)
    plan = decide_batch(stocked_book.state, [deposit, TICK_MESSAGE], ctx, writer(stocked_book), Refusals(),
                        look_at_holds=True)
    assert [v.kind for v in plan.verdicts] == [DECIDED, SKIPPED]  # the look has no verdict; the tick is not needed
    expiry, credit = plan.entries
    assert [e["type"] for e in expiry.events] == ["sale_voided"] and credit.expected_seq == expiry.expected_seq + 1
    for entry in plan.entries:
        assert stocked_book.fold(entry).verdict == ACCEPTED
    assert stocked_book.state.balance("bob") == 5000 and stocked_book.state.balance("carol") == 305


def test_no_look_at_the_holds_unless_asked_or_ticked(stocked_book: Book) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    late = stocked_book.now_ms + stocked_book.hold_ttl_ms + 1
    plan = run(stocked_book, command(stocked_book, c.Deposit(account="carol", amount=5), c.OPERATOR, issued_at=late),
               now_ms=late)
    assert len(plan.entries) == 1 and stocked_book.state.sales["s-1"].status == OPEN
