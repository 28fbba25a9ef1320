"""``acb bench load``: the seed's demonstration, one primary and three backups under U simulated users.

Usage: ``acb bench load --users 1500 --duration 60 --kill-primary-at 30 [--json]``

One run, in a throwaway vhost with ACB's three roles and a run directory of its own:

1. starts four replicas (``r1``..``r4``; SQLite stores, or ``--store postgresql+psycopg://.../x_{replica}``,
   whose ``{replica}`` becomes a database of this run, dropped afterwards);
2. registers U users and a few shops, credits them and publishes a catalog (every user owns one
   document, every shop one), all pipelined; the deposits are timed: that is the ledger's rate
   (``ledger_cps``);
3. measures the bare loop (:mod:`bench.load_bare`): the ``ceiling_cps`` the ledger is compared with;
4. runs the users open loop from ``--generators`` processes (:mod:`bench.load_gen`, the mix of
   :mod:`bench.load_mix`) for ``--duration`` seconds, and lets them finish what they sent;
   meanwhile it reads the replicas' status every second (lag, roles) and their RSS, prints a
   progress line every five seconds, and strikes: ``--kill-primary-at T`` (SIGKILL, then the old
   primary is started again and rejoins as a backup), ``--cut-backup-at T`` (a backup's network
   link is taken down for ``--cut-seconds``; needs root and ``ip netns``, skipped otherwise);
5. waits for the replicas to agree, stops them and checks their stores (:mod:`bench.load_check`);
6. prints the table per request type, writes the plot (``--plot``, default ``load.png`` in the run
   directory) and, with ``--json``, a last line of JSON (:mod:`bench.load_report`).

``--ramp`` repeats the run with more users (times ``--ramp-factor``) until p99 passes 50 ms or
anything is lost, first without a kill and then with one (at ``--kill-primary-at``, else half the
duration), and reports the largest U held each way.

``--transfers`` (real transfers for a sample of purchases) is not built yet: purchases open, escrow
and settle on the ledger without moving a file. The flag is accepted and says so.

The exit code is 0 when nothing acknowledged was lost or doubled, money was conserved and the
replicas are identical; 1 otherwise. The run directory keeps the plot and ``summary.json``; the
stores and logs are removed unless ``--keep``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.load_bare import bare_loop
from bench.load_check import CheckResult, check_stores, describe
from bench.load_gen import GenSpec, Record, run_generator
from bench.load_mix import DEPOSIT, SHOP_PRICE, Account, Population, document, shop_count
from bench.load_report import (
    Fault,
    RunFacts,
    failover_pause,
    format_table,
    longest_stall,
    percentile,
    plot,
    summary_json,
)
from broker import commands as c
from broker.admin import AdminApi, Limits, amqp_base, read_admin_url, scratch_roles
from broker.client import BrokerClient, pipeline
from broker.envelope import Envelope, seal
from broker.errors import AcbError
from broker.replies import parse_reply
from broker.settings import load_environment
from broker.trust import Trust
from console.netns import NetnsLink, netns_available
from ledger.keys import init_system, load_operator_key
from ledger.launch import ACB_COMMAND, LaunchError, Replicas, deployment_env
from ledger.store import SNAPSHOTS, Store
from peer.client import Client
from peer.identity import create_identity

__all__ = ["LoadFailed", "LoadOptions", "main", "run", "ramp"]

REPLICAS = 4
P99_TARGET_MS = 50.0
Say = Callable[[str], None]


class LoadFailed(AcbError):
    """The run could not be set up or carried out (not: the checks found something; that is reported)."""


@dataclass(frozen=True)
class LoadOptions:
    """One run's settings (the command's flags)."""

    users: int = 1500
    duration: float = 60.0
    mean_interval: float = 10.0
    kill_primary_at: float | None = None
    cut_backup_at: float | None = None
    cut_seconds: float = 5.0
    store: str | None = None  # a template with {replica}; None: SQLite in the run directory
    generators: int = 3
    ledger_commands: int = 3000  # at least this many deposits are timed for the ledger's rate
    bare_commands: int = 3000
    plot: Path | None = None
    run_dir: Path | None = None
    keep: bool = False
    url: str | None = None
    seed: int = 1
    transfers: bool = False


@dataclass
class _Watch:
    """What the monitor thread saw: largest lag and RSS per replica, epochs, the latest status."""

    lag: dict[str, int] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    epochs: set[int] = field(default_factory=set)
    primaries: list[tuple[float, str, int]] = field(default_factory=list)  # (monotonic, replica, epoch) changes
    latest: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _monitor(replicas: Replicas, watch: _Watch) -> None:
    while not watch.stop.is_set():
        for rid, proc in list(replicas.procs.items()):
            mb = _rss_mb(proc.pid)
            if mb is not None:
                watch.rss_mb[rid] = max(watch.rss_mb.get(rid, 0.0), mb)
        try:
            rows = replicas.status(1.0)
        except AcbError:
            continue
        watch.latest = rows
        primary = replicas.primary(rows)
        if primary is not None and (not watch.primaries or watch.primaries[-1][1:] != (primary["replica"],
                                                                                      primary["epoch"])):
            watch.primaries.append((time.monotonic(), primary["replica"], int(primary["epoch"])))
        for r in rows:
            watch.lag[r["replica"]] = max(watch.lag.get(r["replica"], 0), int(r.get("lag", 0)))
            watch.epochs.add(int(r["epoch"]))


# ---------------------------------------------------------------------------- setting up


def _population(users: int) -> tuple[Population, dict[str, Any]]:
    """Fresh identities for every user and shop; their registrations by login."""
    regs: dict[str, Any] = {}

    def account(login: str, doc_id: str) -> Account:
        ident = create_identity(login)
        regs[login] = seal(c.RegisterUser(login=login, sign_key=ident.sign_public.hex(),
                                          box_key=ident.box_public.hex(), cert_pem=ident.cert_pem.decode(),
                                          keystore="bench"),  # nobody logs in elsewhere: no password wrapping
                           sender=login, key=ident.sign_key)
        return Account(login, Account.raw(ident.sign_key), doc_id)

    people = tuple(account(f"u{i}", f"d-u{i}") for i in range(users))
    shops = tuple(account(f"shop{i}", f"shop-{i}") for i in range(shop_count(users)))
    return Population(people, shops), regs


def _pipelined(roles: Any, envelopes: list[Envelope], what: str) -> float:
    """Send ``envelopes`` pipelined until each is applied (``busy`` answers are sent again); seconds taken."""
    pending, seconds = envelopes, 0.0
    for _ in range(20):
        try:
            done = pipeline(roles.peer_url, roles.names, pending, window=200, timeout=120, name="acb-bench-load-setup")
        except AcbError as exc:
            raise LoadFailed(f"{what}: {exc}") from exc
        seconds += done.seconds
        by_id = {e.id: e for e in pending}
        again = []
        for answer in done.answers:
            reply = parse_reply(answer.body)
            if reply.ok:
                continue
            if (reply.error or {}).get("code") == "busy":
                again.append(by_id[answer.id])
            else:
                raise LoadFailed(f"{what}: {answer.id} refused: {reply.error}")
        if not again:
            return seconds
        pending = again
    raise LoadFailed(f"{what}: the ledger stayed busy")


def _set_up(roles: Any, home: Path, pop: Population, regs: dict[str, Any], opts: LoadOptions, say: Say) -> float:
    """Register, credit and publish everything; return the ledger's rate on the timed deposits."""
    op_key = load_operator_key(home)
    rng = random.Random(opts.seed)
    t0 = time.monotonic()
    _pipelined(roles, list(regs.values()), "registering")
    accounts = list(pop.users)
    deposits = [seal(c.Deposit(account=a.login, amount=DEPOSIT), sender=c.OPERATOR, key=op_key) for a in accounts]
    extra = max(0, opts.ledger_commands - len(deposits))
    deposits += [seal(c.Deposit(account=accounts[i % len(accounts)].login, amount=1), sender=c.OPERATOR, key=op_key)
                 for i in range(extra)]
    seconds = _pipelined(roles, deposits, "crediting")
    cps = len(deposits) / seconds if seconds else 0.0
    docs = [seal(document(a.login, a.doc_id, rng.randint(50, 500), rng), sender=a.login, key=a.sign_key())
            for a in accounts]
    docs += [seal(document(s.login, s.doc_id, SHOP_PRICE, rng), sender=s.login, key=s.sign_key()) for s in pop.shops]
    _pipelined(roles, docs, "publishing")
    say(f"set up {len(regs)} accounts, {len(deposits)} deposits ({cps:.0f}/s pipelined), {len(docs)} documents "
        f"in {time.monotonic() - t0:.1f} s")
    return cps


