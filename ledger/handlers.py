"""Deciding a command: check it against the state, and say which events it causes.

``decide`` reads state and never changes it; the events it returns are applied
by :func:`ledger.model.apply` only once they are in the log. A refusal is a
coded :class:`broker.errors.CommandRejected` and causes no event at all, so a
refused command leaves balances and the log exactly as they were.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from broker import commands as c
from broker import content, errors
from broker.codec import b64d, b64e
from broker.envelope import Envelope, verify
from broker.money import MAX_FEE_BPS, fee, format_minor, interval_fee, interval_prices
from broker.sealing import SealError, escrow_info, open_sealed, release_info, seal_to
from broker.trust import Roster
from ledger import events as ev
from ledger import model
from ledger.model import OPEN, SETTLED, State, dispute_closes_after

__all__ = ["Context", "Decision", "decide", "authenticate", "expire_holds", "RESERVED_LOGINS"]

RESERVED_LOGINS = frozenset({c.OPERATOR, c.LEDGER, c.OWNER, "system", "admin"})


@dataclass(frozen=True)
class Context:
    """What deciding needs beyond the state: keys, the primary's clock, and the sales that left the state."""

    operator_key: bytes  # raw Ed25519 public key of the operator
    ledger_key: X25519PrivateKey  # opens escrowed keys
    now_ms: int
    hold_ttl_ms: int = 15 * 60 * 1000
    max_skew_ms: int = 60 * 60 * 1000
    # A sale past its dispute window, by id, from the store's projection (``Store.retired_sale``): a sale id is
    # never used twice, and a late command about an old sale is told what became of it. None: the state only.
    retired_sale: Callable[[str], dict[str, Any] | None] | None = None


@dataclass(frozen=True)
class Decision:
    events: list[Any]
    result: dict[str, Any]


def authenticate(state: State, env: Envelope, ctx: Context) -> None:
    """Check the envelope's sender and signature (and freshness) against the state."""
    payload = env.payload
    if abs(ctx.now_ms - env.issued_at) > ctx.max_skew_ms:
        raise errors.StaleCommand(f"issued at {env.issued_at}, ledger time {ctx.now_ms}: more than "
                                  f"{ctx.max_skew_ms // 60000} min apart")
    if isinstance(payload, c.RegisterUser):
        if env.sender != payload.login:
            raise errors.NotAuthorized(f"registration of {payload.login} must be sent by {payload.login}")
        verify(env, bytes.fromhex(payload.sign_key))
        return
    if env.sender == c.OPERATOR:
        verify(env, ctx.operator_key)
        return
    if env.sender == c.LEDGER:
        raise errors.NotAuthorized("only the primary itself issues ledger commands")
    user = state.users.get(env.sender)
    if user is None:
        raise errors.UnknownUser(f"no user {env.sender!r}")
    verify(env, bytes.fromhex(user.sign_key))


def decide(state: State, env: Envelope, ctx: Context, *, authenticated: bool = False) -> Decision:
    """Authenticate (unless the caller just did) and decide a command.

    Raises CommandRejected; returns the events otherwise.
    """
    if not authenticated:
        authenticate(state, env, ctx)
    payload = env.payload
    handler = _HANDLERS.get(type(payload))
    if handler is None:
        raise errors.UnknownType(f"{payload.type} is not a command")
    return handler(state, env.sender, payload, ctx)


def _need_operator(sender: str, what: str) -> None:
    if sender != c.OPERATOR:
        raise errors.NotAuthorized(f"only the operator may {what}")


def _register(state: State, sender: str, cmd: c.RegisterUser, ctx: Context) -> Decision:
    if cmd.login in RESERVED_LOGINS:
        raise errors.BadLogin(f"{cmd.login!r} is reserved")
    if cmd.login in state.users:
        raise errors.DuplicateRegistration(f"login {cmd.login!r} is taken")
    try:
        cert = x509.load_pem_x509_certificate(cmd.cert_pem.encode())
        cert_key = cert.public_key()
    except ValueError as exc:
        raise errors.Malformed(f"cert_pem is not a PEM certificate: {exc}") from exc
    if not isinstance(cert_key, Ed25519PublicKey) or cert_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ).hex() != cmd.sign_key:
        raise errors.Malformed("cert_pem is not a certificate of sign_key")
    event = ev.UserRegistered(login=cmd.login, sign_key=cmd.sign_key, box_key=cmd.box_key,
                              cert_pem=cmd.cert_pem, keystore=cmd.keystore)
    return Decision([event], {"login": cmd.login})


