"""``acb drill failover``: the operator's chaos drill.

Starts N ledger replicas as processes, runs a stream of purchases (open,
escrow, settle) from several clients, and in each round strikes the primary:
``kill`` (SIGKILL, then restart it so it rejoins as a backup), ``pause``
(SIGSTOP until another replica took over, then SIGCONT: it must find out it
was deposed) or ``cut`` (the replica runs in its own network namespace and its
link is taken down, then brought back). Then it lets the system settle,
stops everything and checks every replica's store with the audit replay:

- lost: commands a client was told succeeded that are not in the log;
- duplicated: commands whose effect is in the log twice;
- money_conserved: every store's audit finds money conserved;
- replicas_identical: every store reaches the same sequence and state hash.

Unavailability of a round is the longest any client waited for an answer
from the moment of the strike.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker import commands as c
from broker.admin import AdminApi, amqp_base, read_admin_url, scratch_roles
from broker.client import BrokerClient
from broker.codec import b64e
from broker.content import key_commitment
from broker.errors import BrokerError
from broker.sealing import escrow_info, seal_to
from broker.settings import load_environment
from broker.topology import Names
from broker.trust import Trust
from console.netns import NetnsLink, netns_available
from ledger.audit import Invariant, audit_store
from ledger.keys import init_system, load_operator_key
from ledger.launch import ACB_COMMAND, LaunchError, Replicas, deployment_env
from peer.client import Client

__all__ = ["drill", "main"]

FAULTS = ("kill", "pause", "cut", "broker")
DEFAULT_FAULTS = ("kill", "pause", "cut")


def _start(procs: Replicas, rid: str, link: NetnsLink | None) -> None:
    """Start a replica; with a link, inside the link's network namespace, reaching the broker through it."""
    env: dict[str, str] = {}
    wrap: tuple[str, ...] = ()
    if link is not None:
        env = {var: link.broker_url(procs.env[var]) for var in ("ACB_BROKER_URL", "ACB_REPLICA_BROKER_URL")}
        wrap = ("ip", "netns", "exec", link.ns)
    procs.start(rid, "--hold-ttl", "600", env=env, wrap=wrap)


@dataclass
class _Load:
    """Purchases from several clients; records every acknowledged command and every wait."""

    acked: dict[str, str] = field(default_factory=dict)  # command id -> kind
    waits: list[tuple[float, float]] = field(default_factory=list)  # (sent at, answered at) monotonic
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    in_flight: dict[int, float] = field(default_factory=dict)  # thread -> sent at


def _send(load: _Load, client: Any, payload: Any, sender: str, key: Any) -> bool:
    cid = uuid.uuid4().hex
    me = threading.get_ident()
    sent = time.monotonic()
    with load.lock:
        load.in_flight[me] = sent
    try:
        client.send(payload, sender=sender, key=key, command_id=cid, timeout=120)
    except BrokerError as exc:
        with load.lock:
            load.errors.append(f"{payload.type}: {exc}")
        return False
    finally:
        with load.lock:
            load.in_flight.pop(me, None)
    done = time.monotonic()
    with load.lock:
        load.acked[cid] = payload.type
        load.waits.append((sent, done))
    return True


def _buyer(load: _Load, url: str, names: Names, home: Path, consumer: Any, provider: Any, doc_id: str,
           price: int) -> None:
    buyer = Client(BrokerClient(url, names, trust=Trust.load(home)), home, consumer)
    seller = Client(BrokerClient(url, names, trust=Trust.load(home)), home, provider)
    ledger_key = bytes.fromhex(buyer.ledger_info()["ledger_box_key"])
    try:
        while not load.stop.is_set():
            sale_id = f"d-{uuid.uuid4().hex[:16]}"
            if not _send(load, buyer, c.OpenSale(sale_id=sale_id, doc_id=doc_id, price=price), consumer.login,
                         consumer.sign_key):
                continue
            k = os.urandom(32)
            sealed = b64e(seal_to(ledger_key, k, escrow_info(sale_id)))
            if not _send(load, seller, c.EscrowKey(sale_id=sale_id, sealed_key=sealed,
                                                   key_commitment=key_commitment(sale_id, k), doc_id=doc_id,
                                                   merkle_root="0" * 64),
                         provider.login, provider.sign_key):
                continue
            _send(load, buyer, c.SettleSale(sale_id=sale_id), consumer.login, consumer.sign_key)
    finally:
        buyer.broker.close()
        seller.broker.close()


def _primary(procs: Replicas, wait: float = 1.5) -> tuple[str | None, int]:
    rows = procs.status(wait)
    best = procs.primary(rows)
    if best is None:
        return None, max((r["epoch"] for r in rows), default=0)
    return best["replica"], best["epoch"]


