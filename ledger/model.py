"""The ledger's state and the one pure function that changes it.

``apply(state, record) -> state`` is the only way state changes. It does no
I/O and reads no clock: the primary, every backup and the audit replay run the
same function over the same records and reach the same state (compare
:func:`state_hash`). State is immutable (pyrsistent maps), so readers hold a
consistent snapshot without locks while the follower swaps in the next one.

The state holds what deciding a command needs, and no history: each apply says
which cash flows it caused (``State.last_flows``, not part of the state proper)
and the store keeps them as a projection beside the events. Command ids stay
for a window of :data:`COMMAND_WINDOW` events (see there); older ones are found
in the store's events table by their index. A closed sale stays for the
:data:`DISPUTE_WINDOW` (see there), then leaves for the store's ``sales``
projection (``State.last_retired`` says which left with the last record).
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import singledispatch
from typing import Any

from pyrsistent import PMap, pmap, pvector

from broker.codec import canonical
from broker.money import DEFAULT_FEE_BPS, format_minor
from broker.trust import Roster
from ledger import events as ev

__all__ = [
    "State", "Record", "User", "Document", "Sale", "Flow", "apply", "state_hash", "state_to_dict",
    "state_from_dict", "canonical_pieces", "GENESIS_HASH", "invariant_violations", "invariant_findings", "OPEN",
    "SETTLED", "VOIDED", "REFUNDED", "COMMAND_WINDOW", "COMMAND_BUCKET", "DISPUTE_WINDOW", "DISPUTE_BUCKET",
    "dispute_closes_after", "retired_pictures", "sale_from_dict",
]

GENESIS_HASH = "0" * 64
# Command ids leave the state in buckets of COMMAND_BUCKET sequences: when the log reaches a multiple of
# COMMAND_BUCKET, the ids applied more than COMMAND_WINDOW events before it go. By sequence, never by a clock,
# so every replica drops the same ids at the same event and their state hashes stay equal. An id is thus
# remembered in the state for between COMMAND_WINDOW and COMMAND_WINDOW + COMMAND_BUCKET events (about two
# minutes of the seed's profile at 12,000 users): a retry within it is answered from the state; an older one
# is found in the store (``Store.command_outcome``), and past the envelope's freshness (``Context.max_skew_ms``)
# it is refused as stale anyway.
COMMAND_BUCKET = 1000
COMMAND_WINDOW = 20 * COMMAND_BUCKET
# The dispute window. A settled sale can be disputed by an entry at most DISPUTE_WINDOW events after the one
# that settled it (``dispute_closes_after``); a later dispute is refused with ``sale_closed``, saying so. Counted
# in events of the log, never by a clock, so every replica, and an audit years later, draws the line at the same
# entry. At the seed's profile (a request per user every 10 s, about half of them writes) 100,000 events are
# about 22 minutes at 1,500 users and 3 minutes at 12,000, and longer the quieter the ledger; a consumer's
# client disputes the moment a segment fails its check after settling, seconds later. A closed sale (settled,
# voided or refunded) then leaves the state at the next multiple of DISPUTE_BUCKET, for the store's ``sales``
# projection: the state holds at most the sales closed within the last DISPUTE_WINDOW + DISPUTE_BUCKET events
# (a third of them at most, since a sale takes three), whatever the number of users or the age of the log.
DISPUTE_BUCKET = 1000
DISPUTE_WINDOW = 100 * DISPUTE_BUCKET
OPEN, SETTLED, VOIDED, REFUNDED = "open", "settled", "voided", "refunded"


@dataclass(frozen=True)
class User:
    login: str
    sign_key: str
    box_key: str
    cert_pem: str
    keystore: str
    registered_seq: int
    strikes: int = 0  # disputes lost as a provider


@dataclass(frozen=True)
class Document:
    doc_id: str
    provider: str
    title: str
    topic: str
    description: str
    price: int
    size: int
    sha256: str
    merkle_root: str
    segment_size: int
    endpoint: str
    published: bool
    published_seq: int
    interval_segments: int = 0


@dataclass(frozen=True)
class Sale:
    sale_id: str
    doc_id: str
    consumer: str
    provider: str
    price: int
    fee: int
    deadline_ms: int
    status: str
    opened_seq: int
    key_commitment: str | None = None
    sealed_key: str | None = None
    consumer_sealed_key: str | None = None
    closed_seq: int | None = None
    reason: str = ""
    disputed: bool = False
    fee_bps: int = 0
    intervals: int = 1  # >1: a split sale, paid interval by interval
    interval_segments: int = 0
    settled_intervals: int = 0
    paid: int = 0  # of the price, paid so far (the rest is still held)
    fee_paid: int = 0
    interval_sealed_keys: tuple[str, ...] = ()

    @property
    def held(self) -> int:
        """What is still held from the consumer for this sale."""
        return self.price - self.paid if self.status == OPEN else 0


@dataclass(frozen=True)
class Flow:
    """One line of an account's cash-flow history."""

    seq: int
    at_ms: int
    kind: str
    amount: int  # signed: + credit, - debit of the available balance
    counterparty: str = ""
    doc_id: str = ""
    sale_id: str = ""
    memo: str = ""