def _deposit(state: State, sender: str, cmd: c.Deposit, ctx: Context) -> Decision:
    _need_operator(sender, "deposit")
    if cmd.amount <= 0:
        raise errors.BadAmount(f"deposit amount must be positive, got {cmd.amount}")
    if cmd.account not in state.users:
        raise errors.UnknownUser(f"no user {cmd.account!r}")
    return Decision([ev.Deposited(account=cmd.account, amount=cmd.amount, memo=cmd.memo)],
                    {"account": cmd.account, "balance": state.balance(cmd.account) + cmd.amount})


def _set_fee(state: State, sender: str, cmd: c.SetFee, ctx: Context) -> Decision:
    _need_operator(sender, "set the fee")
    if not 0 <= cmd.bps <= MAX_FEE_BPS:
        raise errors.BadAmount(f"fee must be within 0..{MAX_FEE_BPS} basis points, got {cmd.bps}")
    return Decision([ev.FeeSet(bps=cmd.bps)], {"bps": cmd.bps})


def _check_price(price: int) -> None:
    if price <= 0:
        raise errors.BadPrice(f"price must be a positive number of minor units, got {price}")


def _publish(state: State, sender: str, cmd: c.PublishDocument, ctx: Context) -> Decision:
    _check_price(cmd.price)
    existing = state.documents.get(cmd.doc_id)
    if existing is not None and (existing.provider != sender or existing.published):
        raise errors.DuplicateDocument(f"document {cmd.doc_id} is already published")
    if existing is not None and (existing.size, existing.sha256, existing.merkle_root, existing.segment_size) != (
            cmd.size, cmd.sha256, cmd.merkle_root, cmd.segment_size):
        # Disputes of past sales are judged against this document's root: it must never change.
        raise errors.DuplicateDocument(f"document {cmd.doc_id} was published with other content; "
                                       f"publish new content under a new id")
    fields = cmd.model_dump(exclude={"type", "schema_version"})
    return Decision([ev.DocumentPublished(provider=sender, **fields)], {"doc_id": cmd.doc_id})


def _own_document(state: State, sender: str, doc_id: str) -> Any:
    doc = state.documents.get(doc_id)
    if doc is None or not doc.published:
        raise errors.UnknownDocument(f"no published document {doc_id}")
    if doc.provider != sender:
        raise errors.NotAuthorized(f"document {doc_id} belongs to {doc.provider}")
    return doc


def _unpublish(state: State, sender: str, cmd: c.Unpublish, ctx: Context) -> Decision:
    _own_document(state, sender, cmd.doc_id)
    return Decision([ev.DocumentUnpublished(doc_id=cmd.doc_id)], {"doc_id": cmd.doc_id})


def _change_price(state: State, sender: str, cmd: c.ChangePrice, ctx: Context) -> Decision:
    _check_price(cmd.price)
    _own_document(state, sender, cmd.doc_id)
    return Decision([ev.PriceChanged(doc_id=cmd.doc_id, price=cmd.price)], {"doc_id": cmd.doc_id, "price": cmd.price})


def _retired(state: State, sale_id: str, ctx: Context) -> dict[str, Any] | None:
    """The sale ``sale_id`` as it left the state, if it did (nothing can have left before the first window)."""
    if ctx.retired_sale is None or state.seq <= model.DISPUTE_WINDOW:
        return None
    return ctx.retired_sale(sale_id)


