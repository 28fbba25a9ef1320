"""Whose signature stands behind each event: the check every replica and the audit make.

A log entry is signed by the replica that wrote it, but a replica may only
write what someone entitled to it asked for. So an entry that a user's command
caused carries that command, exactly as the user signed it, and the events
must be the ones that command can cause, for the accounts it may touch:

=================  ============================  =========================================
command            signed by                     events it may cause
=================  ============================  =========================================
register           the new key itself            user_registered of that login and keys
deposit, set_fee   the operator                  deposited (same account, amount), fee_set
set_roster         the operator                  roster_changed (that roster)
publish            the provider                  document_published by that provider
unpublish, price   the document's provider       document_unpublished, price_changed
open_sale          the consumer                  sale_opened for that consumer, doc, price
escrow_key         the sale's provider           key_escrowed (that commitment)
settle(_interval)  the sale's consumer           sale_settled / interval_settled
void               consumer, provider, operator  sale_voided
dispute            the sale's consumer           dispute_resolved, in the dispute window
change_keystore    the user                      keystore_changed of that user
(none)             the primary alone             epoch_started; sale_voided "expired" of an
                                                 open sale whose deadline has passed
=================  ============================  =========================================

:func:`entry_problem` says what is wrong, or None. It is pure: the same answer
on the primary, on every backup and in an audit years later.
"""
from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from broker import commands as c
from broker import content, errors
from broker.codec import canonical
from broker.envelope import Envelope, open_envelope, verify
from broker.money import MAX_FEE_BPS, fee, interval_fee, interval_prices
from broker.trust import Roster
from ledger import events as ev
from ledger.handlers import RESERVED_LOGINS, Context, decide
from ledger.model import OPEN, State, dispute_closes_after

__all__ = ["entry_problem", "command_of", "signer_key", "MAX_HOLD_MS"]

MAX_HOLD_MS = 24 * 3600 * 1000  # no deadline the ledger sets is further than this from the entry's time


def command_of(wire: Any) -> Envelope:
    """The signed command an entry carries, parsed (raises CommandRejected when it does not parse)."""
    if not isinstance(wire, dict):
        raise errors.Malformed("the entry's command is not an object")
    env = open_envelope(canonical(wire))
    if env.kind != "command":
        raise errors.Malformed("the entry carries a query, not a command")
    return env


def signer_key(state: State, env: Envelope, operator_key: bytes) -> bytes:
    """The public key that must have signed ``env``, from the state before it applied."""
    payload = env.payload
    if isinstance(payload, c.RegisterUser):
        if env.sender != payload.login:
            raise errors.NotAuthorized(f"registration of {payload.login} sent by {env.sender}")
        return bytes.fromhex(payload.sign_key)
    if env.sender == c.OPERATOR:
        return operator_key
    user = state.users.get(env.sender)
    if user is None:
        raise errors.UnknownUser(f"no user {env.sender!r}")
    return bytes.fromhex(user.sign_key)


def entry_problem(state: State, command_id: str | None, command: Any, at_ms: int, events: list[Any],
                  operator_key: bytes, ledger_key: X25519PrivateKey | None = None) -> str | None:
    """Why these events may not follow from this command in this state (None: they may).

    With ``ledger_key`` (every replica holds it; an outside auditor does not) a dispute's verdict is judged
    again from its evidence, so not even a certified primary can declare a provider a cheat.
    """
    if command_id is None:
        if command is not None:
            return "the entry carries a command but no command id"
        return _own_events_problem(state, at_ms, events)
    if command is None:
        return f"command {command_id} is not in the entry: nobody's signature stands behind its events"
    try:
        env = command_of(command)
        if env.id != command_id:
            return f"the entry's command is {env.id}, not {command_id}"
        verify(env, signer_key(state, env, operator_key))
    except errors.CommandRejected as exc:
        return f"command {command_id}: {exc}"
    if len(events) != 1:
        return f"command {command_id} caused {len(events)} events; every command causes one"
    problem = _matches(state, env, events[0], at_ms)
    if problem is None and ledger_key is not None and isinstance(events[0], ev.DisputeResolved):
        problem = _rejudge(state, env, events[0], at_ms, operator_key, ledger_key)
    return problem


