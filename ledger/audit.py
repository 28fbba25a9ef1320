"""Audit replay: rebuild a store's state from its log in a fresh process and check it.

Checks, over the whole log: the hash chain links every event to the one
before; given the operator's public key, every entry is signed by a replica
the operator certified at that point, and every event that moves a user's
money carries the command that user (or the operator) signed, matching it
(:mod:`ledger.authority`), so no replica has to be trusted; each sale's hold
resolves at most once (settled, voided or refunded,
never two of these) and no sale id is opened twice, even long after the first
sale left the state (:data:`ledger.model.DISPUTE_WINDOW`); no key reaches a consumer except in a settle event, and
only after the provider escrowed one; no command id has its effect twice; and
at the end (and every ``check_every`` events) money is conserved and holds add
up (:func:`ledger.model.invariant_violations`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ledger import events as ev
from ledger import model
from ledger.authority import entry_problem
from ledger.errors import ChainBroken
from ledger.events import parse_event
from ledger.log import LogEntry, replay_row, signature_problem
from ledger.model import OPEN, State, invariant_findings, state_from_dict, state_hash
from ledger.store import Store

__all__ = ["AuditReport", "Invariant", "InvariantResult", "Verdict", "Violation", "MONEY", "audit", "audit_store",
           "replay"]


class Invariant(StrEnum):
    """What the audit checks, each under a name that does not change with the wording of its findings."""

    HASH_CHAIN = "hash_chain"  # every event links to the one before it, unaltered
    SNAPSHOT = "snapshot"  # a replay that starts from a snapshot starts from a sound one
    SIGNED = "signed"  # every entry signed by a certified replica, its events backed by their owner's signature
    MONEY_CONSERVED = model.MONEY_CONSERVED  # accounts and holds add up to what was deposited
    HOLDS_ADD_UP = model.HOLDS_ADD_UP  # each account's holds are its open sales
    NO_NEGATIVE_BALANCE = model.NO_NEGATIVE_BALANCE  # only a provider who lost a dispute may owe
    HOLD_RESOLVED_ONCE = "hold_resolved_once"  # a sale is settled, voided or refunded at most once
    KEYS_BY_SETTLE_ONLY = model.KEYS_BY_SETTLE_ONLY  # a key reaches a consumer only by a settle, after an escrow
    COMMAND_ONCE = "command_once"  # no command has its effect twice


MONEY = (Invariant.MONEY_CONSERVED, Invariant.HOLDS_ADD_UP, Invariant.NO_NEGATIVE_BALANCE)
"""The invariants that together say money was conserved."""


class Verdict(StrEnum):
    HELD = "held"
    VIOLATED = "violated"
    NOT_CHECKED = "not_checked"  # signatures without the operator's key; anything after an unusable snapshot


@dataclass(frozen=True)
class Violation:
    """One finding: which invariant, at which event, and what is wrong, in plain words."""

    invariant: Invariant
    explanation: str
    seq: int | None = None  # the (first) event it was found at; None: found at the end of the log
    line: str = ""  # the finding as `acb audit verify` prints it

    def __str__(self) -> str:
        return self.line or (self.explanation if self.seq is None else f"seq {self.seq}: {self.explanation}")


@dataclass(frozen=True)
class InvariantResult:
    invariant: Invariant
    verdict: Verdict
    count: int = 0  # how many violations
    first: Violation | None = None


@dataclass
class AuditReport:
    store: str
    events: int = 0
    head_seq: int = 0
    head_hash: str = ""
    state_hash: str = ""
    from_snapshot: int | None = None
    findings: list[Violation] = field(default_factory=list)
    command_ids: set[str] = field(default_factory=set)
    signed_entries: int = 0  # entries whose writer's signature (and command's signer) were checked
    signatures_checked: bool = False
    replayed: bool = True  # False when the log could not be replayed at all (no sound snapshot to start from)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def violations(self) -> list[str]:
        """Every finding as a line for people, in the order found."""
        return [str(v) for v in self.findings]

    @property
    def invariants(self) -> dict[Invariant, InvariantResult]:
        """Every invariant with its verdict, how often it was violated and where first."""
        out: dict[Invariant, InvariantResult] = {}
        for inv in Invariant:
            found = [v for v in self.findings if v.invariant is inv]
            if found:
                out[inv] = InvariantResult(inv, Verdict.VIOLATED, len(found), found[0])
            elif (inv is Invariant.SIGNED and not self.signatures_checked) or (
                    not self.replayed and inv is not Invariant.SNAPSHOT):
                out[inv] = InvariantResult(inv, Verdict.NOT_CHECKED)
            else:
                out[inv] = InvariantResult(inv, Verdict.HELD)
        return out

    @property
    def money_conserved(self) -> bool:
        """Whether the replay found money conserved: every invariant of :data:`MONEY` held."""
        results = self.invariants
        return all(results[inv].verdict is Verdict.HELD for inv in MONEY)

    def found(self, invariant: Invariant, explanation: str, seq: int | None = None, *, line: str = "") -> None:
        """Record a violation of ``invariant`` (``line``: how to print it, when not "seq N: explanation")."""
        self.findings.append(Violation(invariant, explanation, seq, line))

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


def _entry_violation(before: State, group: list[Any], operator_key: bytes) -> tuple[int, str] | None:
    """Where and what is wrong with the stored rows of one entry, checked against the entry its writer signed."""
    last = group[-1]
    try:
        entry = LogEntry.from_wire(last.entry)
        events = [parse_event(e) for e in entry.events]
    except ValueError as exc:
        return last.seq, f"the stored signed entry does not parse: {str(exc)[:200]}"
    if not events:
        return last.seq, "the stored signed entry has no events"
    unsigned = signature_problem(before, entry, events[0], operator_key)
    if unsigned is not None:
        return group[0].seq, unsigned[1]
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
        return group[0].seq, (f"the stored events are not the ones their writer signed ({', '.join(differ)} differ; "
                              f"{len(group)} rows against {len(events)} signed events)")
    problem = entry_problem(before, entry.command_id, entry.command, entry.at_ms, events, operator_key)
    return (group[0].seq, problem) if problem is not None else None


def _start(store: Store, report: AuditReport, use_snapshot: bool) -> State | None:
    """The state the replay starts from: empty, or a sound snapshot (None: no sound one where one is needed)."""
    state = State()
    first = next(store.rows(after=0, batch=1), None)
    if first is not None and first.seq > 1 and not use_snapshot:
        # A replica that joined from a shared snapshot holds the log only from there on.
        snap = store.latest_snapshot(at_most=first.seq - 1)
        if snap is None or snap[0] != first.seq - 1:
            report.found(Invariant.SNAPSHOT, f"the store starts at event {first.seq} without a snapshot before it",
                         first.seq, line=f"the store starts at event {first.seq} without a snapshot before it")
            return None
        candidate = state_from_dict(snap[3])
        if state_hash(candidate) != snap[1]:
            report.found(Invariant.SNAPSHOT, "the snapshot fails its hash check", snap[0],
                         line=f"snapshot at seq {snap[0]} fails its hash check")
            return None
        state, report.from_snapshot = candidate, snap[0]
    if use_snapshot:
        snap = store.latest_snapshot()
        if snap is not None:
            candidate = state_from_dict(snap[3])
            if state_hash(candidate) != snap[1]:
                report.found(Invariant.SNAPSHOT, "the snapshot fails its hash check", snap[0],
                             line=f"snapshot at seq {snap[0]} fails its hash check")
                return None
            state, report.from_snapshot = candidate, snap[0]
    return state


def audit_store(store_url: str, operator_key: bytes | None) -> AuditReport:
    """The store at ``store_url`` audited from zero as ``acb audit verify`` does, trusting ``operator_key``."""
    store = Store(store_url, create=False)
    try:
        return audit(store, operator_key=operator_key)
    finally:
        store.close()


def audit(store: Store, *, use_snapshot: bool = False, check_every: int = 1000,
          operator_key: bytes | None = None) -> AuditReport:
    """Replay the whole log and report every violation found (no findings: the store is sound).

    With ``operator_key`` every entry's signatures are checked too: whose replica wrote it, and
    whose command stands behind its events. Each invariant's verdict is in ``report.invariants``.
    """
    report = AuditReport(store.safe_url, signatures_checked=operator_key is not None)
    start = _start(store, report, use_snapshot)
    if start is None:
        report.replayed = False
        return report
    state = start
    resolved: dict[str, int] = {}
    escrowed: set[str] = {sid for sid, s in state.sales.items() if s.key_commitment}
    # Every sale id ever opened, with where: the state forgets sales past their dispute window, the audit may not.
    opened: dict[str, int | None] = dict.fromkeys(state.sales)
    commands_seen: dict[str, int] = {}
    group: list[Any] = []  # rows of the entry being read
    entry_start = state  # the state before that entry
    seq = state.seq
    try:
        for row in store.rows(after=state.seq):
            seq = row.seq
            if not group:
                entry_start = state
            group.append(row)
            event = parse_event(row.payload)
            before = state.sales.get(getattr(event, "sale_id", ""), None)
            if isinstance(event, (ev.SaleSettled, ev.SaleVoided)):
                if before is None or before.status != OPEN:
                    report.found(Invariant.HOLD_RESOLVED_ONCE, f"sale {event.sale_id} resolved again "
                                                               f"(first at seq {resolved.get(event.sale_id)})", row.seq)
                resolved[event.sale_id] = row.seq
            if isinstance(event, ev.SaleOpened):
                if event.sale_id in opened:
                    report.found(Invariant.HOLD_RESOLVED_ONCE, f"sale id {event.sale_id} opened again (first at seq "
                                                               f"{opened[event.sale_id]})", row.seq)
                opened[event.sale_id] = row.seq
            if isinstance(event, ev.KeyEscrowed):
                escrowed.add(event.sale_id)
            if isinstance(event, ev.SaleSettled) and event.sale_id not in escrowed:
                report.found(Invariant.KEYS_BY_SETTLE_ONLY, f"key of {event.sale_id} released without an escrowed key",
                             row.seq)
            if "consumer_sealed_key" in row.payload and not isinstance(event, ev.SaleSettled):
                report.found(Invariant.KEYS_BY_SETTLE_ONLY, "a key released outside a settle event", row.seq)
            if row.reply is not None and row.command_id is not None:
                if row.command_id in commands_seen:
                    report.found(Invariant.COMMAND_ONCE, f"command {row.command_id} applied twice "
                                                         f"(first at seq {commands_seen[row.command_id]})", row.seq)
                commands_seen[row.command_id] = row.seq
                report.command_ids.add(row.command_id)
            state = replay_row(state, row)
            report.events += 1
            if row.entry is not None:
                if operator_key is not None:
                    problem = _entry_violation(entry_start, group, operator_key)
                    if problem is not None:
                        report.found(Invariant.SIGNED, problem[1], problem[0])
                    report.signed_entries += 1
                group = []
            if check_every and row.seq % check_every == 0:
                for name, explanation in invariant_findings(state):
                    report.found(Invariant(name), explanation, row.seq)
        if group and operator_key is not None:
            report.found(Invariant.SIGNED, "no signed entry stands behind these events", group[0].seq,
                         line=f"seq {group[0].seq}..{group[-1].seq}: no signed entry stands behind these events")
    except ChainBroken as exc:
        report.found(Invariant.HASH_CHAIN, str(exc), seq, line=f"hash chain broken: {exc}")
    for name, explanation in invariant_findings(state):
        report.found(Invariant(name), explanation)
    report.head_seq, report.head_hash, report.state_hash = state.seq, state.head_hash, state_hash(state)
    return report
