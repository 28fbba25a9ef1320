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

from ledger.errors import ConfigError, StoreError
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
    replica_id = args.replica_id or settings.env.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    store = resolve_store_url(args.store or default_store_url(f"ledger-{replica_id}"), replica_id)
    logging.getLogger().setLevel(logging.INFO)
    from ledger.authority import MAX_HOLD_MS

    if not 1 <= int(args.hold_ttl * 1000) <= MAX_HOLD_MS:
        raise ConfigError(f"--hold-ttl must be at least a millisecond and at most {MAX_HOLD_MS // 3_600_000} hours")
    config = ReplicaConfig(replica_id=replica_id, broker_url=settings.replica_broker_url, store_url=store,
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


def _operator_key(args: argparse.Namespace, settings: Any) -> bytes:
    """The operator's public key the audit trusts: ``--operator-key`` (hex, or a file holding it), else the one
    kept in the system directory."""
    from pathlib import Path

    from broker.trust import Trust

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


def operator_replica(args: argparse.Namespace, settings: Any) -> int:
    """``acb operator replica add|remove|list ID``: certify a replica, or withdraw it, without stopping the others.

    The roster is signed with the operator key kept here and sent to the ledger as a ``set_roster`` command, so
    every replica and client knows it at once; it is also kept in ``system/roster.json``.
    """
    import json

    from ledger.keys import certify_replica, load_roster, remove_replica, replica_key_path

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


def _send_roster(settings: Any, roster: Any, *, timeout: float) -> bool:
    from broker import commands as c
    from broker.client import BrokerClient
    from broker.envelope import seal
    from broker.errors import BrokerError
    from broker.trust import Trust
    from ledger.keys import load_operator_key

    env = seal(c.SetRoster(roster=roster.to_wire()), sender=c.OPERATOR, key=load_operator_key(settings.home))
    try:
        url = settings.operator_url or settings.broker_url
        with BrokerClient(url, settings.names, trust=Trust.load(settings.home)) as client:
            client.request(env, timeout=timeout).unwrap()
    except BrokerError as exc:
        logging.getLogger(__name__).info("roster not sent: %s", exc)
        return False
    return True
