"""``acb transfers``: what is moving, and steering it; plus several purchases at once for ``acb buy``.

Uploads come from the running `acb serve` of the logged-in user over its
control socket; downloads are read from the user's downloads folder, so the
listing works with or without a server.
"""
from __future__ import annotations

import argparse
import inspect
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker import errors
from broker.money import format_minor
from broker.settings import Settings
from peer.client import BuyResult, Client, Offer
from peer.errors import NotLoggedIn, PeerError
from peer.identity import Profile
from peer.transfer.control import BandwidthScheduler, TransferControl
from peer.transfers import NoServe, control_request, list_downloads

__all__ = ["BuyOutcome", "buy_many", "cmd_transfers", "register"]

_TICK = 0.5
_MAX_CHANGES = 5  # a price that keeps changing within --max-price is not chased for ever


# -- parser ----------------------------------------------------------------------------------------

def register(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``acb transfers`` to the CLI: ``register(sub, add)`` inside ``peer.cli.register``."""
    sp = add("transfers", cmd_transfers, "your uploads and downloads; pause, resume, cancel, limit, prioritize",
             json_flag=True)
    tsub = sp.add_subparsers(dest="transfers_cmd", metavar="ACTION")
    for name, text in (("pause", "pause an upload of the running `acb serve`"),
                       ("resume", "resume a paused upload"),
                       ("cancel", "cut an upload (the buyer keeps what it got and may resume later)")):
        p = tsub.add_parser(name, help=text, description=text)
        p.add_argument("sale_id")
    text = "limit uploads in MB/s: all together, or one with --sale (0 = unlimited)"
    p = tsub.add_parser("limit", help=text, description=text)
    p.add_argument("rate", type=_mbps, metavar="RATE_MBPS")
    p.add_argument("--sale", dest="sale_id")
    text = "weight of an upload in the shared limit (2 gets twice what 1 gets)"
    p = tsub.add_parser("priority", help=text, description=text)
    p.add_argument("sale_id")
    p.add_argument("priority", type=_priority)


def _mbps(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MB/s") from exc
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("a rate is 0 (unlimited) or more MB/s")
    return value


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from exc
    if value < 1:
        raise argparse.ArgumentTypeError("a priority is a whole number from 1 up")
    return value


# -- commands --------------------------------------------------------------------------------------

def cmd_transfers(args: argparse.Namespace, settings: Settings) -> int:
    """``acb transfers [--json]`` lists; ``acb transfers ACTION ...`` steers the running `acb serve`."""
    profile = _profile(settings)
    action = getattr(args, "transfers_cmd", None)
    if action is None:
        return _list(args, profile)
    if action in ("pause", "resume", "cancel"):
        control_request(profile, {"op": action, "sale": args.sale_id})
        done = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
        print(f"upload of sale {args.sale_id} {done}")
        return 0
    if action == "limit":
        bps = int(args.rate * 1e6)
        control_request(profile, {"op": "limit", "bps": bps, "sale": args.sale_id})
        what = f"upload of sale {args.sale_id}" if args.sale_id else "all uploads together"
        print(f"{what}: {_rate_text(args.rate) if bps else 'no limit'}")
        return 0
    if action == "priority":
        control_request(profile, {"op": "priority", "sale": args.sale_id, "priority": args.priority})
        print(f"upload of sale {args.sale_id}: priority {args.priority}")
        return 0
    raise PeerError(f"no transfers action {action!r}")


def _profile(settings: Settings) -> Profile:
    login = settings.env.user or Profile.current(settings.home)
    if not login:
        raise NotLoggedIn("not logged in: run `acb register LOGIN` or `acb login LOGIN` first")
    return Profile(settings.home, login)


def _list(args: argparse.Namespace, profile: Profile) -> int:
    try:
        serving: dict[str, Any] | None = control_request(profile, {"op": "list"})
    except NoServe:
        serving = None
    uploads = serving["uploads"] if serving else []
    downloads = [d.to_json() for d in list_downloads(profile)]
    if getattr(args, "json", False):
        serve = None if serving is None else {"endpoint": serving["endpoint"], "limit_mbps": serving["limit_mbps"]}
        print(json.dumps({"uploads": uploads, "downloads": downloads, "serve": serve}, sort_keys=True))
        return 0
    if serving is None:
        print(f"uploads: no `acb serve` running for {profile.login}")
    else:
        limit = serving["limit_mbps"]
        print(f"uploads of `acb serve` on {serving['endpoint']} "
              f"({'limit ' + _rate_text(limit) if limit else 'no limit'}):")
        _print_uploads(uploads)
    print("downloads:")
    _print_downloads(downloads)
    return 0


def _rate_text(mbps: float) -> str:
    return f"{mbps:.2f} MB/s"


def _print_uploads(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("  none yet")
        return
    print(f"  {'SALE':<24} {'CONSUMER':<12} {'DOC':<18} {'STATE':<9} {'SENT':>14} {'RATE':>12} {'PRI':>3} LIMIT")
    for u in rows:
        total = u["segments_total"]
        sent = f"{u['start_segment'] + u['segments_sent']}/{total if total is not None else '?'} seg"
        limit = _rate_text(u["limit_mbps"]) if u["limit_mbps"] else "-"
        print(f"  {u['sale']:<24} {u['consumer'] or '?':<12} {u['doc'] or '?':<18} {u['state']:<9} {sent:>14} "
              f"{_rate_text(u['rate_mbps']):>12} {u['priority']:>3} {limit}")


def _print_downloads(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("  none")
        return
    print(f"  {'SALE':<24} {'DOC':<18} {'PROVIDER':<12} {'STATE':<9} {'STORED':>14} {'BYTES':>12}")
    for d in rows:
        total = d["segments_total"]
        stored = f"{d['segments']}/{total if total is not None else '?'} seg"
        print(f"  {d['sale']:<24} {d['doc'] or '?':<18} {d['provider'] or '?':<12} {d['state']:<9} {stored:>14} "
              f"{d['bytes']:>12}")


# -- several purchases at once ----------------------------------------------------------------------

@dataclass
class BuyOutcome:
    """One document of :func:`buy_many`: its result, or the error that stopped it."""

    doc_id: str
    dest: Path | None
    result: BuyResult | None
    error: BaseException | None = None


def buy_many(make_client: Callable[[], Client], doc_ids: Sequence[str], out_dir: Path, *,
             priorities: Sequence[int] | None = None, rate_limit_bps: int | None = None,
             quiet: bool = False, offers: Mapping[str, Offer] | None = None,
             max_price: int | None = None) -> list[BuyOutcome]:
    """Buy several documents at once, one rich progress bar each; returns one outcome per document.

    ``make_client()`` must return a new :class:`Client` with a broker connection
    of its own (a BrokerClient is not thread-safe); each is closed afterwards.
    ``rate_limit_bps`` is shared between the downloads by ``priorities`` (one
    per document, default 1). One failing purchase does not stop the others.

    Each document is bought at the price of its offer in ``offers`` (what the
    person was shown), else at the price read when its purchase starts (said in
    its step lines). If the provider changed it meanwhile, the purchase fails with
    :class:`broker.errors.PriceChanged` and nothing is held, unless the new price is
    within ``max_price``: then it is bought at the new price, and that is said.
    """
    # lazy: rich.progress takes a twenty-fifth of a second to import, and acb --help loads this module
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    prios = list(priorities) if priorities else [1] * len(doc_ids)
    if len(prios) != len(doc_ids):
        raise PeerError(f"{len(prios)} priorities for {len(doc_ids)} documents")
    if any(p < 1 for p in prios):
        raise PeerError("a priority is a whole number from 1 up")
    scheduler = BandwidthScheduler(rate_limit_bps or None)
    controls = [TransferControl(priority=p) for p in prios]
    for doc_id, p in zip(doc_ids, prios, strict=True):
        scheduler.set_priority(doc_id, p)
    outcomes = [BuyOutcome(doc_id, None, None) for doc_id in doc_ids]
    running: set[int] = set()
    lock = threading.Lock()
    taken: set[Path] = set()

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  disable=quiet, transient=False) as bar:

        def rebalance() -> None:
            with lock:
                active = [(doc_ids[i], controls[i]) for i in running]
            scheduler.rebalance(active)

        def one(i: int) -> None:
            doc_id = doc_ids[i]
            client = make_client()
            try:
                if (rate_limit_bps or len(set(prios)) > 1) and not _buy_takes_control(client):
                    raise PeerError("this client cannot limit or prioritize downloads: Client.buy takes no control")
                offer = (offers or {}).get(doc_id) or client.offer(doc_id)
                with lock:
                    dest = _dest(out_dir, offer.title, doc_id, taken)
                outcomes[i].dest = dest
                task = bar.add_task(offer.title[:30], total=offer.size)

                def progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                def step(msg: str) -> None:
                    if not quiet:
                        bar.console.print(f"  {doc_id}: {msg}")

                kw: dict[str, Any] = {"progress": progress, "on_step": step}
                if _buy_takes_control(client):
                    kw["control"] = controls[i]
                with lock:
                    running.add(i)
                rebalance()
                for _ in range(_MAX_CHANGES):
                    try:
                        outcomes[i].result = client.buy(doc_id, dest, agreed_price=offer.price,
                                                        agreed_interval_prices=offer.interval_prices, **kw)
                        break
                    except errors.PriceChanged as exc:
                        new = client.changed_offer(offer, exc)
                        if max_price is None or new.price > max_price:
                            raise
                        step(f"price changed: now {format_minor(new.price)}, you agreed to "
                             f"{format_minor(offer.price)}; within the maximum {format_minor(max_price)}, "
                             f"buying for {format_minor(new.price)}")
                        offer = new
                else:
                    raise PeerError(f"the price of {doc_id} changed {_MAX_CHANGES} times while buying; "
                                    "nothing was bought")
            except Exception as exc:  # noqa: BLE001 - reported per document; the others go on
                outcomes[i].error = exc
                if not quiet:
                    bar.console.print(f"  {doc_id}: failed: {exc}")
            finally:
                with lock:
                    running.discard(i)
                client.broker.close()

        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(_TICK):
                rebalance()

        ticker = threading.Thread(target=tick, name="acb-buy-scheduler", daemon=True)
        ticker.start()
        workers = [threading.Thread(target=one, args=(i,), name=f"acb-buy-{i}") for i in range(len(doc_ids))]
        try:
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        except KeyboardInterrupt:
            for ctl in controls:
                ctl.cancel()
            for w in workers:
                w.join()
            raise
        finally:
            stop.set()
            ticker.join()
    return outcomes


def _buy_takes_control(client: Client) -> bool:
    return "control" in inspect.signature(client.buy).parameters


def _dest(out_dir: Path, title: str, doc_id: str, taken: set[Path]) -> Path:
    name = "".join(ch if ch.isalnum() or ch in "._- " else "_" for ch in title).strip()[:80] or doc_id
    dest = out_dir / name
    if dest in taken:
        dest = out_dir / f"{name}.{doc_id}"
    taken.add(dest)
    return dest
