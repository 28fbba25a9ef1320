"""``acb status``: the operator's view of the replicas from the command line."""
from __future__ import annotations

import argparse
import json
from typing import Any

from console.status import collect_status

__all__ = ["status"]


def status(args: argparse.Namespace, settings: Any) -> int:
    rows = collect_status(settings.operator_broker_url, settings.names, args.wait, home=settings.home)
    if args.json:
        print(json.dumps({"replicas": rows}, sort_keys=True))
        return 0 if rows else 1
    if not rows:
        print(f"no replica answered within {args.wait:.1f} s (prefix {settings.names.prefix})")
        return 1
    print(f"{'REPLICA':<16} {'ROLE':<8} {'EPOCH':>5} {'SEQ':>8} {'LAG':>5} {'CMD/S':>7} {'HOST':<12} STORE")
    for r in rows:
        print(f"{r['replica']:<16} {r['role']:<8} {r['epoch']:>5} {r['seq']:>8} {r['lag']:>5} "
              f"{r.get('commands_per_s', 0):>7} {r['host'][:12]:<12} {r['store']}")
        if r.get("halted"):
            print(f"    HALTED: {r['halted']}")
    return 0
