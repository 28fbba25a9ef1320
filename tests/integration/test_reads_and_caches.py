"""Reads that wait for a sequence do not block other reads; cached answers need the sender's signature."""
from __future__ import annotations

import time

from broker import commands as c
from broker import queries as q
from broker.envelope import seal
from broker.errors import BadSignature, Lagging
from tests.conftest import Deployment


def test_a_query_waiting_for_a_far_sequence_does_not_stall_the_others(deployment: Deployment) -> None:
    stalled = deployment.broker()
    other = deployment.client()
    far = seal(q.Search(text="x"), sender="anonymous", key=None, kind="query", min_seq=10**12)
    # Fire the far query without waiting, then time an ordinary query behind it.
    stalled._ensure().basic_publish(deployment.names.reads, "query", far.to_bytes())
    started = time.monotonic()
    other.search("")
    assert time.monotonic() - started < 1.0
    # The far query itself is answered, after the wait, with a coded `lagging`.
    try:
        stalled.request(far, timeout=15, attempt_timeout=10).unwrap()
    except Lagging as exc:
        assert "asked for 1000000000000" in str(exc)
    else:
        raise AssertionError("a query for an unreached sequence must say it lags")


def test_a_stranger_reusing_a_command_id_gets_no_cached_answer(deployment: Deployment) -> None:
    owner = deployment.client()
    owner.register("hana", "hana-secret-1")
    deposit = seal(c.Deposit(account="hana", amount=70), sender=c.OPERATOR, key=deployment.operator_key())
    first = deployment.broker().request(deposit).unwrap()
    # Same id, same body, no signature: the first answer is not handed out.
    unsigned = seal(c.Deposit(account="hana", amount=70), sender=c.OPERATOR, key=None, id=deposit.id,
                    issued_at=deposit.issued_at)
    reply = deployment.broker().request(unsigned)
    assert not reply.ok and reply.error is not None and reply.error["code"] == BadSignature.code
    # The owner's retry still gets the first answer, and the money moved once.
    again = deployment.broker().request(deposit).unwrap()
    assert (again.seq, again.result) == (first.seq, first.result)
    assert owner.balance()["available"] == 70