# ---------------------------------------------------------------------------- stores


def _store_urls(template: str | None, tag: str) -> dict[str, str | None]:
    if template is None:
        return {f"r{i + 1}": None for i in range(REPLICAS)}
    if "{replica}" not in template:
        raise LoadFailed("--store needs {replica} in it, so that every replica gets a database of its own")
    return {f"r{i + 1}": template.replace("{replica}", f"bench_{tag}_r{i + 1}") for i in range(REPLICAS)}


def _drop_databases(urls: list[str]) -> None:
    for url in urls:
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() != "postgresql" or not parsed.database:
            continue
        admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        except sa.exc.SQLAlchemyError:
            pass  # reported by nobody: a leftover database of a benchmark is harmless and named bench_*
        finally:
            admin.dispose()


def _snapshots(stores: dict[str, str], start_wall: float, duration: float) -> list[Fault]:
    """Snapshots the stores recorded during the run, as marks for the plot (none if they are not kept so)."""
    marks = []
    for rid, url in stores.items():
        try:
            store = Store(url, create=False)
            try:
                with store.engine.connect() as conn:
                    rows = conn.execute(sa.select(SNAPSHOTS.c.seq, SNAPSHOTS.c.created_ms)).all()
            finally:
                store.close()
        except (AcbError, sa.exc.SQLAlchemyError):
            continue
        for seq, created in rows:
            at = created / 1000 - start_wall
            if 0 <= at <= duration + 60:
                marks.append(Fault(at, f"{rid} snapshot @{seq}"))
    return sorted(marks, key=lambda f: f.at)


