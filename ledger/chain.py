"""The hash chain over the log: each event's hash covers the previous one."""
from __future__ import annotations

import hashlib
from typing import Any

from broker.codec import canonical

__all__ = ["chain_hash"]


def chain_hash(
    prev_hash: str, *, seq: int, epoch: int, at_ms: int, command_id: str | None,
    payload: dict[str, Any], reply: dict[str, Any] | None,
) -> str:
    """SHA-256 over the previous hash and this event's canonical record."""
    record = {"seq": seq, "epoch": epoch, "at_ms": at_ms, "command_id": command_id, "payload": payload, "reply": reply}
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(record)).hexdigest()
