"""The console's subcommands of ``acb``: ``status``, ``operator ...``, ``drill``, and the operator console app.

:func:`register` adds them to the ``acb`` root (:mod:`broker.cli`). ``operator replica`` is the
ledger's (:func:`ledger.cli.add_replica_parser`); the drill is imported when it runs.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import commands as c
from broker import queries as q
from broker.cli import Commands, lazy
from broker.client import BrokerClient
from broker.money import format_minor
from broker.settings import Settings
from console.status import collect_status
from ledger.cli import add_replica_parser
from ledger.keys import load_operator_key
from peer.cli_support import amount, out, waiter
from peer.client import Client
from peer.gui.startup import qt_ready

__all__ = ["register", "status", "console_main"]


def register(commands: Commands) -> None:
    """Add ``acb operator ...``, ``acb status``, ``acb drill failover`` and ``acb console``."""
    sp = commands.add("operator", lambda a, s: a.op_fn(a, s), "operator commands", rank=202)
    osub = sp.add_subparsers(dest="op", required=True, metavar="OP")
    dp = osub.add_parser("deposit", help="credit an account")
    dp.set_defaults(op_fn=cmd_deposit)
    dp.add_argument("login")
    dp.add_argument("amount", type=amount)
    dp.add_argument("--memo", default="")
    dp.add_argument("--json", action="store_true")
    fp = osub.add_parser("fee", help="set the commission in basis points (100 = 1%%)")
    fp.set_defaults(op_fn=cmd_fee)
    fp.add_argument("bps", type=int)
    bp = osub.add_parser("balance", help="any account's balance (owner: the commission account)")
    bp.set_defaults(op_fn=cmd_operator_balance)
    bp.add_argument("account")
    bp.add_argument("--json", action="store_true")
    add_replica_parser(osub)

    sp = commands.add("status", status, "the replicas: role, epoch, applied sequence, lag", rank=206, json_flag=True)
    sp.add_argument("--wait", type=float, default=2.5, help="seconds to listen for status messages")

    sp = commands.add("drill", lambda a, s: a.drill_fn(a, s), "operator drills", rank=207)
    dsub = sp.add_subparsers(dest="drill_cmd", required=True, metavar="DRILL")
    fo = dsub.add_parser("failover", help="kill, pause or cut the primary under load; check nothing was lost")
    fo.set_defaults(drill_fn=lazy("console.drill:main"))
    fo.add_argument("--replicas", type=int, default=3)
    fo.add_argument("--rounds", type=int, default=5)
    fo.add_argument("--clients", type=int, default=4)
    fo.add_argument("--faults", default="kill,pause,cut",
                    help="comma list of kill, pause, cut, broker (rotated; broker restarts RabbitMQ's app)")
    fo.add_argument("--round-seconds", type=float, default=2.0, dest="round_seconds")
    fo.add_argument("--keep", action="store_true", help="keep the stores and logs")
    fo.add_argument("--json", action="store_true")

    commands.add_app("console", console_main, "the operator console (PySide6)", rank=302,
                     options="--interval SECONDS, --screenshot PATH")


def _operator_client(s: Settings) -> tuple[Client, Ed25519PrivateKey]:
    # The operator's own account when configured; its commands are signed by the operator key either way.
    url = s.operator_url or s.broker_url
    return (Client(BrokerClient(url, s.names), s.home, on_wait=waiter(), timeout=s.env.reply_timeout),
            load_operator_key(s.home))


def cmd_deposit(args: argparse.Namespace, s: Settings) -> int:
    """``acb operator deposit LOGIN AMOUNT``: credit an account."""
    client, key = _operator_client(s)
    reply = client.send(c.Deposit(account=args.login, amount=args.amount, memo=args.memo), sender=c.OPERATOR, key=key)
    out(args, reply.result, lambda: print(f"credited {args.login} {format_minor(args.amount)}; "
                                          f"balance {format_minor(reply.result['balance'])}"))
    return 0


def cmd_fee(args: argparse.Namespace, s: Settings) -> int:
    """``acb operator fee BPS``: set the commission."""
    client, key = _operator_client(s)
    client.send(c.SetFee(bps=args.bps), sender=c.OPERATOR, key=key)
    print(f"commission set to {args.bps} basis points ({args.bps / 100:.2f}%)")
    return 0


def cmd_operator_balance(args: argparse.Namespace, s: Settings) -> int:
    """``acb operator balance ACCOUNT``: any account's balance."""
    client, key = _operator_client(s)
    b = client.ask(q.Balance(account=args.account), sender=c.OPERATOR, key=key)
    out(args, b, lambda: print(f"{b['account']}: available {format_minor(b['available'])}, "
                               f"held {format_minor(b['held'])}"))
    return 0


def status(args: argparse.Namespace, settings: Settings) -> int:
    """``acb status``: the replicas as their signed status messages describe them."""
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


def console_main(argv: Sequence[str], settings: Settings) -> int:
    """``acb console [--interval SECONDS] [--screenshot PATH]``: the operator console (replicas, dead letters,
    accounts, fee)."""
    p = argparse.ArgumentParser(prog="acb console", description="ACB operator console.")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between status refreshes")
    p.add_argument("--screenshot", type=Path, metavar="PATH",
                   help="render offscreen, save a PNG of the window once replicas have reported, and exit")
    args = p.parse_args(argv)
    if not qt_ready(args.screenshot):
        return 1
    # lazy: Qt takes a fifth of a second to import and may be absent; qt_ready has just found it
    from console.gui.app import run

    return run(settings, screenshot=args.screenshot, interval=args.interval)