# ---------------------------------------------------------------------------- the run


def run(opts: LoadOptions, say: Say = print) -> tuple[dict[str, Any], str, CheckResult]:
    """One run (see the module docstring): its JSON summary, its table and its checks."""
    env = load_environment()
    base = opts.url or env.broker_url
    # A broker under this load can take many seconds to answer its management API (deleting a vhost of quorum
    # queues and streams most of all): more patience than an administrator's command needs.
    with scratch_roles(AdminApi(read_admin_url(env.home), timeout=120.0), prefix="load", label="load",
                       amqp=amqp_base(base) if base else None) as roles:
        return _run(roles, opts, say)


def _run(roles: Any, opts: LoadOptions, say: Say) -> tuple[dict[str, Any], str, CheckResult]:
    work = opts.run_dir or Path(tempfile.mkdtemp(prefix="acb-bench-load-"))
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    init_system(home)
    tag = uuid.uuid4().hex[:8]
    denv = deployment_env(os.environ, home=home, prefix=roles.names.prefix, peer_url=roles.peer_url,
                          replica_url=roles.replica_url, operator_url=roles.operator_url)
    replicas = Replicas(home, denv, operator_url=roles.operator_url, names=roles.names)
    notes: list[str] = []
    links: dict[str, NetnsLink] = {}
    if opts.cut_backup_at is not None and not netns_available():
        notes.append("backup cut skipped: it needs root and `ip netns`")
    urls = _store_urls(opts.store, tag)
    if opts.transfers:
        notes.append("--transfers: not built yet (TODO); purchases open, escrow and settle without moving a file")
    watch = _Watch()
    procs: list[Any] = []
    try:
        for i, (rid, url) in enumerate(urls.items()):
            extra: dict[str, Any] = {}
            if opts.cut_backup_at is not None and netns_available():
                links[rid] = NetnsLink.create(f"acbl{os.getpid() % 10000}x{i}", index=200 + i)
                extra = {"env": {v: links[rid].broker_url(denv[v]) for v in ("ACB_BROKER_URL",
                                                                             "ACB_REPLICA_BROKER_URL")},
                         "wrap": ("ip", "netns", "exec", links[rid].ns)}
            replicas.start(rid, store=url, **extra)
        say(f"{REPLICAS} replicas starting in vhost {roles.vhost} (run directory {work})")
        try:
            primary = replicas.wait_ready(REPLICAS, 120)
        except LaunchError as exc:
            raise LoadFailed(str(exc)) from exc
        say(f"primary {primary['replica']}; making {opts.users} users")
        pop, regs = _population(opts.users)
        ledger_cps = _set_up(roles, home, pop, regs, opts, say)
        bare = bare_loop(roles.admin_url, work, load_operator_key(home), commands=opts.bare_commands)
        say(f"bare loop: {bare.commands} commands in {bare.seconds:.2f} s = {bare.cps:.0f}/s")
        info = Client(BrokerClient(roles.peer_url, roles.names, trust=Trust.load(home)), home)
        box = bytes.fromhex(info.ledger_info()["ledger_box_key"])
        info.broker.close()
        threading.Thread(target=_monitor, args=(replicas, watch), name="load-monitor", daemon=True).start()
        records, facts = _drive(roles, home, replicas, links, pop, box, opts, watch, say, procs)
        facts.ceiling_cps, facts.ledger_cps, facts.notes = bare.cps, ledger_cps, notes + facts.notes
        watch.stop.set()
        try:
            replicas.wait_caught_up(REPLICAS, 120, check=False)
        except AcbError as exc:  # the broker may fail to answer too: the stores are checked all the same
            notes.append(f"replicas did not reach one sequence: {str(exc)[:200]}")
        replicas.stop_all()
        stores = {rid: replicas.store(rid) for rid in replicas.ids}
        facts.snapshots = _snapshots(stores, facts.start_wall, facts.duration)
        acked = [r[5] for r in records if r[5]]
        (work / "acknowledged.txt").write_text("\n".join(acked) + "\n")
        # Every request as (kind, scheduled, sent, answered, code, command_id, heard), times from the start.
        (work / "records.json").write_text(json.dumps([[r[0], *(round(t - facts.start, 4) for t in r[1:4]), r[4],
                                                        r[5], round(r[6] - facts.start, 4)] for r in records]))
        check = check_stores(stores, acked, home, command=ACB_COMMAND, env=denv)
        table = format_table(records, facts, check.lines())
        summary = summary_json(records, facts, describe(check))
        target = opts.plot or work / "load.png"
        drawn = plot(records, facts, target)
        summary["plot"] = str(drawn) if drawn else None
        summary["run_dir"] = str(work)
        if drawn is None:
            table += "\nno plot: matplotlib is not installed (pip install 'acb[bench]')"
        else:
            table += f"\nplot: {drawn}"
        (work / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary, table, check
    finally:
        watch.stop.set()
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(5)
        replicas.close()
        for link in links.values():
            link.destroy()
        if not opts.keep:
            _drop_databases([u for u in urls.values() if u])
            shutil.rmtree(home, ignore_errors=True)
            (work / "bare.db").unlink(missing_ok=True)
            for suffix in ("-wal", "-shm"):
                (work / f"bare.db{suffix}").unlink(missing_ok=True)


def _drive(roles: Any, home: Path, replicas: Replicas, links: dict[str, NetnsLink], pop: Population, box: bytes,
           opts: LoadOptions, watch: _Watch, say: Say, procs: list[Any]) -> tuple[list[Record], RunFacts]:
    """Start the generators, strike at the given times, collect every record."""
    ctx = multiprocessing.get_context("spawn")  # the parent holds threads and connections: never fork it
    out: Any = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    n = max(1, min(opts.generators, opts.users))
    # Under overload a sender is held for as long as its client backs off and tries again (up to its patience),
    # so the pool must be large enough that the generator is not what binds: as many as the peer account's
    # connections allow (Limits.peer_connections), keeping some for the set-up and the checks.
    most = max(128, (Limits().peer_connections - 100) // n)
    for i in range(n):
        spec = GenSpec(index=i, url=roles.peer_url, prefix=roles.names.prefix, home=str(home),
                       users=pop.share(i, n), shops=pop.shops, ledger_box_key=box, duration=opts.duration,
                       mean_interval=opts.mean_interval, seed=opts.seed * 1000 + i, max_senders=most)
        p = ctx.Process(target=run_generator, args=(spec, out, go, start_at), name=f"acb-load-gen-{i}", daemon=True)
        p.start()
        procs.append(p)
    ready = 0
    records: list[Record] = []
    deadline = time.monotonic() + 120
    while ready < n:
        try:
            msg = out.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty as exc:
            raise LoadFailed(f"only {ready} of {n} generators got ready in 120 s") from exc
        if msg[0] == "ready":
            ready += 1
    start = time.monotonic() + 0.5
    start_at.value = start
    facts = RunFacts(users=opts.users, duration=opts.duration, start=start, generators=n, generator_cpu_s=0.0,
                   senders=0, ceiling_cps=0.0, ledger_cps=0.0, start_wall=time.time() + 0.5)
    go.set()
    say(f"{opts.users} users from {n} generator processes, a request every {opts.mean_interval:g} s each on "
        f"average, for {opts.duration:g} s")
    strikes = []
    if opts.kill_primary_at is not None:
        strikes.append(threading.Thread(target=_kill_primary, args=(replicas, start, opts.kill_primary_at, facts, say),
                                        name="load-kill", daemon=True))
    if opts.cut_backup_at is not None and links:
        strikes.append(threading.Thread(target=_cut_backup, args=(replicas, links, start, opts, facts, say),
                                        name="load-cut", daemon=True))
    for t in strikes:
        t.start()
    done, problems = 0, []
    window: list[Record] = []
    next_line = start + 5
    hard_end = start + opts.duration + 180
    while done < n:
        try:
            msg = out.get(timeout=0.5)
        except queue.Empty:
            msg = None
        if msg is not None and msg[0] == "records":
            records.extend(msg[2])
            window.extend(msg[2])
        elif msg is not None and msg[0] == "done":
            done += 1
            facts.generator_cpu_s += msg[2]
            facts.senders += msg[3]
            if msg[4]:
                problems.append(msg[4])
        now = time.monotonic()
        if now >= next_line:
            _progress(now - start, records, window, watch, say)
            window, next_line = [], now + 5
        if now > hard_end:
            raise LoadFailed(f"the generators did not finish within {opts.duration + 180:.0f} s")
    for t in strikes:
        t.join(60)
    for p in procs:
        p.join(10)
    facts.notes.extend(problems)
    kill = next((f for f in facts.faults if f.label.startswith("kill")), None)
    if kill is not None:
        facts.failover_pause_s = failover_pause(records, start + kill.at)
    facts.lag, facts.rss_mb = dict(sorted(watch.lag.items())), dict(sorted(watch.rss_mb.items()))
    facts.stall_s = longest_stall(records, start, start + opts.duration)
    changes = len(watch.epochs) - 1
    kills = sum(f.label.startswith("kill") for f in facts.faults)
    if changes > kills:
        facts.notes.append(f"{changes - kills} change(s) of primary without a kill")
    seen = [f.at for f in facts.faults]
    for at, rid, epoch in watch.primaries[1:]:
        # A takeover the kill thread reported is marked already; any other one is news.
        if all(abs(at - start - s) > 3.0 for s in seen):
            facts.faults.append(Fault(at - start, f"{rid} primary (epoch {epoch}), seen by status"))
    facts.faults.sort(key=lambda f: f.at)
    say(f"load done: {len(records)} requests in {time.monotonic() - start:.0f} s; checking the stores")
    return records, facts


def _progress(elapsed: float, records: list[Record], window: list[Record], watch: _Watch, say: Say) -> None:
    lat = [(r[3] - r[1]) * 1000 for r in window]
    errs = sum(r[4] != "ok" for r in records)
    rows = watch.latest
    primary = next((r["replica"] for r in rows if r["role"] == "primary"), "?")
    head = max((r["seq"] for r in rows), default=0)
    say(f"  {elapsed:5.0f} s  {len(records):7d} answered  {len(window) / 5:6.0f}/s  p50 {percentile(lat, 50):6.1f} ms"
        f"  p99 {percentile(lat, 99):7.1f} ms  errors {errs}  primary {primary}  seq {head}  "
        f"lag {max((int(r.get('lag', 0)) for r in rows), default=0)}")


def _at(start: float, t: float) -> None:
    wait = start + t - time.monotonic()
    if wait > 0:
        time.sleep(wait)  # a fault is due at a fixed time of the run


def _kill_primary(replicas: Replicas, start: float, at: float, facts: RunFacts, say: Say) -> None:
    # Who is primary is read just before, so that the kill itself falls on the second asked for.
    _at(start, max(0.0, at - 1.5))
    try:
        old = replicas.primary(replicas.status(1.0))
        _at(start, at)
        if old is None:
            facts.notes.append("kill: no primary visible at the time; nothing killed")
            return
        struck = time.monotonic()
        replicas.kill(old["replica"])
        facts.faults.append(Fault(struck - start, f"kill primary {old['replica']}"))
        say(f"  killed primary {old['replica']} at {struck - start:.1f} s")
        new = replicas.wait_primary(30, other_than=old["replica"], after_epoch=old["epoch"], wait=0.3, check=False)
        seen = time.monotonic()
        facts.takeover_s = seen - struck
        facts.faults.append(Fault(seen - start, f"{new['replica']} primary"))
        say(f"  {new['replica']} is primary ({(seen - struck) * 1000:.0f} ms after the kill, by status); "
            f"{old['replica']} restarts as a backup")
        replicas.restart(old["replica"])
    except AcbError as exc:
        facts.notes.append(f"kill: {exc}")


def _cut_backup(replicas: Replicas, links: dict[str, NetnsLink], start: float, opts: LoadOptions, facts: RunFacts,
                say: Say) -> None:
    assert opts.cut_backup_at is not None
    _at(start, opts.cut_backup_at)
    try:
        rows = replicas.status(1.0)
        backup = next((r["replica"] for r in rows if r["role"] != "primary" and r["replica"] in links), None)
        if backup is None:
            facts.notes.append("cut: no backup visible at the time; nothing cut")
            return
        links[backup].cut()
        facts.faults.append(Fault(time.monotonic() - start, f"cut backup {backup}"))
        say(f"  cut backup {backup}'s link for {opts.cut_seconds:g} s")
        _at(time.monotonic(), opts.cut_seconds)
        links[backup].restore()
        facts.faults.append(Fault(time.monotonic() - start, f"restore {backup}"))
    except AcbError as exc:
        facts.notes.append(f"cut: {exc}")


# ---------------------------------------------------------------------------- ramp


def _held(summary: dict[str, Any]) -> bool:
    return summary["p99_ms"] <= P99_TARGET_MS and summary["lost"] == 0 and summary["duplicated"] == 0


def ramp(opts: LoadOptions, factor: float, most: int, say: Say) -> dict[str, Any]:
    """Raise the users until p99 passes 50 ms or anything is lost, without a kill and then with one."""
    out: dict[str, Any] = {"steps": []}
    kill_at = opts.kill_primary_at if opts.kill_primary_at is not None else opts.duration / 2
    last: dict[str, Any] = {}
    for label, at in (("held_users", None), ("held_users_with_kill", kill_at)):
        users, held = opts.users, 0
        while users <= most:
            step = replace(opts, users=users, kill_primary_at=at, run_dir=None)
            say(f"ramp: {users} users{' with a primary kill' if at is not None else ''}")
            summary, _table, _check = run(step, say)
            ok = _held(summary)
            out["steps"].append({"users": users, "kill": at is not None, "p99_ms": summary["p99_ms"],
                                 "lost": summary["lost"], "rps": summary["rps"], "held": ok})
            say(f"ramp: {users} users: p99 {summary['p99_ms']:.1f} ms, lost {summary['lost']}, "
                f"{'held' if ok else 'NOT held'}")
            if not ok:
                break
            held, last = users, summary
            users = max(users + 1, int(users * factor))
        out[label] = held
    return {**last, **out}


# ---------------------------------------------------------------------------- command line


def add_arguments(parser: Any) -> None:
    """The flags of ``acb bench load`` (shared by ``python -m bench.load``)."""
    parser.add_argument("--users", type=int, default=1500, help="simulated users (default 1500)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--mean-interval", type=float, default=10.0,
                        help="mean seconds between one user's requests (default 10)")
    parser.add_argument("--kill-primary-at", type=float, default=None, metavar="T",
                        help="SIGKILL the primary T seconds into the load (it restarts as a backup)")
    parser.add_argument("--cut-backup-at", type=float, default=None, metavar="T",
                        help="take a backup's network link down T seconds in (root and ip netns)")
    parser.add_argument("--cut-seconds", type=float, default=5.0, help="how long the cut lasts (default 5)")
    parser.add_argument("--store", default=None,
                        help="store URL template with {replica} (default SQLite files in the run directory)")
    parser.add_argument("--generators", type=int, default=3, help="generator processes (default 3)")
    parser.add_argument("--ramp", action="store_true", help="raise --users until p99 > 50 ms or a loss")
    parser.add_argument("--ramp-factor", type=float, default=1.5)
    parser.add_argument("--ramp-max", type=int, default=50_000)
    parser.add_argument("--transfers", action="store_true", help="real transfers for a sample (not built yet)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG to write (default load.png in the run dir)")
    parser.add_argument("--run-dir", type=Path, default=None, help="directory of the run (default a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the stores and logs in the run directory")
    parser.add_argument("--seed", type=int, default=1)


def options(args: argparse.Namespace, url: str | None = None) -> LoadOptions:
    """The options of parsed flags."""
    return LoadOptions(users=args.users, duration=args.duration, mean_interval=args.mean_interval,
                       kill_primary_at=args.kill_primary_at, cut_backup_at=args.cut_backup_at,
                       cut_seconds=args.cut_seconds, store=args.store, generators=args.generators, plot=args.plot,
                       run_dir=args.run_dir, keep=args.keep, url=url, seed=args.seed, transfers=args.transfers)


def execute(args: argparse.Namespace, url: str | None = None) -> int:
    """Run what the flags say; print the table (stderr with ``--json``) and the JSON line last."""
    out = sys.stderr if args.json else sys.stdout

    def say(message: str) -> None:
        print(message, file=out, flush=True)

    if args.users < 1 or args.duration <= 0 or args.mean_interval <= 0 or args.generators < 1:
        print("acb bench load: need --users >= 1, --duration > 0, --mean-interval > 0, --generators >= 1",
              file=sys.stderr)
        return 2
    opts = options(args, url)
    try:
        if args.ramp:
            summary = ramp(opts, args.ramp_factor, args.ramp_max, say)
            ok = summary.get("held_users", 0) > 0
            say(f"largest U held: {summary.get('held_users')} without a kill, "
                f"{summary.get('held_users_with_kill')} with a primary kill")
        else:
            summary, table, check = run(opts, say)
            ok = check.ok
            say("")
            say(table)
    except AcbError as exc:
        print(f"acb bench load: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.load [flags] [--json] [--url URL]``."""
    parser = argparse.ArgumentParser(prog="acb bench load", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--url", default=None, help="RabbitMQ URL (default $ACB_BROKER_URL or localhost)")
    parser.add_argument("--json", action="store_true", help="print the table to stderr and JSON last on stdout")
    args = parser.parse_args(argv)
    return execute(args, args.url)


if __name__ == "__main__":
    sys.exit(main())
