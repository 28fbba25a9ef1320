"""``acb buy``: documents bought at the price the person was shown, asked again when it changed.

The price agreed to is the one shown: on a terminal ``acb buy`` asks first (not
with ``--yes``); otherwise the price it prints is the one it buys at. When the
provider changed the price before the sale opened, the ledger refuses it and
nothing is held: a person at a terminal is asked again, anything else is refused
unless ``--max-price`` allows the new price.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker import errors
from broker.errors import CommandRejected
from broker.money import format_minor
from broker.settings import Settings
from peer.cli_support import CliError
from peer.cli_support import amount as _amount
from peer.cli_support import client_for as _client
from peer.cli_support import io_timeout as _io_timeout
from peer.cli_support import out as _out
from peer.client import BuyResult, Client, Offer
from peer.transfers_cli import buy_many

__all__ = ["cmd_buy", "cmd_buy_many", "register"]


def register(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``acb buy`` to the CLI: ``register(sub, add)`` inside ``peer.cli.register``."""
    sp = add("buy", cmd_buy, "download documents from their providers, pay, decrypt and verify them",
             json_flag=True)
    sp.add_argument("doc_ids", nargs="+", metavar="DOC_ID")
    sp.add_argument("--out", help="where to write the document (default: its title in the current folder; "
                                  "a folder when buying several)")
    sp.add_argument("--priority", type=int, nargs="+",
                    help="one per document; 2 downloads twice as fast as 1 under --rate-limit")
    sp.add_argument("--rate-limit", type=float, dest="rate_limit", help="MB/s for all downloads together")
    sp.add_argument("--again", action="store_true", help="buy a document you already bought once more")
    sp.add_argument("--yes", "-y", action="store_true",
                    help="do not ask before buying (a price that changed is still refused unless within --max-price)")
    sp.add_argument("--max-price", type=_amount, dest="max_price", metavar="AMOUNT",
                    help="pay at most this for each document; a price that changes to this or less is accepted "
                         "without asking")
    sp.epilog = (
        "The price you pay is the one you were shown: on a terminal acb asks 'Buy ... for 2.00? [y/N]' "
        "(not with --yes; without a terminal the price it prints is the one it buys at). If the provider "
        "changes the price before the sale opens, the ledger refuses it and nothing is held: on a terminal "
        "acb asks again ('Price changed: now 3.00, you agreed to 2.00. Buy for 3.00? [y/N]'); with --yes or "
        "without a terminal the purchase is refused (exit 2), unless the new price is within --max-price, "
        "which is then paid and said.")


_MAX_ASKS = 5  # a price that keeps changing is not chased for ever


def _interactive(args: argparse.Namespace) -> bool:
    """Ask before buying: on a terminal, unless ``--yes``."""
    return sys.stdin.isatty() and not args.yes


