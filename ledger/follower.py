"""The follower: every replica's reader of the replicated log.

It recovers the state from its own store (newest verified snapshot, then the
stored events after it, checking the hash chain), then reads the broker's log
stream from the offset it stored, folds each entry in
(:func:`ledger.log.fold_entry`), and commits the new rows together with the
next stream offset in one transaction. Only after that commit does the new
state become visible to readers and to a waiting primary, so nothing is
confirmed that a crash could take back.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from broker.codec import canonical
from broker.errors import BrokerError
from broker.rabbitmq import transport_for
from broker.topology import Names
from broker.transport import Delivery, Transport
from broker.trust import Trust, check_signed, signed, tagged
from ledger.connected import BROKER_TROUBLE, keep_connected
from ledger.errors import ChainBroken
from ledger.log import ACCEPTED, HALT, LogBatch, Outcome, command_digest, fold_entry, replay_row
from ledger.model import (
    COMMAND_BUCKET,
    COMMAND_WINDOW,
    State,
    canonical_pieces,
    state_from_dict,
    state_hash,
    state_to_dict,
)
from ledger.store import Row, Store

__all__ = ["Follower", "snapshot_due", "snapshot_phase"]

log = logging.getLogger(__name__)
_GROUP = 512  # stream messages folded per store transaction at most
_MAX_SNAPSHOT_BYTES = 1 << 30  # a shared snapshot larger than this when inflated is refused unread
_SNAPSHOT_SIGNER, _SNAPSHOT_SIGNATURE = "acb-signer", "acb-signature"  # headers of a shared snapshot message


def snapshot_phase(replica_id: str, every: int) -> int:
    """Where in each ``every`` events this replica snapshots: a hash of its id, so replicas differ."""
    if every <= 0:
        return 0
    return int.from_bytes(hashlib.sha256(replica_id.encode()).digest()[:8], "big") % every


def snapshot_due(last: int, seq: int, every: int, replica_id: str) -> bool:
    """Whether reaching ``seq`` (the last snapshot at ``last``) passes this replica's next snapshot point.

    The points are ``every`` events apart, shifted by :func:`snapshot_phase`: the replicas of one log take
    their snapshots at different events, so they never all pause together.
    """
    if every <= 0:
        return False
    phase = snapshot_phase(replica_id, every)
    return (seq + phase) // every > (last + phase) // every


class Follower:
    """Keeps ``state`` equal to the log, durable in ``store``."""

    def __init__(self, store: Store, broker: Transport | str, names: Names, replica_id: str, trust: Trust,
                 key: Ed25519PrivateKey | None = None, *, snapshot_every: int = 5000,
                 ledger_key: X25519PrivateKey | None = None) -> None:
        self.store = store
        self.ledger_key = ledger_key  # judges disputes again from their evidence
        self.trust = trust
        self.key = key  # signs the snapshots this replica shares
        # Entries and messages ignored (forged, unsigned, fenced, duplicates...), by kind: counted, never fatal.
        self.ignored: collections.Counter[str] = collections.Counter()
        self.transport = transport_for(broker)
        self.names = names
        self.replica_id = replica_id
        self.snapshot_every = snapshot_every
        self.state = State()
        self.halted: str | None = None
        self.next_offset: int | None = None
        self.applied_events = 0  # counted since start, for the status rate
        self.listeners: list[Callable[[State, list[Row]], None]] = []
        self._cond = threading.Condition()
        self._expected: dict[str, Outcome | None] = {}
        self._last_snapshot = 0
        self.publish_snapshots: Callable[[], bool] = lambda: False  # set by the replica: only the primary shares
        self.joined_from_snapshot: int | None = None
        self._snapshotter: threading.Thread | None = None
        # entry id -> (state it was folded onto, fold_entry's result), left by this process's primary
        self._folded: dict[str, tuple[State, tuple[Outcome, State, list[Row]]]] = {}

    # -- recovery --------------------------------------------------------------------------------
    def recover(self) -> State:
        """Rebuild state from the local store: snapshot, then the events after it."""
        state = State()
        snap = self.store.latest_snapshot()
        if snap is not None:
            seq, digest, _offset, data = snap
            candidate = state_from_dict(data)
            if state_hash(candidate) == digest and candidate.seq == seq:
                state = candidate
                self._last_snapshot = seq
            else:
                log.error("snapshot at seq %d fails its hash check; replaying from the start", seq)
        try:
            for row in self.store.rows(after=state.seq):
                state = replay_row(state, row)
        except ChainBroken as exc:
            self._halt(f"store {self.store.safe_url} is corrupt: {exc}")
        stored = self.store.get_meta("stream_offset")
        self.next_offset = int(stored) if stored is not None else None
        self.state = state
        return state

    def join_from_snapshot(self, timeout: float = 2.0) -> bool:
        """An empty store starts from the newest shared snapshot instead of the whole log.

        The snapshot is checked against its own state hash here; its head hash is checked
        again by the first entry that follows it in the log (a mismatch halts the replica).
        """
        if self.state.seq or self.next_offset is not None or self.halted is not None:
            return False
        link = self.transport.open(f"acb-join-{self.replica_id}", heartbeat=5)
        newest: dict[str, Any] | None = None
        arrived: list[Delivery] = []
        try:
            link.declare(self.names)
            link.consume(self.names.snapshots, arrived.append, prefetch=16, arguments={"x-stream-offset": "last"})
            while True:  # until the stream has nothing more for ``timeout`` seconds
                link.process(timeout)
                if not arrived:
                    break
                for delivery in arrived:
                    link.ack(delivery.tag)
                    record = self._verified_snapshot(delivery.body, dict(delivery.headers))
                    if record is not None and (newest is None or record["seq"] > newest["seq"]):
                        newest = record
                arrived.clear()
        finally:
            link.close()
        if newest is None:
            return False
        try:
            state = state_from_dict(newest["state"])
            if state_hash(state) != newest["state_hash"] or state.seq != newest["seq"]:
                raise ValueError("its state does not hash to what its signer signed")
            if state.roster is None or state.roster.key_of(newest["signer"]) is None:
                raise ValueError("its own roster does not certify its signer")
            state.roster.verify(self.trust.operator_key)
        except (ValueError, TypeError, KeyError, AttributeError, BrokerError) as exc:
            self.ignored["snapshot"] += 1
            log.error("shared snapshot at seq %s refused (%s); replaying the whole log", newest.get("seq"), exc)
            return False
        self.store.save_snapshot(state.seq, newest["state_hash"], newest["stream_offset"], newest["state"],
                                 int(time.time() * 1000))
        self.store.set_meta("stream_offset", str(newest["stream_offset"]))
        self.state, self.next_offset = state, newest["stream_offset"]
        self._last_snapshot = self.joined_from_snapshot = state.seq
        log.warning("replica %s joined from the snapshot at seq %d (log offset %d)", self.replica_id, state.seq,
                    newest["stream_offset"])
        return True

    def _verified_snapshot(self, body: bytes, headers: dict[str, Any]) -> dict[str, Any] | None:
        """A shared snapshot's record when a certified replica signed it, else None (counted).

        The message's own signature (over the digest of its bytes, in its headers) is checked before a
        byte of it is inflated or parsed: a stranger's snapshot costs one hash and one signature check.
        """
        signer = headers.get(_SNAPSHOT_SIGNER)
        key = self.trust.replica_key(signer) if isinstance(signer, str) else None
        signature = headers.get(_SNAPSHOT_SIGNATURE)
        try:
            if key is None or not isinstance(signature, str):
                raise ValueError("it is not signed by a certified replica")
            Ed25519PublicKey.from_public_bytes(key).verify(bytes.fromhex(signature),
                                                           tagged("snapshot-message", hashlib.sha256(body).digest()))
        except (ValueError, InvalidSignature) as exc:
            self.ignored["snapshot"] += 1
            log.warning("a shared snapshot was refused unread: %s", exc)
            return None
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(body, _MAX_SNAPSHOT_BYTES)
            if inflater.unconsumed_tail:
                raise ValueError("larger than a snapshot may be")
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
            head = record.get("head")
            check_signed(self.trust, head, "snapshot")
            if not (isinstance(head, dict) and isinstance(record.get("state"), dict)
                    and head.get("state_hash") == hashlib.sha256(canonical(record["state"])).hexdigest()):
                raise ValueError("its state is not the one signed")
            seq, offset = head.get("seq"), head.get("stream_offset")
            if not (isinstance(seq, int) and isinstance(offset, int) and seq >= 0 and offset >= 0):
                raise ValueError("seq or stream offset missing")
        except (ValueError, zlib.error, RecursionError, BrokerError) as exc:
            self.ignored["snapshot"] += 1
            log.warning("a shared snapshot was refused: %s", exc)
            return None
        return {"seq": seq, "state_hash": head["state_hash"], "stream_offset": offset, "state": record["state"],
                "signer": head["signer"]}

    # -- waiting ---------------------------------------------------------------------------------
    def remember_fold(self, entry_id: str, before: State, result: tuple[Outcome, State, list[Row]]) -> None:
        """The primary's own fold of an entry it is about to write, to spare folding it twice."""
        self._folded[entry_id] = (before, result)

    def forget_folds(self) -> None:
        self._folded.clear()

    def expect(self, entry_ids: list[str]) -> None:
        """Register entries whose outcome a writer will wait for (before publishing them)."""
        with self._cond:
            for e in entry_ids:
                self._expected[e] = None

    def wait_for(self, entry_ids: list[str], timeout: float, *, keep: bool = False) -> dict[str, Outcome | None]:
        """Outcomes of expected entries, waiting until all are known or ``timeout`` passes.

        The entries are forgotten afterwards unless ``keep`` (to wait again).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(self._expected.get(e) is None for e in entry_ids) and self.halted is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if keep:
                return {e: self._expected.get(e) for e in entry_ids}
            return {e: self._expected.pop(e, None) for e in entry_ids}

    # -- running ---------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Follow the log until ``stop`` is set or the replica halts; reconnects on broker loss."""
        keep_connected("log follower", self._follow, stop, lambda: self.halted is None, pause=0.5)

    def _follow(self, stop: threading.Event) -> None:
        link = self.transport.open(f"acb-follower-{self.replica_id}", heartbeat=5)
        try:
            link.declare(self.names)
            offset: Any = self.next_offset if self.next_offset is not None else "first"
            pending: list[tuple[int, int, bytes]] = []  # (delivery tag, stream offset, body)

            def on_message(delivery: Delivery) -> None:
                pending.append((delivery.tag, delivery.offset, delivery.body))

            link.consume(self.names.log, on_message, prefetch=2 * _GROUP, arguments={"x-stream-offset": offset})
            while not stop.is_set() and self.halted is None:
                # Returns as soon as deliveries are dispatched: fold whatever has arrived, at once.
                link.process(0.1)
                while pending:
                    group, pending[:] = pending[:_GROUP], pending[_GROUP:]
                    self._fold(group)
                    link.ack(group[-1][0], multiple=True)
                    if self.halted is not None:
                        break
        finally:
            link.close()  # a stream consumer closed with buffered messages ends in an error; nothing is lost

    def _fold(self, pending: list[tuple[int, int, bytes]]) -> None:
        state = self.state
        rows: list[Row] = []
        outcomes: dict[str, Outcome] = {}
        last_offset = pending[-1][1]
        for _tag, offset, body in pending:
            try:
                batch = LogBatch.model_validate_json(body)
            except ValueError as exc:
                # Every replica skips the same unreadable message, so they stay identical.
                self.ignored["malformed"] += 1
                log.warning("log message at offset %d is not a log batch, skipped: %s", offset, str(exc)[:200])
                continue
            for entry in batch.entries:
                folded = self._folded.pop(entry.entry_id, None)
                if folded is not None and folded[0] is state:
                    # This replica's own primary folded this very entry onto this very state already;
                    # fold_entry is pure, so its result stands (the identity check makes sure).
                    outcome, new_state, new_rows = folded[1]
                else:
                    outcome, new_state, new_rows = fold_entry(state, entry, self.trust.operator_key, self.ledger_key)
                if outcome.verdict == HALT:
                    last_offset = offset - 1
                    self._commit(state, rows, outcomes, last_offset)
                    self._halt(f"at stream offset {offset}: {outcome.reason}")
                    return
                if outcome.verdict != ACCEPTED:
                    self.ignored[outcome.kind or "other"] += 1
                    log.info("entry %s ignored: %s", entry.entry_id[:40], outcome.reason[:300])
                    if outcome.kind not in ("fenced", "duplicate"):
                        # Only entries this replica's own primary may be waiting for carry news worth keeping;
                        # a forged copy of an id must never overwrite the real entry's outcome.
                        continue
                state, rows = new_state, rows + new_rows
                outcomes.setdefault(entry.entry_id, outcome)
        self._commit(state, rows, outcomes, last_offset)

    def _commit(self, state: State, rows: list[Row], outcomes: dict[str, Outcome], last_offset: int) -> None:
        if last_offset < 0 and not rows:
            return
        self.store.append(rows, {"stream_offset": str(last_offset + 1)})
        for listener in self.listeners:
            listener(state, rows)
        with self._cond:
            self.state = state
            self.next_offset = last_offset + 1
            self.applied_events += len(rows)
            for entry_id, outcome in outcomes.items():
                if entry_id in self._expected and self._expected[entry_id] is None:  # the first verdict stands
                    self._expected[entry_id] = outcome
            self._cond.notify_all()
        due = snapshot_due(self._last_snapshot, state.seq, self.snapshot_every, self.replica_id)
        if due and (self._snapshotter is None or not self._snapshotter.is_alive()):
            # Off this thread: the state is immutable, and a large one takes a while to picture. The
            # log goes on being followed meanwhile, and the primary keeps its heartbeats.
            self._last_snapshot = state.seq
            self._snapshotter = threading.Thread(
                target=self._snapshot, args=(state, last_offset + 1, self.publish_snapshots()),
                name=f"{self.replica_id}-snapshot", daemon=True)
            self._snapshotter.start()

    def _snapshot(self, state: State, offset: int, share: bool) -> None:
        try:
            picture = state_to_dict(state)
            # In pieces, hashing and compressing as they come: one encoding of the whole picture would hold
            # the interpreter for its whole length, and the follower and the read server with it.
            hasher, deflater, parts = hashlib.sha256(), zlib.compressobj(3), []
            for piece in canonical_pieces(picture):
                hasher.update(piece)
                parts.append(deflater.compress(piece))
            parts.append(deflater.flush())
            digest = hasher.hexdigest()  # == state_hash(state), computed once
            self.store.save_snapshot(state.seq, digest, offset, None, int(time.time() * 1000), blob=b"".join(parts))
            if share and self.key is not None:
                link = self.transport.open(f"acb-snapshot-{self.replica_id}", heartbeat=5)
                try:
                    head = signed(self.key, self.replica_id,
                                  {"seq": state.seq, "state_hash": digest, "stream_offset": offset}, "snapshot")
                    record = {"head": head, "state": picture}
                    body = zlib.compress(canonical(record), 3)
                    signature = self.key.sign(tagged("snapshot-message", hashlib.sha256(body).digest())).hex()
                    link.publish("", self.names.snapshots, body, persistent=True,
                                 headers={_SNAPSHOT_SIGNER: self.replica_id, _SNAPSHOT_SIGNATURE: signature})
                finally:
                    link.close()
            log.info("snapshot at seq %d taken%s", state.seq, " and shared" if share else "")
        except BROKER_TROUBLE as exc:
            log.warning("snapshot at seq %d failed: %r (the next one will be tried)", state.seq, exc)

    def wait_for_snapshot(self, timeout: float = 30.0) -> None:
        """Let a snapshot being taken finish (before the store closes)."""
        if self._snapshotter is not None:
            self._snapshotter.join(timeout)

    def applied_command(self, command_id: str) -> dict[str, Any] | None:
        """What the log answered ``command_id``, as ``State.commands`` keeps it, or None if it was never applied.

        The state remembers the last :data:`ledger.model.COMMAND_WINDOW` events' ids; an older one is looked
        up in this replica's store, up to what this replica has applied.
        """
        state = self.state
        done = state.commands.get(command_id)
        if done is not None:
            return dict(done)
        if state.seq < COMMAND_WINDOW + COMMAND_BUCKET:
            return None  # nothing has left the window yet: not a read of the store per new command
        row = self.store.command_row(command_id, upto=state.seq)
        if row is None:
            return None
        found: dict[str, Any] = {"seq": row.seq, "result": row.reply}
        digest = command_digest(row.entry.get("command") if row.entry is not None else None)
        if digest is not None:
            found["digest"] = digest
        return found

    def flows(self, account: str, limit: int, upto: int | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` cash flows of ``account`` up to ``upto`` (default: the applied state), oldest first.

        From the store's projection: the replicated state keeps no history. A replica that joined from a
        shared snapshot holds the flows of the events it applied since.
        """
        return self.store.flows(account, self.state.seq if upto is None else upto, limit)

    def _halt(self, reason: str) -> None:
        log.critical("REPLICA %s HALTED, applying nothing more: %s", self.replica_id, reason)
        with self._cond:
            self.halted = reason
            self._cond.notify_all()



