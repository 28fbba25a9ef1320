"""Audit replay: rebuild a store's state from its log in a fresh process and check it.

Checks, over the whole log: the hash chain links every event to the one
before; given the operator's public key, every entry is signed by a replica
the operator certified at that point, and every event that moves a user's
money carries the command that user (or the operator) signed, matching it
(:mod:`ledger.authority`), so no replica has to be trusted; each sale's hold
resolves at most once (settled, voided or refunded,
never two of these); no key reaches a consumer except in a settle event, and
only after the provider escrowed one; no command id has its effect twice; and
at the end (and every ``check_every`` events) money is conserved and holds add
up (:func:`ledger.model.invariant_violations`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger import events as ev
from ledger.authority import entry_problem
from ledger.errors import ChainBroken
from ledger.events import parse_event
from ledger.log import LogEntry, replay_row, signature_problem
from ledger.model import OPEN, State, invariant_violations, state_from_dict, state_hash
from ledger.store import Store

__all__ = ["AuditReport", "audit", "replay"]


@dataclass
class AuditReport:
    store: str
    events: int = 0
    head_seq: int = 0
    head_hash: str = ""
    state_hash: str = ""
    from_snapshot: int | None = None
    violations: list[str] = field(default_factory=list)
    command_ids: set[str] = field(default_factory=set)
    signed_entries: int = 0  # entries whose writer's signature (and command's signer) were checked
    signatures_checked: bool = False

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {"store": self.store, "events": self.events, "head_seq": self.head_seq, "head_hash": self.head_hash,
                "state_hash": self.state_hash, "from_snapshot": self.from_snapshot, "violations": self.violations,
                "signed_entries": self.signed_entries, "signatures_checked": self.signatures_checked, "ok": self.ok}


def replay(store: Store, upto: int | None = None, *, use_snapshot: bool = False) -> State:
    """The state after event ``upto`` (or the last), rebuilt from the store's rows."""
    state = State()
    first = next(store.rows(after=0, batch=1), None)
    if use_snapshot or (first is not None and first.seq > 1):
        snap = store.latest_snapshot(at_most=upto)
        if snap is not None and state_hash(candidate := state_from_dict(snap[3])) == snap[1]:
            state = candidate
    for row in store.rows(after=state.seq, upto=upto):
        state = replay_row(state, row)
    return state


def _entry_violation(before: State, group: list[Any], operator_key: bytes) -> str | None:
    """What is wrong with the stored rows of one entry, checked against the entry its writer signed."""
    last = group[-1]
    try:
        entry = LogEntry.from_wire(last.entry)
        events = [parse_event(e) for e in entry.events]
    except ValueError as exc:
        return f"seq {last.seq}: the stored signed entry does not parse: {str(exc)[:200]}"
    if not events:
        return f"seq {last.seq}: the stored signed entry has no events"
    unsigned = signature_problem(before, entry, events[0], operator_key)
    if unsigned is not None:
        return f"seq {group[0].seq}: {unsigned[1]}"
    stored = {"events": [r.payload for r in group], "first seq": group[0].seq, "previous hash": group[0].prev_hash,
              "command id": last.command_id, "reply": last.reply, "epochs": {r.epoch for r in group},
              "times": {r.at_ms for r in group}}
    signed = {"events": list(entry.events), "first seq": entry.expected_seq,
              "previous hash": entry.prev_hash, "command id": entry.command_id, "reply": entry.reply,
              "epochs": {entry.epoch}, "times": {entry.at_ms}}
    if isinstance(events[0], ev.EpochStarted):
        # An announcement takes effect wherever it lands in the log (that is what fences the old primary):
        # it names the place its writer had seen, not the one it is stored at.
        del stored["first seq"], stored["previous hash"], signed["first seq"], signed["previous hash"]
    differ = [k for k in stored if stored[k] != signed[k]]
    if differ:
        return (f"seq {group[0].seq}: the stored events are not the ones their writer signed "
                f"({', '.join(differ)} differ; {len(group)} rows against {len(events)} signed events)")
    problem = entry_problem(before, entry.command_id, entry.command, entry.at_ms, events, operator_key)
    return f"seq {group[0].seq}: {problem}" if problem is not None else None