def _ask(question: str) -> bool:
    """Ask a yes/no question on the terminal (stderr, so ``--json`` output stays clean); no is the default."""
    print(question, end=" ", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _within_max(offer: Offer, max_price: int | None) -> None:
    if max_price is not None and offer.price > max_price:
        raise CliError(f"{offer.doc_id} costs {format_minor(offer.price)}, more than --max-price "
                       f"{format_minor(max_price)}; nothing was bought")


def _after_price_change(client: Client, agreed: Offer, refusal: CommandRejected, args: argparse.Namespace,
                        say: Callable[[str], None]) -> tuple[Offer, bool]:
    """The new offer after the ledger refused ``agreed`` as ``price_changed``, and whether it is agreed to.

    Within ``--max-price`` the new price is taken (and said); otherwise a person at a
    terminal is asked again, and anything else is refused: nothing is ever held or paid
    at a price nobody agreed to.
    """
    new = client.changed_offer(agreed, refusal)
    now, was = format_minor(new.price), format_minor(agreed.price)
    if args.max_price is not None and new.price <= args.max_price:
        say(f"price changed: now {now}, you agreed to {was}; within --max-price {format_minor(args.max_price)}, "
            f"buying for {now}")
        return new, True
    if _interactive(args):
        return new, _ask(f"Price changed: now {now}, you agreed to {was}. Buy for {new.describe()}? [y/N]")
    raise errors.PriceChanged(f"now {now}, you agreed to {was}; nothing was held (run `acb buy` again to see and "
                              "accept the new price, or allow a higher one with --max-price)")


def _buy_data(result: Any) -> dict[str, Any]:
    return {"doc_id": result.doc_id, "sale_id": result.sale_id, "path": str(result.path) if result.path else None,
            "price": result.price, "fee": result.fee, "verified": result.verified, "dispute": result.dispute,
            "resumed_from": result.resumed_from, "segments": result.segments}


def cmd_buy_many(args: argparse.Namespace, s: Settings) -> int:
    """Several documents at once (or one under a shared rate limit): a progress bar each."""
    out_dir = Path(args.out) if args.out else Path.cwd()
    reader = _client(s)
    try:
        offers = {doc_id: reader.offer(doc_id) for doc_id in args.doc_ids}
        for offer in offers.values():
            _within_max(offer, args.max_price)
        if _interactive(args):
            listed = "; ".join(f"“{o.title}” from {o.provider} for {o.describe()}" for o in offers.values())
            total = format_minor(sum(o.price for o in offers.values()))
            if not _ask(f"Buy {len(offers)} documents for {total} in all: {listed}? [y/N]"):
                print("nothing bought", file=sys.stderr)
                return 1

        def run(doc_ids: list[str], agreed: dict[str, Offer]) -> list[Any]:
            prios = ([args.priority[args.doc_ids.index(d)] for d in doc_ids] if args.priority else None)
            return buy_many(lambda: _client(s), doc_ids, out_dir, priorities=prios,
                            rate_limit_bps=int(args.rate_limit * 1e6) if args.rate_limit else None, quiet=args.json,
                            offers=agreed, max_price=args.max_price)

        outcomes = run(list(args.doc_ids), offers)
        for i, outcome in enumerate(outcomes):
            # Refused at a new price: ask (one at a time) whoever can be asked.
            for _ in range(_MAX_ASKS):
                if not (isinstance(outcome.error, errors.PriceChanged) and _interactive(args)):
                    break
                offer, yes = _after_price_change(reader, offers[outcome.doc_id], outcome.error, args,
                                                 lambda m: print(f"  {m}", file=sys.stderr))
                if not yes:
                    outcome.error = CliError(f"not bought: the price changed to {format_minor(offer.price)}")
                    break
                offers[outcome.doc_id] = offer
                outcome = outcomes[i] = run([outcome.doc_id], {outcome.doc_id: offer})[0]
    finally:
        reader.broker.close()
    rows = [{**(_buy_data(o.result) if o.result else {"doc_id": o.doc_id, "verified": False}),
             "error": str(o.error) if o.error else None} for o in outcomes]

    def text() -> None:
        for r in rows:
            print(f"{r['doc_id']}: " + (f"bought for {format_minor(r['price'])}: {r['path']}" if r.get("verified")
                                        else f"FAILED: {r['error'] or r.get('dispute')}"))

    _out(args, {"purchases": rows}, text)
    return 0 if all(r.get("verified") and not r["error"] for r in rows) else 4


def cmd_buy(args: argparse.Namespace, s: Settings) -> int:
    """One document: show its price (ask on a terminal), buy at that price, ask again if it changed."""
    if len(args.doc_ids) > 1 or args.rate_limit or args.priority:
        return cmd_buy_many(args, s)
    args.doc_id = args.doc_ids[0]
    client = _client(s)
    offer = client.offer(args.doc_id)
    out = Path(args.out) if args.out else Path.cwd() / _safe_name(offer.title, args.doc_id)
    quiet = args.json
    _within_max(offer, args.max_price)
    if _interactive(args) and not _ask(f"Buy “{offer.title}” from {offer.provider} for {offer.describe()}? [y/N]"):
        print("not bought", file=sys.stderr)
        return 1

    def step(msg: str) -> None:
        if not quiet:
            print(f"  {msg}", file=sys.stderr)

    for _ in range(_MAX_ASKS):
        try:
            result = _buy_once(client, offer, out, args, step)
            break
        except errors.PriceChanged as exc:
            offer, yes = _after_price_change(client, offer, exc, args, step)
            if not yes:
                print(f"not bought; nothing was held (the price is now {format_minor(offer.price)})", file=sys.stderr)
                return 1
    else:
        raise CliError(f"the price of {args.doc_id} changed {_MAX_ASKS} times while buying; nothing was bought")
    data = _buy_data(result)
    _out(args, data, lambda: print(
        f"bought {offer.title} for {format_minor(result.price)}: {result.path}" if result.verified else
        f"content did not verify; dispute filed: {result.dispute}"))
    return 0 if result.verified else 4


def _buy_once(client: Client, offer: Offer, out: Path, args: argparse.Namespace,
              step: Callable[[str], None]) -> BuyResult:
    """One attempt at ``offer``'s price; the progress bar appears once bytes move (after the sale opened)."""
    # lazy: rich.progress takes a twenty-fifth of a second to import, and acb --help loads this module
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   disable=args.json, transient=False)
    task: list[Any] = []

    def progress(done: int, total: int) -> None:
        if not task:
            bar.start()
            task.append(bar.add_task(offer.title[:30], total=offer.size))
        bar.update(task[0], completed=done, total=total)

    try:
        return client.buy(offer.doc_id, out, agreed_price=offer.price, agreed_interval_prices=offer.interval_prices,
                          progress=progress, on_step=step, io_timeout=_io_timeout(), again=args.again)
    finally:
        if task:
            bar.stop()


def _safe_name(title: str, doc_id: str) -> str:
    name = "".join(ch if ch.isalnum() or ch in "._- " else "_" for ch in title).strip() or doc_id
    return name[:80]


