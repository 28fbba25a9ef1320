"""Ledger invariants under random command sequences: money is conserved, a sale resolves once,
and every replica that folds the same log, or replays the same rows, reaches the same state."""
from __future__ import annotations

import os
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker import commands as c
from broker import errors
from ledger.log import ACCEPTED, fold_entry, replay_row
from ledger.model import OPEN, REFUNDED, SETTLED, VOIDED, State, invariant_violations, state_hash
from tests.conftest import Book, Member

USERS = ("ann", "ben", "cat")
MEMBERS = {login: Member.create(login) for login in USERS}  # key generation is the slow part: do it once
ALLOWED = {(OPEN, SETTLED), (OPEN, VOIDED), (SETTLED, REFUNDED)}

who = st.sampled_from(USERS)
pick = st.integers(min_value=0, max_value=1000)  # an index into whatever exists when the step runs
doc = st.sampled_from(["d0", "d1", "d2", "d3"])
price = st.integers(min_value=1, max_value=2500)

steps = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), who, st.integers(min_value=1, max_value=4000)),
        st.tuples(st.just("publish"), who, doc, price),
        st.tuples(st.just("reprice"), who, doc, price),
        st.tuples(st.just("unpublish"), who, doc),
        st.tuples(st.just("open"), who, pick, st.booleans()),
        st.tuples(st.just("open"), who, pick, st.just(True)),
        st.tuples(st.just("escrow"), pick, st.booleans()),
        st.tuples(st.just("escrow"), pick, st.just(True)),
        st.tuples(st.just("settle"), pick, st.booleans()),
        st.tuples(st.just("settle"), pick, st.just(True)),
        st.tuples(st.just("void"), pick, st.sampled_from(["consumer", "provider", c.OPERATOR, "other"])),
        st.tuples(st.just("buy"), who, pick, st.integers(min_value=1, max_value=3)),
        st.tuples(st.just("buy"), who, pick, st.just(3)),
        st.tuples(st.just("wait"), st.integers(min_value=0, max_value=90_000)),
        st.tuples(st.just("dispute"), pick, st.booleans(), st.integers(min_value=0, max_value=2)),
        st.tuples(st.just("fee"), st.integers(min_value=0, max_value=10_000)),
    ),
    min_size=5,
    max_size=40,
)
setup = st.tuples(st.tuples(*[st.integers(min_value=0, max_value=5000)] * 3), st.tuples(*[price] * 3))


def _pick(items: list[Any], index: int) -> Any:
    return items[index % len(items)] if items else None


