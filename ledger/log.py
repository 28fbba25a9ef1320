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

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidatorFunctionWrapHandler, model_validator

from broker import errors
from broker.codec import canonical
from broker.trust import Roster, sign_known, signature_valid, tagged
from ledger.authority import entry_problem
from ledger.chain import chain_hash
from ledger.errors import ChainBroken
from ledger.events import EpochStarted, parse_event
from ledger.model import Flow, Record, State, apply, retired_pictures
from ledger.store import Row

__all__ = ["LogEntry", "LogBatch", "Outcome", "fold_entry", "replay_row", "signature_problem", "command_digest",
           "flows_of", "ACCEPTED", "IGNORED", "HALT"]

ACCEPTED, IGNORED, HALT = "accepted", "ignored", "halt"


class LogEntry(BaseModel):
    """One entry of the log: the events one command caused, signed by the replica that wrote it.

    The signature covers the entry as its writer wrote it (:meth:`wire`), not as this code would write
    it again, so an entry of an older writer (a field it did not know, a default it left out) still
    verifies, and is stored byte for byte as it was signed.
    """

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
    # The JSON object this entry was read from (or signed as, when it was signed here).
    _written: dict[str, Any] | None = PrivateAttr(default=None)
    # What the signature covers, once worked out: the primary signs it and folds it, every replica checks it.
    _signing: bytes | None = PrivateAttr(default=None)

    @classmethod
    def from_wire(cls, written: dict[str, Any]) -> LogEntry:
        """The entry read from the JSON object its writer wrote (raises ValueError when it does not parse)."""
        entry = cls.model_validate(written)
        entry._keep(written)
        return entry

    def _keep(self, written: dict[str, Any] | None, signing: bytes | None = None) -> None:
        self._written, self._signing = written, signing

    def __eq__(self, other: object) -> bool:
        # The same entry whether it was read or built here: equal fields, equal entries.
        if not isinstance(other, LogEntry):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; one with changed fields is no longer the entry that was written, so it forgets that."""
        copy = super().model_copy(update=update, deep=deep)
        if update:
            copy._keep(None)
        return copy

    def wire(self) -> dict[str, Any]:
        """The entry as its writer wrote it: what the signature covers and what the store keeps."""
        return self._written if self._written is not None else self.model_dump(mode="json")

    def signing_bytes(self) -> bytes:
        """The bytes the writer's signature is over: the written entry without its signature."""
        if self._signing is None:
            self._signing = _signing_bytes(self.wire())
        return self._signing

    def signed_by(self, key: Ed25519PrivateKey) -> LogEntry:
        """This entry signed with ``key``: written, and the bytes signed, worked out once here."""
        written = self.wire()
        message = self._signing if self._signing is not None else _signing_bytes(written)
        signature = sign_known(key, message).hex()
        signed = self.model_copy(update={"signature": signature})
        # Only the signature differs from what was signed; the fold that follows checks it by a hash.
        signed._keep({**written, "signature": signature}, message)
        return signed


def _signing_bytes(written: dict[str, Any]) -> bytes:
    return tagged("log-entry", canonical({k: v for k, v in written.items() if k != "signature"}))


class LogBatch(BaseModel):
    """One stream message: entries in the order they are folded."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: str = "log_batch"
    schema_version: int = 1
    entries: list[LogEntry]

    @model_validator(mode="wrap")
    @classmethod
    def _keep_written(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> LogBatch:
        # Each entry remembers the object it was read from: its signature is over those bytes.
        batch: LogBatch = handler(data)
        raw = data.get("entries") if isinstance(data, dict) else None
        if isinstance(raw, list):
            for entry, written in zip(batch.entries, raw, strict=True):
                if isinstance(written, dict):
                    entry._keep(written)
        return batch


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
        signature = bytes.fromhex(entry.signature)
    except ValueError:
        signature = b""
    if not signature_valid(key, signature, entry.signing_bytes()):
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
    written = entry.wire()
    for i, event in enumerate(events):
        last = i == len(events) - 1
        reply = entry.reply if last else None
        command_id = entry.command_id
        seq = state.seq + 1
        # Hashed and stored as its writer wrote (and signed) it, not as this code would write it again: what
        # is stored must not depend on the version of the code that stored it.
        payload = entry.events[i]
        digest = chain_hash(state.head_hash, seq=seq, epoch=entry.epoch, at_ms=entry.at_ms,
                            command_id=command_id, payload=payload, reply=reply)
        prev_hash = state.head_hash
        state = apply(state, Record(seq, entry.epoch, entry.at_ms, event, digest, command_id, reply,
                                    command_digest(entry.command)))
        # The last row of an entry keeps the whole signed entry, so an audit can check every signature.
        rows.append(Row(seq, entry.epoch, entry.at_ms, command_id, event.type, _version(payload), payload,
                        reply, prev_hash, digest, written if last else None, flows_of(state),
                        retired_pictures(state)))
    return Outcome(ACCEPTED, first_seq=first_seq, last_seq=state.seq), state, rows


def flows_of(state: State) -> tuple[dict[str, Any], ...]:
    """The cash flows the record just applied caused, as the store's projection keeps them."""
    # A flow's fields are plain values: read one by one, not through asdict's recursive deep copy.
    return tuple({"account": account, **{name: getattr(flow, name) for name in _FLOW_FIELDS}}
                 for account, flow in state.last_flows)


_FLOW_FIELDS = tuple(f.name for f in dataclasses.fields(Flow))


def _version(payload: dict[str, Any]) -> int:
    """The schema version the event was written in (1 when its writer did not say)."""
    version = payload.get("schema_version", 1)
    return version if isinstance(version, int) and not isinstance(version, bool) else 1


def replay_row(state: State, row: Row) -> State:
    """Re-apply a stored row (recovery, audit), checking it extends the chain."""
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
