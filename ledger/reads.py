"""Read queries, answered from a replica's applied state and catalog.

Backups consume the shared reads queue at a higher priority than the primary,
so RabbitMQ spreads reads over the backups and the primary answers only when
no backup is there. A query may carry ``min_seq``: the answer waits until this
replica has applied that far (read-your-writes) or says it lags.

A query that waited past its sender's deadline (``broker.envelope.expired``) is answered
``expired`` at once, unread: its sender stopped listening, and the answer costs a signature
rather than a look-up. A parked query waits no longer than its deadline either.

``command_status`` answers what became of a command from this replica's log (its state, and
the store for ids older than the state's window): see :class:`broker.answers.CommandStatusAnswer`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker import errors
from broker import queries as q
from broker.answers import APPLIED, EXPIRED, UNKNOWN, parse_answer
from broker.envelope import DEADLINE_GRACE_MS, Envelope, expired, open_envelope, verify
from broker.rabbitmq import transport_for
from broker.replies import Reply
from broker.topology import BACKUP_PRIORITY, PRIMARY_PRIORITY, Names
from broker.transport import Delivery, Link, Transport
from broker.trust import Trust, digest, tagged
from catalog import Catalog
from ledger.connected import keep_connected
from ledger.follower import Follower
from ledger.keys import SystemKeys
from ledger.model import State, sale_from_dict
from ledger.ratelimit import RateLimiter
from ledger.store import Store

__all__ = ["answer", "command_status", "ReadServer", "CHALLENGE_TTL_MS", "STATUS_MARGIN_MS"]

log = logging.getLogger(__name__)
CHALLENGE_TTL_MS = 120_000
_WAIT_SECONDS = 5.0  # how long a query may wait for this replica to reach its min_seq
_MAX_WAITING = 10_000
_MAX_WAITING_PER_CHANNEL = 16  # parked queries per reply channel: one client cannot fill the room
# A query may wait for a sequence at most this far past what this replica has applied; anything further is
# refused at once (no honest client is that far ahead of a replica that is following the log).
MAX_AHEAD = 50_000
_PRIVATE_OF = {"balance": "account", "flows": "account", "sales": "account"}
# A replica calls a command `expired` (never to be applied) only once its own clock is this far past the
# command's deadline and grace: room for a primary's clock behind this replica's, and for this replica
# lagging behind the log (a command applied just in time may not have reached it yet).
STATUS_MARGIN_MS = 10_000


def _authorize(state: State, env: Envelope, keys: SystemKeys, account: str | None) -> None:
    """Private reads: signed by the account's owner, or by the operator."""
    if env.sender == "operator":
        verify(env, keys.operator_public)
        return
    user = state.users.get(env.sender)
    if user is None:
        raise errors.UnknownUser(f"no user {env.sender!r}")
    verify(env, bytes.fromhex(user.sign_key))
    if account is not None and account != env.sender:
        raise errors.NotAuthorized(f"{env.sender} may not read the account of {account}")


def _challenge_mac(keys: SystemKeys, text: str) -> str:
    return hmac.new(keys.challenge_secret(), text.encode(), hashlib.sha256).hexdigest()[:32]


def newest_roster(state: State, trust: Trust | None) -> Any:
    """The newer of the log's roster and the one this replica was given (both operator-signed)."""
    offered = trust.roster if trust is not None else None
    if offered is not None and (state.roster is None or offered.serial > state.roster.serial):
        return offered
    return state.roster


