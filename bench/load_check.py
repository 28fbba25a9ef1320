"""What ``acb bench load`` checks after the run, on every replica's store.

- lost: acknowledged writes (an ``ok`` answer came) whose command id is missing from some replica's log;
- duplicated: command ids whose effect is in some replica's log more than once (the audit's
  ``command_once``);
- money conserved: every store's audit replay (:func:`ledger.audit.audit`, signatures included)
  finds the money invariants held;
- replicas identical: every store's state hash at one sequence (the lowest head among them) is
  the same, as ``acb audit hash --at`` computes it.

The stores are read, never changed; the replicas should be stopped first.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.trust import Trust
from ledger.audit import Invariant, audit_store

__all__ = ["CheckResult", "check_stores"]


@dataclass
class CheckResult:
    """The verdicts, and per replica what its audit found."""

    acknowledged: int
    lost: int
    duplicated: int
    money_conserved: bool
    replicas_identical: bool
    common_seq: int
    heads: dict[str, int] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)  # replica -> acknowledged ids not in its log
    findings: dict[str, list[str]] = field(default_factory=dict)  # replica -> first audit findings

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.money_conserved and self.replicas_identical

    def lines(self) -> list[str]:
        """The verdicts for people, one line each."""
        out = [f"checked {len(self.heads)} stores against {self.acknowledged} acknowledged writes: lost {self.lost}, "
               f"duplicated {self.duplicated}, money conserved {'yes' if self.money_conserved else 'NO'}, "
               f"replicas identical at seq {self.common_seq} {'yes' if self.replicas_identical else 'NO'}"]
        for rid in self.heads:
            state = self.hashes.get(rid, "?")[:16]
            note = f"; {self.missing[rid]} acknowledged writes missing" if self.missing.get(rid) else ""
            found = f"; audit: {'; '.join(self.findings[rid][:2])}" if self.findings.get(rid) else ""
            out.append(f"  {rid}: head {self.heads[rid]}, state at {self.common_seq} {state}…{note}{found}")
        return out


def _state_hash(command: Sequence[str], url: str, at: int, env: Mapping[str, str]) -> str:
    out = subprocess.run([*command, "audit", "hash", "--store", url, "--at", str(at), "--json"], env=dict(env),
                         capture_output=True, text=True, timeout=900)
    try:
        return str(json.loads(out.stdout.strip().splitlines()[-1])["state_hash"])
    except (ValueError, IndexError, KeyError):
        return f"(no hash: {out.stderr.strip()[-200:]})"


def check_stores(stores: Mapping[str, str], acknowledged: Iterable[str], home: Path, *, command: Sequence[str],
                 env: Mapping[str, str]) -> CheckResult:
    """Check every store of ``stores`` (replica id -> store URL) against the ``acknowledged`` command ids.

    ``home`` holds the operator's key the audit checks signatures with; ``command`` runs ``acb`` with
    ``env`` (for ``audit hash``).
    """
    acked = set(acknowledged)
    operator_key = Trust.load(home).operator_key
    audits = {rid: audit_store(url, operator_key) for rid, url in stores.items()}
    missing = {rid: len(acked - a.command_ids) for rid, a in audits.items()}
    lost_ids: set[str] = set()
    for a in audits.values():
        lost_ids |= acked - a.command_ids
    duplicated = max((a.invariants[Invariant.COMMAND_ONCE].count for a in audits.values()), default=0)
    common = min((a.head_seq for a in audits.values()), default=0)
    hashes = {rid: _state_hash(command, url, common, env) for rid, url in stores.items()}
    return CheckResult(
        acknowledged=len(acked), lost=len(lost_ids), duplicated=duplicated,
        money_conserved=all(a.money_conserved for a in audits.values()),
        replicas_identical=len(set(hashes.values())) == 1 and not any(h.startswith("(") for h in hashes.values()),
        common_seq=common, heads={rid: a.head_seq for rid, a in audits.items()}, hashes=hashes, missing=missing,
        findings={rid: a.violations[:3] for rid, a in audits.items() if not a.ok})


def describe(result: CheckResult) -> dict[str, Any]:
    """The verdicts as JSON values."""
    return {"acknowledged": result.acknowledged, "lost": result.lost, "duplicated": result.duplicated,
            "money_conserved": result.money_conserved, "replicas_identical": result.replicas_identical,
            "checked_seq": result.common_seq}