def _await_new_primary(procs: Replicas, old: str, epoch: int, timeout: float) -> str | None:
    # A replica the drill struck may be dead or frozen on purpose: waiting does not fail on it (check=False).
    try:
        return str(procs.wait_primary(timeout, other_than=old or None, after_epoch=epoch, wait=1.1,
                                      check=False)["replica"])
    except LaunchError:
        return None


def drill(replicas: int = 3, rounds: int = 5, *, clients: int = 4, faults: tuple[str, ...] = DEFAULT_FAULTS,
          round_seconds: float = 2.0, url: str | None = None, say: Any = print, keep: bool = False,
          home: Path | None = None) -> dict[str, Any]:
    """Run the drill in a throwaway vhost with ACB's roles and return its report (see the module docstring).

    ``url`` says where the broker is (its user and vhost are not used); ``home`` holds the broker
    administrator's URL that `.ci/setup.sh` wrote (default ``ACB_HOME`` or ``~/.acb``).
    """
    home = home or load_environment().home
    api = AdminApi(read_admin_url(home))
    with scratch_roles(api, prefix="drill", label="drill", amqp=amqp_base(url) if url else None, keep=keep) as roles:
        return _drill(roles, replicas, rounds, clients=clients, faults=faults, round_seconds=round_seconds, say=say,
                      keep=keep)


