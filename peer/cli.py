"""``acb``: the command line of ACB.

Every subcommand prints for a person by default; read commands take
``--json``. An error prints one line on stderr and exits non-zero.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from broker import commands as c
from broker.client import BrokerClient
from broker.errors import AcbError
from broker.money import format_minor
from broker.settings import Settings
from peer.cli_support import CliError
from peer.cli_support import amount as _amount
from peer.cli_support import client_for as _client
from peer.cli_support import out as _out
from peer.cli_support import password as _password
from peer.cli_support import waiter as _waiter
from peer.client import Client
from peer.identity import Profile

__all__ = ["main", "build_parser"]

# -- user commands ---------------------------------------------------------------------------------

def cmd_register(args: argparse.Namespace, s: Settings) -> int:
    client = _client(s, need_login=False)
    client.register(args.login, _password(s, f"password for {args.login}: ", confirm=True))
    _out(args, {"login": args.login, "seq": client.last_seq},
         lambda: print(f"registered {args.login}; keys kept in {Profile(s.home, args.login).dir} "
                       "and you are logged in"))
    return 0


def cmd_login(args: argparse.Namespace, s: Settings) -> int:
    client = _client(s, need_login=False)
    result = client.login(args.login, _password(s, f"password for {args.login}: "))
    _out(args, result, lambda: print(f"logged in as {args.login}; available {format_minor(result['available'])}"))
    return 0


def cmd_logout(args: argparse.Namespace, s: Settings) -> int:
    login = Profile.current(s.home)
    if login:
        Profile(s.home, login).end_session()
        (s.home / "current").unlink(missing_ok=True)
    print(f"logged out{' ' + login if login else ''}")
    return 0


def cmd_whoami(args: argparse.Namespace, s: Settings) -> int:
    login = Profile.current(s.home)
    _out(args, {"login": login}, lambda: print(login or "not logged in"))
    return 0 if login else 1


def cmd_share(args: argparse.Namespace, s: Settings) -> int:
    client = _client(s)
    endpoint = args.endpoint or s.env.endpoint
    res = client.share(Path(args.file), price=args.price, topic=args.topic, title=args.title,
                       description=args.description, endpoint=endpoint, doc_id=args.doc_id,
                       interval_bytes=int(args.interval_mib * (1 << 20)) if args.interval_mib is not None else None)
    _out(args, res, lambda: print(f"shared {args.file} as {res['doc_id']} at {format_minor(args.price)} "
                                  f"({res['size']} bytes, sha256 {res['sha256'][:16]}…); serve it with `acb serve`"))
    return 0


def cmd_unshare(args: argparse.Namespace, s: Settings) -> int:
    _client(s).unpublish(args.doc_id)
    print(f"{args.doc_id} is no longer offered")
    return 0


def cmd_price(args: argparse.Namespace, s: Settings) -> int:
    _client(s).change_price(args.doc_id, args.price)
    print(f"{args.doc_id} now costs {format_minor(args.price)}")
    return 0


def cmd_search(args: argparse.Namespace, s: Settings) -> int:
    hits = _client(s, need_login=False).search(" ".join(args.text), topic=args.topic, max_price=args.max_price,
                                               limit=args.limit)

    def text() -> None:
        if not hits:
            print("no documents found")
            return
        print(f"{'DOC ID':<18} {'PRICE':>9}  {'SIZE':>10}  {'PROVIDER':<12} {'TOPIC':<14} TITLE")
        for h in hits:
            print(f"{h['doc_id']:<18} {format_minor(h['price']):>9}  {h['size']:>10}  {h['provider']:<12} "
                  f"{h['topic'][:14]:<14} {h['title']}")

    _out(args, {"hits": hits}, text)
    return 0


def cmd_balance(args: argparse.Namespace, s: Settings) -> int:
    b = _client(s).balance()
    _out(args, b, lambda: print(f"{b['account']}: available {format_minor(b['available'])}, "
                                f"held for open purchases {format_minor(b['held'])}"))
    return 0


def cmd_flows(args: argparse.Namespace, s: Settings) -> int:
    flows = _client(s).flows(limit=args.limit)

    def text() -> None:
        if not flows:
            print("no cash flows yet")
        for f in flows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f["at_ms"] / 1000))
            print(f"{when}  {f['kind']:<18} {format_minor(f['amount']):>10}  {f['counterparty']:<12} "
                  f"{f['doc_id'] or ''} {f['memo']}")

    _out(args, {"flows": flows}, text)
    return 0


def cmd_sales(args: argparse.Namespace, s: Settings) -> int:
    sales = _client(s).sales()

    def text() -> None:
        for x in sales:
            print(f"{x['sale_id']:<24} {x['status']:<9} {x['doc_id']:<18} {x['consumer']:>10} -> {x['provider']:<10} "
                  f"{format_minor(x['price']):>9}")
        if not sales:
            print("no sales yet")

    _out(args, {"sales": sales}, text)
    return 0


def cmd_cancel(args: argparse.Namespace, s: Settings) -> int:
    res = _client(s).cancel(args.sale_id)
    print(f"sale {args.sale_id} voided; {format_minor(res['released'])} released")
    return 0


def cmd_serve(args: argparse.Namespace, s: Settings) -> int:
    from peer.serve import ProviderService

    client = _client(s)
    host, port = (args.listen or s.env.endpoint).rsplit(":", 1)
    assert client.identity is not None
    service = ProviderService(client, client.identity, host=host, port=int(port),
                              rate_limit_bps=int(args.rate_limit * 1e6) if args.rate_limit else None)
    bound = service.start()
    print(f"serving the shares of {client.identity.login} on {host}:{bound} (Ctrl-C to stop)", flush=True)
    import signal

    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    try:
        while not stop[0]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    service.stop()
    return 0


# -- operator and system ---------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace, s: Settings) -> int:
    from ledger.keys import init_system

    d, created = init_system(s.home)
    print(f"system keys {'created' if created else 'already present'} in {d}")
    return 0


def _operator_client(s: Settings) -> tuple[Client, Any]:
    from ledger.keys import load_operator_key

    # The operator's own account when configured; its commands are signed by the operator key either way.
    url = s.operator_url or s.broker_url
    return (Client(BrokerClient(url, s.names), s.home, on_wait=_waiter(), timeout=s.env.reply_timeout),
            load_operator_key(s.home))


def cmd_deposit(args: argparse.Namespace, s: Settings) -> int:
    client, key = _operator_client(s)
    reply = client.send(c.Deposit(account=args.login, amount=args.amount, memo=args.memo), sender=c.OPERATOR, key=key)
    _out(args, reply.result, lambda: print(f"credited {args.login} {format_minor(args.amount)}; "
                                           f"balance {format_minor(reply.result['balance'])}"))
    return 0


def cmd_fee(args: argparse.Namespace, s: Settings) -> int:
    client, key = _operator_client(s)
    client.send(c.SetFee(bps=args.bps), sender=c.OPERATOR, key=key)
    print(f"commission set to {args.bps} basis points ({args.bps / 100:.2f}%)")
    return 0


def cmd_operator_balance(args: argparse.Namespace, s: Settings) -> int:
    from broker import queries as q

    client, key = _operator_client(s)
    b = client.ask(q.Balance(account=args.account), sender=c.OPERATOR, key=key)
    _out(args, b, lambda: print(f"{b['account']}: available {format_minor(b['available'])}, "
                                f"held {format_minor(b['held'])}"))
    return 0


def cmd_ledger_run(args: argparse.Namespace, s: Settings) -> int:
    from ledger.cli import run_replica

    return run_replica(args, s)


def cmd_status(args: argparse.Namespace, s: Settings) -> int:
    from console.cli import status

    return status(args, s)


def cmd_demo(args: argparse.Namespace, s: Settings) -> int:
    from peer.demo import run_demo

    return run_demo(args, s)


def cmd_bench(args: argparse.Namespace, s: Settings) -> int:
    if args.what == "transfer":
        from bench.transfer import main as bench_main

        argv = ["--size", args.size] + (["--json"] if args.json else [])
        return bench_main(argv) or 0
    if args.what == "ledger":
        from bench.ledger import main as ledger_main

        argv = ["--replicas", str(args.replicas), "--url", s.broker_url] + (["--json"] if args.json else [])
        if args.commands:
            argv += ["--commands", str(args.commands)]
        return ledger_main(argv) or 0
    raise CliError(f"no benchmark {args.what!r}")


def _gui(entry: str, args: argparse.Namespace) -> int:
    from peer import gui_cli

    return int(getattr(gui_cli, entry)(args.gui_args))


# -- parser ----------------------------------------------------------------------------------------

def _lazy(module: str, name: str) -> Callable[[argparse.Namespace, Settings], int]:
    """A handler imported only when its command runs (keeps `acb --help` fast)."""
    def run(args: argparse.Namespace, settings: Settings) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), name)(args, settings))

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="acb", description="ACB: share documents, get paid, pay for what you download.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens underneath")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[..., int], help: str, *, json_flag: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print one JSON object")
        return sp

    sp = add("register", cmd_register, "create an account (keys are made here; the password never leaves)",
             json_flag=True)
    sp.add_argument("login")
    sp = add("login", cmd_login, "unlock your keys and prove them to the ledger", json_flag=True)
    sp.add_argument("login")
    add("logout", cmd_logout, "forget the unlocked keys on this machine")
    add("whoami", cmd_whoami, "who is logged in here", json_flag=True)

    sp = add("share", cmd_share, "publish a file at a price (amounts like 12.50)", json_flag=True)
    sp.add_argument("file")
    sp.add_argument("--price", type=_amount, required=True)
    sp.add_argument("--topic", required=True)
    sp.add_argument("--title", required=True)
    sp.add_argument("--description", default="")
    sp.add_argument("--endpoint", help="host:port where `acb serve` listens (default $ACB_ENDPOINT or 127.0.0.1:7700)")
    sp.add_argument("--doc-id", dest="doc_id")
    sp.add_argument("--interval-mib", type=float, dest="interval_mib",
                    help="sell in intervals of this many MiB, each paid as it arrives (default: 64 from 256 MiB "
                         "up, else whole; 0: whole)")
    sp = add("unshare", cmd_unshare, "stop offering a document")
    sp.add_argument("doc_id")
    sp = add("price", cmd_price, "change the price of a document")
    sp.add_argument("doc_id")
    sp.add_argument("price", type=_amount)
    sp = add("search", cmd_search, "find documents: who has them, at what price", json_flag=True)
    sp.add_argument("text", nargs="*")
    sp.add_argument("--topic")
    sp.add_argument("--max-price", type=_amount, dest="max_price")
    sp.add_argument("--limit", type=int, default=50)
    from peer import buy_cli

    buy_cli.register(sub, add)
    add("balance", cmd_balance, "your available and held money", json_flag=True)
    sp = add("flows", cmd_flows, "your cash-flow history", json_flag=True)
    sp.add_argument("--limit", type=int, default=100)
    add("sales", cmd_sales, "sales you took part in", json_flag=True)
    sp = add("cancel", cmd_cancel, "void an open sale; the held money comes back")
    sp.add_argument("sale_id")
    sp = add("serve", cmd_serve, "serve your shared files to buyers over TLS")
    sp.add_argument("--listen", help="host:port (default $ACB_ENDPOINT or 127.0.0.1:7700)")
    sp.add_argument("--rate-limit", type=float, help="MB/s for all uploads together")
    from peer import transfers_cli

    transfers_cli.register(sub, add)

    add("init", cmd_init, "create the operator and ledger keys (once per installation)")
    sp = add("operator", lambda a, s: a.op_fn(a, s), "operator commands")
    osub = sp.add_subparsers(dest="op", required=True, metavar="OP")
    dp = osub.add_parser("deposit", help="credit an account")
    dp.set_defaults(op_fn=cmd_deposit)
    dp.add_argument("login")
    dp.add_argument("amount", type=_amount)
    dp.add_argument("--memo", default="")
    dp.add_argument("--json", action="store_true")
    fp = osub.add_parser("fee", help="set the commission in basis points (100 = 1%%)")
    fp.set_defaults(op_fn=cmd_fee)
    fp.add_argument("bps", type=int)
    bp = osub.add_parser("balance", help="any account's balance (owner: the commission account)")
    bp.set_defaults(op_fn=cmd_operator_balance)
    bp.add_argument("account")
    bp.add_argument("--json", action="store_true")
    rp = osub.add_parser("replica", help="certify a replica's key (add), withdraw it (remove), or list the roster")
    rp.set_defaults(op_fn=_lazy("ledger.cli", "operator_replica"))
    rp.add_argument("replica_action", choices=("add", "remove", "list"), metavar="add|remove|list")
    rp.add_argument("id", nargs="?", help="the replica id (add, remove)")
    rp.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the ledger to take the roster")
    rp.add_argument("--json", action="store_true")

    from broker.admin import add_arguments as broker_setup_arguments

    sp = add("admin", lambda a, s: a.admin_fn(a, s), "broker administration")
    adsub = sp.add_subparsers(dest="admin_cmd", required=True, metavar="CMD")
    bsp = adsub.add_parser("broker-setup", help="ACB's vhost and its peer, replica and operator accounts on RabbitMQ")
    broker_setup_arguments(bsp)
    bsp.set_defaults(admin_fn=_lazy("broker.admin", "cmd_broker_setup"))

    sp = add("ledger", lambda a, s: a.ledger_fn(a, s), "run a ledger replica")
    lsub = sp.add_subparsers(dest="ledger_cmd", required=True, metavar="CMD")
    rp = lsub.add_parser("run", help="run a ledger replica (start N of them: one primary, N-1 backups)")
    rp.set_defaults(ledger_fn=cmd_ledger_run)
    rp.add_argument("--replica-id", dest="replica_id")
    rp.add_argument("--store", help="store URL (default $ACB_STORE_URL or a SQLite file under $ACB_HOME)")
    rp.add_argument("--hold-ttl", type=float, default=900.0, dest="hold_ttl", help="seconds an open sale may wait")
    rp.add_argument("--snapshot-every", type=int, default=5000, dest="snapshot_every")

    sp = add("audit", lambda a, s: a.audit_fn(a, s), "replay a store's log and check it (for audits)")
    asub = sp.add_subparsers(dest="audit_cmd", required=True, metavar="CMD")
    vp = asub.add_parser("verify", help="replay from zero: hash chain, money conserved, holds, key releases")
    vp.set_defaults(audit_fn=_lazy("ledger.cli", "audit_verify"))
    vp.add_argument("--store", required=True)
    vp.add_argument("--from-snapshot", action="store_true", dest="from_snapshot")
    vp.add_argument("--json", action="store_true")
    vp.add_argument("--commands", action="store_true", help="with --json: list every command id in the log")
    vp.add_argument("--operator-key", dest="operator_key",
                    help="the operator's public key (hex, or a file holding it) that every signature is traced to "
                         "(default: the one in $ACB_HOME/system)")
    hp = asub.add_parser("hash", help="the state hash after an event (replicas at one sequence must agree)")
    hp.set_defaults(audit_fn=_lazy("ledger.cli", "audit_hash"))
    hp.add_argument("--store", required=True)
    hp.add_argument("--at", type=int)
    hp.add_argument("--json", action="store_true")
    bp2 = asub.add_parser("balance", help="an account's balance as it was after a given event")
    bp2.set_defaults(audit_fn=_lazy("ledger.cli", "audit_balance"))
    bp2.add_argument("user")
    bp2.add_argument("--at", type=int, required=True)
    bp2.add_argument("--store", required=True)
    bp2.add_argument("--json", action="store_true")

    sp = add("status", cmd_status, "the replicas: role, epoch, applied sequence, lag", json_flag=True)
    sp.add_argument("--wait", type=float, default=2.5, help="seconds to listen for status messages")

    sp = add("drill", lambda a, s: a.drill_fn(a, s), "operator drills")
    dsub = sp.add_subparsers(dest="drill_cmd", required=True, metavar="DRILL")
    fo = dsub.add_parser("failover", help="kill, pause or cut the primary under load; check nothing was lost")
    fo.set_defaults(drill_fn=_lazy("console.drill", "main"))
    fo.add_argument("--replicas", type=int, default=3)
    fo.add_argument("--rounds", type=int, default=5)
    fo.add_argument("--clients", type=int, default=4)
    fo.add_argument("--faults", default="kill,pause,cut",
                    help="comma list of kill, pause, cut, broker (rotated; broker restarts RabbitMQ's app)")
    fo.add_argument("--round-seconds", type=float, default=2.0, dest="round_seconds")
    fo.add_argument("--keep", action="store_true", help="keep the stores and logs")
    fo.add_argument("--json", action="store_true")

    sp = add("gui", lambda a, s: _gui("desktop_main", a), "the desktop client (PySide6)")
    sp.add_argument("gui_args", nargs=argparse.REMAINDER, help="--login LOGIN, --tab TAB, --screenshot PATH")
    sp = add("console", lambda a, s: _gui("console_main", a), "the operator console (PySide6)")
    sp.add_argument("gui_args", nargs=argparse.REMAINDER, help="--interval SECONDS, --screenshot PATH")

    sp = add("demo", cmd_demo, "run a whole paid download end to end on this machine", json_flag=True)
    sp.add_argument("--keep", action="store_true", help="keep the demo's files and broker objects")

    sp = add("bench", cmd_bench, "benchmarks", json_flag=True)
    sp.add_argument("what", choices=["transfer", "ledger"])
    sp.add_argument("--size", default="1GiB", help="transfer: file size (512MiB, 1GiB, ...)")
    sp.add_argument("--replicas", type=int, default=1, help="ledger: replicas to run")
    sp.add_argument("--commands", type=int, help="ledger: commands per pipelined or concurrent run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("gui", "console") and not {"-h", "--help"} & set(argv[1:2]):
        # The apps parse their own options (--screenshot, --tab, ...).
        from peer import gui_cli

        return int((gui_cli.desktop_main if argv[0] == "gui" else gui_cli.console_main)(argv[1:]))
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        return int(args.fn(args, Settings.from_env()) or 0)
    except AcbError as exc:
        print(f"acb: {exc.for_person()}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
