"""``acb ledger ...``: running a replica."""
from __future__ import annotations

import argparse
import logging
import os
import re
import socket
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from ledger.errors import StoreError
from ledger.keys import load_system
from ledger.replica import Replica, ReplicaConfig
from ledger.store import default_store_url

__all__ = ["run_replica", "resolve_store_url"]


def resolve_store_url(url: str, replica_id: str) -> str:
    """Fill ``{replica}`` in a store URL, so one setting gives every replica a store of its own.

    For PostgreSQL the database named by the URL is created when it does not exist yet.
    """
    safe = re.sub(r"[^a-z0-9_]", "_", replica_id.lower())
    url = url.replace("{replica}", safe)
    parsed = sa.engine.make_url(url)
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


def run_replica(args: argparse.Namespace, settings: Any) -> int:
    """Run one replica until stopped; exit 3 if it halted on a broken log."""
    # Stable across restarts of one container (pid 1), distinct for processes on one host.
    replica_id = args.replica_id or os.environ.get("ACB_REPLICA_ID") or f"{socket.gethostname()}-{os.getpid()}"
    store = resolve_store_url(args.store or default_store_url(f"ledger-{replica_id}"), replica_id)
    logging.getLogger().setLevel(logging.INFO)
    config = ReplicaConfig(replica_id=replica_id, broker_url=settings.broker_url, store_url=store,
                           names=settings.names, hold_ttl_ms=int(args.hold_ttl * 1000),
                           snapshot_every=args.snapshot_every)
    replica = Replica(config, load_system(settings.home))
    logging.getLogger(__name__).info("replica %s starting on %s (prefix %s)", replica_id, store, settings.names.prefix)
    return replica.run_forever()


def audit_verify(args: argparse.Namespace, settings: Any) -> int:
    """``acb audit verify --store URL``: replay and check; exit 1 on any violation."""
    import json

    from ledger.audit import audit
    from ledger.store import Store

    store = Store(args.store, create=False)
    try:
        report = audit(store, use_snapshot=args.from_snapshot)
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
        if report.ok:
            print("verdict     OK: hash chain intact, money conserved, every hold resolved at most once, "
                  "keys released only by settle events, no command applied twice")
        else:
            print(f"verdict     {len(report.violations)} VIOLATION(S):")
            for v in report.violations[:50]:
                print(f"  - {v}")
    return 0 if report.ok else 1


def audit_balance(args: argparse.Namespace, settings: Any) -> int:
    """``acb audit balance USER --at SEQ --store URL``: a balance as it was after event SEQ."""
    import json

    from broker.money import format_minor
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


def audit_hash(args: argparse.Namespace, settings: Any) -> int:
    """``acb audit hash --store URL [--at SEQ]``: the state hash after an event (to compare replicas)."""
    import json

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
