"""The command processor: every replica runs one; the one RabbitMQ hands the queue to is primary.

All replicas consume the commands queue, a quorum queue with single active
consumer; RabbitMQ delivers to one of them. That is only who *receives*, not
who may *write*: the receiver first announces a new epoch in the log and
waits until its own announcement comes back accepted (so it has applied
everything before it). Only then does it decide commands, and it answers a
client only once the command's entry came back accepted from the log. A
deposed primary (a paused or cut-off one that wakes up) finds its entries
ignored, answers nothing, gives the unacknowledged commands back, and goes on
as a backup.

Commands are handled in batches: decided one after another against a
tentative state, written as one stream message, confirmed together.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import errors
from broker.client import connect
from broker.commands import OPERATOR
from broker.envelope import Envelope, open_envelope
from broker.replies import Reply
from broker.topology import Names, declare
from broker.trust import Trust, digest, raw_public
from ledger.errors import LedgerError
from ledger.events import EpochStarted
from ledger.fairness import FairInbox
from ledger.follower import Follower
from ledger.handlers import Context, authenticate, decide, expire_holds
from ledger.log import ACCEPTED, LogBatch, LogEntry, command_digest, fold_entry
from ledger.model import State

__all__ = ["CommandProcessor", "TICK", "log_messages", "LOG_MESSAGE_MAX"]

log = logging.getLogger(__name__)
TICK = "tick"
_BATCH = 64  # commands decided per log write: small enough that a batch never keeps others waiting long
_PREFETCH = 1024  # unacked commands held: far enough ahead that a flood cannot hide a command behind it
_LARGE = 64 * 1024  # bytes: only a dispute (one segment as evidence) is larger than this, honestly
# Large commands held at once: a flood of the broker's largest messages (16 MiB) costs at most 256 MiB.
_LARGE_HELD = 16
_PER_CHANNEL = 256  # commands of one sender waiting at once; beyond, they are dropped unread
_STRANGER = "stranger"  # the one turn shared by commands that name no registered sender
_CONFIRM_TIMEOUT = 10.0
LOG_MESSAGE_MAX = 8 << 20  # bytes of one log stream message, well below the broker's 16 MiB maximum
# Refusals are not in the log; remember recent ones so a retry gets the same answer.
_REJECTED_MEMORY = 50_000
# Messages no ledger could ever apply go to the dead-letter queue with the reason; business refusals
# (insufficient funds, unknown user, ...) are answers, not dead letters.
_UNHANDLEABLE = (errors.Malformed, errors.UnknownType, errors.UnsupportedVersion, errors.BadSignature)


def log_messages(entries: list[LogEntry], limit: int = LOG_MESSAGE_MAX) -> list[bytes]:
    """The entries as stream messages, in order, each below ``limit`` bytes where one entry allows
    (RabbitMQ refuses messages over its maximum size; disputes carry a whole segment)."""
    out: list[bytes] = []
    group: list[LogEntry] = []
    size = 0
    for entry in entries:
        n = len(entry.model_dump_json())
        if group and size + n > limit:
            out.append(LogBatch(entries=group).model_dump_json().encode())
            group, size = [], 0
        group.append(entry)
        size += n
    if group:
        out.append(LogBatch(entries=group).model_dump_json().encode())
    return out


class Deposed(Exception):
    """Another replica announced a higher epoch: stop writing."""


class CommandProcessor:
    def __init__(self, follower: Follower, url: str, names: Names, replica_id: str,
                 context: Callable[[], Context], key: Ed25519PrivateKey, trust: Trust, *, heartbeat: int = 2) -> None:
        self.follower = follower
        self.key = key
        self.trust = trust
        self._public = raw_public(key)
        self.url = url
        self.names = names
        self.replica_id = replica_id
        self.context = context
        self.heartbeat = heartbeat
        self.epoch = 0  # nonzero while primary
        self.commands_handled = 0
        self.shed = 0  # commands dropped unread because their sender was over its share
        self._large_held = 0  # commands over _LARGE held (arrived or waiting their turn)
        self.on_role_change: Callable[[bool], None] | None = None
        self._rejected: OrderedDict[tuple[str, str | None], Reply] = OrderedDict()  # (id, command digest) -> refusal
        self._conn: Any = None

    @property
    def is_primary(self) -> bool:
        st = self.follower.state
        return self.epoch != 0 and st.epoch == self.epoch and st.primary == self.replica_id

    def certified(self) -> bool:
        """Whether this replica's key is in the newest roster known (the log's, or the operator's file)."""
        roster, offered = self.follower.state.roster, self.trust.roster
        if offered is not None and (roster is None or offered.serial > roster.serial):
            roster = offered
        return roster is not None and roster.key_of(self.replica_id) == self._public

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set() and self.follower.halted is None:
            if not self.certified():
                # A removed replica must not take commands it could never write: let the others have them.
                stop.wait(0.5)
                continue
            try:
                self._serve(stop)
            except (pika.exceptions.AMQPError, OSError, errors.BrokerError, LedgerError) as exc:
                if stop.is_set():
                    break
                log.warning("command processor lost the broker (%r); reconnecting as a candidate", exc)
                time.sleep(0.3)
            except Deposed as exc:
                log.warning("deposed: %s; continuing as a backup", exc)
                time.sleep(0.5)
            finally:
                self._set_epoch(0)
                self.follower.forget_folds()

    def _set_epoch(self, epoch: int) -> None:
        changed = (epoch != 0) != (self.epoch != 0)
        self.epoch = epoch
        if changed and self.on_role_change is not None:
            self.on_role_change(epoch != 0)

    # -- the loop ----------------------------------------------------------------------------------
    def _serve(self, stop: threading.Event) -> None:
        conn = connect(self.url, heartbeat=self.heartbeat, name=f"acb-commands-{self.replica_id}")
        self._conn = conn
        try:
            ch = conn.channel()
            declare(ch, self.names)
            # Take far more than one batch off the queue, so a flood in front of a command does not hide it.
            ch.basic_qos(prefetch_count=_PREFETCH)
            log_ch = conn.channel()
            log_ch.confirm_delivery()
            inbox: FairInbox[tuple[Any, Any, bytes]] = FairInbox(per_channel=_PER_CHANNEL)
            self._large_held = 0  # what a lost connection held went back to the queue

            arrived: list[tuple[Any, Any, bytes]] = []

            def on_command(_ch: Any, method: Any, props: Any, body: bytes) -> None:
                # Nothing but keeping it: no ack here, so at most a prefetch's worth arrives per look and pika
                # hands control back even while a flood goes on. Large ones are the exception: past a few
                # held at once they are dropped on arrival, so memory stays bounded whatever arrives.
                if len(body) > _LARGE:
                    if self._large_held >= _LARGE_HELD:
                        self.shed += 1
                        ch.basic_ack(method.delivery_tag)
                        return
                    self._large_held += 1
                arrived.append((method, props, body))

            ch.basic_consume(self.names.commands, on_command)
            while not stop.is_set() and self.follower.halted is None:
                conn.process_data_events(time_limit=0 if len(inbox) or arrived else 0.1)
                self._file(ch, arrived, inbox)
                if not self.certified():
                    raise Deposed("this replica is no longer in the operator's roster")
                if not len(inbox):
                    if self.epoch and not self.is_primary:
                        raise Deposed(f"epoch {self.follower.state.epoch} belongs to {self.follower.state.primary}")
                    continue
                work = inbox.take(_BATCH)
                try:
                    self._handle(ch, log_ch, work)
                except Deposed:
                    for method, _props, _body in work:
                        ch.basic_nack(method.delivery_tag, requeue=True)
                    raise
        finally:
            try:
                conn.close()
            except (pika.exceptions.AMQPError, OSError):
                pass

    def _become_primary(self, log_ch: Any) -> None:
        """Announce a new epoch and wait until the log has accepted it (and all before it)."""
        for _attempt in range(20):
            state = self.follower.state
            epoch = state.epoch + 1
            offered = self.trust.roster
            newer = offered is not None and (state.roster is None or offered.serial > state.roster.serial)
            announcement = EpochStarted(epoch=epoch, replica=self.replica_id,
                                        roster=offered.to_wire() if newer and offered is not None else None)
            entry = self._entry(state, epoch, [announcement], None, None)
            outcome = self._write(log_ch, [entry])[entry.entry_id]
            if outcome is not None and outcome.verdict == ACCEPTED:
                log.warning("replica %s is primary at epoch %d (log at seq %d)", self.replica_id, epoch,
                            self.follower.state.seq)
                self._set_epoch(epoch)
                return
            time.sleep(0.05)
        raise errors.BrokerUnavailable("could not get an epoch accepted in the log")

    def _entry(self, state: State, epoch: int, events: list[Any], command_id: str | None,
               reply: dict[str, Any] | None, command: Envelope | None = None, at_ms: int | None = None) -> LogEntry:
        # A decided entry carries the time it was decided at, so deadlines it sets stay ahead of it.
        return LogEntry(
            entry_id=uuid.uuid4().hex, epoch=epoch, writer=self.replica_id, expected_seq=state.seq + 1,
            prev_hash=state.head_hash, at_ms=int(time.time() * 1000) if at_ms is None else at_ms,
            command_id=command_id, reply=reply,
            events=[e.model_dump(mode="json") for e in events],
            command=command.wire() if command is not None else None,
        ).signed_by(self.key)

    def _write(self, log_ch: Any, entries: list[LogEntry]) -> dict[str, Any]:
        ids = [e.entry_id for e in entries]
        self.follower.expect(ids)
        for body in log_messages(entries):
            log_ch.basic_publish("", self.names.log, body, pika.BasicProperties(delivery_mode=2))
        deadline = time.monotonic() + _CONFIRM_TIMEOUT
        while True:
            # Wait in slices, keeping this connection's heartbeats going: a slow log must not look
            # like a dead primary to the broker.
            outcomes = self.follower.wait_for(ids, min(0.2, max(deadline - time.monotonic(), 0.0)), keep=True)
            if all(o is not None for o in outcomes.values()) or time.monotonic() >= deadline:
                return self.follower.wait_for(ids, 0.0)
            if self._conn is not None:
                self._conn.process_data_events(time_limit=0)

    def _handle(self, ch: Any, log_ch: Any, batch: list[tuple[Any, Any, bytes]]) -> None:
        if not self.is_primary:
            if self.epoch:
                raise Deposed(f"epoch {self.follower.state.epoch} belongs to {self.follower.state.primary}")
            self._become_primary(log_ch)
        ctx = self.context()
        state = self.follower.state
        tentative = state
        entries: list[LogEntry] = []
        replies: list[tuple[Any, Reply, LogEntry | None, bytes]] = []
        ticked = False
        for _method, props, body in batch:
            if props.type == TICK:
                if ticked:  # every replica ticks; one look at the holds per batch is enough
                    continue
                ticked = True
                events = expire_holds(tentative, ctx.now_ms)
                if events:
                    expiry = self._entry(tentative, self.epoch, events, None, None, at_ms=ctx.now_ms)
                    tentative = self._fold(tentative, expiry)
                    entries.append(expiry)
                continue
            reply, made, tentative = self._decide(tentative, props, body, ctx, ch)
            if made is not None:
                entries.append(made)
            if reply is not None:
                replies.append((props, reply, made, body))
        if entries:
            outcomes = self._write(log_ch, entries)
            lost = [e for e in entries if (outcomes.get(e.entry_id) is None
                                           or outcomes[e.entry_id].verdict != ACCEPTED)]
            if lost:
                raise Deposed(f"{len(lost)} of {len(entries)} entries not accepted "
                              f"({outcomes.get(lost[0].entry_id)})")
            final = {e.entry_id: outcomes[e.entry_id] for e in entries}
        else:
            final = {}
        for props, reply, made, body in replies:
            if made is not None:
                reply = reply.model_copy(update={"seq": final[made.entry_id].last_seq})
            self._reply(ch, props, reply, body)
        for method, _props, body in batch:  # one by one: turns reorder deliveries, so no multiple-ack
            ch.basic_ack(method.delivery_tag)
            self._large_held -= len(body) > _LARGE
        self.commands_handled += len(replies)

    def _decide(self, tentative: State, props: Any, body: bytes, ctx: Context, ch: Any
                ) -> tuple[Reply | None, LogEntry | None, State]:
        me = self.replica_id
        ident = props.correlation_id or "unknown"
        try:
            env = open_envelope(body)
            if env.kind != "command":
                raise errors.Malformed("a query was sent to the command queue")
            ident = env.id
            # Authenticate before answering from either cache: a stranger reusing an id learns nothing
            # and cannot plant a refusal for the owner of that id.
            authenticate(tentative, env, ctx)
        except errors.CommandRejected as exc:
            if isinstance(exc, _UNHANDLEABLE):
                self._dead_letter(ch, props, body, str(exc))
            return Reply.failure(ident, exc, me), None, tentative
        except Exception as exc:  # whatever the bytes do to a parser, the ledger goes on
            log.exception("command %s does not parse", ident)
            self._dead_letter(ch, props, body, f"unparseable: {exc!r}")
            return Reply.failure(ident, errors.Malformed(f"message does not parse: {type(exc).__name__}"), me), \
                None, tentative
        done = tentative.commands.get(env.id)
        mine = command_digest(env.wire())
        if done is not None:
            if done.get("digest", mine) != mine:
                # Another command took this id first: its answer is not this one's to have.
                return Reply.failure(env.id, errors.IdInUse(f"command id {env.id} was used by another command; "
                                                            "send it again under a new id"), me), None, tentative
            return Reply(id=env.id, ok=True, seq=done["seq"], result=done["result"], served_by=me), None, tentative
        remembered = self._rejected.get((env.id, mine))
        if remembered is not None:
            return remembered, None, tentative
        try:
            decision = decide(tentative, env, ctx, authenticated=True)
        except errors.CommandRejected as exc:
            if isinstance(exc, _UNHANDLEABLE):
                self._dead_letter(ch, props, body, str(exc))
            reply = Reply.failure(env.id, exc, me)
            self._remember(env, reply)
            return reply, None, tentative
        except Exception as exc:  # a bug must not stop the ledger: dead-letter the command, answer, go on
            log.exception("command %s failed unexpectedly", env.id)
            self._dead_letter(ch, props, body, f"internal error: {exc!r}")
            return Reply.failure(env.id, errors.RemoteError("internal error; the command was not applied",
                                                            code="internal"), me), None, tentative
        if not decision.events:
            return Reply(id=env.id, ok=True, seq=tentative.seq, result=decision.result, served_by=me), None, tentative
        entry = self._entry(tentative, self.epoch, decision.events, env.id, decision.result, env, ctx.now_ms)
        tentative = self._fold(tentative, entry)
        return Reply(id=env.id, ok=True, result=decision.result, served_by=me), entry, tentative

    def _fold(self, tentative: State, entry: LogEntry) -> State:
        result = fold_entry(tentative, entry, self.trust.operator_key, self.follower.ledger_key)
        self.follower.remember_fold(entry.entry_id, tentative, result)
        return result[1]

    def _remember(self, env: Envelope, reply: Reply) -> None:
        self._rejected[(env.id, command_digest(env.wire()))] = reply
        while len(self._rejected) > _REJECTED_MEMORY:
            self._rejected.popitem(last=False)

    def _reply(self, ch: Any, props: Any, reply: Reply, request: bytes) -> None:
        if not props.reply_to:
            return
        serial = max(self.trust.serial, self.follower.state.roster.serial if self.follower.state.roster else 0)
        reply = reply.signed_by(self.key, self.replica_id, digest(request), serial)
        ch.basic_publish("", props.reply_to, reply.to_bytes(),
                         pika.BasicProperties(correlation_id=props.correlation_id, content_type="application/json"))

    def _file(self, ch: Any, arrived: list[tuple[Any, Any, bytes]], inbox: FairInbox[tuple[Any, Any, bytes]]) -> None:
        """File what arrived by whose turn it waits for; what is over its sender's share is dropped unread."""
        for item in arrived:
            method, props, body = item
            if not inbox.add(TICK if props.type == TICK else self._turn_of(body), item):
                # Over its share: dropped at the cost of an ack. A client that keeps its commands in flight
                # under its share never meets this; one that resends gets its answer later.
                self.shed += 1
                self._large_held -= len(body) > _LARGE
                ch.basic_ack(method.delivery_tag)
        arrived.clear()

    def _turn_of(self, body: bytes) -> str:
        """Whose turn a command waits for: the registered user (or the operator) it claims to come from.

        Only claimed, and read without parsing the message, to keep the intake cheap under a flood (the
        signature is checked when the command is decided): a stranger may spend the share of a user it
        names, never anyone else's; commands naming nobody the ledger knows share one stranger's turn.
        """
        at = body.rfind(b'"sender":"')
        if at < 0:
            return _STRANGER
        end = body.find(b'"', at + 10, at + 10 + 40)
        sender = body[at + 10:end].decode("ascii", "replace") if end > 0 else ""
        if not (sender == OPERATOR or sender in self.follower.state.users):
            return _STRANGER
        return f"user:{sender}"

    def _dead_letter(self, ch: Any, props: Any, body: bytes, reason: str) -> None:
        log.warning("dead-lettering a command: %s", reason)
        ch.basic_publish(self.names.dlx, "command", body, pika.BasicProperties(
            delivery_mode=2, headers={"x-acb-reason": reason[:500], "x-acb-replica": self.replica_id},
            correlation_id=props.correlation_id))
