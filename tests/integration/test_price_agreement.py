"""The consumer pays what he agreed to: a price changed after he saw it is refused, and asked again.

A real replica (the ``deployment`` fixture), the provider's service serving over
TLS, the buyer's client, and the CLI run on a pseudo-terminal as a person runs
it. In each test the provider changes the price between the buyer seeing it and
confirming; nothing is held or paid at the new price without a second yes.

Two tests check the ledger's side of the contract (``price_changed`` says
``now 3.00, you agreed to 2.00``; a split sale's interval prices are checked
too): they fail until the ledger does so.
"""
from __future__ import annotations

import argparse
import io
import os
import pty
import re
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from broker import commands as c
from broker import errors
from broker import queries as q
from peer import buy_cli
from peer.client import Client, Offer, Purchases
from peer.identity import Profile
from peer.serve import ProviderService
from peer.transfers_cli import buy_many
from tests.conftest import Deployment

DEPOSIT = 10_000
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@dataclass
class Shop:
    dep: Deployment
    seller: Client
    buyer: Client
    doc_id: str
    doc: Path
    endpoint: str

    @property
    def buyer_login(self) -> str:
        assert self.buyer.identity is not None
        return self.buyer.identity.login

    def money(self) -> tuple[int, int, list[tuple[int, str]]]:
        """The buyer's available and held money and his sales (price, status), as the ledger has them now."""
        self.buyer.last_seq = max(self.buyer.last_seq, self.dep.head_seq())
        balance = self.buyer.ask(q.Balance(account=self.buyer_login))
        return balance["available"], balance["held"], [(s["price"], s["status"]) for s in self.buyer.sales()]

    def buyer_client(self) -> Client:
        """Another client of the buyer, with a broker connection of its own."""
        client = Client(self.dep.broker(), self.dep.home, self.buyer.identity)
        client.last_seq = max(self.buyer.last_seq, self.seller.last_seq)
        return client


@pytest.fixture
def open_shop(deployment: Deployment, tmp_path: Path) -> Iterator[Callable[..., Shop]]:
    """``open_shop(price=200, **share)``: a fresh seller serving a document, a buyer holding 100.00."""
    services: list[ProviderService] = []

    def make(price: int = 200, size: int = 150_000, **share: Any) -> Shop:
        tag = uuid.uuid4().hex[:6]
        seller, buyer = deployment.client(), deployment.client()
        seller.register(f"sel{tag}", "seller-secret-1")
        buyer.register(f"buy{tag}", "buyer-secret-1")
        assert seller.identity is not None
        buyer.send(c.Deposit(account=f"buy{tag}", amount=DEPOSIT), sender=c.OPERATOR, key=deployment.operator_key())
        services.append(ProviderService(seller, seller.identity, control_socket=False))
        port = services[-1].start()
        doc = tmp_path / f"doc-{tag}.bin"
        doc.write_bytes(os.urandom(size))
        shared = seller.share(doc, price=price, topic="reports", title=f"Report {tag}", endpoint=f"127.0.0.1:{port}",
                              **share)
        buyer.last_seq = max(buyer.last_seq, seller.last_seq)
        return Shop(deployment, seller, buyer, shared["doc_id"], doc, f"127.0.0.1:{port}")

    try:
        yield make
    finally:
        for service in services:
            service.stop()


# -- the client library ------------------------------------------------------------------------------

def test_the_ledger_refuses_a_price_the_buyer_did_not_agree_to(open_shop: Callable[..., Shop],
                                                               tmp_path: Path) -> None:
    shop = open_shop(price=200)
    before = shop.money()
    seen = shop.buyer.offer(shop.doc_id)
    assert (seen.price, seen.intervals, seen.describe()) == (200, 1, "2.00")

    shop.seller.change_price(shop.doc_id, 300)  # after the buyer saw 2.00, before he confirms
    with pytest.raises(errors.PriceChanged) as refused:
        shop.buyer.buy(shop.doc_id, tmp_path / "got.bin", agreed_price=seen.price)
    assert shop.money() == before, "nothing may be held at a price nobody agreed to"
    assert Purchases(Profile(shop.dep.home, shop.buyer_login)).open_sale_for(shop.doc_id) is None
    assert str(refused.value) == "price_changed: now 3.00, you agreed to 2.00"  # the ledger's words (contract)

    now = shop.buyer.changed_offer(seen, refused.value)
    assert now.price == 300
    result = shop.buyer.buy(shop.doc_id, tmp_path / "got.bin", agreed_price=now.price)
    assert result.verified and result.price == 300
    assert shop.money() == (before[0] - 300, 0, [(300, "settled")])