@dataclass(frozen=True)
class Record:
    """An event as applied: its place in the log and the command it came from."""

    seq: int
    epoch: int
    at_ms: int
    event: Any  # ledger.events.Event
    hash: str
    command_id: str | None = None
    reply: dict[str, Any] | None = None  # set on the last event of a command's entry
    command_digest: str | None = None  # SHA-256 of the signed command's body: whose command the id belongs to


@dataclass(frozen=True)
class State:
    seq: int = 0
    head_hash: str = GENESIS_HASH
    epoch: int = 0
    primary: str | None = None
    fee_bps: int = DEFAULT_FEE_BPS
    deposited: int = 0  # all money that ever entered; what accounts and holds must add up to
    users: PMap = field(default_factory=pmap)
    balances: PMap = field(default_factory=pmap)  # account -> available minor units
    held: PMap = field(default_factory=pmap)  # account -> sum of its open holds
    documents: PMap = field(default_factory=pmap)
    sales: PMap = field(default_factory=pmap)
    commands: PMap = field(default_factory=pmap)  # command id -> {"seq", "result"}: the first answer, in the window
    roster: Roster | None = None  # the operator-signed replica keys in force (checked before it got here)
    # Derived, not hashed or serialised: the window's ids by seq // COMMAND_BUCKET, to drop a bucket at once.
    command_buckets: PMap = field(default_factory=pmap, compare=False, repr=False)
    # The cash flows the last applied record caused, as (account, flow): for the store's projection, which
    # keeps the history; replaced by every apply, so it never grows.
    last_flows: tuple[tuple[str, Flow], ...] = field(default=(), compare=False, repr=False)
    # Derived like command_buckets: closed sales by closed_seq // DISPUTE_BUCKET, and the lowest such bucket.
    sale_buckets: PMap = field(default_factory=pmap, compare=False, repr=False)
    sale_low: int | None = field(default=None, compare=False, repr=False)
    # The sales the last applied record took out of the state (past the dispute window), for the store's
    # projection; replaced by every apply, like last_flows.
    last_retired: tuple[Sale, ...] = field(default=(), compare=False, repr=False)

    def balance(self, account: str) -> int:
        return int(self.balances.get(account, 0))

    def holds(self, account: str) -> int:
        return int(self.held.get(account, 0))


