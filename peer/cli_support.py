"""What every `acb` subcommand module of the peer shares: one-line errors, amounts, passwords, the client."""
from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

from broker.client import BrokerClient
from broker.money import parse_minor
from broker.settings import Settings, load_environment
from peer.client import Client
from peer.errors import NotLoggedIn, PeerError
from peer.identity import Profile

__all__ = ["CliError", "out", "amount", "password", "waiter", "client_for", "io_timeout"]


class CliError(PeerError):
    """A one-line error for the user."""


def out(args: argparse.Namespace, data: Any, text: Callable[[], None]) -> None:
    """Print ``data`` as one JSON object with ``--json``, else call ``text()`` to print it for a person."""
    if getattr(args, "json", False):
        print(json.dumps(data, sort_keys=True))
    else:
        text()


def amount(text: str) -> int:
    """An argparse type: ``12.50`` to 1250 minor units."""
    try:
        return parse_minor(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def password(settings: Settings, prompt: str, *, confirm: bool = False) -> str:
    """``ACB_PASSWORD``, else a line on stdin when it is not a terminal, else asked at the prompt."""
    if settings.env.password:
        return settings.env.password
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\n")
        if line:
            return line
        raise CliError("no password: type it at the prompt, pipe it on stdin, or set ACB_PASSWORD")
    pw = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != pw:
        raise CliError("the two passwords differ")
    return pw


def waiter() -> Callable[[float], None]:
    """What a client calls while it waits for the ledger: a line on stderr every few seconds."""
    said = [0.0]

    def on_wait(elapsed: float) -> None:
        # A failover costs a short pause: say so (every few seconds) instead of failing.
        if elapsed > 1.0 and elapsed - said[0] >= 5.0 or (said[0] == 0.0 and elapsed > 1.0):
            print(f"  waiting for the ledger ({elapsed:.0f} s; a replica may be taking over)…", file=sys.stderr,
                  flush=True)
            said[0] = elapsed

    return on_wait


def client_for(settings: Settings, *, login: str | None = None, need_login: bool = True) -> Client:
    """A client for ``login`` (else ``ACB_USER``, else the current profile); NotLoggedIn when one is needed."""
    broker = BrokerClient(settings.broker_url, settings.names)
    login = login or settings.env.user or Profile.current(settings.home)
    identity = Profile(settings.home, login).session() if login else None
    if need_login and identity is None:
        raise NotLoggedIn("not logged in: run `acb register LOGIN` or `acb login LOGIN` first")
    return Client(broker, settings.home, identity, on_wait=waiter(), timeout=settings.env.reply_timeout)


def io_timeout() -> float:
    """How long a download waits on a silent provider (``ACB_IO_TIMEOUT``)."""
    return load_environment().io_timeout