def test_a_split_sale_opens_only_at_the_interval_prices_agreed_to(open_shop: Callable[..., Shop],
                                                                  tmp_path: Path) -> None:
    shop = open_shop(price=1001, size=4 * 65536, segment_size=65536, interval_bytes=65536)
    offer = shop.buyer.offer(shop.doc_id)
    assert (offer.intervals, offer.interval_prices) == (4, [251, 250, 250, 250])
    assert offer.describe() == "10.01 in 4 intervals (2.51, 2.50, 2.50, 2.50), each paid once it has arrived"
    before = shop.money()

    # The same total split otherwise is not what the buyer was shown.
    with pytest.raises(errors.PriceChanged):
        shop.buyer.send(c.OpenSale(sale_id=f"s-{uuid.uuid4().hex[:20]}", doc_id=shop.doc_id, price=1001,
                                   interval_prices=[250, 250, 250, 251]))
    assert shop.money() == before

    # Client.buy sends the interval prices of the price it was given, and pays them interval by interval.
    sent: list[BaseModel] = []

    class Recording(Client):
        def send(self, payload: BaseModel, **kw: Any) -> Any:
            sent.append(payload)
            return super().send(payload, **kw)

    recording = Recording(shop.dep.broker(), shop.dep.home, shop.buyer.identity)
    recording.last_seq = shop.buyer.last_seq
    result = recording.buy(shop.doc_id, tmp_path / "split.bin", agreed_price=offer.price)
    assert result.verified and result.price == 1001
    opened = [p for p in sent if isinstance(p, c.OpenSale)]
    assert [(o.price, o.interval_prices) for o in opened] == [(1001, [251, 250, 250, 250])]
    assert [p.interval for p in sent if isinstance(p, c.SettleInterval)] == [0, 1, 2, 3]


def test_buying_several_at_a_changed_price_is_refused_unless_within_the_maximum(
        open_shop: Callable[..., Shop], tmp_path: Path) -> None:
    shop = open_shop(price=200)
    seen = shop.buyer.offer(shop.doc_id)
    shop.seller.change_price(shop.doc_id, 300)
    before = shop.money()

    refused = buy_many(shop.buyer_client, [shop.doc_id], tmp_path / "a", quiet=True, offers={shop.doc_id: seen})
    assert isinstance(refused[0].error, errors.PriceChanged) and refused[0].result is None
    assert shop.money() == before
    too_low = buy_many(shop.buyer_client, [shop.doc_id], tmp_path / "b", quiet=True, offers={shop.doc_id: seen},
                       max_price=299)
    assert isinstance(too_low[0].error, errors.PriceChanged)
    assert shop.money() == before

    within = buy_many(shop.buyer_client, [shop.doc_id], tmp_path / "c", quiet=True, offers={shop.doc_id: seen},
                      max_price=300)
    assert within[0].error is None and within[0].result is not None and within[0].result.price == 300
    assert shop.money() == (before[0] - 300, 0, [(300, "settled")])


def test_the_cli_refuses_a_changed_price_without_a_terminal_unless_within_max_price(
        open_shop: Callable[..., Shop], monkeypatch: pytest.MonkeyPatch) -> None:
    shop = open_shop(price=200)
    seen = shop.buyer.offer(shop.doc_id)
    shop.seller.change_price(shop.doc_id, 300)
    with pytest.raises(errors.PriceChanged) as refused:
        shop.buyer.send(c.OpenSale(sale_id=f"s-{uuid.uuid4().hex[:20]}", doc_id=shop.doc_id, price=seen.price))
    said: list[str] = []
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # no terminal: nobody to ask, whatever is piped

    with pytest.raises(errors.PriceChanged) as info:
        buy_cli._after_price_change(shop.buyer, seen, refused.value, argparse.Namespace(yes=False, max_price=None),
                                said.append)
    assert str(info.value).startswith("price_changed: now 3.00, you agreed to 2.00; nothing was held")
    with pytest.raises(errors.PriceChanged):
        buy_cli._after_price_change(shop.buyer, seen, refused.value, argparse.Namespace(yes=True, max_price=299),
                                said.append)
    assert said == []
    offer, yes = buy_cli._after_price_change(shop.buyer, seen, refused.value,
                                         argparse.Namespace(yes=True, max_price=300), said.append)
    assert (offer.price, yes) == (300, True)
    assert said == ["price changed: now 3.00, you agreed to 2.00; within --max-price 3.00, buying for 3.00"]


# -- the CLI on a terminal ---------------------------------------------------------------------------

