"""Graceful overload, without a broker: deadlines, expiry, cheap copies, busy, backoff, a command's fate.

- An envelope's deadline is signed; old envelopes have none and never expire.
- The intake answers a command past its deadline ``expired`` and never applies it; one within the
  grace is decided whole; a late copy of an applied command gets the log's answer, not ``expired``.
- A copy of bytes that authenticated is answered without being parsed again.
- Backoff has jitter (an injected random source draws across the whole window) and caps.
- ``command_status`` tells applied, expired and unknown apart.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any

import pika
import pytest
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout
from pydantic import BaseModel

from broker import commands as c
from broker import errors
from broker import queries as q
from broker.client import BUSY_BACKOFF, RESEND, Backoff, connect
from broker.envelope import DEADLINE_GRACE_MS, Envelope, expired, open_envelope, seal, verify
from ledger import intake
from ledger.intake import DECIDED, DUPLICATE, EXPIRED, REFUSED, REMEMBERED, Incoming, Plan, Refusals, Writer
from ledger.log import ACCEPTED
from ledger.reads import STATUS_MARGIN_MS, command_status
from tests.conftest import Book


def _signed(book: Book, payload: BaseModel, sender: str, *, deadline: int | None, issued_at: int | None = None,
            **kw: Any) -> Envelope:
    key = book.operator if sender == c.OPERATOR else book.members[sender].sign
    at = book.now_ms if issued_at is None else issued_at
    return seal(payload, sender=sender, key=key, issued_at=at, deadline=deadline, **kw)


def _run(book: Book, *envs: Envelope, now_ms: int, refusals: Refusals | None = None) -> Plan:
    """Decide a batch at ``now_ms`` and keep what it writes, as the primary does."""
    ctx = dataclasses.replace(book.context(), now_ms=now_ms)
    writer = Writer(book.writer, book.state.epoch, book.replica_keys[book.writer], book.operator_public,
                    book.ledger_key)
    memory = refusals if refusals is not None else Refusals()
    plan = intake.decide_batch(book.state, [Incoming(e.to_bytes(), e.id) for e in envs], ctx, writer, memory)
    for entry in plan.entries:
        assert book.fold(entry).verdict == ACCEPTED
    memory.remember(plan.refusals, plan.copies)
    return plan


# -- the envelope ----------------------------------------------------------------------------------

def test_a_deadline_is_signed_and_an_old_envelope_has_none(book: Book) -> None:
    member = book.register("ann")
    env = seal(c.ChangePrice(doc_id="d", price=5), sender="ann", key=member.sign, deadline=book.now_ms + 30_000)
    opened = open_envelope(env.to_bytes())
    assert opened.deadline == book.now_ms + 30_000
    verify(opened, bytes.fromhex(member.sign_public))
    stretched = dict(env.body, deadline=env.body["deadline"] + 60_000)  # a stranger on the way gives it longer
    forged = dataclasses.replace(opened, body=stretched, deadline=stretched["deadline"])
    with pytest.raises(errors.BadSignature):
        verify(forged, bytes.fromhex(member.sign_public))
    old = open_envelope(seal(c.ChangePrice(doc_id="d", price=5), sender="ann", key=member.sign).to_bytes())
    assert old.deadline is None and "deadline" not in old.body
    assert not expired(old, 10**15)


def test_a_deadline_before_its_issue_does_not_parse(book: Book) -> None:
    member = book.register("ann")
    env = seal(c.ChangePrice(doc_id="d", price=5), sender="ann", key=member.sign, issued_at=1_000, deadline=999)
    with pytest.raises(errors.Malformed, match="deadline"):
        open_envelope(env.to_bytes())


def test_expiry_allows_the_grace_for_clocks_that_disagree(book: Book) -> None:
    member = book.register("ann")
    env = seal(c.ChangePrice(doc_id="d", price=5), sender="ann", key=member.sign, issued_at=0, deadline=10_000)
    assert not expired(env, 10_000 + DEADLINE_GRACE_MS)
    assert expired(env, 10_000 + DEADLINE_GRACE_MS + 1)


# -- the intake --------------------------------------------------------------------------------------

def test_an_expired_command_is_answered_expired_and_never_applied(stocked_book: Book) -> None:
    before = stocked_book.state.balance("bob")
    late = _signed(stocked_book, c.Deposit(account="bob", amount=50), c.OPERATOR, deadline=stocked_book.now_ms)
    plan = _run(stocked_book, late, now_ms=stocked_book.now_ms + DEADLINE_GRACE_MS + 1)
    [verdict] = plan.verdicts
    assert verdict.kind == EXPIRED and plan.entries == ()
    assert verdict.reply is not None and not verdict.reply.ok
    assert isinstance(errors.rejection(verdict.reply.error or {}), errors.Expired)
    assert stocked_book.state.balance("bob") == before and late.id not in stocked_book.state.commands
    # Sent again later (a redelivery), it is still not applied.
    [again] = _run(stocked_book, late, now_ms=stocked_book.now_ms + 60_000).verdicts
    assert again.kind in (EXPIRED, REMEMBERED) and stocked_book.state.balance("bob") == before


def test_a_command_within_its_deadline_is_decided_whole_on_the_batch_clock(stocked_book: Book) -> None:
    before = stocked_book.state.balance("bob")
    deadline = stocked_book.now_ms
    just = _signed(stocked_book, c.Deposit(account="bob", amount=50), c.OPERATOR, deadline=deadline)
    plan = _run(stocked_book, just, now_ms=deadline + DEADLINE_GRACE_MS)
    [verdict] = plan.verdicts
    assert verdict.kind == DECIDED and len(plan.entries) == 1
    assert plan.entries[0].at_ms == deadline + DEADLINE_GRACE_MS  # the entry carries the clock it was decided on
    assert stocked_book.state.balance("bob") == before + 50


def test_a_late_copy_of_an_applied_command_gets_the_logs_answer_not_expired(stocked_book: Book) -> None:
    deposit = _signed(stocked_book, c.Deposit(account="bob", amount=50), c.OPERATOR,
                      deadline=stocked_book.now_ms + 1_000)
    [first] = _run(stocked_book, deposit, now_ms=stocked_book.now_ms).verdicts
    assert first.kind == DECIDED
    seq = stocked_book.state.seq
    # Past the deadline, a fresh memory (a new primary): the full path, which answers from the log.
    [late] = _run(stocked_book, deposit, now_ms=stocked_book.now_ms + 60_000).verdicts
    assert late.kind == DUPLICATE and late.reply is not None and late.reply.ok and late.reply.seq == seq


def test_a_copy_of_authenticated_bytes_is_answered_without_parsing_them(stocked_book: Book,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    memory = Refusals()
    deposit = _signed(stocked_book, c.Deposit(account="bob", amount=50), c.OPERATOR, deadline=None)
    refused = _signed(stocked_book, c.Deposit(account="bob", amount=-5), c.OPERATOR, deadline=None)
    kinds = [v.kind for v in _run(stocked_book, deposit, refused, now_ms=stocked_book.now_ms,
                                  refusals=memory).verdicts]
    assert kinds == [DECIDED, REFUSED]
    seq = stocked_book.state.seq

    def no_parsing(_raw: bytes) -> Envelope:
        raise AssertionError("a copy was parsed again")

    monkeypatch.setattr(intake, "open_envelope", no_parsing)
    plan = _run(stocked_book, deposit, refused, now_ms=stocked_book.now_ms, refusals=memory)
    assert [v.kind for v in plan.verdicts] == [DUPLICATE, REMEMBERED] and plan.entries == ()
    assert plan.verdicts[0].reply is not None and plan.verdicts[0].reply.seq == seq
    assert stocked_book.state.balance("bob") == 5050


def test_bytes_that_did_not_authenticate_are_not_remembered_as_copies(stocked_book: Book) -> None:
    memory = Refusals()
    forged = _signed(stocked_book, c.Deposit(account="bob", amount=50), c.OPERATOR, deadline=None)
    forged = seal(forged.payload, sender=c.OPERATOR, key=stocked_book.members["bob"].sign, issued_at=forged.issued_at)
    plan = _run(stocked_book, forged, now_ms=stocked_book.now_ms, refusals=memory)
    assert plan.copies == () and memory.copy_of("0" * 64) is None


def test_a_command_shed_over_its_share_is_told_busy() -> None:
    reply = intake.shed_reply("abc12345", "r1")
    assert not reply.ok and reply.id == "abc12345"
    assert isinstance(errors.rejection(reply.error or {}), errors.Busy)
    budget = intake.busy_budget()
    told = sum(budget.allow("user:flood", 0.0) for _ in range(10 * intake.BUSY_ANSWERS_BURST))
    assert told == intake.BUSY_ANSWERS_BURST  # a flood under one name earns a bounded number of signatures
    assert budget.allow("user:hana", 0.0)  # and does not spend anyone else's


# -- backoff ---------------------------------------------------------------------------------------

def test_backoff_draws_across_the_whole_window_and_grows_to_its_cap() -> None:
    low, high = Backoff(base=0.25, cap=5.0, rng=lambda: 0.0), Backoff(base=0.25, cap=5.0, rng=lambda: 0.999999)
    assert [low.delay(n) for n in range(6)] == [0.0] * 6  # full jitter: clients turned away together spread out
    assert [round(high.delay(n), 3) for n in range(8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert high.delay(10_000) <= 5.0  # no overflow, still capped


def test_backoff_with_a_floor_keeps_a_minimum_wait() -> None:
    draws = iter([0.0, 0.999999, 0.5])
    resend = dataclasses.replace(RESEND, rng=lambda: next(draws))
    assert resend.delay(0) == RESEND.ceiling(0) / 2
    assert resend.delay(1) == pytest.approx(RESEND.ceiling(1))
    assert resend.delay(9) == pytest.approx(0.75 * RESEND.cap)
    assert RESEND.ceiling(0) >= 5.0 and BUSY_BACKOFF.cap <= 5.0  # a long wait before a blind resend; short after busy


def test_backoff_spreads_a_crowd() -> None:
    rng = random.Random(7)
    crowd = Backoff(base=0.25, cap=5.0, rng=rng.random)
    pauses = [crowd.delay(4) for _ in range(1000)]
    assert 0.0 <= min(pauses) < 0.2 and 3.8 < max(pauses) <= 4.0
    assert len({round(p, 2) for p in pauses}) > 300  # not in step


# -- a command's fate --------------------------------------------------------------------------------

def test_command_status_tells_applied_expired_and_unknown(stocked_book: Book) -> None:
    deposit = _signed(stocked_book, c.Deposit(account="bob", amount=50), c.OPERATOR, deadline=None)
    _run(stocked_book, deposit, now_ms=stocked_book.now_ms)
    state, now = stocked_book.state, stocked_book.now_ms
    applied = command_status(state, q.CommandStatus(command_id=deposit.id), now)
    assert applied["status"] == "applied" and applied["applied_seq"] == state.seq
    assert applied["result"] == state.commands[deposit.id]["result"]
    unknown = command_status(state, q.CommandStatus(command_id="f" * 32, deadline_ms=now - 1_000), now)
    assert unknown["status"] == "unknown"  # not yet past deadline, grace and margin: it might still apply
    gone = now + DEADLINE_GRACE_MS + STATUS_MARGIN_MS + 1
    assert command_status(state, q.CommandStatus(command_id="f" * 32, deadline_ms=now), gone)["status"] == "expired"
    assert command_status(state, q.CommandStatus(command_id="f" * 32), gone)["status"] == "unknown"  # no deadline
    found = command_status(state, q.CommandStatus(command_id="e" * 32), now,
                           commands=lambda i: {"seq": 3, "result": {"x": 1}} if i == "e" * 32 else None)
    assert found["status"] == "applied" and found["applied_seq"] == 3  # older than the state's window: the store


def test_a_broker_too_busy_to_finish_the_handshake_is_unavailable_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen at 25,000 users: pika raises its own AMQPConnectorStackTimeout, which is not an AMQPError, and
    # every caller that handles BrokerError (senders, the status monitor) died of it instead of trying again.
    def too_busy(_params: Any) -> Any:
        raise AMQPConnectorStackTimeout("Timeout during AMQP handshake")

    monkeypatch.setattr(pika, "BlockingConnection", too_busy)
    with pytest.raises(errors.BrokerUnavailable, match="AMQPConnectorStackTimeout"):
        connect("amqp://u:secret@127.0.0.1:5672/x")
