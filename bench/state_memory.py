"""What a replica's state costs in memory: RSS of a process holding N registered users.

``python -m bench.state_memory --users 10000 100000`` builds, for each N in a fresh process, the state a
replica holds after N registrations (each with its own certificate, keys and keystore of realistic sizes),
a deposit each, and a full window of command ids (``ledger.model.COMMAND_WINDOW``), through the same
``apply`` a replica runs; then it reports the process's resident memory, the state's canonical size and
the cost per user. Cash-flow history is in the store, not in this figure; so are the sales past their
dispute window (``ledger.model.DISPUTE_WINDOW``): with ``--sales S`` each run also opens, escrows and settles
S sales, and the state keeps only those of the last window.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from broker.codec import canonical
from ledger import events as ev
from ledger.model import COMMAND_WINDOW, Record, State, apply, state_to_dict

__all__ = ["measure", "main"]

_PEM = "-----BEGIN CERTIFICATE-----\n" + "M" * 560 + "\n-----END CERTIFICATE-----\n"  # an Ed25519 self-signed cert
_KEYSTORE = "k" * 420  # a sealed keystore (scrypt parameters, salt, nonce, two private keys)
_SEALED = "h" * 86  # with the sale id: the base64 of an HPKE-sealed 32-byte key (enc 32, tag 16)


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(users: int, sales: int = 0) -> dict[str, Any]:
    """Build the state of ``users`` registered users (and ``sales`` settled sales) in this process and report what
    it holds."""
    before = _rss_mb()
    started = time.perf_counter()
    state = State()
    seq = 0

    def step(state: State, event: Any, command_id: str | None) -> State:
        nonlocal seq
        seq += 1
        reply = {"login": command_id} if command_id is not None else None
        return apply(state, Record(seq, 1, 1_700_000_000_000 + seq, event, f"{seq:064x}", command_id, reply,
                                   f"{seq:064x}"))

    for i in range(users):
        login = f"user{i:07d}"
        # Distinct strings, as a replica holds them (each parsed from its own message).
        state = step(state, ev.UserRegistered(login=login, sign_key=f"{i:064x}", box_key=f"{i + 1:064x}",
                                              cert_pem=_PEM[:-1] + login, keystore=_KEYSTORE + login), f"reg-{i}")
        state = step(state, ev.Deposited(account=login, amount=10_000), f"dep-{i}")
    for j in range(sales):
        sale_id, consumer, provider = f"s-{j:020x}", f"user{j % users:07d}", f"user{(j + 1) % users:07d}"
        state = step(state, ev.SaleOpened(sale_id=sale_id, doc_id=f"{j % 97:016x}", consumer=consumer,
                                          provider=provider, price=1, fee=0, deadline_ms=2_000_000_000_000),
                     f"open-{j}")
        state = step(state, ev.KeyEscrowed(sale_id=sale_id, key_commitment=f"{j:064x}", sealed_key=_SEALED + sale_id),
                     f"escrow-{j}")
        state = step(state, ev.SaleSettled(sale_id=sale_id, price=1, fee=0, provider_amount=1,
                                           consumer_sealed_key=_SEALED + consumer), f"settle-{j}")
    built_s = time.perf_counter() - started
    after = _rss_mb()
    return {"users": users, "sales": sales, "sales_in_state": len(state.sales), "events": seq,
            "commands_in_state": len(state.commands), "command_window": COMMAND_WINDOW,
            "rss_mb": round(after, 1), "state_rss_mb": round(after - before, 1),
            "bytes_per_user_rss": round((after - before) * 1024 * 1024 / max(users, 1)),
            "canonical_mb": round(len(canonical(state_to_dict(state))) / 1e6, 1), "build_s": round(built_s, 1)}


def main(argv: list[str] | None = None) -> int:
    """Measure each ``--users`` figure in a fresh process and print one JSON line each."""
    parser = argparse.ArgumentParser(prog="python -m bench.state_memory", description=__doc__)
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--sales", type=int, default=0, help="settled sales to add to each run (default 0)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child's own measurement
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.sales)))
        return 0
    for users in args.users:
        done = subprocess.run([sys.executable, "-m", "bench.state_memory", "--one", str(users), "--sales",
                               str(args.sales)], check=True,
                              capture_output=True, text=True)
        print(done.stdout.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
