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
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import errors
from broker.rabbitmq import transport_for
from broker.replies import Reply
from broker.topology import Names
from broker.transport import Delivery, Link, Transport
from broker.trust import Trust, digest, raw_public
from ledger.connected import BROKER_TROUBLE
from ledger.errors import LedgerError
from ledger.events import EpochStarted
from ledger.fairness import FairInbox
from ledger.follower import Follower
from ledger.handlers import Context
from ledger.intake import (
    HOLD_LOOK_MS,
    Incoming,
    Refusals,
    Writer,
    busy_budget,
    decide_batch,
    make_entry,
    shed_reply,
    turn_of,
)
from ledger.log import ACCEPTED, LogBatch, LogEntry, Outcome

__all__ = ["CommandProcessor", "Deposed", "TICK", "log_messages", "LOG_MESSAGE_MAX"]

log = logging.getLogger(__name__)
TICK = "tick"  # the message type of a replica's tick in the commands queue
_BATCH = 64  # commands decided per log write: small enough that a batch never keeps others waiting long
_PREFETCH = 1024  # unacked commands held: far enough ahead that a flood cannot hide a command behind it
_LARGE = 64 * 1024  # bytes: only a dispute (one segment as evidence) is larger than this, honestly
# Large commands held at once: a flood of the broker's largest messages (16 MiB) costs at most 256 MiB.
_LARGE_HELD = 16
_PER_CHANNEL = 256  # commands of one sender waiting at once; beyond, they are dropped unread
_CONFIRM_TIMEOUT = 10.0
LOG_MESSAGE_MAX = 8 << 20  # bytes of one log stream message, well below the broker's 16 MiB maximum


def log_messages(entries: list[LogEntry], limit: int = LOG_MESSAGE_MAX) -> list[bytes]:
    """The entries as stream messages, in order, each below ``limit`` bytes where one entry allows
    (RabbitMQ refuses messages over its maximum size; disputes carry a whole segment)."""
    whole = LogBatch(entries=entries).model_dump_json().encode()
    if len(whole) <= limit:  # nearly always: encoded once, not entry by entry and then again
        return [whole]
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


class Deposed(LedgerError):
    """Another replica announced a higher epoch (or this one left the roster): stop writing."""