def audit(store: Store, *, use_snapshot: bool = False, check_every: int = 1000,
          operator_key: bytes | None = None) -> AuditReport:
    """Replay the whole log and report every violation found (empty list: the store is sound).

    With ``operator_key`` every entry's signatures are checked too: whose replica wrote it, and
    whose command stands behind its events.
    """
    report = AuditReport(store.safe_url, signatures_checked=operator_key is not None)
    state = State()
    first = next(store.rows(after=0, batch=1), None)
    if first is not None and first.seq > 1 and not use_snapshot:
        # A replica that joined from a shared snapshot holds the log only from there on.
        snap = store.latest_snapshot(at_most=first.seq - 1)
        if snap is None or snap[0] != first.seq - 1:
            report.violations.append(f"the store starts at event {first.seq} without a snapshot before it")
            return report
        candidate = state_from_dict(snap[3])
        if state_hash(candidate) != snap[1]:
            report.violations.append(f"snapshot at seq {snap[0]} fails its hash check")
            return report
        state, report.from_snapshot = candidate, snap[0]
    if use_snapshot:
        snap = store.latest_snapshot()
        if snap is not None:
            candidate = state_from_dict(snap[3])
            if state_hash(candidate) != snap[1]:
                report.violations.append(f"snapshot at seq {snap[0]} fails its hash check")
                return report
            state, report.from_snapshot = candidate, snap[0]
    resolved: dict[str, int] = {}
    escrowed: set[str] = {sid for sid, s in state.sales.items() if s.key_commitment}
    commands_seen: dict[str, int] = {}
    group: list[Any] = []  # rows of the entry being read
    entry_start = state  # the state before that entry
    try:
        for row in store.rows(after=state.seq):
            if not group:
                entry_start = state
            group.append(row)
            event = parse_event(row.payload)
            before = state.sales.get(getattr(event, "sale_id", ""), None)
            if isinstance(event, (ev.SaleSettled, ev.SaleVoided)):
                if before is None or before.status != OPEN:
                    report.violations.append(f"seq {row.seq}: sale {event.sale_id} resolved again "
                                             f"(first at seq {resolved.get(event.sale_id)})")
                resolved[event.sale_id] = row.seq
            if isinstance(event, ev.KeyEscrowed):
                escrowed.add(event.sale_id)
            if isinstance(event, ev.SaleSettled) and event.sale_id not in escrowed:
                report.violations.append(f"seq {row.seq}: key of {event.sale_id} released without an escrowed key")
            if "consumer_sealed_key" in row.payload and not isinstance(event, ev.SaleSettled):
                report.violations.append(f"seq {row.seq}: a key released outside a settle event")
            if row.reply is not None and row.command_id is not None:
                if row.command_id in commands_seen:
                    report.violations.append(f"seq {row.seq}: command {row.command_id} applied twice "
                                             f"(first at seq {commands_seen[row.command_id]})")
                commands_seen[row.command_id] = row.seq
                report.command_ids.add(row.command_id)
            state = replay_row(state, row)
            report.events += 1
            if row.entry is not None:
                if operator_key is not None:
                    problem = _entry_violation(entry_start, group, operator_key)
                    if problem is not None:
                        report.violations.append(problem)
                    report.signed_entries += 1
                group = []
            if check_every and row.seq % check_every == 0:
                report.violations.extend(f"seq {row.seq}: {v}" for v in invariant_violations(state))
        if group and operator_key is not None:
            report.violations.append(f"seq {group[0].seq}..{group[-1].seq}: no signed entry stands behind these "
                                     f"events")
    except ChainBroken as exc:
        report.violations.append(f"hash chain broken: {exc}")
    report.violations.extend(invariant_violations(state))
    report.head_seq, report.head_hash, report.state_hash = state.seq, state.head_hash, state_hash(state)
    return report
