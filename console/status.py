"""Reading the replicas' status: moved to :mod:`ledger.status`, beside the replica that writes it."""
from __future__ import annotations

from ledger.status import STATUS_FRESH_MS, collect_status, verified_status

__all__ = ["collect_status", "verified_status", "STATUS_FRESH_MS"]
