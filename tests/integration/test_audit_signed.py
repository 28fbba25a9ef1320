"""acb audit verify traces every movement of money to a signature, from the store and the operator's key alone."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import commands as c
from broker.trust import raw_public
from ledger import events as ev
from ledger.audit import audit
from ledger.store import Row, Store
from tests.conftest import Book


@pytest.fixture
def settled_book() -> Book:
    """alice sold doc-1 to bob for 1000, escrowed and settled."""
    b = Book()
    for login in ("alice", "bob"):
        b.register(login)
    b.deposit("bob", 5000)
    b.publish("alice", "doc-1", price=1000)
    b.open_sale("bob", "s-1", "doc-1")
    b.escrow("s-1")
    b.settle("bob", "s-1")
    return b


def stored(tmp_path: Path, rows: list[Row]) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'audit.db'}")
    store.append(rows)
    return store


def test_an_honest_store_verifies_with_every_signature(settled_book: Book, tmp_path: Path) -> None:
    store = stored(tmp_path, settled_book.rows)
    report = audit(store, operator_key=settled_book.operator_public)
    store.close()
    assert report.ok, report.violations
    assert report.signed_entries == len(settled_book.log) and report.signatures_checked


def test_the_wrong_operator_key_finds_no_certified_writer(settled_book: Book, tmp_path: Path) -> None:
    store = stored(tmp_path, settled_book.rows)
    report = audit(store, operator_key=raw_public(Ed25519PrivateKey.generate()))
    store.close()
    assert not report.ok and "not signed by the operator" in report.violations[0]


def test_an_event_rewritten_with_its_chain_recomputed_is_caught_by_its_signature(settled_book: Book, tmp_path: Path) -> None:
    # A forger with write access to the store rebuilds the whole log with a deposit of his own; the hash
    # chain is sound, but he holds neither the operator's key nor a certified replica's.
    forged = Book(ledger_key=settled_book.ledger_key)
    for member in settled_book.members.values():
        forged.members[member.login] = member
        forged.submit(member.registration(), member.login)
    forged.submit(c.Deposit(account="bob", amount=500_000), c.OPERATOR)
    rows = forged.rows
    store = stored(tmp_path, rows)
    report = audit(store, operator_key=settled_book.operator_public)
    store.close()
    assert not report.ok
    assert any("not signed by the operator" in v for v in report.violations)


def test_stored_events_that_differ_from_the_signed_entry_are_caught(settled_book: Book, tmp_path: Path) -> None:
    rows = list(settled_book.rows)
    i = next(k for k, r in enumerate(rows) if r.type == "deposited")
    entry = dict(rows[i].entry or {})
    entry["events"] = [ev.Deposited(account="bob", amount=999_999).model_dump(mode="json")]
    rows[i] = dataclasses.replace(rows[i], entry=entry)
    store = stored(tmp_path, rows)
    report = audit(store, operator_key=settled_book.operator_public)
    store.close()
    assert any(v.startswith(f"seq {rows[i].seq}:") for v in report.violations), report.violations


def test_events_with_no_signed_entry_behind_them_are_reported(settled_book: Book, tmp_path: Path) -> None:
    rows = [dataclasses.replace(r, entry=None) for r in settled_book.rows]
    store = stored(tmp_path, rows)
    report = audit(store, operator_key=settled_book.operator_public)
    store.close()
    assert any("no signed entry stands behind" in v for v in report.violations)
    # Without the operator's key the chain alone still checks out: signatures are what the key adds.
    store = Store(f"sqlite:///{tmp_path / 'audit.db'}")
    assert audit(store).ok
    store.close()


def test_an_announcement_that_landed_after_entries_its_writer_had_not_seen_is_sound(settled_book: Book,
                                                                                   tmp_path: Path) -> None:
    # r2 announced from an older view of the log; the announcement still takes effect where it lands.
    settled_book.certify("r2")
    stale = settled_book.entry([ev.EpochStarted(epoch=2, replica="r2", roster=settled_book.roster.to_wire() if settled_book.roster else None)],
                       epoch=2, writer="r2", expected_seq=3, prev_hash="0" * 64)
    from ledger.log import ACCEPTED

    assert settled_book.fold(stale).verdict == ACCEPTED
    store = stored(tmp_path, settled_book.rows)
    report = audit(store, operator_key=settled_book.operator_public)
    store.close()
    assert report.ok, report.violations
