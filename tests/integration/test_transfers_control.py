"""Steering uploads through the control socket of a running provider, over real sockets and TLS.

Pause stops the bytes, resume continues them, cancel ends the upload while the
buyer keeps what it stored, a limit bounds the throughput and priorities split
a shared limit. The provider is a real :class:`ProviderServer` with the
:class:`UploadManager` of `acb serve`; only the ledger is stood in for (see
tests/support/market.py), except in the last test, which buys through a real one.
"""
from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from peer.identity import Profile
from peer.serve import UploadManager
from peer.transfer import DownloadResult, ProviderServer, TransferError, decrypt_file
from peer.transfers import ControlServer, NoServe, ServeRunning, control_request, list_downloads, socket_path
from tests.support.market import SEG, Market
from tests.support.waiting import wait_for, wait_still


@dataclass
class Steered:
    """A provider whose uploads answer on alice's control socket, and bob's downloads folder."""

    market: Market
    server: ProviderServer
    manager: UploadManager
    alice: Profile
    bob: Profile

    def ask(self, op: str, **kw: Any) -> dict[str, Any]:
        return control_request(self.alice, {"op": op, **kw})

    def upload(self, sale: str) -> dict[str, Any]:
        return next(u for u in self.ask("list")["uploads"] if u["sale"] == sale)


@dataclass
class Fetch:
    """A download running in a thread, recording (time, bytes) at every segment."""

    steered: Steered
    sale: str
    marks: list[tuple[float, int]] = field(default_factory=list)
    result: DownloadResult | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> Fetch:
        def run() -> None:
            try:
                self.result = self.steered.market.download(
                    self.steered.server, self.sale, self.steered.bob.subdir("downloads"),
                    progress=lambda done, _total: self.marks.append((time.monotonic(), done)))
            except BaseException as exc:  # noqa: BLE001 - examined by the test
                self.error = exc

        self.thread = threading.Thread(target=run)
        self.thread.start()
        return self

    @property
    def done(self) -> int:
        return self.marks[-1][1] if self.marks else 0

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(20)
        assert not self.thread.is_alive()

    def bytes_between(self, t0: float, t1: float) -> int:
        before = [b for t, b in self.marks if t <= t0]
        until = [b for t, b in self.marks if t <= t1]
        return (until[-1] if until else 0) - (before[-1] if before else 0)


def _steered(tmp_path: Path, size: int, sales: tuple[str, ...] = ("s1",)) -> Iterator[Steered]:
    market = Market(tmp_path, size=size)
    for sale in sales:
        market.sell(sale)
    home = tmp_path / "home"
    alice, bob = Profile(home, "alice"), Profile(home, "bob")
    server = market.server()
    manager = UploadManager(server, login="alice", endpoint="here")
    control = ControlServer(socket_path(alice), manager.handle)
    server.start()
    control.start()
    manager.start()
    try:
        yield Steered(market, server, manager, alice, bob)
    finally:
        control.stop()
        manager.stop()
        server.stop()


@pytest.fixture
def one(tmp_path: Path) -> Iterator[Steered]:
    yield from _steered(tmp_path, 60 * SEG + 777)


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Steered]:
    yield from _steered(tmp_path, 200 * SEG, ("s1", "s2"))


def _check(steered: Steered, result: DownloadResult | None, sale: str, out: Path) -> None:
    assert result is not None
    c = steered.market.commitment
    decrypt_file(result, steered.market.sales[sale][1], out, sha256_hex=c.sha256, merkle_root_hex=c.merkle_root)
    assert out.read_bytes() == steered.market.doc.read_bytes()


def test_pause_stops_the_bytes_and_resume_continues(one: Steered, tmp_path: Path) -> None:
    one.ask("limit", bps=2_000_000)
    fetch = Fetch(one, "s1").start()
    assert wait_for(lambda: fetch.done >= 8 * SEG)
    one.ask("pause", sale="s1")
    # The chunk in flight may land; then nothing moves for a whole second, where the limit would move 2 MB.
    held, sent = wait_still(lambda: (fetch.done, one.upload("s1")["bytes_sent"]), 1.0, 10, "the paused upload")
    row = one.upload("s1")
    assert row["state"] == "paused" and row["consumer"] == "bob" and row["rate_mbps"] == 0
    assert (fetch.done, row["bytes_sent"]) == (held, sent)
    assert held < one.market.size

    one.ask("resume", sale="s1")
    fetch.join()
    assert fetch.error is None
    assert one.upload("s1")["state"] == "done"
    _check(one, fetch.result, "s1", tmp_path / "out.bin")


