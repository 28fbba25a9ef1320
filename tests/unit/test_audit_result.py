"""The audit's result is typed: each invariant named with its outcome, and its first violation located and told."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.audit import AuditReport, Invariant, Verdict, audit
from ledger.chain import chain_hash
from ledger.store import Row, Store
from tests.conftest import Book


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield s
    s.close()


@pytest.fixture
def sold(stocked_book: Book) -> Book:
    """bob bought doc-1 from alice: opened, escrowed, settled."""
    stocked_book.open_sale("bob", "s-1", "doc-1")
    stocked_book.escrow("s-1")
    stocked_book.settle("bob", "s-1")
    return stocked_book


def _rechained(rows: list[Row], seq: int, **payload: object) -> list[Row]:
    """The rows with event ``seq``'s payload changed and every hash after it made to fit again (an insider's
    rewrite: the chain holds, the money does not)."""
    out: list[Row] = []
    for row in rows:
        if row.seq == seq:
            row = dataclasses.replace(row, payload={**row.payload, **payload})
        prev = out[-1].hash if out else row.prev_hash
        digest = chain_hash(prev, seq=row.seq, epoch=row.epoch, at_ms=row.at_ms, command_id=row.command_id,
                            payload=row.payload, reply=row.reply)
        out.append(dataclasses.replace(row, prev_hash=prev, hash=digest))
    return out


def test_a_sound_store_holds_every_invariant(sold: Book, store: Store) -> None:
    store.append(sold.rows)
    report = audit(store, operator_key=sold.operator_public)
    assert report.ok and report.money_conserved
    assert set(report.invariants) == set(Invariant)
    assert all(r.verdict is Verdict.HELD and r.first is None for r in report.invariants.values())


def test_without_the_operator_key_signatures_are_not_checked(sold: Book, store: Store) -> None:
    store.append(sold.rows)
    report = audit(store)
    assert report.ok
    assert report.invariants[Invariant.SIGNED].verdict is Verdict.NOT_CHECKED


def test_money_made_out_of_nothing_is_named_and_located(sold: Book, store: Store) -> None:
    settle = next(r for r in sold.rows if r.type == "sale_settled")
    store.append(_rechained(sold.rows, settle.seq, provider_amount=settle.payload["provider_amount"] + 500))
    report = audit(store, check_every=1)
    assert not report.ok and not report.money_conserved
    money = report.invariants[Invariant.MONEY_CONSERVED]
    assert money.verdict is Verdict.VIOLATED and money.first is not None
    assert money.first.seq == settle.seq
    assert "money not conserved" in money.first.explanation
    assert report.invariants[Invariant.HASH_CHAIN].verdict is Verdict.HELD
    # The report's lines for people are as they always were.
    assert f"seq {settle.seq}: {money.first.explanation}" in report.violations


def test_a_signature_problem_is_not_a_money_problem(sold: Book, store: Store) -> None:
    # An auditor holding another operator key finds no entry it can trust; money is still conserved.
    store.append(sold.rows)
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    report = audit(store, operator_key=stranger)
    assert report.invariants[Invariant.SIGNED].verdict is Verdict.VIOLATED
    assert report.money_conserved and not report.ok


def test_an_altered_event_breaks_the_chain_where_it_was_altered(sold: Book, store: Store) -> None:
    rows = list(sold.rows)
    i = next(i for i, r in enumerate(rows) if r.type == "deposited")
    rows[i] = dataclasses.replace(rows[i], payload={**rows[i].payload, "amount": 10**6})
    store.append(rows)
    chain = audit(store).invariants[Invariant.HASH_CHAIN]
    assert chain.verdict is Verdict.VIOLATED and chain.first is not None and chain.first.seq == rows[i].seq


def test_a_command_applied_twice_is_counted_by_name(sold: Book, store: Store) -> None:
    settle = next(r for r in sold.rows if r.type == "sale_settled")
    dup = next(r for r in sold.rows if r.type == "deposited")
    rows = _rechained(sold.rows, settle.seq)
    rows = [dataclasses.replace(r, command_id=dup.command_id) if r.seq == settle.seq else r for r in rows]
    store.append(_rechained(rows, settle.seq))
    report: AuditReport = audit(store)
    once = report.invariants[Invariant.COMMAND_ONCE]
    assert once.verdict is Verdict.VIOLATED and once.count == 1 and once.first is not None
    assert once.first.seq == settle.seq
