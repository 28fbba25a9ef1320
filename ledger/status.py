"""Reading the replicas' status: each publishes one signed message a second on the status exchange.

The replica writes it (:meth:`ledger.replica.Replica.status`); the operator's console and the launcher
(:mod:`ledger.launch`) read it here, so the format and its checks live beside the writer.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from broker.client import listen
from broker.errors import BrokerError
from broker.topology import Names
from broker.trust import Trust, check_signed

__all__ = ["collect_status", "verified_status", "STATUS_FRESH_MS"]

STATUS_FRESH_MS = 15_000  # replicas say their status every second; older than this, it says nothing now

log = logging.getLogger(__name__)


def verified_status(trust: Trust, body: bytes, now_ms: int | None = None) -> dict[str, Any] | None:
    """A status message when a certified replica signed it about itself, lately; None for anything else.

    A genuine but old status (replayed to hide that its replica has since halted) is not a status.
    """
    try:
        status = json.loads(body)
        signer = check_signed(trust, status, "status")
    except (ValueError, RecursionError, BrokerError):
        return None
    if not isinstance(status, dict) or status.get("replica") != signer or not isinstance(status.get("seq"), int):
        return None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    at = status.get("at_ms")
    if not isinstance(at, int) or abs(now - at) > STATUS_FRESH_MS:
        return None
    status.pop("signature", None)
    return status


def collect_status(url: str, names: Names, wait: float = 2.5, *, trust: Trust | None = None,
                   home: Path | None = None) -> list[dict[str, Any]]:
    """The latest verified status of every replica heard from within ``wait`` seconds, with lag filled in.

    Only statuses signed by a replica the operator's roster certifies are shown; others are dropped
    (and counted in the log). ``trust`` defaults to the operator key and roster under ``home``
    (or ``ACB_HOME``), read afresh so a replica added a moment ago is known.
    """
    if trust is None:
        trust = Trust.load(home) if home is not None else Trust.from_env()
    latest: dict[str, dict[str, Any]] = {}
    forged = 0
    for body in listen(url, names.status, wait, name="acb-status-reader"):
        status = verified_status(trust, body)
        if status is None:
            forged += 1
        elif status["at_ms"] >= latest.get(status["replica"], {}).get("at_ms", 0):
            latest[status["replica"]] = status
    if forged:
        log.warning("%d status messages not signed by a certified replica were ignored", forged)
    head = max((s["seq"] for s in latest.values()), default=0)
    for s in latest.values():
        s["lag"] = head - s["seq"]
    return sorted(latest.values(), key=lambda s: (s["role"] != "primary", s["replica"]))
