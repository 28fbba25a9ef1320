"""Settled sales leave the state after a dispute window counted in events, for the store's projection.

Inside the window a consumer's dispute is judged as ever; past it, it is refused with ``sale_closed`` saying
why. The sale then leaves the state at the same event on every replica, its id is never used again, and reads
of it come from the store.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import commands as c
from broker import queries as q
from broker.codec import canonical
from broker.envelope import seal
from catalog import Catalog
from ledger import events as ev
from ledger import model
from ledger.handlers import Context
from ledger.keys import SystemKeys
from ledger.log import IGNORED
from ledger.model import (
    OPEN,
    REFUNDED,
    SETTLED,
    Record,
    State,
    apply,
    invariant_violations,
    state_from_dict,
    state_hash,
    state_to_dict,
)
from ledger.reads import answer
from ledger.store import Store
from tests.conftest import Book
from tests.support.refusals import refused

BUCKET, WINDOW = 2, 4


@pytest.fixture
def short_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Disputes accepted for WINDOW events after settlement; closed sales leave in buckets of BUCKET events."""
    monkeypatch.setattr(model, "DISPUTE_BUCKET", BUCKET)
    monkeypatch.setattr(model, "DISPUTE_WINDOW", WINDOW)


@dataclasses.dataclass
class WindowBook(Book):
    """A Book whose primary looks up sales past their window in what its rows retired, as a replica's store."""

    def context(self) -> Context:
        return dataclasses.replace(super().context(), retired_sale=self.retired_sale)

    def retired_sale(self, sale_id: str) -> dict[str, Any] | None:
        found = [s for r in self.rows for s in r.retired if s["sale_id"] == sale_id]
        return found[-1] if found else None

    def advance(self, events: int) -> None:
        """``events`` more events in the log (deposits to carol)."""
        for _ in range(events):
            self.deposit("carol", 1)


@pytest.fixture
def window_book(short_window: None) -> WindowBook:
    """alice publishes doc-1 at 1000; bob holds 5000, carol 300; bob bought doc-1 as s-1, settled just now."""
    book = WindowBook()
    for login in ("alice", "bob", "carol"):
        book.register(login)
    book.deposit("bob", 5000)
    book.deposit("carol", 300)
    book.publish("alice", "doc-1", price=1000)
    book.open_sale("bob", "s-1", "doc-1")
    book.escrow("s-1")
    book.settle("bob", "s-1")
    return book


def test_a_dispute_at_the_last_event_of_the_window_is_judged(window_book: WindowBook) -> None:
    book = window_book
    settled = book.state.sales["s-1"].closed_seq
    assert settled == book.state.seq
    book.advance(WINDOW - 1)  # the dispute's entry is the WINDOW-th event after the settlement
    decision = book.submit(book.evidence("s-1", 1, cheat=True), "bob")
    assert decision.result["provider_cheated"] is True and decision.result["refund"] == 1000
    assert book.state.seq == settled + WINDOW
    assert book.state.sales["s-1"].status == REFUNDED and book.state.balance("bob") == 5000
    assert invariant_violations(book.state) == []


def test_a_dispute_past_the_window_is_refused_plainly_and_no_replica_takes_one(window_book: WindowBook) -> None:
    book = window_book
    settled = book.state.seq
    evidence = book.evidence("s-1", 1, cheat=True)
    inside = book.decide(evidence, "bob")  # what a primary would have written in time
    book.advance(WINDOW)
    assert book.state.sales["s-1"].status == SETTLED  # still held (it leaves at a bucket's end), but closed
    message = refused(book, evidence, "bob", "sale_closed")
    assert f"settled at seq {settled}" in message and f"accepted for {WINDOW:,} events" in message
    # A primary that writes the late dispute anyway: every replica ignores it, and money stays where it was.
    env = book.envelope(evidence, "bob")
    outcome = book.fold(book.entry(inside.events, command_id=env.id, reply=inside.result, command=env))
    assert outcome.verdict == IGNORED and "past its dispute window" in (outcome.reason or "")
    assert book.state.balance("alice") == 990 and book.state.balance("bob") == 4000


def test_a_settled_sale_leaves_the_state_for_the_store_and_its_id_is_never_used_again(
        window_book: WindowBook) -> None:
    book = window_book
    evidence = book.evidence("s-1", 1, cheat=True)
    book.advance(WINDOW + 2 * BUCKET)
    assert "s-1" not in book.state.sales
    [retired] = [s for r in book.rows for s in r.retired]
    assert retired["sale_id"] == "s-1" and retired["status"] == SETTLED and retired["consumer"] == "bob"
    message = refused(book, evidence, "bob", "sale_closed")
    assert "past its dispute window" in message and "settled since seq" in message
    refused(book, c.SettleSale(sale_id="s-1"), "bob", "sale_closed")
    refused(book, c.SettleSale(sale_id="s-1"), "carol", "not_your_sale")
    refused(book, c.VoidSale(sale_id="s-1", reason="late"), c.OPERATOR, "sale_closed")
    # Evidence names its sale by id only: an id used again would have old evidence judged against a new key.
    refused(book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "carol", "duplicate_sale")
    refused(book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "bob", "duplicate_sale")
    assert invariant_violations(book.state) == []


