"""The replicated log: what the primary writes to the stream, and how every replica folds it in.

A stream message is a :class:`LogBatch` of :class:`LogEntry`; an entry is the
events one command caused (or one epoch announcement), stamped with the
writer's epoch and where the writer believed the log stood. Every replica
folds entries in stream order with :func:`fold_entry`, so all reach the same
verdict on each entry:

- an ``epoch_started`` entry with an epoch above the current one is accepted:
  its writer becomes the primary, and everything older that arrives later is
  ignored (fencing);
- any other entry is accepted only from the current primary at the current
  epoch, and must start exactly at the next sequence with the current head
  hash; if it does not, this replica has diverged (a gap or tampering) and
  halts rather than guess;
- an entry whose command id was applied before is ignored, never applied twice.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import BaseModel, ConfigDict

from broker import errors
from broker.codec import canonical
from broker.trust import Roster, tagged
from ledger.authority import entry_problem
from ledger.chain import chain_hash
from ledger.events import EpochStarted, parse_event
from ledger.model import Record, State, apply
from ledger.store import Row

__all__ = ["LogEntry", "LogBatch", "Outcome", "fold_entry", "replay_row", "signature_problem", "command_digest",
           "ACCEPTED", "IGNORED", "HALT"]

ACCEPTED, IGNORED, HALT = "accepted", "ignored", "halt"


class LogEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    entry_id: str
    epoch: int
    writer: str
    expected_seq: int
    prev_hash: str
    at_ms: int
    command_id: str | None = None
    reply: dict[str, Any] | None = None
    events: list[dict[str, Any]]
    command: dict[str, Any] | None = None  # the user's (or operator's) signed envelope behind the events
    signature: str = ""  # the writer's certified key over everything above (see signing_bytes)

    def signing_bytes(self) -> bytes:
        return tagged("log-entry", canonical(self.model_dump(mode="json", exclude={"signature"})))

    def signed_by(self, key: Ed25519PrivateKey) -> LogEntry:
        return self.model_copy(update={"signature": key.sign(self.signing_bytes()).hex()})


class LogBatch(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    type: str = "log_batch"
    schema_version: int = 1
    entries: list[LogEntry]


@dataclass(frozen=True)
class Outcome:
    verdict: str  # ACCEPTED, IGNORED or HALT
    reason: str = ""
    first_seq: int = 0
    last_seq: int = 0
    kind: str = ""  # a short name of why it was ignored, for counting (unsigned, uncertified, fenced, ...)


def _ignored(kind: str, reason: str) -> Outcome:
    return Outcome(IGNORED, reason, kind=kind)


def _writer_key(state: State, entry: LogEntry, first: Any, operator_key: bytes) -> tuple[bytes | None, str]:
    """The key the entry must be signed with: the writer's in the roster in force, or in the newer
    operator-signed roster an epoch announcement brings."""
    roster = state.roster
    if isinstance(first, EpochStarted) and first.roster is not None:
        try:
            offered = Roster.verified(first.roster, operator_key)
        except errors.CommandRejected as exc:
            return None, f"the announcement's roster: {exc}"
        if roster is None or offered.serial > roster.serial:
            roster = offered
    if roster is None:
        return None, "no replica roster is in force yet"
    key = roster.key_of(entry.writer)
    return key, "" if key is not None else f"writer {entry.writer[:40]!r} is not a certified replica"


def signature_problem(state: State, entry: LogEntry, first: Any, operator_key: bytes) -> tuple[str, str] | None:
    """(kind, reason) when ``entry`` is not signed by a replica certified in ``state`` (or in the roster it
    brings); None when it is."""
    key, why = _writer_key(state, entry, first, operator_key)
    if key is None:
        return "uncertified", why
    if not entry.signature:
        return "unsigned", f"entry of {entry.writer} is not signed"
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(bytes.fromhex(entry.signature), entry.signing_bytes())
    except (InvalidSignature, ValueError):
        return "bad_signature", f"signature of {entry.writer} does not verify"
    return None


def fold_entry(state: State, entry: LogEntry, operator_key: bytes,
               ledger_key: X25519PrivateKey | None = None) -> tuple[Outcome, State, list[Row]]:
    """Apply one entry if it is valid: the outcome, the new state and the rows to store.

    Nothing that is not signed by a certified replica, and backed by the signature of whoever may
    ask for its events, is ever applied; such entries are ignored (and counted by the caller), so a
    stranger can neither change the state nor halt a replica. Only a validly signed entry of the
    current primary that does not continue this replica's chain halts it.
    """
    try:
        events = [parse_event(e) for e in entry.events]
    except ValueError as exc:
        return _ignored("malformed", f"unparseable event: {exc}"), state, []
    if not events:
        return _ignored("malformed", "empty entry"), state, []
    first = events[0]
    unsigned = signature_problem(state, entry, first, operator_key)
    if unsigned is not None:
        return _ignored(*unsigned), state, []
    if isinstance(first, EpochStarted):
        if len(events) != 1 or first.epoch != entry.epoch or first.replica != entry.writer:
            return _ignored("malformed", "malformed epoch announcement"), state, []
        if entry.epoch <= state.epoch:
            return _ignored("fenced", f"epoch {entry.epoch} is not above {state.epoch}"), state, []
    else:
        if entry.epoch != state.epoch or entry.writer != state.primary:
            return _ignored("fenced", f"fenced: epoch {entry.epoch} of {entry.writer}, current {state.epoch} "
                                      f"of {state.primary}"), state, []
        if entry.command_id is not None and entry.command_id in state.commands:
            return _ignored("duplicate", f"command {entry.command_id} already applied"), state, []
        if entry.expected_seq <= state.seq:
            # An entry this replica is already past: a genuine old entry published again.
            return _ignored("duplicate", f"entry for seq {entry.expected_seq} arrived again at {state.seq}"), \
                state, []
        if entry.expected_seq != state.seq + 1 or entry.prev_hash != state.head_hash:
            return Outcome(HALT, f"primary {entry.writer} wrote at seq {entry.expected_seq} after "
                                 f"{entry.prev_hash[:12]}, this replica is at {state.seq} "
                                 f"{state.head_hash[:12]}: the logs diverge"), state, []
    problem = entry_problem(state, entry.command_id, entry.command, entry.at_ms, events, operator_key, ledger_key)
    if problem is not None:
        return _ignored("unauthorized", problem), state, []
    try:
        return _applied(state, entry, events)
    except (KeyError, TypeError, ValueError, AttributeError, errors.BrokerError) as exc:
        # Authorized, yet it does not apply to this state: every replica finds the same, so all ignore it
        # alike rather than lose the thread that follows the log.
        return _ignored("unappliable", f"entry does not apply: {type(exc).__name__}: {str(exc)[:200]}"), state, []


def _applied(state: State, entry: LogEntry, events: list[Any]) -> tuple[Outcome, State, list[Row]]:
    rows: list[Row] = []
    first_seq = state.seq + 1
    for i, event in enumerate(events):
        last = i == len(events) - 1
        reply = entry.reply if last else None
        command_id = entry.command_id
        seq = state.seq + 1
        payload = event.model_dump(mode="json")
        digest = chain_hash(state.head_hash, seq=seq, epoch=entry.epoch, at_ms=entry.at_ms,
                            command_id=command_id, payload=payload, reply=reply)
        # The last row of an entry keeps the whole signed entry, so an audit can check every signature.
        signed = entry.model_dump(mode="json") if last else None
        rows.append(Row(seq, entry.epoch, entry.at_ms, command_id, event.type, event.schema_version, payload,
                        reply, state.head_hash, digest, signed))
        state = apply(state, Record(seq, entry.epoch, entry.at_ms, event, digest, command_id, reply,
                                    command_digest(entry.command)))
    return Outcome(ACCEPTED, first_seq=first_seq, last_seq=state.seq), state, rows


def replay_row(state: State, row: Row) -> State:
    """Re-apply a stored row (recovery, audit), checking it extends the chain."""
    from ledger.errors import ChainBroken

    if row.seq != state.seq + 1:
        raise ChainBroken(f"gap in the store: seq {row.seq} after {state.seq}")
    if row.prev_hash != state.head_hash:
        raise ChainBroken(f"event {row.seq} does not follow event {state.seq}: previous hash differs")
    digest = chain_hash(state.head_hash, seq=row.seq, epoch=row.epoch, at_ms=row.at_ms,
                        command_id=row.command_id, payload=row.payload, reply=row.reply)
    if digest != row.hash:
        raise ChainBroken(f"event {row.seq} was altered: its hash does not match its content")
    event = parse_event(row.payload)
    command = row.entry.get("command") if row.entry is not None else None
    return apply(state, Record(row.seq, row.epoch, row.at_ms, event, row.hash, row.command_id, row.reply,
                               command_digest(command)))


def command_digest(command: Any) -> str | None:
    """SHA-256 of a signed command's body (what its signature covers), or None without one."""
    if not isinstance(command, dict) or not isinstance(command.get("body"), dict):
        return None
    return hashlib.sha256(canonical(command["body"])).hexdigest()
