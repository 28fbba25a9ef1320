"""The ledger's subcommands of ``acb``: ``init``, ``ledger run`` (a replica), ``audit ...``, and the roster.

:func:`register` adds them to the ``acb`` root (:mod:`broker.cli`). The replica, the store and
SQLAlchemy are imported when a command that needs them runs, so ``acb --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
from pathlib import Path

from broker import commands as c
from broker.cli import Commands
from broker.client import BrokerClient
from broker.envelope import seal
from broker.errors import BrokerError
from broker.money import format_minor
from broker.settings import Settings
from broker.trust import Roster, Trust
from ledger.errors import ConfigError, StoreError
from ledger.keys import (
    certify_replica,
    init_system,
    load_operator_key,
    load_roster,
    load_system,
    remove_replica,
    replica_key_path,
)

__all__ = ["register", "run_replica", "resolve_store_url", "audit_verify", "audit_hash", "audit_balance",
           "operator_replica"]


def register(commands: Commands) -> None:
    """Add ``acb init``, ``acb ledger run`` and ``acb audit verify|hash|balance``."""
    commands.add("init", cmd_init, "create the operator and ledger keys (once per installation)", rank=201)

    sp = commands.add("ledger", lambda a, s: a.ledger_fn(a, s), "run a ledger replica", rank=204)
    lsub = sp.add_subparsers(dest="ledger_cmd", required=True, metavar="CMD")
    rp = lsub.add_parser("run", help="run a ledger replica (start N of them: one primary, N-1 backups)")
    rp.set_defaults(ledger_fn=run_replica)
    rp.add_argument("--replica-id", dest="replica_id")
    rp.add_argument("--store", help="store URL (default $ACB_STORE_URL or a SQLite file under $ACB_HOME)")
    rp.add_argument("--hold-ttl", type=float, default=900.0, dest="hold_ttl", help="seconds an open sale may wait")
    rp.add_argument("--snapshot-every", type=int, default=5000, dest="snapshot_every",
                    help="events between this replica's snapshots (0: none); each replica is offset by a hash "
                         "of its id, so they do not all snapshot at once")

    sp = commands.add("audit", lambda a, s: a.audit_fn(a, s), "replay a store's log and check it (for audits)",
                      rank=205)
    asub = sp.add_subparsers(dest="audit_cmd", required=True, metavar="CMD")
    vp = asub.add_parser("verify", help="replay from zero: hash chain, money conserved, holds, key releases")
    vp.set_defaults(audit_fn=audit_verify)
    vp.add_argument("--store", required=True)
    vp.add_argument("--from-snapshot", action="store_true", dest="from_snapshot")
    vp.add_argument("--json", action="store_true")
    vp.add_argument("--commands", action="store_true", help="with --json: list every command id in the log")
    vp.add_argument("--operator-key", dest="operator_key",
                    help="the operator's public key (hex, or a file holding it) that every signature is traced to "
                         "(default: the one in $ACB_HOME/system)")
    hp = asub.add_parser("hash", help="the state hash after an event (replicas at one sequence must agree)")
    hp.set_defaults(audit_fn=audit_hash)
    hp.add_argument("--store", required=True)
    hp.add_argument("--at", type=int)
    hp.add_argument("--json", action="store_true")
    bp = asub.add_parser("balance", help="an account's balance as it was after a given event")
    bp.set_defaults(audit_fn=audit_balance)
    bp.add_argument("user")
    bp.add_argument("--at", type=int, required=True)
    bp.add_argument("--store", required=True)
    bp.add_argument("--json", action="store_true")


def add_replica_parser(osub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``acb operator replica add|remove|list``: the operator's group (the console's) holds it."""
    rp = osub.add_parser("replica", help="certify a replica's key (add), withdraw it (remove), or list the roster")
    rp.set_defaults(op_fn=operator_replica)
    rp.add_argument("replica_action", choices=("add", "remove", "list"), metavar="add|remove|list")
    rp.add_argument("id", nargs="?", help="the replica id (add, remove)")
    rp.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the ledger to take the roster")
    rp.add_argument("--json", action="store_true")


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    """``acb init``: the operator and ledger keys, once per installation."""
    d, created = init_system(settings.home)
    print(f"system keys {'created' if created else 'already present'} in {d}")
    return 0