def apply(state: State, record: Record) -> State:
    """The state after ``record``. Pure: same inputs, same output, no side effects."""
    if state.last_flows or state.last_retired:
        state = dataclasses.replace(state, last_flows=(), last_retired=())
    new = _mutate(record.event, state, record)
    changes: dict[str, Any] = {"seq": record.seq, "head_hash": record.hash}
    changes.update(_retire_sales(state, new, record))
    commands, buckets = new.commands, new.command_buckets
    if record.seq % COMMAND_BUCKET == 0:
        gone = record.seq // COMMAND_BUCKET - COMMAND_WINDOW // COMMAND_BUCKET - 1
        old = buckets.get(gone)
        if old is not None:
            evolver = commands.evolver()
            for command_id in old:
                # Only if that id still belongs to that bucket (an id is remembered once, at its first answer).
                if commands.get(command_id, {}).get("seq", -1) // COMMAND_BUCKET == gone:
                    del evolver[command_id]
            commands, buckets = evolver.persistent(), buckets.remove(gone)
    if record.command_id is not None and record.reply is not None:
        done: dict[str, Any] = {"seq": record.seq, "result": record.reply}
        if record.command_digest is not None:
            done["digest"] = record.command_digest
        bucket = record.seq // COMMAND_BUCKET
        commands = commands.set(record.command_id, done)
        buckets = buckets.set(bucket, buckets.get(bucket, pvector()).append(record.command_id))
    if commands is not new.commands:
        changes["commands"], changes["command_buckets"] = commands, buckets
    return dataclasses.replace(new, **changes)


def dispute_closes_after(sale: Sale) -> int | None:
    """The last sequence at which an entry may dispute ``sale`` (None while it is open: an open split sale's paid
    intervals can be disputed until it closes)."""
    if sale.status == OPEN or sale.closed_seq is None:
        return None
    return sale.closed_seq + DISPUTE_WINDOW


def _retire_sales(before: State, new: State, record: Record) -> dict[str, Any]:
    """The changes that file a sale ``record`` closed under its bucket, and take out of the state the sales whose
    dispute window ``record`` passed."""
    sales, buckets, low = new.sales, new.sale_buckets, new.sale_low
    sale_id = getattr(record.event, "sale_id", None)
    if isinstance(sale_id, str):
        after = sales.get(sale_id)
        was = before.sales.get(sale_id)
        if after is not None and after.status != OPEN and after.closed_seq is not None and (
                was is None or was.status == OPEN):
            bucket = after.closed_seq // DISPUTE_BUCKET
            buckets = buckets.set(bucket, buckets.get(bucket, pvector()).append(sale_id))
            low = bucket if low is None else min(low, bucket)
    gone = record.seq // DISPUTE_BUCKET - DISPUTE_WINDOW // DISPUTE_BUCKET - 1
    retired: list[Sale] = []
    if low is not None and low <= gone:
        # Every bucket at or below `gone`, not only `gone` itself: a state recovered from a picture taken before
        # sales left the state holds older ones, and after its first record it must equal a replay from zero.
        evolver = sales.evolver()
        for bucket in sorted(b for b in buckets if b <= gone):
            for sid in buckets[bucket]:
                sale = sales.get(sid)
                if sale is not None and sale.status != OPEN and (sale.closed_seq or 0) // DISPUTE_BUCKET == bucket:
                    retired.append(sale)
                    del evolver[sid]
            buckets = buckets.remove(bucket)
        sales = evolver.persistent()
        low = min(buckets) if buckets else None
    changes: dict[str, Any] = {}
    if buckets is not new.sale_buckets:
        changes.update(sales=sales, sale_buckets=buckets, sale_low=low, last_retired=tuple(retired))
    return changes


def retired_pictures(state: State) -> tuple[dict[str, Any], ...]:
    """The sales the record just applied took out of the state, as the store's projection keeps them."""
    return tuple(dataclasses.asdict(sale) for sale in state.last_retired)


@singledispatch
def _mutate(event: Any, state: State, rec: Record) -> State:
    raise TypeError(f"no apply rule for {type(event).__name__}")


def _credit(state: State, account: str, amount: int, flow: Flow) -> dict[str, Any]:
    return {
        "balances": state.balances.set(account, state.balance(account) + amount),
        "last_flows": state.last_flows + ((account, flow),),
    }


