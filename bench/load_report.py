"""What ``acb bench load`` makes of its records: the table per request type, the JSON line, the plot.

A record is ``(kind, scheduled, sent, answered, code, command_id, heard)`` (:mod:`bench.load_gen`).
Latency is ``answered - scheduled``: a request that waited for a free sender, or for a failover,
waited in the user's eyes too. A request that got no answer counts as an error (``timeout``)
with the time it was waited for. *Heard* is ``heard - scheduled``: how long until the user heard
anything at all, the answer or a first ``busy``; under overload it is the measure of "every request
gets an answer or a clear busy within a few seconds" (:data:`HEARD_WITHIN_S`).
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load_gen import Record
from bench.load_mix import KINDS, READS

__all__ = ["Fault", "Stats", "RunFacts", "failover_pause", "format_table", "longest_stall", "percentile", "plot",
           "stats",
           "summary_json", "JSON_KEYS", "HEARD_WITHIN_S", "heard"]

JSON_KEYS = ("users", "duration_s", "requests", "rps", "p50_ms", "p99_ms", "errors", "lost", "duplicated",
             "failover_pause_ms", "ceiling_cps", "ledger_cps", "ratio", "rss_mb_max")
_UNANSWERED = frozenset({"timeout", "unavailable", "generator_late"})
HEARD_WITHIN_S = 5.0  # "a few seconds": requests that heard nothing (answer or busy) for longer are counted


def heard(record: Record) -> float:
    """Seconds from the scheduled time until the user heard anything (records of six fields: the answer)."""
    return (record[6] if len(record) > 6 else record[3]) - record[1]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * q / 100))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Fault:
    """Something done to the cluster, ``at`` seconds after the start."""

    at: float
    label: str


@dataclass
class Stats:
    """One row of the table."""

    kind: str
    count: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds
    codes: Counter[str] = field(default_factory=Counter)

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code != "ok")

    def row(self, duration: float) -> dict[str, Any]:
        return {"count": self.count, "rate": round(self.count / duration, 1) if duration else 0.0,
                "p50_ms": round(percentile(self.latencies, 50) * 1000, 1),
                "p99_ms": round(percentile(self.latencies, 99) * 1000, 1),
                "max_ms": round(max(self.latencies, default=0.0) * 1000, 1),
                "errors": {code: n for code, n in sorted(self.codes.items()) if code != "ok"}}


def stats(records: Sequence[Record]) -> dict[str, Stats]:
    """Per request type, and ``all``."""
    out = {k: Stats(k) for k in KINDS}
    out["all"] = Stats("all")
    for kind, scheduled, _sent, done, code, *_ in records:
        for s in (out.setdefault(kind, Stats(kind)), out["all"]):
            s.count += 1
            s.latencies.append(done - scheduled)
            s.codes[code] += 1
    return {k: s for k, s in out.items() if s.count or k == "all"}


def failover_pause(records: Sequence[Record], kill_at: float, window: float = 30.0) -> float:
    """The longest stretch around a kill (monotonic ``kill_at``) in which no write was answered ``ok``:
    from a second before it until ``window`` seconds after. Seconds."""
    return longest_stall(records, kill_at - 1.0, kill_at + window)


def longest_stall(records: Sequence[Record], since: float, until: float) -> float:
    """The longest stretch that begins between ``since`` and ``until`` with no write answered ``ok``; seconds.

    A stretch still open at ``until`` ends at the next write answered after it (or at the last answer of
    any kind, timeouts included: nothing was seen after that).
    """
    times = sorted(done for kind, _s, _t, done, code, *_ in records if code == "ok" and kind not in READS)
    inside = [t for t in times if since <= t <= until]
    after = [t for t in times if t > until]
    last = max((r[3] for r in records), default=since)  # nothing was observed after the last answer of any kind
    edges = [since, *inside, after[0] if after else max(last, since)]
    return max((b - a for a, b in zip(edges, edges[1:], strict=False)), default=0.0)


@dataclass
class RunFacts:
    """Everything measured beside the records."""

    users: int
    duration: float
    start: float  # monotonic
    start_wall: float  # time.time() at the start, for times other processes wrote down
    generators: int
    generator_cpu_s: float
    senders: int
    ceiling_cps: float
    ledger_cps: float
    faults: list[Fault] = field(default_factory=list)
    snapshots: list[Fault] = field(default_factory=list)
    failover_pause_s: float | None = None
    stall_s: float = 0.0  # the longest stretch of the whole run with no write answered
    takeover_s: float | None = None  # from the kill until the status showed a new primary
    lag: dict[str, int] = field(default_factory=dict)  # replica -> largest lag seen (events)
    rss_mb: dict[str, float] = field(default_factory=dict)  # replica -> largest RSS seen
    notes: list[str] = field(default_factory=list)


def format_table(records: Sequence[Record], facts: RunFacts, checks: Sequence[str] = ()) -> str:
    """The report for people."""
    rows = stats(records)
    head = f"{'request':<13}{'count':>8}{'rate/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>10}  errors"
    lines = [f"{facts.users} users for {facts.duration:.0f} s, {facts.generators} generator processes", head]
    for kind, s in rows.items():
        r = s.row(facts.duration)
        errs = " ".join(f"{code}:{n}" for code, n in r["errors"].items()) or "-"
        lines.append(f"{kind:<13}{r['count']:>8}{r['rate']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
                     f"{r['max_ms']:>10.1f}  {errs}")
    told = [heard(r) * 1000 for r in records]
    late = sum(t > HEARD_WITHIN_S * 1000 for t in told)
    lines.append(f"first word (answer or busy): p50 {percentile(told, 50):.1f} ms, p99 {percentile(told, 99):.1f} ms, "
                 f"max {max(told, default=0.0):.1f} ms; {late} requests heard nothing for over {HEARD_WITHIN_S:g} s")
    # From the send, not the schedule: when the two differ much, requests waited in the generator for a sender,
    # and the generator (its CPU, its senders), not the ledger, was what bound.
    sent = [(heard(r) - (r[2] - r[1])) * 1000 for r in records]
    waited = [(r[2] - r[1]) * 1000 for r in records]
    lines.append(f"first word from the send: p50 {percentile(sent, 50):.1f} ms, p99 {percentile(sent, 99):.1f} ms, "
                 f"max {max(sent, default=0.0):.1f} ms; waiting for a sender: p50 {percentile(waited, 50):.1f} ms, "
                 f"p99 {percentile(waited, 99):.1f} ms")
    cpu = facts.generator_cpu_s / facts.duration * 100 if facts.duration else 0.0
    lines.append(f"generator CPU: {facts.generator_cpu_s:.1f} s ({cpu:.0f}% of one core over the run), "
                 f"{facts.senders} sender threads at most")
    for f in facts.faults:
        lines.append(f"fault at {f.at:5.1f} s: {f.label}")
    if facts.failover_pause_s is not None:
        took = f"; status showed the new primary after {facts.takeover_s * 1000:.0f} ms" if facts.takeover_s else ""
        lines.append(f"failover pause: {facts.failover_pause_s * 1000:.0f} ms without an answered write{took}")
    lines.append(f"longest stretch without an answered write, whole run: {facts.stall_s * 1000:.0f} ms")
    if facts.lag:
        lines.append("replica lag (largest seen, events): " + ", ".join(f"{r} {n}" for r, n in facts.lag.items()))
    if facts.rss_mb:
        rss = ", ".join(f"{r} {mb:.0f} MB" for r, mb in facts.rss_mb.items())
        lines.append(f"RSS per replica (largest seen): {rss}")
    if facts.snapshots:
        lines.append(f"snapshots: {len(facts.snapshots)} (" + ", ".join(f"{s.label} at {s.at:.1f} s"
                                                                         for s in facts.snapshots[:8]) + ")")
    ratio = facts.ledger_cps / facts.ceiling_cps if facts.ceiling_cps else 0.0
    lines.append(f"bare loop {facts.ceiling_cps:.0f} commands/s, ledger {facts.ledger_cps:.0f} commands/s "
                 f"(pipelined deposits): ratio {ratio:.2f}")
    lines += list(checks) + list(facts.notes)
    return "\n".join(lines)


def summary_json(records: Sequence[Record], facts: RunFacts, check: dict[str, Any]) -> dict[str, Any]:
    """The JSON line: the agreed keys first, then more."""
    rows = stats(records)
    total = rows["all"]
    answered = sum(1 for r in records if r[4] not in _UNANSWERED)
    out: dict[str, Any] = {
        "users": facts.users, "duration_s": facts.duration, "requests": total.count,
        "rps": round(answered / facts.duration, 1) if facts.duration else 0.0,
        "p50_ms": round(percentile(total.latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(total.latencies, 99) * 1000, 2), "errors": total.errors,
        "lost": check.get("lost"), "duplicated": check.get("duplicated"),
        "failover_pause_ms": None if facts.failover_pause_s is None else int(facts.failover_pause_s * 1000),
        "ceiling_cps": round(facts.ceiling_cps, 1), "ledger_cps": round(facts.ledger_cps, 1),
        "ratio": round(facts.ledger_cps / facts.ceiling_cps, 3) if facts.ceiling_cps else 0.0,
        "rss_mb_max": round(max(facts.rss_mb.values(), default=0.0), 1),
    }
    out.update({k: v for k, v in check.items() if k not in out})
    out["by_type"] = {k: s.row(facts.duration) for k, s in rows.items() if k != "all"}
    out["stall_max_ms"] = int(facts.stall_s * 1000)
    out["max_ms"] = round(max(total.latencies, default=0.0) * 1000, 1)
    told = [heard(r) * 1000 for r in records]
    out["heard_p99_ms"] = round(percentile(told, 99), 1)
    out["heard_max_ms"] = round(max(told, default=0.0), 1)
    out["heard_late"] = sum(t > HEARD_WITHIN_S * 1000 for t in told)
    out["heard_from_send_p99_ms"] = round(percentile([(heard(r) - (r[2] - r[1])) * 1000 for r in records], 99), 1)
    out["sender_wait_p99_ms"] = round(percentile([(r[2] - r[1]) * 1000 for r in records], 99), 1)
    out["generator_cpu_s"] = round(facts.generator_cpu_s, 1)
    out["generator_cpu_pct"] = round(facts.generator_cpu_s / facts.duration * 100, 1) if facts.duration else 0.0
    out["takeover_ms"] = None if facts.takeover_s is None else int(facts.takeover_s * 1000)
    out["replica_lag_max"] = dict(facts.lag)
    out["rss_mb"] = {r: round(v, 1) for r, v in facts.rss_mb.items()}
    out["faults"] = [{"at_s": round(f.at, 2), "what": f.label} for f in facts.faults]
    out["snapshots"] = len(facts.snapshots)
    return out


def plot(records: Sequence[Record], facts: RunFacts, path: Path) -> Path | None:
    """Throughput and latency per second, faults and snapshots marked; None when matplotlib is missing."""
    try:
        # lazy: matplotlib takes a second to import and is an optional dependency (the `bench` extra)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # lazy: after choosing the backend that needs no display
    except ImportError:
        return None
    # The drain after the last arrival is shown too: answers that came late are part of the story.
    seconds = max(1, math.ceil(facts.duration), math.ceil(max((r[3] for r in records), default=0.0) - facts.start))
    reads, writes = [0] * seconds, [0] * seconds
    lat: dict[int, list[float]] = defaultdict(list)
    for kind, scheduled, _sent, done, code, *_ in records:
        second = int(done - facts.start)
        if 0 <= second < seconds and code == "ok":
            (reads if kind in READS else writes)[second] += 1
        at = int(scheduled - facts.start)
        if 0 <= at < seconds:
            lat[at].append((done - scheduled) * 1000)
    xs = list(range(seconds))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    top.stackplot(xs, reads, writes, labels=["reads answered/s", "writes answered/s"], step="post", alpha=0.8)
    top.set_ylabel("answers per second")
    top.legend(loc="upper left")
    top.set_title(f"acb bench load: {facts.users} users, {facts.duration:.0f} s")
    for q, style in ((50, "-"), (99, "--")):
        bottom.plot(xs, [percentile(lat[x], q) if lat[x] else float("nan") for x in xs], style,
                    label=f"p{q} by scheduled second")
    bottom.plot(xs, [max(lat[x]) if lat[x] else float("nan") for x in xs], ":", label="max")
    bottom.set_yscale("log")
    bottom.set_ylabel("latency ms (from scheduled time)")
    bottom.set_xlabel("seconds since start")
    for ax in (top, bottom):
        for f in facts.faults:
            ax.axvline(f.at, color="red", linewidth=1.2)
        for s in facts.snapshots:
            ax.axvline(s.at, color="grey", linestyle="--", linewidth=0.8)
    for f in facts.faults:
        top.annotate(f.label, (f.at, top.get_ylim()[1] * 0.95), color="red", fontsize=8, rotation=90, va="top")
    if facts.snapshots:
        bottom.plot([], [], color="grey", linestyle="--", label="snapshot")
    bottom.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