def resolve_store_url(url: str, replica_id: str) -> str:
    """Fill ``{replica}`` in a store URL, so one setting gives every replica a store of its own.

    For PostgreSQL the database named by the URL is created when it does not exist yet.
    """
    # lazy: SQLAlchemy takes a tenth of a second to import, and acb --help loads this module
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    safe = re.sub(r"[^a-z0-9_]", "_", replica_id.lower())
    url = url.replace("{replica}", safe)
    try:
        parsed = sa.engine.make_url(url)
    except SQLAlchemyError as exc:
        raise StoreError(f"not a store URL: {exc}") from exc
    if parsed.get_backend_name() == "postgresql" and parsed.database:
        admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"),
                                      {"d": parsed.database}).scalar()
                if not exists:
                    conn.execute(sa.text(f'CREATE DATABASE "{parsed.database}"'))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot prepare the store {parsed.render_as_string(hide_password=True)}: "
                             f"{exc.__class__.__name__}") from exc
        finally:
            admin.dispose()
    return url


def run_replica(args: argparse.Namespace, settings: Settings) -> int:
    """``acb ledger run``: run one replica until stopped; exit 3 if it halted on a broken log."""
    # lazy: the replica, its rules and its store (SQLAlchemy) take a quarter of a second; acb --help does without
    from ledger.authority import MAX_HOLD_MS
    from ledger.replica import Replica, ReplicaConfig
    from ledger.store import default_store_url

    # Stable across restarts of one container (pid 1), distinct for processes on one host.
    replica_id = args.replica_id or settings.env.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    store = resolve_store_url(args.store or default_store_url(f"ledger-{replica_id}"), replica_id)
    logging.getLogger().setLevel(logging.INFO)
    if not 1 <= int(args.hold_ttl * 1000) <= MAX_HOLD_MS:
        raise ConfigError(f"--hold-ttl must be at least a millisecond and at most {MAX_HOLD_MS // 3_600_000} hours")
    config = ReplicaConfig(replica_id=replica_id, broker_url=settings.replica_broker_url, store_url=store,
                           names=settings.names, hold_ttl_ms=int(args.hold_ttl * 1000),
                           snapshot_every=args.snapshot_every)
    replica = Replica(config, load_system(settings.home))
    logging.getLogger(__name__).info("replica %s starting on %s (prefix %s)", replica_id, store, settings.names.prefix)
    return replica.run_forever()


def audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    """``acb audit verify --store URL``: replay and check; exit 1 on any violation."""
    # lazy: the replay and its store (SQLAlchemy) take a quarter of a second; acb --help does without
    from ledger.audit import audit
    from ledger.store import Store

    operator_key = _operator_key(args, settings)
    store = Store(args.store, create=False)
    try:
        report = audit(store, use_snapshot=args.from_snapshot, operator_key=operator_key)
    finally:
        store.close()
    if args.json:
        data = report.as_dict()
        if args.commands:
            data["command_ids"] = sorted(report.command_ids)
        print(json.dumps(data, sort_keys=True))
    else:
        print(f"store       {report.store}")
        print(f"events      {report.events} replayed" + (f" after snapshot {report.from_snapshot}"
                                                         if report.from_snapshot else " from zero"))
        print(f"head        seq {report.head_seq}, hash {report.head_hash[:16]}…")
        print(f"state hash  {report.state_hash}")
        print(f"signatures  {report.signed_entries} entries: each signed by a certified replica, each movement "
              "of money by the signature of whoever it belongs to")
        if report.ok:
            print("verdict     OK: hash chain intact, every entry signed and authorized, money conserved, every hold "
                  "resolved at most once, keys released only by settle events, no command applied twice")
        else:
            print(f"verdict     {len(report.violations)} VIOLATION(S):")
            for v in report.violations[:50]:
                print(f"  - {v}")
    return 0 if report.ok else 1


