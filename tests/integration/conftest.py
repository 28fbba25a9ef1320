"""Fixtures of the transfer tests: a published document with its sales, and its provider serving it.

``market`` is the transfer tests' market of peers (:class:`tests.support.market.Market`); the
in-memory ledger with a document for sale is ``stocked_book`` in tests/conftest.py.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from peer.transfer import ProviderServer
from tests.support.market import Market


@pytest.fixture
def market(tmp_path: Path) -> Market:
    """alice, bob and carol, and alice's document of a little over five segments, with no sale yet."""
    return Market(tmp_path)


@pytest.fixture
def running(market: Market) -> Iterator[ProviderServer]:
    """alice's provider serving ``market``'s document on a free port of 127.0.0.1."""
    with market.server() as server:
        yield server