def answer(state: State, env: Envelope, keys: SystemKeys, catalog: Catalog, now_ms: int,
           trust: Trust | None = None, fetches: RateLimiter | None = None,
           flows: Callable[[str, int, int], list[dict[str, Any]]] | None = None,
           commands: Callable[[str], dict[str, Any] | None] | None = None,
           retired: Store | None = None) -> dict[str, Any]:
    """The result of one query against one state. Raises CommandRejected.

    ``flows(account, limit, upto)`` reads cash-flow history, which the state does not keep (the store does);
    ``commands(id)`` finds an applied command older than the state's window of ids (the store, again);
    ``retired``, the store, holds the sales past their dispute window.
    """
    query = env.payload
    kind = query.type
    if kind not in q.PUBLIC_QUERIES:
        account = getattr(query, _PRIVATE_OF.get(kind, "_"), None)
        _authorize(state, env, keys, account)
    if isinstance(query, q.Balance):
        if query.account != "owner" and query.account not in state.users:
            raise errors.UnknownUser(f"no user {query.account!r}")
        return {"account": query.account, "available": state.balance(query.account),
                "held": state.holds(query.account), "seq": state.seq}
    if isinstance(query, q.Flows):
        history = flows(query.account, query.limit, state.seq) if flows is not None else []
        return {"account": query.account, "flows": history, "seq": state.seq}
    if isinstance(query, q.SaleStatus):
        sale = state.sales.get(query.sale_id)
        if sale is None and retired is not None:
            old = retired.retired_sale(query.sale_id, upto=state.seq)
            sale = sale_from_dict(old) if old is not None else None
        if sale is None:
            raise errors.UnknownSale(f"no sale {query.sale_id}")
        if env.sender not in ("operator", sale.consumer, sale.provider):
            raise errors.NotYourSale(f"sale {query.sale_id} is between {sale.consumer} and {sale.provider}")
        out = dataclasses.asdict(sale)
        out.pop("sealed_key")  # the escrow blob stays inside the ledger
        if env.sender != sale.consumer:
            out.pop("consumer_sealed_key")
            out.pop("interval_sealed_keys")
        consumer = state.users[sale.consumer]
        out["consumer_cert_pem"] = consumer.cert_pem
        out["consumer_sign_key"] = consumer.sign_key
        out["seq"] = state.seq
        return out
    if isinstance(query, q.Sales):
        mine = [dataclasses.asdict(s) for s in state.sales.values() if query.account in (s.consumer, s.provider)]
        if retired is not None:  # older ones first: the answer keeps the newest
            mine = retired.retired_sales(query.account, state.seq, query.limit) + mine
        for s in mine:
            s.pop("sealed_key")
            if s["consumer"] != query.account:
                s.pop("consumer_sealed_key")
                s.pop("interval_sealed_keys")
        mine.sort(key=lambda s: s["opened_seq"])
        return {"account": query.account, "sales": mine[-query.limit:], "seq": state.seq}
    if isinstance(query, q.UserInfo):
        user = state.users.get(query.login)
        if user is None:
            raise errors.UnknownUser(f"no user {query.login!r}")
        return {"login": user.login, "sign_key": user.sign_key, "box_key": user.box_key, "cert_pem": user.cert_pem,
                "strikes": user.strikes, "registered_seq": user.registered_seq}
    if isinstance(query, q.DocumentInfo):
        doc = state.documents.get(query.doc_id)
        if doc is None:
            raise errors.UnknownDocument(f"no document {query.doc_id}")
        provider = state.users[doc.provider]
        return {**dataclasses.asdict(doc), "provider_sign_key": provider.sign_key,
                "provider_cert_pem": provider.cert_pem, "provider_strikes": provider.strikes, "seq": state.seq}
    if isinstance(query, q.Search):
        hits = catalog.search(query.text, topic=query.topic, max_price=query.max_price, limit=query.limit)
        return {"hits": [h.as_dict() for h in hits], "seq": state.seq}
    if isinstance(query, q.LedgerInfo):
        roster = newest_roster(state, trust)
        return {"ledger_box_key": keys.ledger_public.hex(), "fee_bps": state.fee_bps, "seq": state.seq,
                "epoch": state.epoch, "primary": state.primary, "owner": "owner",
                "roster": roster.to_wire() if roster is not None else None}
    if isinstance(query, q.LoginChallenge):
        user = state.users.get(query.login)
        if user is None:
            raise errors.UnknownUser(f"no user {query.login!r}")
        text = f"{query.login}.{now_ms}.{secrets.token_hex(16)}"
        out = {"challenge": f"{text}.{_challenge_mac(keys, text)}"}
        if query.want_keystore:
            # The keystore lets anyone guess the password offline: hand it out sparingly, per login.
            now_s = now_ms / 1000
            if fetches is not None and not fetches.allow(query.login, now_s):
                raise errors.TooManyAttempts(f"too many keystore requests for {query.login}; try again in "
                                             f"{fetches.retry_after_s(query.login, now_s):.0f} s")
            out["keystore"] = user.keystore
        return out
    if isinstance(query, q.Login):
        return _login(state, query, keys, now_ms)
    if isinstance(query, q.CommandStatus):
        return command_status(state, query, now_ms, commands)
    raise errors.UnknownQuery(f"no query {kind}")