def _move(state: State, *moves: tuple[str, int, Flow]) -> State:
    for account, amount, flow in moves:
        state = dataclasses.replace(state, **_credit(state, account, amount, flow))
    return state


def _newer_roster(state: State, wire: dict[str, Any] | None) -> State:
    # Only ever forward: an older roster (a stale announcement) leaves the one in force alone.
    if wire is None:
        return state
    roster = Roster.from_wire(wire)
    if state.roster is not None and roster.serial <= state.roster.serial:
        return state
    return dataclasses.replace(state, roster=roster)


@_mutate.register
def _(e: ev.EpochStarted, state: State, rec: Record) -> State:
    return dataclasses.replace(_newer_roster(state, e.roster), epoch=e.epoch, primary=e.replica)


@_mutate.register
def _(e: ev.RosterChanged, state: State, rec: Record) -> State:
    return _newer_roster(state, e.roster)


@_mutate.register
def _(e: ev.KeystoreChanged, state: State, rec: Record) -> State:
    user = state.users[e.login]
    return dataclasses.replace(state, users=state.users.set(e.login, dataclasses.replace(user, keystore=e.keystore)))


@_mutate.register
def _(e: ev.UserRegistered, state: State, rec: Record) -> State:
    user = User(e.login, e.sign_key, e.box_key, e.cert_pem, e.keystore, rec.seq)
    return dataclasses.replace(
        state, users=state.users.set(e.login, user), balances=state.balances.set(e.login, state.balance(e.login))
    )


@_mutate.register
def _(e: ev.Deposited, state: State, rec: Record) -> State:
    state = _move(state, (e.account, e.amount, Flow(rec.seq, rec.at_ms, "deposit", e.amount, "operator", memo=e.memo)))
    return dataclasses.replace(state, deposited=state.deposited + e.amount)


@_mutate.register
def _(e: ev.FeeSet, state: State, rec: Record) -> State:
    return dataclasses.replace(state, fee_bps=e.bps)


@_mutate.register
def _(e: ev.DocumentPublished, state: State, rec: Record) -> State:
    doc = Document(
        e.doc_id, e.provider, e.title, e.topic, e.description, e.price, e.size, e.sha256, e.merkle_root,
        e.segment_size, e.endpoint, True, rec.seq, e.interval_segments,
    )
    return dataclasses.replace(state, documents=state.documents.set(e.doc_id, doc))


@_mutate.register
def _(e: ev.DocumentUnpublished, state: State, rec: Record) -> State:
    doc = state.documents[e.doc_id]
    gone = dataclasses.replace(doc, published=False)
    return dataclasses.replace(state, documents=state.documents.set(e.doc_id, gone))


@_mutate.register
def _(e: ev.PriceChanged, state: State, rec: Record) -> State:
    doc = state.documents[e.doc_id]
    return dataclasses.replace(state, documents=state.documents.set(e.doc_id, dataclasses.replace(doc, price=e.price)))


@_mutate.register
def _(e: ev.SaleOpened, state: State, rec: Record) -> State:
    sale = Sale(e.sale_id, e.doc_id, e.consumer, e.provider, e.price, e.fee, e.deadline_ms, OPEN, rec.seq,
                fee_bps=e.fee_bps, intervals=e.intervals, interval_segments=e.interval_segments)
    hold = Flow(rec.seq, rec.at_ms, "hold", -e.price, e.provider, e.doc_id, e.sale_id)
    state = _move(state, (e.consumer, -e.price, hold))
    return dataclasses.replace(
        state, sales=state.sales.set(e.sale_id, sale),
        held=state.held.set(e.consumer, state.holds(e.consumer) + e.price),
    )


@_mutate.register
def _(e: ev.KeyEscrowed, state: State, rec: Record) -> State:
    sale = dataclasses.replace(state.sales[e.sale_id], key_commitment=e.key_commitment, sealed_key=e.sealed_key)
    return dataclasses.replace(state, sales=state.sales.set(e.sale_id, sale))


