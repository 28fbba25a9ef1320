"""Benchmark: how many commands a second the replicated ledger accepts, and how fast it answers one.

Usage: ``python -m bench.ledger [--commands 3000] [--replicas 1] [--json]``

One run starts ``--replicas`` ledger processes (SQLite stores) on a private
broker prefix and a temporary ACB_HOME, registers one user, and then
alternates three measurements, three times each, every command an
operator-signed ``Deposit`` of 1 to that user:

* baseline: one client, strictly one command at a time (send, wait for the
  answer, send the next): ``--sequential`` commands, default a tenth of
  ``--commands`` (one at a time is slow, and its latency needs no more);
* pipelined: ``--commands`` commands published without waiting, their answers
  collected on direct reply-to as they come;
* 16 clients: 16 threads, each with its own connection, each one at a time,
  ``--commands`` commands between them.

Envelopes are signed before the clock starts: the figures are the ledger's
(broker, primary, log, store), not the client's signing. A command counts when
its answer arrived; latency is from publish to answer. Medians of the three
runs are reported. Afterwards every answer must have been ``ok`` with a
sequence of its own, and the user's balance must equal the number of deposits:
a lost or doubled command fails the run. Everything started is stopped and the
broker objects and files are removed.

The table goes to stdout (stderr with ``--json``); with ``--json`` the last
stdout line is one JSON object. Its ``p50_ms``/``p99_ms`` are the baseline's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker import commands as c
from broker.admin import AdminApi, amqp_base, read_admin_url, scratch_roles
from broker.client import BrokerClient, pipeline
from broker.envelope import seal
from broker.errors import BrokerError, ReplyTimeout
from broker.replies import parse_reply
from broker.settings import load_environment
from broker.trust import Trust
from ledger.keys import init_system, load_operator_key
from ledger.launch import LaunchError, Replicas, deployment_env
from peer.client import Client

__all__ = ["BenchFailed", "format_table", "main", "run", "summary_json"]

CLIENTS = 16
_ACCOUNT = "bench"
_MODES = ("baseline", "pipelined", "concurrent")
_LABELS = {"baseline": "baseline", "pipelined": "pipelined", "concurrent": f"{CLIENTS} clients"}
_JSON_KEYS = ("baseline_cps", "pipelined_cps", "concurrent_cps", "ratio_pipelined", "ratio_concurrent", "p50_ms",
              "p99_ms", "replicas", "commands")


class BenchFailed(RuntimeError):
    """The ledger lost, doubled or refused a command, or never became ready."""


# ---------------------------------------------------------------------------- the cluster


@dataclass
class _Cluster:
    """Replica processes in a throwaway vhost (its peer and replica accounts) and an ACB_HOME of their own;
    ``close`` leaves nothing behind but the vhost, which the caller removes."""

    roles: Any  # broker.admin.BrokerRoles
    work: Path
    replicas: Replicas

    @property
    def url(self) -> str:
        return str(self.roles.peer_url)

    @property
    def names(self) -> Any:
        return self.roles.names

    @classmethod
    def create(cls, roles: Any) -> _Cluster:
        work = Path(tempfile.mkdtemp(prefix="acb-bench-ledger-"))
        init_system(work)
        env = deployment_env(os.environ, home=work, prefix=roles.names.prefix, peer_url=roles.peer_url,
                             replica_url=roles.replica_url, operator_url=roles.operator_url)
        return cls(roles, work, Replicas(work, env, operator_url=roles.operator_url, names=roles.names))

    def start(self, rid: str) -> None:
        self.replicas.start(rid)

    def wait_ready(self, replicas: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until every replica reports and one of them is primary; return the primary's status."""
        try:
            return self.replicas.wait_ready(replicas, timeout)
        except LaunchError as exc:
            raise BenchFailed(f"{replicas} replica(s) not ready: {exc}") from exc

    def close(self) -> None:
        self.replicas.close()
        shutil.rmtree(self.work, ignore_errors=True)


# ---------------------------------------------------------------------------- checking answers


@dataclass
class _Tally:
    """Every answer of the run: all must be ok, each command with a sequence of its own."""

    sent: int = 0
    seqs: set[int] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, reply: Any) -> None:
        with self.lock:
            if not reply.ok or reply.seq is None:
                self.failures.append(f"{reply.id}: {reply.error or 'no sequence in the answer'}")
            elif reply.seq in self.seqs:
                self.failures.append(f"{reply.id}: sequence {reply.seq} answered twice")
            else:
                self.seqs.add(reply.seq)

    def check(self) -> None:
        if self.failures:
            raise BenchFailed(f"{len(self.failures)} command(s) not applied as sent, e.g. {self.failures[:3]}")


@dataclass
class _Sample:
    seconds: float
    commands: int
    latencies: list[float]  # seconds, publish to answer

    @property
    def cps(self) -> float:
        return self.commands / self.seconds


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def _deposits(key: Any, n: int) -> list[Any]:
    return [seal(c.Deposit(account=_ACCOUNT, amount=1), sender=c.OPERATOR, key=key) for _ in range(n)]