def test_cancel_ends_the_upload_and_the_buyer_keeps_its_segments(one: Steered, tmp_path: Path) -> None:
    one.ask("limit", bps=2_000_000)
    fetch = Fetch(one, "s1").start()
    assert wait_for(lambda: fetch.done >= 10 * SEG)
    one.ask("cancel", sale="s1")
    fetch.join()
    assert isinstance(fetch.error, TransferError)
    assert wait_for(lambda: one.upload("s1")["state"] == "cancelled")
    # Cancelling again is refused with a reason, not ignored.
    with pytest.raises(Exception, match="is cancelled"):
        one.ask("cancel", sale="s1")

    [row] = list_downloads(one.bob)
    assert row.sale == "s1" and row.state == "partial" and row.provider == "alice" and row.doc == "doc-1"
    assert 10 <= row.segments < row.segments_total == 61
    assert row.bytes == row.segments * SEG

    # The sale is still open: downloading again resumes after the stored segments.
    one.ask("limit", bps=0)
    again = one.market.download(one.server, "s1", one.bob.subdir("downloads"))
    assert again.resumed_from >= row.segments
    _check(one, again, "s1", tmp_path / "out.bin")
    [row] = list_downloads(one.bob)
    assert row.state == "done" and row.segments == 61 and row.bytes == one.market.size


def test_a_limit_bounds_the_throughput(one: Steered) -> None:
    one.ask("limit", bps=500_000)
    fetch = Fetch(one, "s1").start()
    assert wait_for(lambda: bool(fetch.marks))
    # Its own limit, then no global one: the upload speeds up to its own limit and no further.
    one.ask("limit", bps=1_500_000, sale="s1")
    one.ask("limit", bps=0)
    assert one.upload("s1")["limit_mbps"] == 1.5 and one.ask("list")["limit_mbps"] is None
    t0 = time.monotonic() + 0.2
    fetch.join()
    assert fetch.error is None
    t1 = fetch.marks[-1][0]
    rate = fetch.bytes_between(t0, t1) / (t1 - t0)
    # The bucket lets a quarter second of burst through; over 2.5 s that is 10%.
    assert 1_500_000 * 0.8 < rate < 1_500_000 * 1.15, rate


def test_priority_splits_a_shared_limit(two: Steered) -> None:
    two.ask("limit", bps=3_000_000)
    first, second = Fetch(two, "s1").start(), Fetch(two, "s2").start()
    assert wait_for(lambda: first.done > 0 and second.done > 0)
    two.ask("priority", sale="s1", priority=2)
    rows = {u["sale"]: u for u in two.ask("list")["uploads"]}
    assert rows["s1"]["priority"] == 2 and rows["s2"]["priority"] == 1
    assert rows["s1"]["allotted_mbps"] == pytest.approx(2.0, abs=0.01)
    assert rows["s2"]["allotted_mbps"] == pytest.approx(1.0, abs=0.01)
    t0 = time.monotonic() + 0.3
    time.sleep(1.8)  # not a wait for anything: the window the shares are measured over
    t1 = time.monotonic()
    a, b = first.bytes_between(t0, t1), second.bytes_between(t0, t1)
    assert 2.0 * 0.75 < a / b < 2.0 * 1.3, (a, b)
    assert (a + b) / (t1 - t0) < 3_000_000 * 1.15
    rates = {u["sale"]: u["rate_mbps"] for u in two.ask("list")["uploads"]}
    assert rates["s1"] > rates["s2"] > 0
    for sale in ("s1", "s2"):
        two.ask("cancel", sale=sale)
    first.join()
    second.join()


def test_the_control_socket_replaces_a_stale_one_and_goes_away(tmp_path: Path) -> None:
    profile = Profile(tmp_path / "home", "alice")
    path = socket_path(profile)
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # as a killed process leaves it: the file stays, nobody answers
    with pytest.raises(NoServe, match="no `acb serve` running for alice"):
        control_request(profile, {"op": "list"})

    server = ControlServer(path, lambda req: {"echo": req["op"]})
    server.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert control_request(profile, {"op": "hello"}) == {"ok": True, "echo": "hello"}
        with pytest.raises(ServeRunning):
            ControlServer(path, lambda req: {}).start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.connect(str(path))
            raw.sendall(b"not json\n[1]\n")
            with raw.makefile("rb") as reader:
                assert b"not JSON" in reader.readline()
                assert b"not a JSON object" in reader.readline()
    finally:
        server.stop()
    assert not path.exists()
    with pytest.raises(NoServe):
        control_request(profile, {"op": "list"})


