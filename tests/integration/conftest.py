"""Fixtures of the transfer tests: a published document with its sales, and its provider serving it.

(``market`` here is the transfer tests' market of peers, not the in-memory ledger
of the same name in tests/conftest.py, which no integration test uses.)
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from peer.transfer import ProviderServer
from tests.integration.test_transfer_support import Market


@pytest.fixture
def market(tmp_path: Path) -> Market:
    return Market(tmp_path)


@pytest.fixture
def running(market: Market) -> Iterator[ProviderServer]:
    with market.server() as server:
        yield server