class CommandProcessor:
    """Takes the commands queue when RabbitMQ hands it over, and writes what the intake rules decide.

    The rules themselves (duplicates, remembered refusals, dead letters, ticks) are the pure
    :func:`ledger.intake.decide_batch`; this class carries them out over the broker seam.
    """

    def __init__(self, follower: Follower, broker: Transport | str, names: Names, replica_id: str,
                 context: Callable[[], Context], key: Ed25519PrivateKey, trust: Trust, *, heartbeat: int = 2) -> None:
        self.follower = follower
        self.key = key
        self.trust = trust
        self._public = raw_public(key)
        self.transport = transport_for(broker)
        self.names = names
        self.replica_id = replica_id
        self.context = context
        self.heartbeat = heartbeat
        self.epoch = 0  # nonzero while primary
        self.commands_handled = 0
        self.shed = 0  # commands dropped unread because their sender was over its share
        self._large_held = 0  # commands over _LARGE held (arrived or waiting their turn)
        self.on_role_change: Callable[[bool], None] | None = None
        self.refusals = Refusals()
        self.busy_answers = busy_budget()  # per turn: shed commands told `busy`, within this budget
        self._holds_looked_ms = 0  # the ledger clock when a batch last looked at the holds
        self._link: Link | None = None

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
        """Serve the commands queue until ``stop`` is set or the replica halts; reconnects on broker loss."""
        while not stop.is_set() and self.follower.halted is None:
            if not self.certified():
                # A removed replica must not take commands it could never write: let the others have them.
                stop.wait(0.5)
                continue
            try:
                self._serve(stop)
            except Deposed as exc:  # before the broker's troubles: it is a LedgerError too
                log.warning("deposed: %s; continuing as a backup", exc)
                time.sleep(0.5)
            except BROKER_TROUBLE as exc:
                if stop.is_set():
                    break
                log.warning("command processor lost the broker (%r); reconnecting as a candidate", exc)
                time.sleep(0.3)
            finally:
                self._set_epoch(0)
                self.follower.forget_folds()

    def _set_epoch(self, epoch: int) -> None:
        changed = (epoch != 0) != (self.epoch != 0)
        self.epoch = epoch
        if changed and self.on_role_change is not None:
            self.on_role_change(epoch != 0)

    def _writer(self, epoch: int) -> Writer:
        return Writer(self.replica_id, epoch, self.key, self.trust.operator_key, self.follower.ledger_key)

    # -- the loop ----------------------------------------------------------------------------------
    def _serve(self, stop: threading.Event) -> None:
        # The heartbeat is this connection's failure detector: RabbitMQ hands the commands queue to
        # a backup only once it drops the holder's connection. A killed primary's socket closes at
        # once; a hung or cut-off one is dropped after two to three heartbeat timeouts of silence
        # (see ReplicaConfig.heartbeat). The background thread keeps the beats going while this
        # thread decides and waits, so a busy primary is never mistaken for a dead one.
        link = self.transport.open(f"acb-commands-{self.replica_id}", heartbeat=self.heartbeat, background=True)
        self._link = link
        try:
            link.declare(self.names)
            inbox: FairInbox[Delivery] = FairInbox(per_channel=_PER_CHANNEL)
            self._large_held = 0  # what a lost connection held went back to the queue

            arrived: list[Delivery] = []

            def on_command(delivery: Delivery) -> None:
                # Nothing but keeping it: no ack here, so at most a prefetch's worth arrives per look and pika
                # hands control back even while a flood goes on. Large ones are the exception: past a few
                # held at once they are dropped on arrival, so memory stays bounded whatever arrives.
                if len(delivery.body) > _LARGE:
                    if self._large_held >= _LARGE_HELD:
                        self.shed += 1
                        link.ack(delivery.tag)
                        return
                    self._large_held += 1
                arrived.append(delivery)

            # Take far more than one batch off the queue, so a flood in front of a command does not hide it.
            link.consume(self.names.commands, on_command, prefetch=_PREFETCH)
            while not stop.is_set() and self.follower.halted is None:
                link.process(0 if len(inbox) or arrived else 0.1)
                self._file(link, arrived, inbox)
                if not self.certified():
                    raise Deposed("this replica is no longer in the operator's roster")
                if not len(inbox):
                    if self.epoch and not self.is_primary:
                        raise Deposed(f"epoch {self.follower.state.epoch} belongs to {self.follower.state.primary}")
                    continue
                work = inbox.take(_BATCH)
                try:
                    self._handle(link, work)
                except Deposed:
                    for delivery in work:
                        link.requeue(delivery.tag)
                    raise
        finally:
            self._link = None
            link.close()

    def _become_primary(self, link: Link) -> None:
        """Announce a new epoch and wait until the log has accepted it (and all before it)."""
        for _attempt in range(20):
            state = self.follower.state
            epoch = state.epoch + 1
            offered = self.trust.roster
            newer = offered is not None and (state.roster is None or offered.serial > state.roster.serial)
            announcement = EpochStarted(epoch=epoch, replica=self.replica_id,
                                        roster=offered.to_wire() if newer and offered is not None else None)
            entry = make_entry(self._writer(epoch), state, [announcement], int(time.time() * 1000))
            outcome = self._write(link, [entry])[entry.entry_id]
            if outcome is not None and outcome.verdict == ACCEPTED:
                log.warning("replica %s is primary at epoch %d (log at seq %d)", self.replica_id, epoch,
                            self.follower.state.seq)
                self._set_epoch(epoch)
                return
            time.sleep(0.05)
        raise errors.BrokerUnavailable("could not get an epoch accepted in the log")

    def _write(self, link: Link, entries: list[LogEntry]) -> dict[str, Outcome | None]:
        ids = [e.entry_id for e in entries]
        self.follower.expect(ids)
        link.append(self.names.log, log_messages(entries))
        deadline = time.monotonic() + _CONFIRM_TIMEOUT
        while True:
            # Wait in slices, keeping this connection's heartbeats going: a slow log must not look
            # like a dead primary to the broker.
            outcomes = self.follower.wait_for(ids, min(0.2, max(deadline - time.monotonic(), 0.0)), keep=True)
            if all(o is not None for o in outcomes.values()) or time.monotonic() >= deadline:
                return self.follower.wait_for(ids, 0.0)
            link.process(0)

    def _handle(self, link: Link, batch: list[Delivery]) -> None:
        if not self.is_primary:
            if self.epoch:
                raise Deposed(f"epoch {self.follower.state.epoch} belongs to {self.follower.state.primary}")
            self._become_primary(link)
        messages = [Incoming(d.body, d.correlation_id, tick=d.type == TICK) for d in batch]
        ctx = self.context()
        look = ctx.now_ms - self._holds_looked_ms >= HOLD_LOOK_MS  # ticks may be stuck behind a backlog
        if look or any(m.tick for m in messages):
            self._holds_looked_ms = ctx.now_ms
        plan = decide_batch(self.follower.state, messages, ctx, self._writer(self.epoch), self.refusals,
                            self.follower.applied_command, look_at_holds=look)
        self.refusals.remember(plan.refusals, plan.copies)
        for delivery, verdict in zip(batch, plan.verdicts, strict=True):
            if verdict.error is not None and not isinstance(verdict.error, errors.CommandRejected):
                log.error("command %s failed unexpectedly", delivery.correlation_id, exc_info=verdict.error)
            if verdict.dead_letter is not None:
                self._dead_letter(link, delivery, verdict.dead_letter)
        for entry_id, (before, result) in plan.folds.items():
            self.follower.remember_fold(entry_id, before, result)
        final: dict[str, Outcome] = {}
        if plan.entries:
            outcomes = self._write(link, list(plan.entries))
            final = {i: o for i, o in outcomes.items() if o is not None and o.verdict == ACCEPTED}
            lost = [e.entry_id for e in plan.entries if e.entry_id not in final]
            if lost:
                raise Deposed(f"{len(lost)} of {len(plan.entries)} entries not accepted ({outcomes.get(lost[0])})")
        for delivery, verdict in zip(batch, plan.verdicts, strict=True):
            reply = verdict.reply
            if reply is None:
                continue
            if verdict.entry is not None:
                reply = reply.model_copy(update={"seq": final[verdict.entry.entry_id].last_seq})
            self._reply(link, delivery, reply)
        for delivery in batch:  # one by one: turns reorder deliveries, so no multiple-ack
            link.ack(delivery.tag)
            self._large_held -= len(delivery.body) > _LARGE
        self.commands_handled += plan.answered

    def _reply(self, link: Link, delivery: Delivery, reply: Reply) -> None:
        if not delivery.reply_to:
            return
        serial = max(self.trust.serial, self.follower.state.roster.serial if self.follower.state.roster else 0)
        reply = reply.signed_by(self.key, self.replica_id, digest(delivery.body), serial)
        link.publish("", delivery.reply_to, reply.to_bytes(), correlation_id=delivery.correlation_id,
                     content_type="application/json")

    def _file(self, link: Link, arrived: list[Delivery], inbox: FairInbox[Delivery]) -> None:
        """File what arrived by whose turn it waits for; what is over its sender's share is dropped unread."""
        state = self.follower.state
        for delivery in arrived:
            turn = TICK if delivery.type == TICK else turn_of(delivery.body, state)
            if not inbox.add(turn, delivery):
                # Over its share: dropped at the cost of an ack, and told `busy` (within a budget per turn)
                # so its client backs off and sends it again, instead of waiting for an answer never coming.
                self.shed += 1
                self._large_held -= len(delivery.body) > _LARGE
                link.ack(delivery.tag)
                if turn != TICK and self.busy_answers.allow(turn, time.monotonic()):
                    self._reply(link, delivery, shed_reply(delivery.correlation_id, self.replica_id))
        arrived.clear()

    def _dead_letter(self, link: Link, delivery: Delivery, reason: str) -> None:
        log.warning("dead-lettering a command: %s", reason)
        link.publish(self.names.dlx, "command", delivery.body, persistent=True, correlation_id=delivery.correlation_id,
                     headers={"x-acb-reason": reason[:500], "x-acb-replica": self.replica_id})