def _release_hold(state: State, sale: Sale, amount: int) -> State:
    return dataclasses.replace(state, held=state.held.set(sale.consumer, state.holds(sale.consumer) - amount))


def _pay(state: State, sale: Sale, rec: Record, price: int, fee: int, provider_amount: int, what: str) -> State:
    """Part (or all) of the hold becomes the payment: provider and owner are credited."""
    state = _release_hold(state, sale, price)
    return _move(
        state,
        # The consumer's hold becomes the payment: a flow of 0 on its available balance.
        (sale.consumer, 0, Flow(rec.seq, rec.at_ms, "payment", 0, sale.provider, sale.doc_id, sale.sale_id,
                                memo=f"paid {format_minor(price)} from hold{what}")),
        (sale.provider, provider_amount, Flow(rec.seq, rec.at_ms, "sale", provider_amount, sale.consumer,
                                              sale.doc_id, sale.sale_id, memo=what.strip(", "))),
        ("owner", fee, Flow(rec.seq, rec.at_ms, "commission", fee, sale.provider, sale.doc_id, sale.sale_id)),
    )


@_mutate.register
def _(e: ev.IntervalSettled, state: State, rec: Record) -> State:
    sale = state.sales[e.sale_id]
    state = _pay(state, sale, rec, e.price, e.fee, e.provider_amount, f", interval {e.interval + 1}/{sale.intervals}")
    done = sale.settled_intervals + 1 == sale.intervals
    sale = dataclasses.replace(
        sale, settled_intervals=sale.settled_intervals + 1, paid=sale.paid + e.price, fee_paid=sale.fee_paid + e.fee,
        interval_sealed_keys=sale.interval_sealed_keys + (e.consumer_sealed_key,), deadline_ms=e.deadline_ms,
    )
    if done:
        sale = dataclasses.replace(sale, status=SETTLED, consumer_sealed_key=e.consumer_sealed_key, closed_seq=rec.seq)
    return dataclasses.replace(state, sales=state.sales.set(e.sale_id, sale))


@_mutate.register
def _(e: ev.SaleSettled, state: State, rec: Record) -> State:
    sale = state.sales[e.sale_id]
    state = _pay(state, sale, rec, e.price, e.fee, e.provider_amount, "")
    sale = dataclasses.replace(sale, paid=sale.paid + e.price, fee_paid=sale.fee_paid + e.fee,
                               settled_intervals=sale.intervals)
    state = dataclasses.replace(state, sales=state.sales.set(e.sale_id, sale))
    done = dataclasses.replace(sale, status=SETTLED, consumer_sealed_key=e.consumer_sealed_key, closed_seq=rec.seq)
    return dataclasses.replace(state, sales=state.sales.set(e.sale_id, done))


@_mutate.register
def _(e: ev.SaleVoided, state: State, rec: Record) -> State:
    sale = state.sales[e.sale_id]
    rest = sale.price - sale.paid  # a split sale keeps what its settled intervals paid
    state = _release_hold(state, sale, rest)
    state = _move(state, (sale.consumer, rest, Flow(rec.seq, rec.at_ms, "release", rest, sale.provider,
                                                    sale.doc_id, sale.sale_id, memo=e.reason)))
    done = dataclasses.replace(sale, status=VOIDED, closed_seq=rec.seq, reason=e.reason)
    return dataclasses.replace(state, sales=state.sales.set(e.sale_id, done))