def command_status(state: State, query: q.CommandStatus, now_ms: int,
                   commands: Callable[[str], dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """What this replica's log says became of a command: applied (seq, answer, digest), expired, or unknown."""
    done = state.commands.get(query.command_id)
    if done is None and commands is not None:
        done = commands(query.command_id)
    if done is not None:
        return {"command_id": query.command_id, "status": APPLIED, "seq": state.seq, "applied_seq": done["seq"],
                "result": done.get("result"), "digest": done.get("digest")}
    gone = query.deadline_ms is not None and now_ms > query.deadline_ms + DEADLINE_GRACE_MS + STATUS_MARGIN_MS
    return {"command_id": query.command_id, "status": EXPIRED if gone else UNKNOWN, "seq": state.seq}


def _login(state: State, query: q.Login, keys: SystemKeys, now_ms: int) -> dict[str, Any]:
    user = state.users.get(query.login)
    if user is None:
        raise errors.UnknownUser(f"no user {query.login!r}")
    try:
        text, mac = query.challenge.rsplit(".", 1)
        login, issued, _nonce = text.rsplit(".", 2)
        issued_ms = int(issued)
    except ValueError as exc:
        raise errors.BadChallenge("challenge is not one the ledger issued") from exc
    if login != query.login or not hmac.compare_digest(mac, _challenge_mac(keys, text)):
        raise errors.BadChallenge("challenge is not one the ledger issued for this login")
    if not 0 <= now_ms - issued_ms <= CHALLENGE_TTL_MS:
        raise errors.BadChallenge("challenge expired: ask for a new one")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(user.sign_key)).verify(
            bytes.fromhex(query.signature), tagged("login", query.challenge.encode()))
    except (InvalidSignature, ValueError) as exc:
        raise errors.BadChallenge("challenge signature does not verify with the registered key") from exc
    return {"login": user.login, "available": state.balance(user.login), "held": state.holds(user.login)}


class ReadServer:
    """Consumes the reads queue; at backup priority, or primary priority while primary."""

    def __init__(self, follower: Follower, broker: Transport | str, names: Names, replica_id: str, keys: SystemKeys,
                 catalog: Catalog, is_primary: Callable[[], bool], key: Ed25519PrivateKey, trust: Trust) -> None:
        self.follower = follower
        self.key = key
        self.trust = trust
        self.transport = transport_for(broker)
        self.names = names
        self.replica_id = replica_id
        self.keys = keys
        self.catalog = catalog
        self.is_primary = is_primary
        self.served = 0
        self._role_changed = threading.Event()
        self._waiting: list[tuple[float, Delivery, Envelope]] = []
        self._parked: dict[str, int] = {}  # reply channel -> queries of it waiting
        # Keystores handed out for logins from other machines: 5 at once, then one a minute, per login
        # (on this replica's read thread only; each replica keeps its own).
        self.keystore_fetches = RateLimiter(rate_per_s=1 / 60, burst=5, max_keys=100_000)

    def role_changed(self, _primary: bool) -> None:
        self._role_changed.set()

    def run(self, stop: threading.Event) -> None:
        keep_connected("read server", self._serve, stop, lambda: self.follower.halted is None)

    def _serve(self, stop: threading.Event) -> None:
        link = self.transport.open(f"acb-reads-{self.replica_id}", heartbeat=5)
        try:
            link.declare(self.names)
            arrived: list[Delivery] = []
            while not stop.is_set() and self.follower.halted is None:
                self._role_changed.clear()
                priority = PRIMARY_PRIORITY if self.is_primary() else BACKUP_PRIORITY
                link.consume(self.names.reads, arrived.append, prefetch=32, arguments={"x-priority": priority})
                while True:
                    link.process(0.05)
                    if self._serve_arrived(link, arrived, stop):
                        break
                for delivery in arrived:  # not looked at: another replica (or this one, anew) answers it
                    link.requeue(delivery.tag)
                arrived.clear()
                link.cancel()  # requeues what was prefetched; another replica answers it
        finally:
            self._waiting.clear()  # their clients resend; another replica answers
            self._parked.clear()
            link.close()

    def _serve_arrived(self, link: Link, arrived: list[Delivery], stop: threading.Event) -> bool:
        """Answer what arrived, one at a time; True (leaving the rest in ``arrived``) when it is time to stop
        consuming: stopping, halted, or the role changed (so the priority must)."""
        while True:
            delivery = arrived.pop(0) if arrived else None
            if delivery is not None:
                self._handle(link, delivery)
                link.ack(delivery.tag)
            self._answer_waiting(link)
            if stop.is_set() or self._role_changed.is_set() or self.follower.halted is not None:
                return True
            if not arrived:
                return False

    def _handle(self, link: Link, delivery: Delivery) -> None:
        ident = delivery.correlation_id or "unknown"
        try:
            env = open_envelope(delivery.body)
            ident = env.id
            if env.kind != "query":
                raise errors.Malformed("a command was sent to the reads queue")
            if expired(env, int(time.time() * 1000)):
                raise errors.Expired(f"{env.payload.type} query {env.id} reached replica {self.replica_id} after "
                                     f"its sender's deadline (if this machine's clock is behind, set it right)")
            seq = self.follower.state.seq
            if env.min_seq > seq:
                # Read-your-writes: park the query instead of blocking the others behind it, within bounds.
                if env.min_seq > seq + MAX_AHEAD:
                    raise errors.Lagging(f"replica {self.replica_id} is at seq {seq}, asked for {env.min_seq}: "
                                         f"too far ahead to wait for")
                channel = str(delivery.reply_to or "")
                if len(self._waiting) >= _MAX_WAITING or self._parked.get(channel, 0) >= _MAX_WAITING_PER_CHANNEL:
                    raise errors.Busy(f"replica {self.replica_id} has too many queries waiting; try again")
                self._parked[channel] = self._parked.get(channel, 0) + 1
                self._waiting.append((time.monotonic() + _park_for(env), delivery, env))
                return
            reply = self._answer(env)
        except errors.CommandRejected as exc:
            reply = Reply.failure(ident, exc, self.replica_id)
        except Exception as exc:  # never let one bad query stop the reads
            log.exception("query %s failed", ident)
            reply = Reply.failure(ident, errors.RemoteError(f"internal error: {exc!r}", code="internal"),
                                  self.replica_id)
        self._send(link, delivery, reply)

    def _answer(self, env: Envelope) -> Reply:
        state = self.follower.state
        result = answer(state, env, self.keys, self.catalog, int(time.time() * 1000), self.trust,
                        self.keystore_fetches, self.follower.flows, self.follower.applied_command,
                        self.follower.store)
        # Built as the query's answer model: this replica cannot send a shape clients do not know.
        typed = parse_answer(env.payload.type, result)
        return Reply(id=env.id, ok=True, seq=state.seq, result=typed.to_result(), served_by=self.replica_id)

    def _answer_waiting(self, link: Link) -> None:
        if not self._waiting:
            return
        now, seq = time.monotonic(), self.follower.state.seq
        still: list[tuple[float, Delivery, Envelope]] = []
        for deadline, delivery, env in self._waiting:
            if env.min_seq <= seq:
                try:
                    reply = self._answer(env)
                except errors.CommandRejected as exc:
                    reply = Reply.failure(env.id, exc, self.replica_id)
            elif now >= deadline:
                reply = Reply.failure(env.id, errors.Lagging(
                    f"replica {self.replica_id} is at seq {seq}, asked for {env.min_seq}"), self.replica_id)
            else:
                still.append((deadline, delivery, env))
                continue
            channel = str(delivery.reply_to or "")
            left = self._parked.get(channel, 1) - 1
            if left > 0:
                self._parked[channel] = left
            else:
                self._parked.pop(channel, None)
            self._send(link, delivery, reply)
        self._waiting = still

    def _send(self, link: Link, delivery: Delivery, reply: Reply) -> None:
        self.served += 1
        if delivery.reply_to:
            roster = newest_roster(self.follower.state, self.trust)
            reply = reply.signed_by(self.key, self.replica_id, digest(delivery.body),
                                    roster.serial if roster else None)
            link.publish("", delivery.reply_to, reply.to_bytes(), correlation_id=delivery.correlation_id)


def _park_for(env: Envelope) -> float:
    """Seconds a query may wait for its min_seq: a few, and never past its sender's deadline."""
    if env.deadline is None:
        return _WAIT_SECONDS
    left = (env.deadline + DEADLINE_GRACE_MS) / 1000 - time.time()
    return max(0.0, min(_WAIT_SECONDS, left))
