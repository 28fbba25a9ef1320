"""A stored event keeps the bytes its writer hashed and signed, whatever the reading code would write today.

An older writer's entry (no ``memo``, no ``schema_version``, its keys in another order, no ``reply`` key at
all) or an event of an older schema version is stored as written, byte for byte; the hash chain and the
signatures still verify when the store is read back, and replay parses those bytes (upcasting on the way).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from broker import commands as c
from broker.codec import canonical
from broker.trust import tagged
from ledger import events as ev
from ledger.audit import audit, replay
from ledger.chain import chain_hash
from ledger.log import ACCEPTED, LogBatch, LogEntry
from ledger.model import State, state_hash
from ledger.store import EVENTS, Store
from tests.conftest import Book


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield s
    s.close()


def _as_an_older_writer_wrote_it(book: Book, amount: int, event: dict[str, Any]) -> tuple[LogEntry, dict[str, Any]]:
    """A deposit entry signed over the writer's own dict (no ``reply`` key), received as loosely formatted JSON."""
    env = book.envelope(c.Deposit(account="bob", amount=amount), c.OPERATOR)
    written: dict[str, Any] = {
        "events": [event], "command": env.wire(), "command_id": env.id, "at_ms": book.now_ms,
        "prev_hash": book.state.head_hash, "expected_seq": book.state.seq + 1, "writer": book.writer,
        "epoch": book.state.epoch, "entry_id": f"older-{amount}",
    }
    written["signature"] = book.replica_keys[book.writer].sign(tagged("log-entry", canonical(written))).hex()
    body = json.dumps({"entries": [written], "type": "log_batch", "schema_version": 1}, indent=2).encode()
    return LogBatch.model_validate_json(body).entries[0], written


def _stored(store: Store, column: str, seq: int) -> bytes:
    with store.engine.connect() as conn:
        return bytes(conn.execute(sa.select(EVENTS.c[column]).where(EVENTS.c.seq == seq)).scalar_one())


def test_an_older_writers_event_is_stored_as_written_and_verifies_after_reload(book: Book, store: Store) -> None:
    book.register("bob")
    event = {"amount": 100, "type": "deposited", "account": "bob"}  # no memo, no schema_version
    entry, written = _as_an_older_writer_wrote_it(book, 100, event)
    assert canonical(ev.parse_event(event).model_dump(mode="json")) != canonical(event)  # today's code differs

    outcome = book.fold(entry)
    assert outcome.verdict == ACCEPTED, outcome.reason
    store.append(book.rows)

    seq = book.state.seq
    assert _stored(store, "payload", seq) == canonical(event)
    assert canonical(event) in entry.signing_bytes()  # the very bytes the writer signed
    assert _stored(store, "entry", seq) == canonical(written)
    row = list(store.rows(after=seq - 1))[0]
    assert row.hash == chain_hash(row.prev_hash, seq=seq, epoch=row.epoch, at_ms=row.at_ms,
                                  command_id=row.command_id, payload=event, reply=None)

    rebuilt = replay(store)  # no snapshot: every row parsed from its stored bytes
    assert state_hash(rebuilt) == state_hash(book.state) and rebuilt.balance("bob") == 100
    report = audit(store, operator_key=book.operator_public)
    assert report.ok, report.violations
    assert report.signed_entries == len(book.rows)


def test_an_event_of_an_older_schema_version_is_stored_as_written_and_upcast_on_replay(
        book: Book, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def deposited_v0(payload: dict[str, Any]) -> dict[str, Any]:
        # Version 0 (for this test) called the account "to".
        lifted = {k: v for k, v in payload.items() if k != "to"}
        return {**lifted, "account": payload["to"], "schema_version": 1}

    monkeypatch.setitem(ev.UPCASTERS, ("deposited", 0), deposited_v0)
    book.register("bob")
    event = {"type": "deposited", "schema_version": 0, "to": "bob", "amount": 250, "memo": ""}
    entry, _ = _as_an_older_writer_wrote_it(book, 250, event)
    outcome = book.fold(entry)
    assert outcome.verdict == ACCEPTED, outcome.reason
    store.append(book.rows)

    assert _stored(store, "payload", book.state.seq) == canonical(event)
    row = list(store.rows(after=book.state.seq - 1))[0]
    assert (row.type, row.version, row.payload) == ("deposited", 0, event)
    rebuilt = replay(store)
    assert rebuilt.balance("bob") == 250 and state_hash(rebuilt) == state_hash(book.state)
    assert audit(store, operator_key=book.operator_public).ok


def test_what_the_primary_writes_today_is_stored_unchanged(book: Book, store: Store) -> None:
    book.register("bob")
    book.deposit("bob", 70)
    store.append(book.rows)
    for entry in book.log:
        payloads = [bytes(p) for p in _payloads(store, entry)]
        assert payloads == [canonical(e) for e in entry.events]
    assert state_hash(replay(store)) == state_hash(book.state)
    assert isinstance(replay(store), State)


def _payloads(store: Store, entry: LogEntry) -> list[bytes]:
    with store.engine.connect() as conn:
        first = entry.expected_seq
        rows = conn.execute(sa.select(EVENTS.c.payload, EVENTS.c.seq).order_by(EVENTS.c.seq)).all()
    return [r.payload for r in rows if first <= r.seq < first + len(entry.events)]


def test_an_entry_changed_after_it_was_read_is_no_longer_the_written_one(book: Book) -> None:
    book.register("bob")
    entry, written = _as_an_older_writer_wrote_it(book, 100, {"type": "deposited", "account": "bob", "amount": 100})
    assert entry.wire() == written
    forged = entry.model_copy(update={"events": [{"type": "deposited", "account": "bob", "amount": 10**6}]})
    assert forged.wire()["events"][0]["amount"] == 10**6
    assert book.fold(forged).kind == "bad_signature"