@_mutate.register
def _(e: ev.DisputeResolved, state: State, rec: Record) -> State:
    sale = state.sales[e.sale_id]
    if e.provider_cheated:
        clawback = e.refund - e.fee_returned
        state = _move(
            state,
            (sale.provider, -clawback, Flow(rec.seq, rec.at_ms, "clawback", -clawback, sale.consumer, sale.doc_id,
                                            sale.sale_id, memo=e.reason)),
            ("owner", -e.fee_returned, Flow(rec.seq, rec.at_ms, "commission_return", -e.fee_returned, sale.provider,
                                            sale.doc_id, sale.sale_id)),
            (sale.consumer, e.refund, Flow(rec.seq, rec.at_ms, "refund", e.refund, sale.provider, sale.doc_id,
                                           sale.sale_id, memo=e.reason)),
        )
        if e.released:  # a split sale caught mid-way: what was held for later intervals comes back too
            state = _release_hold(state, sale, e.released)
            state = _move(state, (sale.consumer, e.released, Flow(rec.seq, rec.at_ms, "release", e.released,
                                                                  sale.provider, sale.doc_id, sale.sale_id,
                                                                  memo=e.reason)))
        provider = state.users[sale.provider]
        state = dataclasses.replace(
            state, users=state.users.set(sale.provider, dataclasses.replace(provider, strikes=provider.strikes + 1))
        )
        done = dataclasses.replace(sale, status=REFUNDED, disputed=True, reason=e.reason,
                                   closed_seq=sale.closed_seq or rec.seq)
    else:
        if e.penalty:
            state = _move(
                state,
                (sale.consumer, -e.penalty, Flow(rec.seq, rec.at_ms, "dispute_penalty", -e.penalty, "owner",
                                                 sale.doc_id, sale.sale_id, memo=e.reason)),
                ("owner", e.penalty, Flow(rec.seq, rec.at_ms, "dispute_penalty", e.penalty, sale.consumer,
                                          sale.doc_id, sale.sale_id)),
            )
        done = dataclasses.replace(sale, disputed=True, reason=e.reason)
    return dataclasses.replace(state, sales=state.sales.set(e.sale_id, done))


# -- serialisation, hashing and invariants ---------------------------------------------------------

_TABLES = {"users": User, "documents": Document, "sales": Sale}


def state_to_dict(state: State) -> dict[str, Any]:
    """A plain, canonical-encodable picture of the whole state."""
    out: dict[str, Any] = {
        k: getattr(state, k) for k in ("seq", "head_hash", "epoch", "primary", "fee_bps", "deposited")
    }
    for name in _TABLES:
        out[name] = {k: dataclasses.asdict(v) for k, v in getattr(state, name).items()}
    out["balances"] = dict(state.balances)
    out["held"] = dict(state.held)
    out["commands"] = {k: dict(v) for k, v in state.commands.items()}
    if state.roster is not None:  # absent rather than null, so states from before rosters hash as they did
        out["roster"] = state.roster.to_wire()
    return out


def state_from_dict(data: dict[str, Any]) -> State:
    kwargs: dict[str, Any] = {k: data[k] for k in ("seq", "head_hash", "epoch", "primary", "fee_bps", "deposited")}
    for name, cls in _TABLES.items():
        kwargs[name] = pmap({k: cls(**_tuples(v)) for k, v in data[name].items()})
    kwargs["balances"] = pmap(data["balances"])
    kwargs["held"] = pmap(data["held"])
    kwargs["commands"] = pmap(data["commands"])
    kwargs["command_buckets"] = _buckets(data["commands"])
    kwargs["sale_buckets"], kwargs["sale_low"] = _sale_buckets(kwargs["sales"])
    # A picture from before flows left the state still carries them and no longer hashes to its digest:
    # whoever checks it (recovery, a join, the audit) then replays the log instead.
    if data.get("roster") is not None:
        kwargs["roster"] = Roster.from_wire(data["roster"])
    return State(**kwargs)


