"""A consumer downloads from a provider over real sockets and TLS, then decrypts and verifies."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from broker.content import judge_dispute
from peer.transfer import (
    DownloadResult,
    ProviderServer,
    TransferRefused,
    WrongKey,
    decrypt_file,
    load_download,
)
from tests.support.market import Market
from tests.support.waiting import wait_for


def _decrypt(market: Market, result: DownloadResult, key: bytes, out: Path) -> bytes:
    c = market.commitment
    return decrypt_file(result, key, out, sha256_hex=c.sha256, merkle_root_hex=c.merkle_root).read_bytes()


@pytest.mark.parametrize("bulk_tls", [False, True])
def test_download_then_decrypt_yields_the_published_document(
    market: Market, running: ProviderServer, tmp_path: Path, bulk_tls: bool
) -> None:
    key = market.sell("s1")
    seen: list[tuple[int, int]] = []
    result = market.download(running, "s1", tmp_path / "dl", progress=lambda d, t: seen.append((d, t)),
                             bulk_tls=bulk_tls)
    assert result.segment_count == market.commitment.segment_count == 6
    assert result.segments_received == 6 and result.resumed_from == 0
    assert seen[-1] == (market.size, market.size)
    assert _decrypt(market, result, key, tmp_path / "out.bin") == market.doc.read_bytes()
    assert wait_for(lambda: running.uploads()[-1].state == "done")
    status = running.uploads()[-1]
    assert (status.sale_id, status.consumer, status.state, status.segments_sent) == ("s1", "bob", "done", 6)
    assert status.bytes_sent > market.size


def test_finished_download_reopens_from_journal_and_evidence_is_consistent(
    market: Market, running: ProviderServer, tmp_path: Path
) -> None:
    key = market.sell("s1")
    market.download(running, "s1", tmp_path / "dl")
    again = market.download(running, "s1", tmp_path / "dl")
    assert again.segments_received == 0  # complete: nothing fetched, nothing re-checked
    assert len(running.uploads()) == 1
    result = load_download(tmp_path / "dl", "s1")
    header, entry, ciphertext = result.evidence_for(2)
    verdict = judge_dispute(
        key=key, sale_id="s1", provider_public_key=market.provider.public, header=header, entry=entry,
        ciphertext=ciphertext, published_root_hex=market.commitment.merkle_root,
        segment_count=result.segment_count,
    )
    assert not verdict.provider_cheated  # a false dispute on an honest segment
    result.discard()
    assert not result.ct_path.exists() and not result.journal_path.exists()


def test_wrong_key_is_refused_before_decrypting(market: Market, running: ProviderServer, tmp_path: Path) -> None:
    market.sell("s1")
    result = market.download(running, "s1", tmp_path / "dl")
    with pytest.raises(WrongKey, match="key commitment"):
        _decrypt(market, result, bytes(32), tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_several_consumers_at_once(market: Market, running: ProviderServer, tmp_path: Path) -> None:
    keys = {f"s{i}": market.sell(f"s{i}", market.consumer if i % 2 else market.other) for i in range(4)}
    results: dict[str, DownloadResult] = {}
    errors: list[BaseException] = []

    def fetch(sale: str) -> None:
        buyer = market.user(market.sales[sale][0])
        try:
            results[sale] = market.download(running, sale, tmp_path / sale, as_user=buyer, rate_limit_bps=2_000_000)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(s,)) for s in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    for sale, key in keys.items():
        assert _decrypt(market, results[sale], key, tmp_path / f"{sale}.out") == market.doc.read_bytes()
    assert wait_for(lambda: sorted(u.sale_id for u in running.uploads() if u.state == "done") == sorted(keys))


def test_rate_limit_slows_the_transfer(market: Market, running: ProviderServer, tmp_path: Path) -> None:
    market.sell("s1")
    began = time.monotonic()
    market.download(running, "s1", tmp_path / "dl", rate_limit_bps=1_000_000)
    # ~336 KiB at 1 MB/s, less the quarter-second burst allowance.
    assert time.monotonic() - began > 0.08


def test_provider_rate_limit_and_pause(market: Market, tmp_path: Path) -> None:
    market.sell("s1")
    with market.server(rate_limit_bps=4_000_000) as server:
        done = threading.Event()
        box: list[DownloadResult] = []
        t = threading.Thread(target=lambda: (box.append(market.download(server, "s1", tmp_path / "dl")), done.set()))
        t.start()
        wait_for(lambda: server.control("s1") is not None or done.is_set(), 10, "the upload to begin", interval=0.005)
        control = server.control("s1")
        if control is not None and not done.is_set():
            control.pause()
            # Still in its handshake, the upload reads as paused once it reaches its first segment.
            wait_for(lambda: server.uploads()[-1].state in ("paused", "done"), 10, "the upload to pause")
            control.resume()
        t.join(20)
        assert box and box[0].segment_count == 6


def test_unknown_sale_is_refused_with_the_providers_reason(
    market: Market, running: ProviderServer, tmp_path: Path
) -> None:
    with pytest.raises(TransferRefused, match="unknown to the ledger"):
        market.download(running, "no-such-sale", tmp_path / "dl")
    assert wait_for(lambda: running.uploads()[-1].state == "refused")
    assert "unknown" in (running.uploads()[-1].error or "")