def _open_sale(state: State, sender: str, cmd: c.OpenSale, ctx: Context) -> Decision:
    if cmd.sale_id in state.sales or _retired(state, cmd.sale_id, ctx) is not None:
        # Evidence of a dispute names its sale by id only: an id used again would let old evidence be judged
        # against a new key.
        raise errors.DuplicateSale(f"sale id {cmd.sale_id} is already used")
    doc = state.documents.get(cmd.doc_id)
    if doc is None or not doc.published:
        raise errors.UnknownDocument(f"no published document {cmd.doc_id}")
    if doc.provider == sender:
        raise errors.OwnDocument(f"{sender} provides {cmd.doc_id} and cannot buy it")
    if cmd.price != doc.price:
        raise errors.PriceChanged(f"now {format_minor(doc.price)}, you agreed to {format_minor(cmd.price)}")
    available = state.balance(sender)
    if available < doc.price:
        raise errors.InsufficientFunds(f"balance {available}, price {doc.price}")
    sale_fee = fee(doc.price, state.fee_bps)
    deadline = ctx.now_ms + ctx.hold_ttl_ms
    n = content.interval_count(content.segment_count_for(doc.size, doc.segment_size), doc.interval_segments)
    if cmd.interval_prices is not None and list(cmd.interval_prices) != (interval_prices(doc.price, n) if n > 1
                                                                           else [doc.price]):
        shown = ", ".join(format_minor(p) for p in cmd.interval_prices)
        now = ", ".join(format_minor(p) for p in (interval_prices(doc.price, n) if n > 1 else [doc.price]))
        raise errors.PriceChanged(f"now {now} in {n} intervals, you agreed to {shown}")
    event = ev.SaleOpened(sale_id=cmd.sale_id, doc_id=doc.doc_id, consumer=sender, provider=doc.provider,
                          price=doc.price, fee=sale_fee, deadline_ms=deadline, intervals=n,
                          interval_segments=doc.interval_segments if n > 1 else 0, fee_bps=state.fee_bps)
    result: dict[str, Any] = {"sale_id": cmd.sale_id, "price": doc.price, "fee": sale_fee, "deadline_ms": deadline,
                              "intervals": n}
    if n > 1:
        result["interval_prices"] = interval_prices(doc.price, n)
    return Decision([event], result)


def _sale_of(state: State, sale_id: str, sender: str | None, *roles: str, ctx: Context | None = None) -> Any:
    """The sale, if ``sender`` plays one of ``roles`` in it (any sender when None); a sale past its dispute window
    is refused as closed, saying so."""
    sale = state.sales.get(sale_id)
    if sale is None:
        old = _retired(state, sale_id, ctx) if ctx is not None else None
        if old is None:
            raise errors.UnknownSale(f"no sale {sale_id}")
        if sender is not None and sender not in [old.get(r) for r in roles]:
            raise errors.NotYourSale(f"sale {sale_id} is between {old.get('consumer')} and {old.get('provider')}")
        raise errors.SaleClosed(f"sale {sale_id} is {old.get('status')} since seq {old.get('closed_seq')} and past "
                                f"its dispute window of {model.DISPUTE_WINDOW:,} events")
    if sender is not None and sender not in [getattr(sale, r) for r in roles]:
        raise errors.NotYourSale(f"sale {sale_id} is between {sale.consumer} and {sale.provider}")
    return sale


def _open_escrow(sale_id: str, sealed_b64: str, commitment: str, ctx: Context) -> bytes:
    try:
        key = open_sealed(ctx.ledger_key, b64d(sealed_b64), escrow_info(sale_id))
    except (SealError, ValueError) as exc:
        raise errors.BadEscrow(f"escrowed key for {sale_id} does not open: {exc}") from exc
    if len(key) != 32 or content.key_commitment(sale_id, key) != commitment:
        raise errors.BadEscrow(f"escrowed key for {sale_id} does not match its commitment")
    return key


def _escrow(state: State, sender: str, cmd: c.EscrowKey, ctx: Context) -> Decision:
    sale = _sale_of(state, cmd.sale_id, sender, "provider", ctx=ctx)
    if sale.status != OPEN:
        raise errors.SaleClosed(f"sale {cmd.sale_id} is {sale.status}")
    if sale.key_commitment is not None:
        if sale.key_commitment == cmd.key_commitment:
            return Decision([], {"sale_id": cmd.sale_id, "key_commitment": cmd.key_commitment})
        raise errors.BadEscrow(f"sale {cmd.sale_id} already has a different key escrowed")
    doc = state.documents.get(sale.doc_id)
    if cmd.doc_id != sale.doc_id or doc is None or cmd.merkle_root != doc.merkle_root:
        raise errors.BadEscrow(f"the key offered for sale {cmd.sale_id} is for another document than the sale's")
    _open_escrow(cmd.sale_id, cmd.sealed_key, cmd.key_commitment, ctx)
    event = ev.KeyEscrowed(sale_id=cmd.sale_id, key_commitment=cmd.key_commitment, sealed_key=cmd.sealed_key,
                           doc_id=cmd.doc_id)
    return Decision([event], {"sale_id": cmd.sale_id, "key_commitment": cmd.key_commitment})