class Terminal:
    """``acb`` on a pseudo-terminal: what a person sees, and typing answers."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "peer.cli", *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.raw = ""

    @property
    def screen(self) -> str:
        return _ANSI.sub("", self.raw)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the process closed the terminal
            chunk = b""
        self.raw += chunk.decode(errors="replace")
        return bool(chunk)

    def expect(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"no {text!r} on the terminal; it shows:\n{self.screen}")

    def answer(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def wait(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(max(0.0, deadline - time.monotonic())):
            pass
        return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal(deployment: Deployment) -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def run(login: str, *args: str) -> Terminal:
        env = {**os.environ, "ACB_HOME": str(deployment.home), "ACB_BROKER_URL": deployment.url,
               "ACB_PREFIX": deployment.names.prefix, "ACB_USER": login, "ACB_IO_TIMEOUT": "30",
               "COLUMNS": "200"}
        started.append(Terminal(list(args), env))
        return started[-1]

    yield run
    for t in started:
        t.close()


def test_on_a_terminal_a_changed_price_is_asked_again_and_no_holds_nothing(
        open_shop: Callable[..., Shop], terminal: Callable[..., Terminal], tmp_path: Path) -> None:
    shop = open_shop(price=200)
    before = shop.money()
    term = terminal(shop.buyer_login, "buy", shop.doc_id, "--out", str(tmp_path / "got.bin"))
    term.expect(f"from {shop.seller.identity.login} for 2.00? [y/N]")  # type: ignore[union-attr]
    shop.seller.change_price(shop.doc_id, 300)  # while the buyer reads the question
    term.answer("y")
    term.expect("Price changed: now 3.00, you agreed to 2.00. Buy for 3.00? [y/N]")
    assert shop.money() == before
    term.answer("n")
    assert term.wait() == 1
    assert "not bought; nothing was held (the price is now 3.00)" in term.screen
    assert shop.money() == before


def test_on_a_terminal_a_second_yes_buys_at_the_new_price(
        open_shop: Callable[..., Shop], terminal: Callable[..., Terminal], tmp_path: Path) -> None:
    shop = open_shop(price=200)
    before = shop.money()
    out = tmp_path / "got.bin"
    term = terminal(shop.buyer_login, "buy", shop.doc_id, "--out", str(out))
    term.expect("for 2.00? [y/N]")
    shop.seller.change_price(shop.doc_id, 350)
    term.answer("yes")
    term.expect("Price changed: now 3.50, you agreed to 2.00. Buy for 3.50? [y/N]")
    term.answer("y")
    assert term.wait() == 0, term.screen
    assert "bought Report" in term.screen and "for 3.50" in term.screen
    assert out.read_bytes() == shop.doc.read_bytes()
    assert shop.money() == (before[0] - 350, 0, [(350, "settled")])


def test_on_a_terminal_no_to_the_first_question_buys_nothing(
        open_shop: Callable[..., Shop], terminal: Callable[..., Terminal]) -> None:
    shop = open_shop(price=200)
    before = shop.money()
    term = terminal(shop.buyer_login, "buy", shop.doc_id)
    term.expect("for 2.00? [y/N]")
    term.answer("")  # Enter: no is the default
    assert term.wait() == 1
    assert "not bought" in term.screen
    assert shop.money() == before


def test_on_a_terminal_several_are_asked_once_and_a_changed_one_again(
        open_shop: Callable[..., Shop], terminal: Callable[..., Terminal], tmp_path: Path) -> None:
    shop = open_shop(price=200)
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(90_000))
    second = shop.seller.share(other, price=150, topic="notes", title="Notes", endpoint=shop.endpoint)["doc_id"]
    before = shop.money()
    term = terminal(shop.buyer_login, "buy", shop.doc_id, second, "--out", str(tmp_path / "out"))
    term.expect("Buy 2 documents for 3.50 in all: ")
    term.expect("“Notes” from")
    shop.seller.change_price(second, 175)
    term.answer("y")
    term.expect("Price changed: now 1.75, you agreed to 1.50. Buy for 1.75? [y/N]")
    term.answer("n")
    assert term.wait() == 4
    assert f"{second}: FAILED: not bought: the price changed to 1.75" in term.screen
    assert f"{shop.doc_id}: bought for 2.00" in term.screen
    assert shop.money() == (before[0] - 200, 0, [(200, "settled")])


def test_offer_describes_what_is_agreed_to() -> None:
    offer = Offer("d", "T", "alice", 1000, 10, intervals=8)
    assert offer.interval_prices == [125] * 8
    assert offer.describe() == ("10.00 in 8 intervals (1.25, 1.25, 1.25, 1.25, 1.25, 1.25, …), "
                                "each paid once it has arrived")
    assert offer.at(1001).interval_prices == [126] + [125] * 7