# ---------------------------------------------------------------------------- the three ways to send


def _one_at_a_time(broker: Any, envelopes: list[Any], tally: _Tally, latencies: list[float]) -> None:
    for env in envelopes:
        t0 = time.perf_counter()
        reply = broker.request(env, timeout=120)
        latencies.append(time.perf_counter() - t0)
        tally.answer(reply)


def _baseline(broker: Any, envelopes: list[Any], tally: _Tally) -> _Sample:
    latencies: list[float] = []
    t0 = time.perf_counter()
    _one_at_a_time(broker, envelopes, tally, latencies)
    return _Sample(time.perf_counter() - t0, len(envelopes), latencies)


_WINDOW = 200  # pipelined commands in flight at once


def _pipelined(url: str, names: Any, envelopes: list[Any], tally: _Tally) -> _Sample:
    """Publish every command without waiting; take the answers as they come on direct reply-to."""
    try:
        run = pipeline(url, names, envelopes, window=_WINDOW, timeout=120, name="acb-bench-pipelined")
    except ReplyTimeout as exc:
        raise BenchFailed(str(exc)) from exc
    for answer in run.answers:
        tally.answer(parse_reply(answer.body))
    return _Sample(run.seconds, len(envelopes), [a.answered_at - a.sent_at for a in run.answers])


def _concurrent(brokers: list[Any], envelopes: list[Any], tally: _Tally) -> _Sample:
    """Each client its own thread and connection, one command at a time, all starting together."""
    shares = [envelopes[i::len(brokers)] for i in range(len(brokers))]
    latencies: list[list[float]] = [[] for _ in brokers]
    errors: list[BaseException] = []
    start = threading.Barrier(len(brokers) + 1)

    def client(i: int) -> None:
        start.wait()
        try:
            _one_at_a_time(brokers[i], shares[i], tally, latencies[i])
        except BaseException as exc:  # reported below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,), name=f"bench-client-{i}") for i in range(len(brokers))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise BenchFailed(f"{len(errors)} client thread(s) failed: {errors[0]!r}") from errors[0]
    return _Sample(elapsed, len(envelopes), [x for lat in latencies for x in lat])


# ---------------------------------------------------------------------------- the run