def _rejudge(state: State, env: Envelope, event: ev.DisputeResolved, at_ms: int, operator_key: bytes,
             ledger_key: X25519PrivateKey) -> str | None:
    try:
        verdict = decide(state, env, Context(operator_key, ledger_key, at_ms), authenticated=True).events[0]
    except errors.CommandRejected as exc:
        return f"dispute of {event.sale_id} should have been refused: {exc}"
    if verdict != event:
        return f"dispute of {event.sale_id} judged otherwise from its evidence"
    return None


def _own_events_problem(state: State, at_ms: int, events: list[Any]) -> str | None:
    voided: set[str] = set()
    for e in events:
        if isinstance(e, ev.EpochStarted):
            if len(events) != 1:
                return "an epoch announcement stands alone in its entry"
            continue
        if not (isinstance(e, ev.SaleVoided) and e.reason == "expired"):
            return f"{e.type} has no signed command behind it"
        sale = state.sales.get(e.sale_id)
        if sale is None or sale.status != OPEN or e.sale_id in voided:
            return f"expiry of sale {e.sale_id}, which is not open"
        voided.add(e.sale_id)
        if sale.deadline_ms > at_ms:
            return f"expiry of sale {e.sale_id} before its deadline"
    return None


def _matches(state: State, env: Envelope, event: Any, at_ms: int) -> str | None:
    cmd, sender = env.payload, env.sender
    want = _EXPECT.get(type(cmd))
    if want is None or not isinstance(event, want[0]):
        return f"{cmd.type} by {sender} cannot cause {event.type}"
    return want[1](state, sender, cmd, event, at_ms)


def _same(pairs: list[tuple[str, Any, Any]]) -> str | None:
    for name, have, signed_for in pairs:
        if have != signed_for:
            return f"the event's {name} is not the one the command was signed for"
    return None


def _by(who: str | None, sender: str, what: str) -> str | None:
    return None if who == sender else f"{sender} may not {what}"


def _register(state: State, sender: str, cmd: c.RegisterUser, e: ev.UserRegistered, at_ms: int) -> str | None:
    if cmd.login in state.users:
        return f"{cmd.login} is registered already: nobody may take over an account"
    if cmd.login in RESERVED_LOGINS:
        return f"{cmd.login!r} is reserved: no user may hold it"
    return _same([("login", e.login, cmd.login), ("sign_key", e.sign_key, cmd.sign_key),
                  ("box_key", e.box_key, cmd.box_key), ("cert_pem", e.cert_pem, cmd.cert_pem),
                  ("keystore", e.keystore, cmd.keystore)])


def _operator_only(sender: str) -> str | None:
    return None if sender == c.OPERATOR else "only the operator may do this"


def _deposit(state: State, sender: str, cmd: c.Deposit, e: ev.Deposited, at_ms: int) -> str | None:
    if cmd.amount <= 0 or cmd.account not in state.users:
        return f"a deposit of {cmd.amount} to {cmd.account} is not one the ledger makes"
    return _operator_only(sender) or _same([("account", e.account, cmd.account), ("amount", e.amount, cmd.amount),
                                            ("memo", e.memo, cmd.memo)])


def _fee(state: State, sender: str, cmd: c.SetFee, e: ev.FeeSet, at_ms: int) -> str | None:
    if not 0 <= cmd.bps <= MAX_FEE_BPS:
        return f"a fee of {cmd.bps} basis points is not one the ledger sets"
    return _operator_only(sender) or _same([("bps", e.bps, cmd.bps)])


def _roster(state: State, sender: str, cmd: c.SetRoster, e: ev.RosterChanged, at_ms: int) -> str | None:
    try:
        Roster.from_wire(cmd.roster)
    except errors.CommandRejected as exc:
        return f"the roster does not parse: {exc}"
    return _operator_only(sender) or _same([("roster", e.roster, cmd.roster)])


def _publish(state: State, sender: str, cmd: c.PublishDocument, e: ev.DocumentPublished, at_ms: int) -> str | None:
    signed_for = cmd.model_dump(exclude={"type", "schema_version"})
    written = e.model_dump(exclude={"type", "schema_version", "provider"})
    if e.provider != sender or written != signed_for:
        return "the published document is not the one the provider signed for"
    if cmd.price <= 0 or sender not in state.users:
        return f"a price of {cmd.price} is not one the ledger sets"
    existing = state.documents.get(cmd.doc_id)
    if existing is not None and (existing.provider != sender or existing.published):
        return f"document {cmd.doc_id} is published already"
    if existing is not None and (existing.size, existing.sha256, existing.merkle_root, existing.segment_size) != (
            cmd.size, cmd.sha256, cmd.merkle_root, cmd.segment_size):
        return f"document {cmd.doc_id} was published with other content"
    return None


