"""The peer's subcommands of ``acb``: a person's account, shares, purchases, transfers, the desktop app, the demo.

:func:`register` adds them to the ``acb`` root (:mod:`broker.cli`), which finds it through the
``acb.commands`` entry point. ``python -m peer.cli`` runs the whole ``acb``.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from broker.cli import Commands, lazy, main
from broker.money import format_minor
from broker.settings import Settings
from peer import buy_cli, transfers_cli
from peer.cli_support import amount as _amount
from peer.cli_support import client_for as _client
from peer.cli_support import out as _out
from peer.cli_support import password as _password
from peer.gui_cli import desktop_main
from peer.identity import Profile
from peer.serve import ProviderService

__all__ = ["register"]

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
    client = _client(s)
    host, port = (args.listen or s.env.endpoint).rsplit(":", 1)
    assert client.identity is not None
    service = ProviderService(client, client.identity, host=host, port=int(port),
                              rate_limit_bps=int(args.rate_limit * 1e6) if args.rate_limit else None)
    bound = service.start()
    print(f"serving the shares of {client.identity.login} on {host}:{bound} (Ctrl-C to stop)", flush=True)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    try:
        while not stop[0]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    service.stop()
    return 0


# -- registration ----------------------------------------------------------------------------------

def register(commands: Commands) -> None:
    """Add the peer's subcommands to ``acb``: a person's (ranks 101 on, in this order), the desktop app, the demo."""
    ranks = iter(range(101, 200))

    def add(name: str, fn: Callable[..., int], help: str, *, json_flag: bool = False) -> argparse.ArgumentParser:
        return commands.add(name, fn, help, rank=next(ranks), json_flag=json_flag)

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
    buy_cli.register(commands.sub, add)
    add("balance", cmd_balance, "your available and held money", json_flag=True)
    sp = add("flows", cmd_flows, "your cash-flow history", json_flag=True)
    sp.add_argument("--limit", type=int, default=100)
    add("sales", cmd_sales, "sales you took part in", json_flag=True)
    sp = add("cancel", cmd_cancel, "void an open sale; the held money comes back")
    sp.add_argument("sale_id")
    sp = add("serve", cmd_serve, "serve your shared files to buyers over TLS")
    sp.add_argument("--listen", help="host:port (default $ACB_ENDPOINT or 127.0.0.1:7700)")
    sp.add_argument("--rate-limit", type=float, help="MB/s for all uploads together")
    transfers_cli.register(commands.sub, add)

    commands.add_app("gui", desktop_main, "the desktop client (PySide6)", rank=301,
                     options="--login LOGIN, --tab TAB, --screenshot PATH")
    sp = commands.add("demo", lazy("peer.demo:run_demo"), "run a whole paid download end to end on this machine",
                      rank=401, json_flag=True)
    sp.add_argument("--keep", action="store_true", help="keep the demo's files and broker objects")


if __name__ == "__main__":
    sys.exit(main())