def run(commands: int = 3000, replicas: int = 1, *, sequential: int | None = None, repeats: int = 3,
        url: str | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark and return its summary (see the module docstring); raise BenchFailed on a bad answer."""
    env = load_environment()
    base = url or env.broker_url
    with scratch_roles(AdminApi(read_admin_url(env.home)), prefix="bench", label="bench",
                       amqp=amqp_base(base) if base else None) as roles:
        return _run(roles, commands, replicas, sequential, repeats, say)


def _run(roles: Any, commands: int, replicas: int, sequential: int | None, repeats: int,
         say: Callable[[str], None]) -> dict[str, Any]:
    sequential = sequential or max(commands // 10, 20)
    began = time.monotonic()
    cluster = _Cluster.create(roles)
    url = cluster.url
    brokers: list[Any] = []
    samples: dict[str, list[_Sample]] = {m: [] for m in _MODES}
    tally = _Tally()
    try:
        for i in range(replicas):
            cluster.start(f"r{i + 1}")
        primary = cluster.wait_ready(replicas)
        say(f"{replicas} replica(s) in vhost {roles.vhost}; primary {primary['replica']} "
            f"(pid {primary['pid']})")
        user = Client(BrokerClient(url, cluster.names, trust=Trust.load(cluster.work)), cluster.work)
        brokers.append(user.broker)
        user.register(_ACCOUNT, "bench-password")
        key = load_operator_key(cluster.work)
        single = BrokerClient(url, cluster.names, trust=Trust.load(cluster.work))
        clients = [BrokerClient(url, cluster.names, trust=Trust.load(cluster.work)) for _ in range(CLIENTS)]
        brokers += [single, *clients]
        # Untimed: open every connection and let the primary warm up.
        warm = _deposits(key, CLIENTS + 1 + 200)
        _concurrent([single, *clients], warm[:CLIENTS + 1], tally)
        _pipelined(url, cluster.names, warm[CLIENTS + 1:], tally)
        tally.sent += len(warm)
        for r in range(repeats):
            for mode in _MODES:
                envelopes = _deposits(key, sequential if mode == "baseline" else commands)
                tally.sent += len(envelopes)
                if mode == "baseline":
                    sample = _baseline(single, envelopes, tally)
                elif mode == "pipelined":
                    sample = _pipelined(url, cluster.names, envelopes, tally)
                else:
                    sample = _concurrent(clients, envelopes, tally)
                samples[mode].append(sample)
                say(f"  run {r + 1} {_LABELS[mode]:<11} {sample.commands:6d} commands  {sample.cps:8.0f}/s  "
                    f"p50 {_percentile(sample.latencies, 50) * 1000:6.2f} ms  "
                    f"p99 {_percentile(sample.latencies, 99) * 1000:6.2f} ms")
        tally.check()
        # The reads go to a backup when there is one; min_seq makes it wait for every deposit above.
        user.last_seq = max(tally.seqs)
        balance = user.balance()
        if balance["available"] != tally.sent or len(tally.seqs) != tally.sent:
            raise BenchFailed(f"sent {tally.sent} deposits of 1, got {len(tally.seqs)} distinct answers and a "
                              f"balance of {balance['available']}: commands were lost or doubled")
        say(f"checked: {tally.sent} deposits, {tally.sent} ok answers, balance {balance['available']}")
    finally:
        for b in brokers:
            b.close()
        cluster.close()
    return _summarize(samples, replicas, commands, sequential, repeats, time.monotonic() - began)


def _summarize(samples: dict[str, list[_Sample]], replicas: int, commands: int, sequential: int, repeats: int,
               seconds: float) -> dict[str, Any]:
    rows: dict[str, dict[str, float]] = {}
    for mode, runs in samples.items():
        rows[mode] = {
            "cps": statistics.median(s.cps for s in runs),
            "p50_ms": statistics.median(_percentile(s.latencies, 50) for s in runs) * 1000,
            "p99_ms": statistics.median(_percentile(s.latencies, 99) for s in runs) * 1000,
            "commands": runs[0].commands,
        }
        rows[mode]["ratio"] = rows[mode]["cps"] / rows["baseline"]["cps"]
    return {"rows": rows, "replicas": replicas, "commands": commands, "sequential": sequential,
            "repeats": repeats, "seconds": round(seconds, 1)}


def summary_json(summary: dict[str, Any]) -> dict[str, Any]:
    """The one-line JSON form: throughputs, ratios to the baseline, the baseline's latency."""
    rows = summary["rows"]
    out = {
        "baseline_cps": round(rows["baseline"]["cps"], 1),
        "pipelined_cps": round(rows["pipelined"]["cps"], 1),
        "concurrent_cps": round(rows["concurrent"]["cps"], 1),
        "ratio_pipelined": round(rows["pipelined"]["ratio"], 2),
        "ratio_concurrent": round(rows["concurrent"]["ratio"], 2),
        "p50_ms": round(rows["baseline"]["p50_ms"], 2),
        "p99_ms": round(rows["baseline"]["p99_ms"], 2),
        "replicas": int(summary["replicas"]),
        "commands": int(summary["commands"]),
    }
    assert tuple(out) == _JSON_KEYS
    return out


def format_table(summary: dict[str, Any]) -> str:
    """The human table: one row per way of sending, medians of the runs."""
    head = f"  {'':<11} {'commands':>8} {'commands/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'x baseline':>10}"
    lines = [f"ledger, {summary['replicas']} replica(s), SQLite stores, median of {summary['repeats']} runs", head]
    for mode in _MODES:
        r = summary["rows"][mode]
        lines.append(f"  {_LABELS[mode]:<11} {int(r['commands']):>8} {r['cps']:>11.0f} {r['p50_ms']:>8.2f} "
                     f"{r['p99_ms']:>8.2f} {r['ratio']:>10.2f}")
    lines.append("  (pipelined latency includes waiting behind the rest of the burst)")
    if "seconds" in summary:
        lines.append(f"  total time {summary['seconds']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry: ``[--commands N] [--replicas R] [--sequential N] [--repeats 3] [--json]``."""
    parser = argparse.ArgumentParser(prog="acb bench ledger", description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=3000,
                        help="commands per pipelined and per 16-client run (default 3000)")
    parser.add_argument("--replicas", type=int, default=1, help="ledger replicas to start (default 1; try 3)")
    parser.add_argument("--sequential", type=int, default=None,
                        help="commands per one-at-a-time baseline run (default a tenth of --commands)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--url", default=None, help="RabbitMQ URL (default $ACB_BROKER_URL or localhost)")
    parser.add_argument("--json", action="store_true", help="print the table to stderr and JSON last on stdout")

    args = parser.parse_args(argv)
    if args.commands < CLIENTS or args.replicas < 1 or args.repeats < 1 or (args.sequential or 1) < 1:
        parser.error(f"need --commands >= {CLIENTS}, --replicas >= 1, --repeats >= 1, --sequential >= 1")
    out = sys.stderr if args.json else sys.stdout

    def say(message: str) -> None:
        print(message, file=out, flush=True)

    try:
        summary = run(args.commands, args.replicas, sequential=args.sequential, repeats=args.repeats, url=args.url,
                      say=say)
    except (BenchFailed, BrokerError) as exc:
        print(f"acb bench ledger: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    say("")
    say(format_table(summary))
    if args.json:
        print(json.dumps(summary_json(summary)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