def _doc_owner(state: State, doc_id: str) -> str | None:
    doc = state.documents.get(doc_id)
    return doc.provider if doc is not None else None


def _unpublish(state: State, sender: str, cmd: c.Unpublish, e: ev.DocumentUnpublished, at_ms: int) -> str | None:
    return _by(_doc_owner(state, cmd.doc_id), sender, "unpublish it") or _same([("doc_id", e.doc_id, cmd.doc_id)])


def _price(state: State, sender: str, cmd: c.ChangePrice, e: ev.PriceChanged, at_ms: int) -> str | None:
    if cmd.price <= 0:
        return f"a price of {cmd.price} is not one the ledger sets"
    return _by(_doc_owner(state, cmd.doc_id), sender, "price it") or _same(
        [("doc_id", e.doc_id, cmd.doc_id), ("price", e.price, cmd.price)])


def _open(state: State, sender: str, cmd: c.OpenSale, e: ev.SaleOpened, at_ms: int) -> str | None:
    doc = state.documents.get(cmd.doc_id)
    if doc is None or not doc.published or cmd.sale_id in state.sales or doc.provider == sender:
        return f"sale {cmd.sale_id} of {cmd.doc_id} cannot be opened"
    if state.balance(sender) < doc.price:
        return f"{sender} cannot pay {doc.price} from {state.balance(sender)}"
    n = content.interval_count(content.segment_count_for(doc.size, doc.segment_size), doc.interval_segments)
    if not at_ms < e.deadline_ms <= at_ms + MAX_HOLD_MS:
        return f"sale {cmd.sale_id} holds the price until {e.deadline_ms}, not a deadline the ledger sets"
    return _same([("consumer", e.consumer, sender), ("sale_id", e.sale_id, cmd.sale_id),
                  ("doc_id", e.doc_id, cmd.doc_id), ("price", e.price, cmd.price), ("price", e.price, doc.price),
                  ("provider", e.provider, doc.provider), ("fee", e.fee, fee(doc.price, state.fee_bps)),
                  ("fee_bps", e.fee_bps, state.fee_bps), ("intervals", e.intervals, n),
                  ("interval_segments", e.interval_segments, doc.interval_segments if n > 1 else 0)])


def _sale_party(state: State, sale_id: str, role: str) -> str | None:
    sale = state.sales.get(sale_id)
    return getattr(sale, role) if sale is not None else None


def _escrow(state: State, sender: str, cmd: c.EscrowKey, e: ev.KeyEscrowed, at_ms: int) -> str | None:
    sale = state.sales.get(cmd.sale_id)
    if sale is None or sale.status != OPEN or sale.key_commitment is not None:
        return f"sale {cmd.sale_id} takes no key now"
    return _by(sale.provider, sender, "escrow this sale's key") or _same(
        [("sale_id", e.sale_id, cmd.sale_id), ("key_commitment", e.key_commitment, cmd.key_commitment),
         ("sealed_key", e.sealed_key, cmd.sealed_key), ("document", cmd.doc_id, sale.doc_id)])


def _settle(state: State, sender: str, cmd: c.SettleSale, e: ev.SaleSettled, at_ms: int) -> str | None:
    sale = state.sales.get(cmd.sale_id)
    if sale is None or sale.status != OPEN or sale.key_commitment is None or not e.consumer_sealed_key:
        return f"sale {cmd.sale_id} cannot be settled now"
    price, sale_fee = sale.price - sale.paid, sale.fee - sale.fee_paid
    return _by(sale.consumer, sender, "settle this sale") or _same(
        [("sale_id", e.sale_id, cmd.sale_id), ("price", e.price, price), ("fee", e.fee, sale_fee),
         ("provider_amount", e.provider_amount, price - sale_fee)])


