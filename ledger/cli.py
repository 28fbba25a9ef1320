"""``acb ledger ...``: running a replica."""
from __future__ import annotations

import argparse
import logging
import socket
import uuid
from typing import Any

from ledger.keys import load_system
from ledger.replica import Replica, ReplicaConfig
from ledger.store import default_store_url

__all__ = ["run_replica"]


def run_replica(args: argparse.Namespace, settings: Any) -> int:
    """Run one replica until stopped; exit 3 if it halted on a broken log."""
    replica_id = args.replica_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    store = args.store or default_store_url(f"ledger-{replica_id}")
    logging.getLogger().setLevel(logging.INFO)
    config = ReplicaConfig(replica_id=replica_id, broker_url=settings.broker_url, store_url=store,
                           names=settings.names, hold_ttl_ms=int(args.hold_ttl * 1000),
                           snapshot_every=args.snapshot_every)
    replica = Replica(config, load_system(settings.home))
    logging.getLogger(__name__).info("replica %s starting on %s (prefix %s)", replica_id, store, settings.names.prefix)
    return replica.run_forever()
