"""Reading the replicas' status: each publishes one message a second on the status exchange."""
from __future__ import annotations

import json
import time
from typing import Any

import pika.exceptions

from broker.client import connect
from broker.topology import Names, declare

__all__ = ["collect_status"]


def collect_status(url: str, names: Names, wait: float = 2.5) -> list[dict[str, Any]]:
    """The latest status of every replica heard from within ``wait`` seconds, with lag filled in."""
    conn = connect(url, name="acb-status-reader")
    latest: dict[str, dict[str, Any]] = {}
    try:
        ch = conn.channel()
        declare(ch, names)
        queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        ch.queue_bind(queue, names.status)
        deadline = time.monotonic() + wait
        for method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=0.1):
            if method is not None:
                try:
                    status = json.loads(body)
                    latest[status["replica"]] = status
                except (ValueError, KeyError):
                    continue
            if time.monotonic() >= deadline:
                break
    finally:
        try:
            conn.close()
        except (pika.exceptions.AMQPError, OSError):
            pass
    head = max((s["seq"] for s in latest.values()), default=0)
    for s in latest.values():
        s["lag"] = head - s["seq"]
    return sorted(latest.values(), key=lambda s: (s["role"] != "primary", s["replica"]))