def _buckets(commands: dict[str, Any]) -> PMap:
    by_bucket: dict[int, list[tuple[int, str]]] = {}
    for command_id, done in commands.items():
        by_bucket.setdefault(int(done["seq"]) // COMMAND_BUCKET, []).append((int(done["seq"]), command_id))
    return pmap({b: pvector(cid for _, cid in sorted(ids)) for b, ids in by_bucket.items()})


def sale_from_dict(fields: dict[str, Any]) -> Sale:
    """A sale from its picture (``dataclasses.asdict``, as snapshots and the store's projection keep it)."""
    return Sale(**_tuples(fields))


def _sale_buckets(sales: PMap) -> tuple[PMap, int | None]:
    by_bucket: dict[int, list[tuple[int, str]]] = {}
    for sale_id, sale in sales.items():
        if sale.status != OPEN and sale.closed_seq is not None:
            by_bucket.setdefault(sale.closed_seq // DISPUTE_BUCKET, []).append((sale.closed_seq, sale_id))
    buckets = pmap({b: pvector(sid for _, sid in sorted(ids)) for b, ids in by_bucket.items()})
    return buckets, min(by_bucket) if by_bucket else None


def _tuples(fields: dict[str, Any]) -> dict[str, Any]:
    # JSON has lists; the frozen records hold tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


_PIECE = 256  # entries of a table encoded at once by canonical_pieces


def canonical_pieces(picture: dict[str, Any]) -> Iterator[bytes]:
    """``canonical(picture)`` in pieces (their concatenation is exactly those bytes), a table a few hundred
    entries at a time, so a thread encoding a large state lets the others run in between."""
    yield b"{"
    for i, (key, value) in enumerate(sorted(picture.items())):
        yield (b"," if i else b"") + canonical(key) + b":"
        if not (isinstance(value, dict) and len(value) > _PIECE):
            yield canonical(value)
            continue
        items = sorted(value.items())
        for start in range(0, len(items), _PIECE):
            body = canonical(dict(items[start:start + _PIECE]))[1:-1]
            yield (b"{" if start == 0 else b",") + body
        yield b"}"
    yield b"}"


def state_hash(state: State) -> str:
    """SHA-256 of the canonical encoding of the whole state."""
    return hashlib.sha256(canonical(state_to_dict(state))).hexdigest()


def invariant_violations(state: State) -> list[str]:
    """What is wrong with a state: empty when money is conserved and every hold adds up."""
    return [explanation for _, explanation in invariant_findings(state)]


# The invariants a state keeps, by the names the audit reports them under (ledger.audit.Invariant).
MONEY_CONSERVED, HOLDS_ADD_UP, NO_NEGATIVE_BALANCE, KEYS_BY_SETTLE_ONLY = (
    "money_conserved", "holds_add_up", "no_negative_balance", "keys_by_settle_only")


def invariant_findings(state: State) -> list[tuple[str, str]]:
    """``(invariant, explanation)`` for everything wrong with a state; empty when it is sound."""
    problems: list[tuple[str, str]] = []
    total = sum(state.balances.values()) + sum(state.held.values())
    if total != state.deposited:
        problems.append((MONEY_CONSERVED, f"money not conserved: accounts {sum(state.balances.values())} + holds "
                                          f"{sum(state.held.values())} != deposited {state.deposited}"))
    open_by_consumer: dict[str, int] = {}
    for sale in state.sales.values():
        if sale.status == OPEN:
            open_by_consumer[sale.consumer] = open_by_consumer.get(sale.consumer, 0) + sale.held
        if sale.status == SETTLED and not sale.consumer_sealed_key:
            problems.append((KEYS_BY_SETTLE_ONLY, f"sale {sale.sale_id} settled without releasing its key"))
        if sale.status != SETTLED and sale.status != REFUNDED and sale.consumer_sealed_key:
            problems.append((KEYS_BY_SETTLE_ONLY, f"sale {sale.sale_id} released its key without settling"))
    for account, amount in state.held.items():
        if amount != open_by_consumer.get(account, 0):
            problems.append((HOLDS_ADD_UP, f"holds of {account} are {amount}, open sales add up to "
                                           f"{open_by_consumer.get(account, 0)}"))
    for account, amount in state.balances.items():
        user = state.users.get(account)
        # Only a provider who lost a dispute may owe money (a clawback after it spent the sale).
        if amount < 0 and not (user is not None and user.strikes > 0):
            problems.append((NO_NEGATIVE_BALANCE, f"balance of {account} is negative ({amount})"))
    return problems
