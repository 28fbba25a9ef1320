"""End-to-end fixtures: replicas and CLI commands as separate processes (tests/support/cluster.py)."""
from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.keys import init_system
from tests.support.broker_roles import role_vhost
from tests.support.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A cluster of its own in a throwaway vhost; its replicas are killed afterwards, also on failure."""
    home = tmp_path / "acb"
    init_system(home)
    monkeypatch.setenv("ACB_HOME", str(home))  # the test's own clients trust this cluster's operator
    with role_vhost(prefix=f"e2e-{uuid.uuid4().hex[:8]}") as roles:
        c = Cluster(home, roles)
        try:
            yield c
        finally:
            c.replicas.close(signal.SIGKILL)