def _drill(roles: Any, replicas: int, rounds: int, *, clients: int, faults: tuple[str, ...], round_seconds: float,
           say: Any, keep: bool) -> dict[str, Any]:
    url, names = roles.peer_url, roles.names
    if "cut" in faults and not netns_available():
        say("network cuts need root and `ip netns`; running kill and pause rounds only")
        faults = tuple(f for f in faults if f != "cut") or ("kill",)
    work = Path(tempfile.mkdtemp(prefix="acb-drill-"))
    init_system(work)
    env = deployment_env(os.environ, home=work, prefix=names.prefix, peer_url=url, replica_url=roles.replica_url,
                         operator_url=roles.operator_url)
    procs = Replicas(work, env, operator_url=roles.operator_url, names=names)
    links: dict[str, NetnsLink] = {}
    load = _Load()
    threads: list[threading.Thread] = []
    outcome: dict[str, Any] = {}
    try:
        for i in range(replicas):
            rid = f"r{i + 1}"
            if "cut" in faults:
                links[rid] = NetnsLink.create(f"acbd{os.getpid() % 10000}x{i}", index=i)
            _start(procs, rid, links.get(rid))
        say(f"started {replicas} replicas on prefix {names.prefix} (logs in {work})")
        # Slow starts (a namespace each, a busy machine) would outlast a client's patience: wait by status.
        procs.wait_ready(replicas, 120)
        admin = Client(BrokerClient(url, names, trust=Trust.load(work)), work)
        admin.ledger_info()
        op_key = load_operator_key(work)
        seller = Client(BrokerClient(url, names, trust=Trust.load(work)), work)
        provider = seller.register("seller", "seller-password")
        seller.send(c.PublishDocument(doc_id="drill-doc", title="drill document", topic="drill", price=100, size=1,
                                      sha256="0" * 64, merkle_root="0" * 64, segment_size=1 << 20,
                                      endpoint="127.0.0.1:9"))
        seller.broker.close()
        consumers = []
        for i in range(clients):
            cl = Client(BrokerClient(url, names, trust=Trust.load(work)), work)
            cl.register(f"buyer{i}", "buyer-password")
            admin.send(c.Deposit(account=f"buyer{i}", amount=10_000_000), sender=c.OPERATOR, key=op_key)
            consumers.append(cl.identity)
            cl.broker.close()
        admin.broker.close()
        say(f"{clients} buyers registered and credited; purchases start")
        for ident in consumers:
            t = threading.Thread(target=_buyer, args=(load, url, names, work, ident, provider, "drill-doc", 100),
                                 daemon=True)
            t.start()
            threads.append(t)
        round_reports: list[dict[str, Any]] = []
        for n in range(rounds):
            time.sleep(round_seconds)
            fault = faults[n % len(faults)]
            old, epoch = _primary(procs)
            if old is None:
                say(f"round {n + 1}: no primary visible; waiting")
                old = _await_new_primary(procs, "", 0, 15)
                epoch = 0
                if old is None:
                    raise RuntimeError("no primary emerged")
            strike = time.monotonic()
            if fault == "kill":
                procs.kill(old)
            elif fault == "pause":
                procs.pause(old)
            elif fault == "broker":
                # The whole broker goes away and comes back: every connection breaks at once.
                subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
                time.sleep(1.0)
                subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
                subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True, timeout=120)
            else:
                links[old].cut()
            new = (_await_new_primary(procs, "", epoch, 60) if fault == "broker"
                   else _await_new_primary(procs, old, epoch, 30))
            took = time.monotonic() - strike
            if fault == "kill":
                procs.restart(old)  # as it was started: it rejoins as a backup
            elif fault == "pause":
                procs.resume(old)
            elif fault == "broker":
                pass
            else:
                links[old].restore()
            time.sleep(1.0)
            with load.lock:
                waits = [done - sent for sent, done in load.waits if done >= strike]
                stuck = [time.monotonic() - sent for sent in load.in_flight.values() if sent <= strike]
            worst = max(waits + stuck + [0.0])
            round_reports.append({"round": n + 1, "fault": fault, "old": old, "new": new,
                                  "takeover_s": round(took, 2), "unavailable_ms": int(worst * 1000)})
            say(f"round {n + 1}: {fault} of primary {old}; {new} took over in {took:.2f} s (seen by status); "
                f"longest client wait {worst * 1000:.0f} ms")
        load.stop.set()
        for t in threads:
            t.join(150)
        say(f"load stopped: {len(load.acked)} commands acknowledged, {len(load.errors)} client errors")
        # Let every replica apply everything, then stop them and audit their stores.
        try:
            procs.wait_caught_up(replicas, 60, check=False)
        except LaunchError:
            pass  # the audits below say what differs
        procs.stop_all()
        # The verdicts are read from the audit's named invariants, never from the wording of its findings.
        operator_key = Trust.load(work).operator_key
        audits = {rid: audit_store(procs.store(rid), operator_key) for rid in procs.ids}
        logged = set.intersection(*(a.command_ids for a in audits.values()))
        lost = [cid for cid in load.acked if cid not in logged]
        duplicated = sum(a.invariants[Invariant.COMMAND_ONCE].count for a in audits.values())
        money_ok = all(a.money_conserved for a in audits.values())
        # Replicas stopped one after another may differ by a last epoch announcement: compare at one sequence.
        common = min(a.head_seq for a in audits.values())
        hashes = {}
        for rid in procs.ids:
            out = subprocess.run([*ACB_COMMAND, "audit", "hash", "--store", procs.store(rid), "--at",
                                  str(common), "--json"], env=env, capture_output=True, text=True, timeout=600)
            hashes[rid] = json.loads(out.stdout.strip().splitlines()[-1])["state_hash"]
        identical = len(set(hashes.values())) == 1
        kill_waits = [r["unavailable_ms"] for r in round_reports if r["fault"] == "kill"]
        all_waits = [r["unavailable_ms"] for r in round_reports]
        by_fault = {f: {"rounds": len(w), "max_ms": max(w), "p50_ms": int(statistics.median(w))}
                    for f in faults if (w := [r["unavailable_ms"] for r in round_reports if r["fault"] == f])}
        outcome = {
            "rounds": rounds, "acknowledged": len(load.acked), "applied": len(load.acked) - len(lost),
            "lost": len(lost), "duplicated": duplicated, "money_conserved": money_ok, "replicas_identical": identical,
            "max_unavailable_ms": max(kill_waits or all_waits),
            "p50_unavailable_ms": int(statistics.median(kill_waits or all_waits)),
            "unavailable_by_fault": by_fault, "audits_ok": all(a.ok for a in audits.values()),
            "events": common, "state_hash": next(iter(hashes.values())), "round_reports": round_reports,
            "client_errors": load.errors[:5],
            "audit_violations": {rid: a.violations[:3] for rid, a in audits.items() if not a.ok},
        }
        for rid, a in audits.items():
            say(f"audit {rid}: seq {a.head_seq} state {a.state_hash[:16]}… "
                f"{'OK' if a.ok else 'VIOLATIONS: ' + '; '.join(a.violations[:3])}")
        return outcome
    finally:
        load.stop.set()
        procs.close()
        for link in links.values():
            link.destroy()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(args: argparse.Namespace, settings: Any) -> int:
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        print(f"acb: unknown fault {unknown[0]!r}; choose from {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    report = drill(args.replicas, args.rounds, clients=args.clients, faults=faults, round_seconds=args.round_seconds,
                   url=settings.peer_url, say=say, keep=args.keep, home=settings.home)
    ok = (report["lost"] == 0 and report["duplicated"] == 0 and report["money_conserved"]
          and report["replicas_identical"])
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        for k in ("rounds", "acknowledged", "applied", "lost", "duplicated", "money_conserved", "replicas_identical",
                  "max_unavailable_ms", "p50_unavailable_ms"):
            print(f"{k:<20} {report[k]}")
        for f, v in report["unavailable_by_fault"].items():
            print(f"{f:<20} max {v['max_ms']} ms, p50 {v['p50_ms']} ms over {v['rounds']} round(s)")
    return 0 if ok else 1