def test_reads_of_a_sale_past_its_window_come_from_the_store(window_book: WindowBook, tmp_path: Path) -> None:
    book = window_book
    book.open_sale("bob", "s-2", "doc-1")  # still open: stays in the state
    book.advance(WINDOW + 2 * BUCKET)
    store = Store(f"sqlite:///{tmp_path / 'r1.db'}")
    try:
        store.append(book.rows)
        keys = SystemKeys(book.operator_public, book.ledger_key)
        now = int(time.time() * 1000)

        def ask(query: Any, who: str) -> dict[str, Any]:
            env = seal(query, sender=who, key=book.members[who].sign, kind="query")
            return answer(book.state, env, keys, Catalog(), now, retired=store)

        status = ask(q.SaleStatus(sale_id="s-1"), "bob")
        assert status["status"] == SETTLED and status["consumer_sealed_key"] and "sealed_key" not in status
        assert "consumer_sealed_key" not in ask(q.SaleStatus(sale_id="s-1"), "alice")
        listed = ask(q.Sales(account="bob"), "bob")["sales"]
        assert [(s["sale_id"], s["status"]) for s in listed] == [("s-1", SETTLED), ("s-2", OPEN)]
        assert [s["sale_id"] for s in ask(q.Sales(account="bob", limit=1), "bob")["sales"]] == ["s-2"]
        assert store.retired_sale("s-1", upto=book.state.seq) is not None
        assert store.retired_sale("s-1", upto=1) is None  # not yet retired at that event
    finally:
        store.close()


# -- the state's size, by apply alone ---------------------------------------------------------------

AT = 1_700_000_000_000


def _run(state: State, event: object) -> State:
    seq = state.seq + 1
    return apply(state, Record(seq, 1, AT + seq, event, f"{seq:064x}"))


def _market(state: State, sales: range) -> Iterator[State]:
    """Each sale opened, escrowed and settled: three events; the state after each sale."""
    for i in sales:
        sale_id = f"s-{i}"
        state = _run(state, ev.SaleOpened(sale_id=sale_id, doc_id="d", consumer="bob", provider="alice", price=10,
                                          fee=1, deadline_ms=AT * 2))
        state = _run(state, ev.KeyEscrowed(sale_id=sale_id, key_commitment="c" * 64, sealed_key="k" * 108))
        state = _run(state, ev.SaleSettled(sale_id=sale_id, price=10, fee=1, provider_amount=9,
                                           consumer_sealed_key="r" * 108))
        yield state


def _start() -> State:
    state = State()
    for login in ("alice", "bob"):
        state = _run(state, ev.UserRegistered(login=login, sign_key="aa" * 32, box_key="bb" * 32, cert_pem="pem",
                                              keystore="a2V5"))
    return _run(state, ev.Deposited(account="bob", amount=10**9))


def test_the_state_does_not_grow_with_settled_sales_past_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "DISPUTE_BUCKET", 30)
    monkeypatch.setattr(model, "DISPUTE_WINDOW", 300)
    sizes, retired, state = [], 0, State()
    for n, state in enumerate(_market(_start(), range(3000)), 1):
        retired += len(state.last_retired)
        assert len(state.sales) <= (300 + 30) // 3 + 1
        if n % 1000 == 0:
            sizes.append(len(canonical(state_to_dict(state))))
    assert retired + len(state.sales) == 3000 and "s-0" not in state.sales and "s-2999" in state.sales
    assert max(sizes) - min(sizes) < 0.01 * min(sizes)  # a thousand more sales, the same size
    assert invariant_violations(state) == []
    # Sales leave by sequence: a state rebuilt from its picture continues to the same hash.
    pairs = zip(_market(state, range(3000, 3100)), _market(state_from_dict(state_to_dict(state)), range(3000, 3100)),
                strict=True)
    for ours, again in pairs:
        assert again.sales == ours.sales
    assert state_hash(again) == state_hash(ours)


def test_a_state_from_a_picture_that_kept_every_sale_agrees_after_one_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica recovering from a snapshot taken before sales left the state drops them on its next event."""
    monkeypatch.setattr(model, "DISPUTE_BUCKET", 10)
    monkeypatch.setattr(model, "DISPUTE_WINDOW", 10**9)
    *_, kept = _market(_start(), range(200))
    assert len(kept.sales) == 200
    monkeypatch.setattr(model, "DISPUTE_WINDOW", 100)
    *_, bounded = _market(_start(), range(200))
    assert len(bounded.sales) < 50
    recovered = _run(state_from_dict(state_to_dict(kept)), ev.Deposited(account="bob", amount=1))
    assert len(recovered.last_retired) == 200 - len(bounded.sales)
    assert state_hash(recovered) == state_hash(_run(bounded, ev.Deposited(account="bob", amount=1)))
