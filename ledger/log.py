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

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from ledger.chain import chain_hash
from ledger.events import EpochStarted, parse_event
from ledger.model import Record, State, apply
from ledger.store import Row

__all__ = ["LogEntry", "LogBatch", "Outcome", "fold_entry", "replay_row", "ACCEPTED", "IGNORED", "HALT"]

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


def fold_entry(state: State, entry: LogEntry) -> tuple[Outcome, State, list[Row]]:
    """Apply one entry if it is valid: the outcome, the new state and the rows to store."""
    try:
        events = [parse_event(e) for e in entry.events]
    except ValueError as exc:
        return Outcome(IGNORED, f"unparseable event: {exc}"), state, []
    if not events:
        return Outcome(IGNORED, "empty entry"), state, []
    first = events[0]
    if isinstance(first, EpochStarted):
        if len(events) != 1 or first.epoch != entry.epoch or first.replica != entry.writer:
            return Outcome(IGNORED, "malformed epoch announcement"), state, []
        if entry.epoch <= state.epoch:
            return Outcome(IGNORED, f"epoch {entry.epoch} is not above {state.epoch}"), state, []
    else:
        if entry.epoch != state.epoch or entry.writer != state.primary:
            return Outcome(IGNORED, f"fenced: epoch {entry.epoch} of {entry.writer}, current {state.epoch} "
                                    f"of {state.primary}"), state, []
        if entry.command_id is not None and entry.command_id in state.commands:
            return Outcome(IGNORED, f"command {entry.command_id} already applied"), state, []
        if entry.expected_seq != state.seq + 1 or entry.prev_hash != state.head_hash:
            return Outcome(HALT, f"primary {entry.writer} wrote at seq {entry.expected_seq} after "
                                 f"{entry.prev_hash[:12]}, this replica is at {state.seq} "
                                 f"{state.head_hash[:12]}: the logs diverge"), state, []
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
        rows.append(Row(seq, entry.epoch, entry.at_ms, command_id, event.type, event.schema_version, payload,
                        reply, state.head_hash, digest))
        state = apply(state, Record(seq, entry.epoch, entry.at_ms, event, digest, command_id, reply))
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
    return apply(state, Record(row.seq, row.epoch, row.at_ms, event, row.hash, row.command_id, row.reply))
