"""The broker set-up's policies and its throwaway vhosts, without a broker: the management API is a recorder."""
from __future__ import annotations

from typing import Any

import pytest

from broker.admin import AdminApi, AdminError, Limits, policies, scratch_roles
from broker.topology import Names


class _Recorder(AdminApi):
    """Answers every call as a running broker would, except that deleting fails as on a broker too busy to answer."""

    def __init__(self) -> None:
        super().__init__("http://admin:pw@127.0.0.1:15672/")
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, path: str, body: Any = None) -> Any:
        self.calls.append((method, path))
        if method == "DELETE":
            raise AdminError("cannot reach the broker's management API")
        return {} if method == "GET" else None


def test_the_commands_queue_is_bounded_by_count_and_refuses_at_the_door() -> None:
    bounds = policies(Names("acb"), Limits())["acb.commands-bounds"]["definition"]
    assert bounds == {"max-length": 2_000, "max-length-bytes": 512 * 1024 * 1024, "overflow": "reject-publish"}
    reads = policies(Names("acb"), Limits())["acb.reads-bounds"]["definition"]
    assert reads["max-length"] == 2_000 and reads["overflow"] == "reject-publish"


def test_a_failed_body_is_not_hidden_by_a_clean_up_that_fails() -> None:
    api = _Recorder()
    with pytest.raises(ValueError, match="the run's own error"), scratch_roles(api):
        raise ValueError("the run's own error")
    assert any(method == "DELETE" for method, _path in api.calls)


def test_a_clean_up_that_fails_after_a_good_body_is_reported() -> None:
    with pytest.raises(AdminError), scratch_roles(_Recorder()):
        pass