def _settle_interval(state: State, sender: str, cmd: c.SettleInterval, e: ev.IntervalSettled,
                     at_ms: int) -> str | None:
    sale = state.sales.get(cmd.sale_id)
    if (sale is None or sale.status != OPEN or sale.key_commitment is None or sale.intervals < 2
            or cmd.interval != sale.settled_intervals or not e.consumer_sealed_key):
        return f"interval {cmd.interval} of sale {cmd.sale_id} cannot be settled now"
    price = interval_prices(sale.price, sale.intervals)[cmd.interval]
    sale_fee = interval_fee(sale.price, sale.intervals, cmd.interval, sale.fee_bps, charged=sale.fee_paid,
                            total=sale.fee)
    if not at_ms < e.deadline_ms <= at_ms + MAX_HOLD_MS:
        return f"interval {cmd.interval} of sale {cmd.sale_id} moves the deadline to one the ledger does not set"
    return _by(sale.consumer, sender, "settle this sale") or _same(
        [("sale_id", e.sale_id, cmd.sale_id), ("interval", e.interval, cmd.interval), ("price", e.price, price),
         ("fee", e.fee, sale_fee), ("provider_amount", e.provider_amount, price - sale_fee)])


def _void(state: State, sender: str, cmd: c.VoidSale, e: ev.SaleVoided, at_ms: int) -> str | None:
    sale = state.sales.get(cmd.sale_id)
    if sale is None or sale.status != OPEN:
        return f"sale {cmd.sale_id} is not open"
    if sender not in (sale.consumer, sale.provider, c.OPERATOR):
        return f"{sender} may not void sale {cmd.sale_id}"
    return _same([("sale_id", e.sale_id, cmd.sale_id), ("reason", e.reason, f"{cmd.reason} by {sender}")])


def _dispute(state: State, sender: str, cmd: c.FileDispute, e: ev.DisputeResolved, at_ms: int) -> str | None:
    """The amounts must follow from the verdict; the verdict itself needs the sale's key, which only the ledger
    holds (an auditor takes it on the writer's signature)."""
    sale = state.sales.get(cmd.sale_id)
    if sale is None or sale.disputed or sale.key_commitment is None:
        return f"sale {cmd.sale_id} cannot be disputed now"
    last = dispute_closes_after(sale)
    if last is not None and state.seq + 1 > last:
        return f"sale {cmd.sale_id} is past its dispute window (settled at seq {sale.closed_seq})"
    if e.provider_cheated:
        owed = [("refund", e.refund, sale.paid), ("penalty", e.penalty, 0), ("fee_returned", e.fee_returned,
                sale.fee_paid), ("released", e.released, sale.held)]
    else:
        penalty = max(0, min(max(fee(sale.price, state.fee_bps), 1), state.balance(sender)))
        owed = [("refund", e.refund, 0), ("penalty", e.penalty, penalty), ("fee_returned", e.fee_returned, 0),
                ("released", e.released, 0)]
    return _by(sale.consumer, sender, "dispute this sale") or _same(
        [("sale_id", e.sale_id, cmd.sale_id), ("index", e.index, cmd.index), *owed])


def _keystore(state: State, sender: str, cmd: c.ChangeKeystore, e: ev.KeystoreChanged, at_ms: int) -> str | None:
    if sender not in state.users:
        return f"{sender} has no keystore to change"
    return _same([("login", e.login, sender), ("keystore", e.keystore, cmd.keystore)])


_EXPECT: dict[type, tuple[type, Any]] = {
    c.RegisterUser: (ev.UserRegistered, _register), c.Deposit: (ev.Deposited, _deposit),
    c.SetFee: (ev.FeeSet, _fee), c.SetRoster: (ev.RosterChanged, _roster),
    c.PublishDocument: (ev.DocumentPublished, _publish), c.Unpublish: (ev.DocumentUnpublished, _unpublish),
    c.ChangePrice: (ev.PriceChanged, _price), c.OpenSale: (ev.SaleOpened, _open),
    c.EscrowKey: (ev.KeyEscrowed, _escrow), c.SettleSale: (ev.SaleSettled, _settle),
    c.SettleInterval: (ev.IntervalSettled, _settle_interval), c.VoidSale: (ev.SaleVoided, _void),
    c.FileDispute: (ev.DisputeResolved, _dispute), c.ChangeKeystore: (ev.KeystoreChanged, _keystore),
}