def _settleable(state: State, sale_id: str, sender: str, ctx: Context) -> tuple[Any, bytes]:
    sale = _sale_of(state, sale_id, sender, "consumer", ctx=ctx)
    if sale.status != OPEN:
        raise errors.SaleClosed(f"sale {sale_id} is already {sale.status}")
    if sale.sealed_key is None:
        raise errors.KeyNotEscrowed(f"provider {sale.provider} has not escrowed the key of {sale_id}")
    return sale, _open_escrow(sale.sale_id, sale.sealed_key, sale.key_commitment, ctx)


def _settle(state: State, sender: str, cmd: c.SettleSale, ctx: Context) -> Decision:
    """Pay what is left of the price and release the sale key K (a split sale's rest at once)."""
    sale, key = _settleable(state, cmd.sale_id, sender, ctx)
    consumer = state.users[sale.consumer]
    sealed = b64e(seal_to(bytes.fromhex(consumer.box_key), key, release_info(sale.sale_id)))
    price, sale_fee = sale.price - sale.paid, sale.fee - sale.fee_paid
    provider_amount = price - sale_fee
    event = ev.SaleSettled(sale_id=sale.sale_id, price=price, fee=sale_fee,
                           provider_amount=provider_amount, consumer_sealed_key=sealed)
    return Decision([event], {"sale_id": sale.sale_id, "price": price, "fee": sale_fee,
                              "provider_amount": provider_amount, "consumer_sealed_key": sealed})


def _settle_interval(state: State, sender: str, cmd: c.SettleInterval, ctx: Context) -> Decision:
    """Pay one interval of a split sale, in order, and release that interval's key only."""
    sale, key = _settleable(state, cmd.sale_id, sender, ctx)
    if sale.intervals < 2:
        raise errors.NotAuthorized(f"sale {sale.sale_id} is not split into intervals; settle it whole")
    if cmd.interval != sale.settled_intervals:
        raise errors.SaleClosed(f"interval {cmd.interval + 1} of {sale.sale_id}: the next to settle is "
                                f"{sale.settled_intervals + 1} of {sale.intervals}")
    j = cmd.interval
    price = interval_prices(sale.price, sale.intervals)[j]
    paid_after = sale.paid + price
    sale_fee = interval_fee(sale.price, sale.intervals, j, sale.fee_bps, charged=sale.fee_paid, total=sale.fee)
    consumer = state.users[sale.consumer]
    k = content.interval_key(key, sale.sale_id, j)
    sealed = b64e(seal_to(bytes.fromhex(consumer.box_key), k, release_info(sale.sale_id, j)))
    deadline = ctx.now_ms + ctx.hold_ttl_ms
    event = ev.IntervalSettled(sale_id=sale.sale_id, interval=j, price=price, fee=sale_fee,
                               provider_amount=price - sale_fee, consumer_sealed_key=sealed, deadline_ms=deadline)
    return Decision([event], {"sale_id": sale.sale_id, "interval": j, "intervals": sale.intervals, "price": price,
                              "fee": sale_fee, "provider_amount": price - sale_fee, "consumer_sealed_key": sealed,
                              "paid": paid_after, "remaining": sale.price - paid_after})


def _void(state: State, sender: str, cmd: c.VoidSale, ctx: Context) -> Decision:
    who = None if sender == c.OPERATOR else sender
    sale = _sale_of(state, cmd.sale_id, who, "consumer", "provider", ctx=ctx)
    if sale.status != OPEN:
        raise errors.SaleClosed(f"sale {cmd.sale_id} is already {sale.status}")
    # A split sale keeps what its settled intervals paid: only the rest still held goes back.
    return Decision([ev.SaleVoided(sale_id=sale.sale_id, reason=f"{cmd.reason} by {sender}")],
                    {"sale_id": sale.sale_id, "released": sale.held})


