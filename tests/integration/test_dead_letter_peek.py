"""The broker's look at the dead-letter queue, and its pipelined commands, against a real replica.

The dead letters are made as in production: bytes the primary cannot accept, published by a peer,
rejected by the replica to the dead-letter queue with its reason. The look is taken on the operator
role, as the console does.
"""
from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterator

import pika
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import commands as c
from broker.client import connect, peek_dead_letters, pipeline
from broker.envelope import seal
from broker.errors import BrokerRefused, ReplyTimeout
from broker.replies import parse_reply
from broker.topology import Names, declare
from console.gui.operator import read_dead_letters
from tests.conftest import Deployment, unique_prefix
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(90)


def _publish(deployment: Deployment, letters: list[tuple[bytes, str]]) -> None:
    """Publish raw bodies to the commands exchange as a peer, each with its correlation id."""
    conn = connect(deployment.url, name="acb-test-raw")
    try:
        ch = conn.channel()
        for body, ident in letters:
            ch.basic_publish(deployment.names.commands, "command", body,
                             pika.BasicProperties(correlation_id=ident, delivery_mode=2))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def dead(deployment: Deployment) -> Iterator[tuple[Deployment, list[str]]]:
    """Three dead letters in the deployment's queue: not JSON, a forged signature, not JSON again."""
    forged = seal(c.Deposit(account="mallory", amount=10**6), sender=c.OPERATOR, key=Ed25519PrivateKey.generate())
    letters = [(b"\x00\xffnot json{", uuid.uuid4().hex), (forged.to_bytes(), forged.id),
               (b"\xffstill not json", uuid.uuid4().hex)]
    _publish(deployment, letters)
    ids = [ident for _body, ident in letters]
    operator = deployment.roles.operator_url
    wait_for(lambda: peek_dead_letters(operator, deployment.names).count == 3, 20, "three dead letters")
    yield deployment, ids


def test_peek_shows_the_last_letters_with_the_primarys_reasons_and_takes_none(
        dead: tuple[Deployment, list[str]]) -> None:
    deployment, ids = dead
    url, names = deployment.roles.operator_url, deployment.names

    seen = peek_dead_letters(url, names, peek=2)

    assert seen.count == 3
    assert [letter.correlation_id for letter in seen.letters] == ids[1:]
    assert all(letter.replica == "r1" for letter in seen.letters)
    assert "does not verify" in seen.letters[0].reason and "not JSON" in seen.letters[1].reason
    assert seen.letters[1].body == b"\xffstill not json"
    # Nothing was acknowledged: every letter is back, and a second look sees all three again.
    again = peek_dead_letters(url, names, peek=10)
    assert again.count == 3
    assert sorted(letter.correlation_id for letter in again.letters) == sorted(ids)


def test_no_peek_when_the_count_is_the_one_already_known(dead: tuple[Deployment, list[str]]) -> None:
    deployment, _ids = dead
    url, names = deployment.roles.operator_url, deployment.names

    assert peek_dead_letters(url, names, peek=5, known_count=3).letters == ()
    assert peek_dead_letters(url, names, peek=5, known_count=3).count == 3
    assert len(peek_dead_letters(url, names, peek=5, known_count=2).letters) == 3
    assert peek_dead_letters(url, names).letters == ()  # no peek asked


def test_the_console_shows_sender_type_and_id_of_what_parses(dead: tuple[Deployment, list[str]]) -> None:
    deployment, ids = dead

    letters = read_dead_letters(deployment.roles.operator_url, deployment.names, peek=10)

    assert letters.count == 3
    by_id = {letter.command_id: letter for letter in letters.latest}
    assert set(by_id) == set(ids)
    forged = by_id[ids[1]]
    assert (forged.sender, forged.type, forged.replica) == (c.OPERATOR, "deposit", "r1")
    assert "does not verify" in forged.reason
    assert by_id[ids[0]].type == "unparseable" and by_id[ids[0]].sender == ""


def test_a_prefix_without_a_ledger_has_no_queue(deployment: Deployment) -> None:
    assert peek_dead_letters(deployment.admin_url, Names(unique_prefix()), peek=5).count is None


def test_a_refused_login_is_our_error(deployment: Deployment) -> None:
    parts = urllib.parse.urlsplit(deployment.roles.operator_url)
    url = parts._replace(netloc=f"nobody:wrong@{parts.hostname}:{parts.port}").geturl()
    with pytest.raises(BrokerRefused):
        peek_dead_letters(url, deployment.names)


# -- pipelined commands ------------------------------------------------------------------------


def test_pipeline_returns_every_answer_with_its_times(deployment: Deployment) -> None:
    deployment.client().register("pipe", "pipe-password")
    key = deployment.operator_key()
    envelopes = [seal(c.Deposit(account="pipe", amount=1), sender=c.OPERATOR, key=key) for _ in range(30)]
    before = deployment.state.balance("pipe")

    run = pipeline(deployment.url, deployment.names, envelopes, window=4, timeout=30)

    assert sorted(a.id for a in run.answers) == sorted(e.id for e in envelopes)
    replies = [parse_reply(a.body) for a in run.answers]
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    assert len({r.seq for r in replies}) == len(envelopes)
    assert all(run.started <= a.sent_at <= a.answered_at <= run.finished for a in run.answers)
    assert run.finished == max(a.answered_at for a in run.answers) and run.seconds > 0
    wait_for(lambda: deployment.state.balance("pipe") == before + len(envelopes), 10, "the deposits applied")


def test_pipeline_without_a_ledger_times_out_with_the_count(deployment: Deployment) -> None:
    # The topology of a prefix no replica serves: commands queue up and nobody answers.
    names = Names(unique_prefix())
    conn = connect(deployment.admin_url, name="acb-test-declare")
    try:
        declare(conn.channel(), names)
    finally:
        conn.close()
    key = deployment.operator_key()
    envelopes = [seal(c.Deposit(account="pipe", amount=1), sender=c.OPERATOR, key=key) for _ in range(3)]

    with pytest.raises(ReplyTimeout, match="3 of 3 pipelined commands got no answer within 1 s"):
        pipeline(deployment.admin_url, names, envelopes, timeout=1.0)
