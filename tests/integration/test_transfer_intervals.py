"""A split sale over the wire: the provider serves one unpaid interval at a time, each under its own key."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.content import interval_key
from peer.transfer import ContentMismatch, ProviderServer, SaleGrant, TransferRefused, check_interval, decrypt_file
from tests.support.market import Market

EVERY = 2  # segments per interval; the market's document has 6 segments -> 3 intervals


class SplitMarket(Market):
    paid: dict[str, int]

    def authorize(self, sale_id: str, min_seq: int) -> SaleGrant:
        grant = super().authorize(sale_id, min_seq)
        # The provider serves at most the first interval not paid yet.
        limit = min((self.paid.get(sale_id, 0) + 1) * EVERY, self.commitment.segment_count)
        return dataclasses.replace(grant, interval_segments=EVERY, limit=limit)


@pytest.fixture
def split_market(tmp_path: Path) -> SplitMarket:
    m = SplitMarket(tmp_path)
    m.paid = {}
    return m


@pytest.fixture
def split_running(split_market: SplitMarket) -> Iterator[ProviderServer]:
    with split_market.server() as server:
        yield server


def test_interval_by_interval_download_check_and_decrypt(split_market: SplitMarket, split_running: ProviderServer,
                                                         tmp_path: Path) -> None:
    market, running = split_market, split_running
    key = market.sell("s-split")
    dest = tmp_path / "dl"
    keys: dict[int, bytes] = {}
    for j in range(3):
        result = market.download(running, "s-split", dest, until=(j + 1) * EVERY)
        assert result.stored == min((j + 1) * EVERY, 6) and result.complete == (j == 2)
        if j < 2:
            # Asking for the next interval before paying this one is refused, and nothing is sent.
            with pytest.raises(TransferRefused, match="not paid"):
                market.download(running, "s-split", dest, until=(j + 2) * EVERY)
        keys[j] = interval_key(key, "s-split", j)  # what the ledger releases when interval j is settled
        assert check_interval(result, keys[j], j, EVERY, merkle_root_hex=market.commitment.merkle_root) == 2
        with pytest.raises(ContentMismatch):  # another interval's key opens nothing here
            check_interval(result, keys[j], (j + 1) % 3 if j < 2 else 0, EVERY,
                           merkle_root_hex=market.commitment.merkle_root)
        market.paid["s-split"] = j + 1
    out = decrypt_file(result, None, tmp_path / "doc.bin", sha256_hex=market.commitment.sha256,
                       merkle_root_hex=market.commitment.merkle_root, interval_segments=EVERY, interval_keys=keys)
    assert out.read_bytes() == market.doc.read_bytes()