def _dispute(state: State, sender: str, cmd: c.FileDispute, ctx: Context) -> Decision:
    sale = _sale_of(state, cmd.sale_id, sender, "consumer", ctx=ctx)
    paid_segments = sale.settled_intervals * sale.interval_segments
    if not (sale.status == SETTLED or (sale.status == OPEN and sale.settled_intervals and cmd.index < paid_segments)):
        raise errors.SaleClosed(f"only what was paid for can be disputed; sale {cmd.sale_id} is {sale.status}"
                                + (f" and segment {cmd.index} is in an interval not yet settled"
                                   if sale.status == OPEN else ""))
    if sale.disputed:
        raise errors.SaleClosed(f"sale {cmd.sale_id} was already disputed")
    last = dispute_closes_after(sale)
    if last is not None and state.seq + 1 > last:
        raise errors.SaleClosed(f"sale {cmd.sale_id} was settled at seq {sale.closed_seq}; disputes are accepted for "
                                f"{model.DISPUTE_WINDOW:,} events after settlement, and the ledger is at seq "
                                f"{state.seq}")
    key = _open_escrow(sale.sale_id, sale.sealed_key, sale.key_commitment, ctx)
    doc = state.documents[sale.doc_id]
    provider = state.users[sale.provider]
    try:
        ciphertext = b64d(cmd.ciphertext)
        header = content.SignedHeader.from_wire(cmd.header)
        entry = content.SignedEntry.from_wire(cmd.entry)
        entry_index = entry.entry.index
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.Malformed(f"dispute evidence does not parse: {exc}") from exc
    if entry_index != cmd.index:
        raise errors.Malformed(f"dispute names segment {cmd.index} but its evidence is of segment {entry_index}")
    verdict = content.judge_dispute(
        key=key, sale_id=sale.sale_id, provider_public_key=bytes.fromhex(provider.sign_key),
        header=header, entry=entry, ciphertext=ciphertext, published_root_hex=doc.merkle_root,
        segment_count=content.segment_count_for(doc.size, doc.segment_size),
        interval_segments=sale.interval_segments,
    )
    if verdict.provider_cheated:
        # Everything paid comes back; what is still held for later intervals is released.
        event = ev.DisputeResolved(sale_id=sale.sale_id, index=cmd.index, provider_cheated=True,
                                   reason=verdict.reason, refund=sale.paid, penalty=0, fee_returned=sale.fee_paid,
                                   released=sale.held)
    else:
        # Never below zero: a disputer who owes money (a struck provider) must not be paid for losing.
        penalty = max(0, min(max(fee(sale.price, state.fee_bps), 1), state.balance(sender)))
        event = ev.DisputeResolved(sale_id=sale.sale_id, index=cmd.index, provider_cheated=False,
                                   reason=verdict.reason, refund=0, penalty=penalty)
    return Decision([event], {"sale_id": sale.sale_id, "provider_cheated": verdict.provider_cheated,
                              "reason": verdict.reason, "refund": event.refund, "penalty": event.penalty})


def _set_roster(state: State, sender: str, cmd: c.SetRoster, ctx: Context) -> Decision:
    """The operator certifies a new set of replica keys; only a newer roster than the one in force."""
    _need_operator(sender, "change the replica roster")
    roster = Roster.verified(cmd.roster, ctx.operator_key)
    if state.roster is not None and roster.serial <= state.roster.serial:
        raise errors.NotAuthorized(f"roster {roster.serial} is not newer than the one in force ({state.roster.serial})")
    return Decision([ev.RosterChanged(roster=cmd.roster)], {"serial": roster.serial,
                                                                 "replicas": sorted(roster.replicas)})


def _change_keystore(state: State, sender: str, cmd: c.ChangeKeystore, ctx: Context) -> Decision:
    if sender not in state.users:
        raise errors.UnknownUser(f"no user {sender!r}")
    return Decision([ev.KeystoreChanged(login=sender, keystore=cmd.keystore)], {"login": sender})


def expire_holds(state: State, now_ms: int) -> list[Any]:
    """Voids for every open sale past its deadline, by the primary's clock (never a backup's)."""
    return [
        ev.SaleVoided(sale_id=s.sale_id, reason="expired")
        for s in state.sales.values()
        if s.status == OPEN and s.deadline_ms <= now_ms
    ]


_HANDLERS: dict[type, Any] = {
    c.RegisterUser: _register, c.Deposit: _deposit, c.SetFee: _set_fee, c.PublishDocument: _publish,
    c.Unpublish: _unpublish, c.ChangePrice: _change_price, c.OpenSale: _open_sale, c.EscrowKey: _escrow,
    c.SettleSale: _settle, c.SettleInterval: _settle_interval, c.VoidSale: _void, c.FileDispute: _dispute,
    c.SetRoster: _set_roster, c.ChangeKeystore: _change_keystore,
}
