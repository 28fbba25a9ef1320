"""Overload against a real replica: every request gets an answer or a clear `busy`, nothing acknowledged is lost.

- One sender floods far past its share of the primary's intake: each command is answered (applied, or
  ``busy`` at once), and sent again through the client library, which backs off: in the end every one is
  applied exactly once and the money adds up.
- A command that reached the ledger after its sender's deadline is answered ``expired``, is not applied,
  and a backup's log says so when asked by its id (``CommandStatus``); an applied one's status is its seq.
"""
from __future__ import annotations

import time
from typing import Any

import pika
import pytest

from broker import commands as c
from broker import errors
from broker.envelope import DEADLINE_GRACE_MS, Envelope, now_ms, seal
from broker.replies import parse_reply
from ledger.reads import STATUS_MARGIN_MS
from tests.conftest import Deployment
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

FLOOD = 500  # twice the primary's share per sender (ledger.primary._PER_CHANNEL), within its busy budget
_REPLY_TO = "amq.rabbitmq.reply-to"


def _flood(url: str, exchange: str, envs: list[Envelope], wait: float) -> dict[str, tuple[float, dict[str, Any]]]:
    """Publish every envelope at once on one channel; the first answer per id and how long it took (s)."""
    sent: dict[str, float] = {}
    answers: dict[str, tuple[float, dict[str, Any]]] = {}

    def on_reply(_ch: Any, _method: Any, props: Any, body: bytes) -> None:
        if props.correlation_id in sent and props.correlation_id not in answers:
            reply = parse_reply(body)
            answers[props.correlation_id] = (time.monotonic() - sent[props.correlation_id], reply.model_dump())

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.basic_consume(_REPLY_TO, on_reply, auto_ack=True)
        for env in envs:
            sent[env.id] = time.monotonic()
            ch.basic_publish(exchange, "command", env.to_bytes(), pika.BasicProperties(
                reply_to=_REPLY_TO, correlation_id=env.id, delivery_mode=2, type="command"))
        end = time.monotonic() + wait
        while len(answers) < len(envs) and time.monotonic() < end:
            conn.process_data_events(time_limit=0.1)
    finally:
        conn.close()
    return answers


def _code(answer: dict[str, Any]) -> str:
    return "ok" if answer["ok"] else str((answer.get("error") or {}).get("code"))


def test_a_flood_past_its_share_is_answered_busy_backs_off_and_loses_nothing(deployment: Deployment) -> None:
    operator = deployment.operator_key()
    client = deployment.client()
    client.register("flo", "flo's password 1")
    before = deployment.state.balance("flo")
    envs = [seal(c.Deposit(account="flo", amount=1 + i), sender=c.OPERATOR, key=operator,
                 deadline=now_ms() + 120_000) for i in range(FLOOD)]
    answers = _flood(deployment.url, deployment.names.commands, envs, wait=60)

    codes = [_code(a) for _t, a in answers.values()]
    assert len(answers) == FLOOD, f"{FLOOD - len(answers)} of {FLOOD} commands got no answer at all"
    assert set(codes) <= {"ok", "busy"}, f"unexpected answers: {sorted(set(codes))}"
    assert codes.count("busy") > 0, "a flood twice its share was never told busy"
    busy_waits = sorted(t for t, a in answers.values() if _code(a) == "busy")
    assert busy_waits[len(busy_waits) // 2] < 5.0, f"`busy` took {busy_waits[len(busy_waits) // 2]:.1f} s (median)"

    # What was told busy is sent again, same bytes, by the client library: it backs off and gets through.
    broker = deployment.broker()
    for env in envs:
        if _code(answers[env.id][1]) != "ok":
            assert broker.request(env, timeout=60).unwrap().ok
    # Copies of the applied ones (a client's blind resend) are answered from the log, not applied again.
    for env in envs[:50]:
        assert broker.request(env, timeout=30).unwrap().ok

    state = deployment.state
    assert all(env.id in state.commands for env in envs), "an acknowledged command is missing from the log"
    seqs = [state.commands[env.id]["seq"] for env in envs]
    assert len(set(seqs)) == FLOOD, "two commands share one log entry"
    assert state.balance("flo") - before == sum(1 + i for i in range(FLOOD)), "a deposit was lost or doubled"


def test_an_expired_command_is_not_applied_and_its_status_says_so(deployment: Deployment) -> None:
    operator = deployment.operator_key()
    client = deployment.client()
    client.register("exp", "exp's password 1")
    long_ago = now_ms() - 60_000
    late = seal(c.Deposit(account="exp", amount=700), sender=c.OPERATOR, key=operator, issued_at=long_ago,
                deadline=long_ago + DEADLINE_GRACE_MS)
    reply = deployment.broker().request(late, timeout=20)
    with pytest.raises(errors.Expired, match="after its sender's deadline"):
        reply.unwrap()
    assert late.id not in deployment.state.commands and deployment.state.balance("exp") == 0

    assert client.command_status(late.id, late.deadline).status == "expired"
    assert client.command_status(late.id).status == "unknown"  # without the deadline, no replica can vouch

    fresh = seal(c.Deposit(account="exp", amount=5), sender=c.OPERATOR, key=operator,
                 deadline=now_ms() + 30_000)
    seq = deployment.broker().request(fresh, timeout=20).unwrap().seq
    wait_for(lambda: deployment.state.seq >= (seq or 0), 10, "the replica to apply the deposit")
    status = client.command_status(fresh.id, fresh.deadline)
    assert status.status == "applied" and status.applied_seq == seq and status.result is not None
    assert deployment.state.balance("exp") == 5
    # A replica vouches for `expired` only well past the deadline: a command just late is still `unknown`.
    recent = now_ms() - DEADLINE_GRACE_MS - STATUS_MARGIN_MS // 2
    assert client.command_status("a" * 32, recent).status == "unknown"