def _operator_key(args: argparse.Namespace, settings: Settings) -> bytes:
    """The operator's public key the audit trusts: ``--operator-key`` (hex, or a file holding it), else the one
    kept in the system directory."""
    given = getattr(args, "operator_key", None)
    if given:
        text = Path(given).read_text().strip() if Path(given).exists() else given.strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise StoreError("--operator-key must be the operator's public key: 64 hex digits, or a file holding them")
        return key
    return Trust.load(settings.home).operator_key


def audit_balance(args: argparse.Namespace, settings: Settings) -> int:
    """``acb audit balance USER --at SEQ --store URL``: a balance as it was after event SEQ."""
    # lazy: the replay and its store (SQLAlchemy) take a quarter of a second; acb --help does without
    from ledger.audit import replay
    from ledger.store import Store

    store = Store(args.store, create=False)
    try:
        state = replay(store, args.at)
    finally:
        store.close()
    result = {"account": args.user, "at": state.seq, "available": state.balance(args.user),
              "held": state.holds(args.user)}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"{args.user} after event {state.seq}: available {format_minor(result['available'])}, "
              f"held {format_minor(result['held'])}")
    return 0


def audit_hash(args: argparse.Namespace, settings: Settings) -> int:
    """``acb audit hash --store URL [--at SEQ]``: the state hash after an event (to compare replicas)."""
    # lazy: the replay and its store (SQLAlchemy) take a quarter of a second; acb --help does without
    from ledger.audit import replay
    from ledger.model import state_hash
    from ledger.store import Store

    store = Store(args.store, create=False)
    try:
        state = replay(store, args.at, use_snapshot=True)
    finally:
        store.close()
    result = {"store": store.safe_url, "seq": state.seq, "state_hash": state_hash(state)}
    print(json.dumps(result, sort_keys=True) if args.json else f"seq {state.seq}: {result['state_hash']}")
    return 0 if args.at is None or state.seq == args.at else 1


def operator_replica(args: argparse.Namespace, settings: Settings) -> int:
    """``acb operator replica add|remove|list ID``: certify a replica, or withdraw it, without stopping the others.

    The roster is signed with the operator key kept here and sent to the ledger as a ``set_roster`` command, so
    every replica and client knows it at once; it is also kept in ``system/roster.json``.
    """
    action = args.replica_action
    if action != "list" and not args.id:
        raise ConfigError(f"acb operator replica {action} needs the replica's id")
    if action == "list":
        roster = load_roster(settings.home)
        ids = sorted(roster.replicas) if roster else []
        print(json.dumps({"serial": roster.serial if roster else 0, "replicas": ids}, sort_keys=True) if args.json
              else f"roster {roster.serial if roster else 0}: " + (", ".join(ids) or "no replica certified yet"))
        return 0
    roster = certify_replica(settings.home, args.id) if action == "add" else remove_replica(settings.home, args.id)
    sent = _send_roster(settings, roster, timeout=args.timeout)
    ids = sorted(roster.replicas)
    key_file = str(replica_key_path(settings.home, args.id))
    data = {"replica": args.id, "action": action, "serial": roster.serial, "replicas": ids, "sent_to_ledger": sent,
            "key_file": key_file}
    if args.json:
        print(json.dumps(data, sort_keys=True))
    else:
        verb = "certified" if action == "add" else "removed"
        print(f"replica {args.id} {verb}: roster {roster.serial} lists {', '.join(ids) or 'no replica'}")
        if action == "add":
            print(f"its key is {key_file}: copy it, with {settings.home / 'system'}, to the replica's machine")
        print("the ledger has the new roster" if sent else
              "no ledger answered: the next primary announces this roster when it starts")
    return 0


def _send_roster(settings: Settings, roster: Roster, *, timeout: float) -> bool:
    env = seal(c.SetRoster(roster=roster.to_wire()), sender=c.OPERATOR, key=load_operator_key(settings.home))
    try:
        url = settings.operator_url or settings.broker_url
        with BrokerClient(url, settings.names, trust=Trust.load(settings.home)) as client:
            client.request(env, timeout=timeout).unwrap()
    except BrokerError as exc:
        logging.getLogger(__name__).info("roster not sent: %s", exc)
        return False
    return True