def step(book: Book, op: tuple[Any, ...]) -> None:
    """Run one random step; a refusal must leave the state exactly as it was."""
    kind, *args = op
    if kind == "buy":
        # The honest path, as far as ``stages`` goes: open, escrow, settle (each may still be refused).
        user, index, stages = args
        step(book, ("open", user, index, True))
        for stage in ("escrow", "settle")[:stages - 1]:
            step(book, (stage, len(book.state.sales) - 1, True))
        return
    if kind == "wait":
        book.now_ms += args[0]
        book.tick()
        return
    state = book.state
    sales = sorted(state.sales)
    before = state
    try:
        if kind == "deposit":
            book.deposit(args[0], args[1])
        elif kind == "publish":
            book.publish(args[0], args[1], price=args[2], title=f"Title of {args[1]}")
        elif kind == "reprice":
            book.submit(c.ChangePrice(doc_id=args[1], price=args[2]), args[0])
        elif kind == "unpublish":
            book.submit(c.Unpublish(doc_id=args[1]), args[0])
        elif kind == "open":
            user, index, honest = args
            doc_id = _pick(sorted(d for d in state.documents if state.documents[d].published), index) or "d0"
            current = state.documents.get(doc_id)
            if honest and current is not None:
                # A buyer who can: not the provider, and with the money.
                able = [u for u in USERS if u != current.provider and state.balance(u) >= current.price]
                user = _pick(able, index) or user
            sale_id = f"s{len(sales)}" if honest else (_pick(sales, index) or "s0")
            book.submit(c.OpenSale(sale_id=sale_id, doc_id=doc_id, price=current.price if current else 1), user)
        elif kind == "escrow":
            index, honest = args
            waiting = [s for s in sales if state.sales[s].status == OPEN and state.sales[s].sealed_key is None]
            sale_id = (_pick(waiting, index) if honest else None) or _pick(sales, index) or "s0"
            existing = state.sales.get(sale_id)
            key = os.urandom(32)
            command = (book.escrow_command(sale_id, key) if honest
                       else book.escrow_command(sale_id, key, sealed_for=sale_id + "x"))
            book.submit(command, existing.provider if existing else USERS[0])
            book.sale_keys.setdefault(sale_id, key)
        elif kind == "settle":
            index, honest = args
            ready = [s for s in sales if state.sales[s].status == OPEN and state.sales[s].sealed_key is not None]
            sale_id = (_pick(ready, index) if honest else None) or _pick(sales, index) or "s0"
            existing = state.sales.get(sale_id)
            settler = USERS[0] if existing is None else existing.consumer if index % 3 else existing.provider
            book.settle(existing.consumer if existing and honest else settler, sale_id)
        elif kind == "void":
            index, who_voids = args
            live = [s for s in sales if state.sales[s].status == OPEN]
            sale_id = _pick(live, index) or _pick(sales, index) or "s0"
            existing = state.sales.get(sale_id)
            if existing is None:
                sender = c.OPERATOR
            elif who_voids in ("consumer", "provider"):
                sender = getattr(existing, who_voids)
            elif who_voids == "other":
                sender = next(u for u in USERS if u not in (existing.consumer, existing.provider))
            else:
                sender = c.OPERATOR
            book.submit(c.VoidSale(sale_id=sale_id), sender)
        elif kind == "dispute":
            settled = [s for s in sales if state.sales[s].status != OPEN and s in book.sale_keys]
            sale_id = _pick(settled, args[0])
            if sale_id is None:
                return
            book.submit(book.evidence(sale_id, args[2], cheat=args[1]), state.sales[sale_id].consumer)
        elif kind == "fee":
            book.submit(c.SetFee(bps=args[0]), c.OPERATOR)
    except errors.CommandRejected:
        assert book.state is before


@settings(max_examples=50, deadline=None)
@given(setup, steps)
def test_random_commands_keep_the_ledger_sound(start: tuple[Any, Any], ops: list[tuple[Any, ...]]) -> None:
    book = Book(hold_ttl_ms=30_000)
    deposits, prices = start
    for login, member, amount, doc_price in zip(USERS, MEMBERS.values(), deposits, prices):
        book.members[login] = member
        book.submit(member.registration(), login)
        if amount:
            book.deposit(login, amount)
        book.publish(login, f"first-{login}", price=doc_price)
    history: dict[str, list[str]] = {}
    closed_at: dict[str, int | None] = {}
    for op in ops:
        step(book, op)
        state = book.state
        assert invariant_violations(state) == [], op
        for sale_id, s in state.sales.items():
            seen = history.setdefault(sale_id, [s.status])
            if seen[-1] != s.status:
                assert (seen[-1], s.status) in ALLOWED, (sale_id, seen, s.status)
                seen.append(s.status)
            if closed_at.get(sale_id) is not None:
                assert s.closed_seq == closed_at[sale_id], f"{sale_id} closed twice"
            closed_at[sale_id] = s.closed_seq

    # Each sale resolves at most once, and is refunded at most once.
    resolutions = Counter(r.payload["sale_id"] for r in book.rows if r.type in ("sale_settled", "sale_voided"))
    assert all(n == 1 for n in resolutions.values()), resolutions
    refunds = Counter(r.payload["sale_id"] for r in book.rows if r.type == "dispute_resolved")
    assert all(n == 1 for n in refunds.values()), refunds

    # Money in equals money held by accounts and holds.
    state = book.state
    assert sum(state.balances.values()) + sum(state.held.values()) == state.deposited

    # Replaying the stored rows from nothing (recovery, audit) gives the same state.
    replayed = State()
    for row in book.rows:
        replayed = replay_row(replayed, row)
    assert state_hash(replayed) == state_hash(state)

    # A backup folding the same log from nothing reaches the same state and rows.
    backup, backup_rows = State(), []
    for entry in book.log:
        outcome, backup, rows = fold_entry(backup, entry, book.operator_public)
        backup_rows.extend(rows)
        assert outcome.verdict == ACCEPTED
    assert state_hash(backup) == state_hash(state)
    assert backup_rows == book.rows