def test_requests_about_unknown_sales_or_with_bad_values_are_refused(one: Steered) -> None:
    for request, reason in (({"op": "pause", "sale": "nope"}, "no upload of sale nope"),
                            ({"op": "limit", "bps": -1}, "0 or more"),
                            ({"op": "limit", "bps": "fast"}, "whole number"),
                            ({"op": "priority", "sale": "nope", "priority": 2}, "no upload of sale nope"),
                            ({"op": "explode"}, "unknown request")):
        with pytest.raises(Exception, match=reason):
            control_request(one.alice, request)
    assert one.ask("list")["uploads"] == []


# -- through a real ledger: `acb serve`'s service and several purchases at once -----------------------

def _buyers(deployment: Any, tag: str, docs: int, size: int, tmp_path: Path) -> tuple[Any, Any, list[str], Any]:
    """A seller serving ``docs`` documents through ProviderService, a buyer with money, the doc ids."""
    from broker import commands as c
    from peer.serve import ProviderService

    seller, buyer = deployment.client(), deployment.client()
    seller.register(f"sel{tag}", "seller-secret-1")
    buyer.register(f"buy{tag}", "buyer-secret-1")
    buyer.send(c.Deposit(account=f"buy{tag}", amount=50_000), sender=c.OPERATOR, key=deployment.operator_key())
    service = ProviderService(seller, seller.identity)
    port = service.start()
    doc_ids = []
    for i in range(docs):
        path = tmp_path / f"doc{i}.bin"
        path.write_bytes(os.urandom(size))
        doc_ids.append(seller.share(path, price=100 + i, topic="t", title=f"Doc {i} {tag}",
                                    endpoint=f"127.0.0.1:{port}", segment_size=SEG)["doc_id"])
    return seller, buyer, doc_ids, service


def _client_factory(deployment: Any, like: Any) -> Any:
    from broker.client import BrokerClient
    from peer.client import Client

    def make() -> Client:
        client = Client(BrokerClient(deployment.url, deployment.names), deployment.home, like.identity)
        client.last_seq = like.last_seq
        return client

    return make


def test_buy_many_buys_at_once_and_the_service_lists_each_upload(deployment: Any, tmp_path: Path) -> None:
    from peer.transfers_cli import buy_many

    tag = os.urandom(3).hex()
    seller, buyer, doc_ids, service = _buyers(deployment, tag, 2, 6 * SEG + 10, tmp_path)
    try:
        buyer.last_seq = max(buyer.last_seq, seller.last_seq)
        outcomes = buy_many(_client_factory(deployment, buyer), doc_ids, tmp_path / "out", quiet=True)
        assert [o.error for o in outcomes] == [None, None]
        for i, o in enumerate(outcomes):
            assert o.result is not None and o.result.verified and o.dest is not None
            assert o.dest.read_bytes() == (tmp_path / f"doc{i}.bin").read_bytes()
        listing = control_request(Profile(deployment.home, seller.identity.login), {"op": "list"})
        rows = {u["doc"]: u for u in listing["uploads"]}
        assert set(rows) == set(doc_ids)
        assert {u["consumer"] for u in rows.values()} == {buyer.identity.login}
        assert {u["state"] for u in rows.values()} == {"done"}
        assert [rows[d]["segments_total"] for d in doc_ids] == [7, 7]
    finally:
        service.stop()
    assert not socket_path(Profile(deployment.home, seller.identity.login)).exists()


def test_buy_many_shares_its_download_limit_by_priority(deployment: Any, tmp_path: Path) -> None:
    from peer.transfers_cli import buy_many

    tag = os.urandom(3).hex()
    seller, buyer, doc_ids, service = _buyers(deployment, tag, 2, 60 * SEG, tmp_path)
    finished: dict[str, float] = {}
    try:
        buyer.last_seq = max(buyer.last_seq, seller.last_seq)
        make = _client_factory(deployment, buyer)

        def timed() -> Any:
            client = make()
            buy = client.buy

            def buy_and_time(doc_id: str, dest: Path, *, control: Any = None, **kw: Any) -> Any:
                result = buy(doc_id, dest, control=control, **kw)
                finished[doc_id] = time.monotonic()
                return result

            client.buy = buy_and_time  # type: ignore[method-assign]
            return client

        began = time.monotonic()
        outcomes = buy_many(timed, doc_ids, tmp_path / "out", priorities=[3, 1], rate_limit_bps=3_000_000,
                            quiet=True)
        assert [o.error for o in outcomes] == [None, None]
    finally:
        service.stop()
    # 7.9 MB under 3 MB/s takes 2.6 s or more; at 3:1 the first document is done well before the second.
    assert finished[doc_ids[1]] - began > 2.6 * 0.85
    assert finished[doc_ids[0]] < finished[doc_ids[1]] - 0.5
